"""APGD (Croce & Hein 2020) against torchattacks 3.5.1's port of the authors' APGD / APGD-T code."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torchattacks
from torch import Tensor, nn
from torch.nn import functional as F

from auditkit.engine.loop import NonFiniteOutputError
from auditkit.exceptions import ConfigError
from auditkit.ops.apgd import (
    APGD,
    checkpoint_steps,
    dlr_loss,
    loss_values,
    margin_loss,
    ranked_targets,
    standard_attack,
    targeted_dlr_loss,
)
from auditkit.ops.attacks import PGD
from auditkit.zoo import digits_cnn
from tests.conftest import NaNAfter, adversarial_digits_cnn, small_digits_cnn

N_IMAGES = 100
STEPS = 50
AA_TARGETS = 9  # AutoAttack's APGD-T targets (torchattacks' APGDT attacks n_classes - 1 of them)
# robust accuracy in the middle for each model below
EPS: dict[str, dict[str, float]] = {"plain": {"linf": 0.08, "l2": 1.0}, "adversarial": {"linf": 0.05, "l2": 1.0}}
TA_NORM = {"linf": "Linf", "l2": "L2"}


@pytest.fixture(scope="module")
def data() -> tuple[nn.Module, Tensor, Tensor]:
    """A narrow digits CNN trained for 4 epochs on the embedded digits (seeded), and ``N_IMAGES`` test images."""
    return small_digits_cnn(N_IMAGES)


@pytest.fixture(scope="module")
def adversarial() -> tuple[nn.Module, Tensor, Tensor]:
    """The same CNN trained adversarially (PGD-5, Linf 0.1), and ``N_IMAGES`` test images."""
    return adversarial_digits_cnn(N_IMAGES)


@dataclass
class Run:
    """Robust accuracies (fractions) of the attacks on one model at one norm and eps, and our outputs."""

    model: str
    eps: float
    adv_ce: Tensor
    success_ce: Tensor
    adv_std: Tensor
    success_std: Tensor
    ours_ce: float
    ref_ce: float
    ours_std: float
    ref_std: float
    pgd: float


def _robust(net: nn.Module, adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return net(adv).argmax(dim=1) == y


@pytest.fixture(
    scope="module", params=[("plain", "linf"), ("plain", "l2"), ("adversarial", "linf"), ("adversarial", "l2")]
)
def run(
    request: pytest.FixtureRequest,
    data: tuple[nn.Module, Tensor, Tensor],
    adversarial: tuple[nn.Module, Tensor, Tensor],
) -> tuple[str, Run]:
    """Ours (APGD-CE; ``standard_attack``: APGD-CE then APGD-T against 3 targets ranked where APGD-CE
    stands) against torchattacks' port of AutoAttack's APGD-CE then APGD-T against its 9 targets."""
    which, norm = request.param
    net, x, y = data if which == "plain" else adversarial
    eps = EPS[which][norm]
    adv_ce, success_ce = APGD(norm=norm, steps=STEPS)(net, x, y, eps, generator=torch.Generator().manual_seed(0))
    adv_std, success_std = standard_attack(
        net, x, y, eps, norm=norm, generator=torch.Generator().manual_seed(0), steps=STEPS
    )
    ref_ce = torchattacks.APGD(net, norm=TA_NORM[norm], eps=eps, steps=STEPS, n_restarts=1, seed=0, loss="ce")
    robust = _robust(net, ref_ce(x, y), y)
    idx = torch.nonzero(robust).flatten()
    ref_t = torchattacks.APGDT(
        net, norm=TA_NORM[norm], eps=eps, steps=STEPS, n_restarts=1, seed=0, n_classes=AA_TARGETS + 1
    )
    robust_std = robust.clone()
    robust_std[idx] = _robust(net, ref_t(x[idx], y[idx]), y[idx])
    _, success_pgd = PGD(norm=norm, steps=20)(net, x, y, eps, generator=torch.Generator().manual_seed(0))
    result = Run(
        model=which,
        eps=eps,
        adv_ce=adv_ce,
        success_ce=success_ce,
        adv_std=adv_std,
        success_std=success_std,
        ours_ce=1 - success_ce.float().mean().item(),
        ref_ce=robust.float().mean().item(),
        ours_std=1 - success_std.float().mean().item(),
        ref_std=robust_std.float().mean().item(),
        pgd=1 - success_pgd.float().mean().item(),
    )
    accs = {k: round(v, 3) for k, v in result.__dict__.items() if isinstance(v, float) and k not in ("eps", "model")}
    print(f"\n{which} {norm} eps={eps} images={N_IMAGES} steps={STEPS} robust accuracy: {accs}")
    return norm, result


def test_robust_accuracy_is_in_the_middle(run: tuple[str, Run]) -> None:
    _, r = run
    assert 0.2 <= r.ref_ce <= 0.8, r


def test_apgd_ce_matches_reference(run: tuple[str, Run]) -> None:
    _, r = run
    assert abs(r.ours_ce - r.ref_ce) <= 0.02 + 1e-6, r


def test_standard_attack_is_at_least_as_strong_as_reference(run: tuple[str, Run]) -> None:
    _, r = run
    assert r.ours_std <= r.ref_std + 0.01 + 1e-6, r
    assert r.ours_std <= r.ours_ce + 1e-6, r


def test_apgd_is_at_least_as_strong_as_pgd20(run: tuple[str, Run]) -> None:
    _, r = run
    assert r.ours_ce <= r.pgd + 0.01 + 1e-6, r


def test_outputs_are_in_ball_and_box_and_success_is_true(
    run: tuple[str, Run], data: tuple[nn.Module, Tensor, Tensor], adversarial: tuple[nn.Module, Tensor, Tensor]
) -> None:
    norm, r = run
    net, x, y = data if r.model == "plain" else adversarial
    for adv, success in ((r.adv_ce, r.success_ce), (r.adv_std, r.success_std)):
        assert adv.shape == x.shape and success.shape == y.shape and success.dtype == torch.bool
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        delta = (adv - x).flatten(1)
        size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
        assert float(size.max()) <= r.eps + 1e-6
        assert torch.equal(success, ~_robust(net, adv, y))
        assert torch.equal(adv[~success], x[~success])  # unbroken samples come back unchanged


def test_model_parameters_get_no_gradients(run: tuple[str, Run], data: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, _, _ = data
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("attack", [APGD(norm="linf", steps=10), APGD(norm="l2", loss="dlr", targeted=True, steps=5)])
def test_same_seed_same_output(attack: APGD, data: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = data
    eps = EPS["plain"][attack.norm] / 2
    first = attack(net, x[:32], y[:32], eps, generator=torch.Generator().manual_seed(7))
    second = attack(net, x[:32], y[:32], eps, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_losses_match_reference() -> None:
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    target = logits.argsort(dim=1, descending=True)[:, 2]
    net = nn.Linear(1, 10)
    ref = torchattacks.APGDT(net).dlr_loss_targeted(logits, y, target)
    torch.testing.assert_close(dlr_loss(logits, y), torchattacks.APGD(net).dlr_loss(logits, y))
    torch.testing.assert_close(targeted_dlr_loss(logits, y, target), ref)


def test_margin_loss_is_the_runner_up_minus_the_true_logit() -> None:
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    top2 = logits.topk(2, dim=1)
    runner_up = torch.where(top2.indices[:, 0] == y, top2.values[:, 1], top2.values[:, 0])
    expected = runner_up - logits[torch.arange(64), y]
    torch.testing.assert_close(margin_loss(logits, y), expected)
    assert bool(((margin_loss(logits, y) > 0) == (logits.argmax(1) != y)).all())
    target = (y + 3) % 10
    torch.testing.assert_close(loss_values("margin", logits, y, target), -margin_loss(logits, target))
    torch.testing.assert_close(loss_values("ce", logits, y, target), -F.cross_entropy(logits, target, reduction="none"))


@pytest.mark.parametrize("loss", ["ce", "margin", "dlr"])
def test_targeted_runs_head_for_the_given_target(loss: str, data: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Aimed at each image's 4th most likely class, about 30-47% of the images a targeted APGD breaks
    land on it (measured); an untargeted run lands there for 0-1.4%."""
    net, x, y = data
    with torch.no_grad():
        target = net(x).argsort(dim=1, descending=True)[:, 3]
    share = {}
    for targeted in (True, False):
        attack = APGD(loss=loss, targeted=targeted, steps=20)  # type: ignore[arg-type]
        goal = target if targeted else None
        adv, success = attack(net, x, y, EPS["plain"]["linf"], generator=torch.Generator().manual_seed(0), target=goal)
        with torch.no_grad():
            pred = net(adv).argmax(dim=1)
        assert int(success.sum()) >= 30
        share[targeted] = float((pred[success] == target[success]).float().mean())
    assert share[True] >= share[False] + 0.2


