from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from auditkit.exceptions import ConfigError
from auditkit.inputs.models import AuditModel
from auditkit.ops.attacks import PGD
from tests.conftest import DIGITS_SPEC


@pytest.fixture
def model(tiny_net: torch.nn.Module) -> AuditModel:
    return AuditModel(tiny_net, DIGITS_SPEC).eval()


X = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(3))
Y = torch.arange(16) % 10


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps", [0.03, 0.3, 2.0])
def test_perturbation_stays_in_ball_and_box(model: AuditModel, norm: str, eps: float) -> None:
    adv, _ = PGD(norm=norm, steps=5, restarts=2)(model, X, Y, eps, generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    delta = (adv - X).flatten(1)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    if norm == "linf":
        assert float(delta.abs().max()) <= eps + 1e-6
    else:
        assert float(delta.norm(dim=1).max()) <= eps + 1e-5


def test_fgsm_is_one_signed_gradient_step(model: AuditModel) -> None:
    eps = 0.05
    x = X.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), Y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    expected = (X + eps * grad.sign()).clamp(0, 1)
    adv, success = PGD.fgsm()(model, X, Y, eps)
    with torch.no_grad():
        already = model(X).argmax(1) != Y
    torch.testing.assert_close(adv[~already], expected[~already])  # early stop keeps already-wrong samples as is
    with torch.no_grad():
        assert torch.equal(success, model(adv).argmax(1) != Y)


def test_success_flags_are_true(model: AuditModel) -> None:
    adv, success = PGD(steps=10)(model, X, Y, 0.2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(success, model(adv).argmax(1) != Y)


def test_targeted_moves_towards_target(model: AuditModel) -> None:
    target = (Y + 3) % 10
    adv, success = PGD(steps=30, targeted=True)(
        model, X, Y, 0.5, target=target, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        pred = model(adv).argmax(1)
    assert torch.equal(success, pred == target)
    assert success.float().mean() > 0.5
    with pytest.raises(ConfigError, match="target"):
        PGD(targeted=True)(model, X, Y, 0.1)


def test_eps_zero_changes_nothing(model: AuditModel) -> None:
    adv, success = PGD()(model, X, Y, 0.0)
    assert torch.equal(adv, X)
    with torch.no_grad():
        assert torch.equal(success, model(X).argmax(1) != Y)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="norm must be one of linf, l2"):
        PGD(norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 1"):
        PGD(steps=0)