def test_checkpoints_follow_the_paper() -> None:
    assert checkpoint_steps(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoint_steps(50) == [11, 21, 29, 35, 40, 44, 47, 50]
    assert checkpoint_steps(1) == [1]


def test_zero_eps_returns_the_clean_images(data: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = data
    adv, success = APGD()(net, x[:16], y[:16], 0.0)
    assert torch.equal(adv, x[:16]) and torch.equal(success, ~_robust(net, x[:16], y[:16]))


def test_names() -> None:
    assert APGD().name == "APGD-CE Linf"
    assert APGD(norm="l2", loss="dlr", targeted=True).name == "APGD-T L2 (9 targets)"


def test_dlr_needs_three_classes() -> None:
    torch.manual_seed(0)
    net = digits_cnn(num_classes=2, width=4).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ConfigError, match="3 classes"):
        APGD(loss="dlr", steps=2)(net, x, y, 0.1)
    with pytest.raises(ConfigError, match="4 classes"):
        APGD(loss="dlr", targeted=True, steps=2)(digits_cnn(num_classes=3, width=4).eval(), x, y, 0.1)
    APGD(loss="margin", targeted=True, steps=2)(net, x, y, 0.1, target=torch.ones(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="untargeted"):
        APGD(steps=2)(net, x, y, 0.1, target=torch.ones(4, dtype=torch.long))


@pytest.mark.parametrize(("first_bad", "where"), [(1, "clean"), (2, "perturbed"), (5, "perturbed")])
def test_nan_logits_raise(first_bad: int, where: str) -> None:
    torch.manual_seed(0)
    net = NaNAfter(first_bad).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        y = net.inner(x).argmax(dim=1)  # all clean-correct, so the attack runs
    with pytest.raises(NonFiniteOutputError, match=where):
        APGD(steps=10)(net, x, y, 0.01)


def test_run_returns_the_strongest_point(data: tuple[nn.Module, Tensor, Tensor]) -> None:
    """``run`` gives, where the attack failed, the highest-loss iterate: inside the ball, and with a
    higher cross-entropy than the clean image; where it succeeded, the adversarial image itself."""
    net, x, y = data
    eps = EPS["plain"]["linf"] / 2
    adv, success, strongest = APGD(norm="linf", steps=20).run(
        net, x, y, eps, generator=torch.Generator().manual_seed(0)
    )
    assert 0 < int(success.sum()) < len(y)
    assert torch.equal(strongest[success], adv[success]) and torch.equal(adv[~success], x[~success])
    assert float((strongest - x).abs().amax()) <= eps + 1e-6
    with torch.no_grad():
        before = F.cross_entropy(net(x[~success]), y[~success], reduction="none")
        after = F.cross_entropy(net(strongest[~success]), y[~success], reduction="none")
    assert bool((after > before).all())


def test_ranked_targets_are_the_highest_other_logits_in_order() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 3.0, 2.0], [4.0, 0.0, 9.0, 1.0, 3.0]])
    net = nn.Sequential(nn.Flatten(), nn.Identity())
    goals = ranked_targets(net, logits, torch.tensor([1, 0]), 3)
    assert goals.tolist() == [[3, 4, 2], [2, 4, 3]]


def test_a_target_matrix_attacks_each_column_in_turn(data: tuple[nn.Module, Tensor, Tensor]) -> None:
    """Targets ``(B, T)``: the union of what the single-column runs break, with the same seeds."""
    net, x, y = data
    with torch.no_grad():
        order = net(x).argsort(dim=1, descending=True)
    attack = APGD(loss="dlr", targeted=True, steps=10)
    eps = EPS["plain"]["linf"]
    _, both = attack(net, x, y, eps, generator=torch.Generator().manual_seed(0), target=order[:, 1:3])
    _, first = attack(net, x, y, eps, generator=torch.Generator().manual_seed(0), target=order[:, 1])
    assert bool((first <= both).all()) and int(both.sum()) >= int(first.sum())
    assert APGD(loss="dlr", targeted=True, n_targets=2, steps=10)(
        net, x, y, eps, generator=torch.Generator().manual_seed(0)
    )[1].equal(both)
