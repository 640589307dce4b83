"""Square Attack (Andriushchenko et al. 2020) against torchattacks 3.5.1's port of the authors' code."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import pytest
import torch
import torchattacks
from torch import Tensor, nn
from torch.nn import functional as F

from auditkit.exceptions import ConfigError, NonFiniteOutputError
from auditkit.ops.attacks import Norm
from auditkit.ops.square import Square, eta, margin_loss, p_schedule
from tests.conftest import NaNAfter, small_digits_cnn

N_IMAGES = 100
QUERIES = 500  # torchattacks gets n_queries=QUERIES - 1: it queries the start point on top of n_queries steps
EPS: dict[str, float] = {"linf": 0.08, "l2": 1.0}  # robust accuracy in the middle for the CNN below
TA_NORM = {"linf": "Linf", "l2": "L2"}
# Random search: ours and the reference draw different windows and signs, so their robust accuracies differ
# by seed noise. Measured at these settings over seeds 0-4 (100 images, 500 queries): L2, ours 0.55-0.57,
# torchattacks 0.55-0.57; Linf, torchattacks 0.33-0.35 and ours 0.29-0.31. Ours is stronger under Linf
# because it redraws signs that would not change the image (the authors' original code; without the
# redraw ours measured 0.31-0.38). Seed 0 gives ours - ref = -0.04 (Linf) and 0.00 (L2). Allowed below:
# ours at most 0.02 (Linf) / 0.03 (L2) weaker, and not implausibly stronger.
LOWER: dict[str, float] = {"linf": 0.07, "l2": 0.04}  # how much lower (stronger) ours may be
UPPER: dict[str, float] = {"linf": 0.02, "l2": 0.03}  # how much higher (weaker) ours may be


@pytest.fixture(scope="module")
def data() -> tuple[nn.Module, Tensor, Tensor]:
    """A narrow digits CNN trained for 4 epochs on the embedded digits (seeded), frozen (no parameter needs
    a gradient), and ``N_IMAGES`` test images."""
    net, x, y = small_digits_cnn(N_IMAGES)
    return net.requires_grad_(False), x, y


@dataclass
class Run:
    """Robust accuracies (fractions) of ours and the reference at one norm and eps, and our outputs."""

    eps: float
    adv: Tensor
    success: Tensor
    ours: float
    ref: float
    clean: float


def _robust(net: nn.Module, adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return net(adv).argmax(dim=1) == y


def _size(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


@pytest.fixture(scope="module", params=["linf", "l2"])
def run(request: pytest.FixtureRequest, data: tuple[nn.Module, Tensor, Tensor]) -> tuple[str, Run]:
    norm: Norm = request.param
    net, x, y = data
    eps = EPS[norm]
    adv, success = Square(norm=norm, queries=QUERIES)(net, x, y, eps, generator=torch.Generator().manual_seed(0))
    ref = torchattacks.Square(net, norm=TA_NORM[norm], eps=eps, n_queries=QUERIES - 1, n_restarts=1, seed=0)
    result = Run(
        eps=eps,
        adv=adv,
        success=success,
        ours=1 - success.float().mean().item(),
        ref=_robust(net, ref(x, y), y).float().mean().item(),
        clean=_robust(net, x, y).float().mean().item(),
    )
    print(f"\n{norm} eps={eps} images={N_IMAGES} queries={QUERIES} robust accuracy: ours {result.ours:.2f}", end="")
    print(f" torchattacks {result.ref:.2f} (clean {result.clean:.2f})")
    return norm, result


def test_robust_accuracy_is_in_the_middle(run: tuple[str, Run]) -> None:
    _, r = run
    assert 0.2 <= r.ref <= 0.8 and r.ref <= r.clean - 0.2, r


def test_robust_accuracy_matches_reference(run: tuple[str, Run]) -> None:
    norm, r = run
    assert -LOWER[norm] - 1e-6 <= r.ours - r.ref <= UPPER[norm] + 1e-6, r


def test_outputs_are_in_ball_and_box_and_success_is_true(
    run: tuple[str, Run], data: tuple[nn.Module, Tensor, Tensor]
) -> None:
    norm, r = run
    net, x, y = data
    assert r.adv.shape == x.shape and r.success.shape == y.shape and r.success.dtype == torch.bool
    assert float(r.adv.min()) >= 0.0 and float(r.adv.max()) <= 1.0
    assert float(_size(r.adv - x, norm).max()) <= r.eps + 1e-6
    assert torch.equal(r.success, ~_robust(net, r.adv, y))
    assert torch.equal(r.adv[~r.success], x[~r.success])  # unbroken samples come back unchanged


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_seed_same_output_other_seed_other_output(norm: Norm, data: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = data
    attack, eps = Square(norm=norm, queries=40), EPS[norm]
    first = attack(net, x[:32], y[:32], eps, generator=torch.Generator().manual_seed(7))
    second = attack(net, x[:32], y[:32], eps, generator=torch.Generator().manual_seed(7))
    other = attack(net, x[:32], y[:32], eps, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


class _Recording(nn.Module):
    """Wraps a model; records each call's batch size and whether autograd was on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []
        self.grad: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(x.shape[0])
        self.grad.append(torch.is_grad_enabled())
        return self.inner(x)


def test_only_samples_not_yet_fooled_are_queried(data: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = data
    model, queries = _Recording(net), 60
    _, success = Square(queries=queries)(model, x, y, EPS["linf"], generator=torch.Generator().manual_seed(0))
    correct = int(_robust(net, x, y).sum())
    sizes = model.sizes
    assert len(sizes) == 1 + queries  # the clean pass, then the budget: some samples stay unbroken
    assert sizes[0] == len(x) and sizes[1] == correct < len(x)  # misclassified ones are never attacked
    assert all(a >= b for a, b in itertools.pairwise(sizes[1:]))
    assert sizes[-1] < correct and sizes[-1] >= int((~success).sum())
    assert not any(model.grad)


class _Hard(nn.Module):
    """The digits CNN behind a rounding quantiser, scoring with a one-hot of its argmax: no gradient at all."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        logits = self.inner(torch.round(x * 8) / 8)
        return F.one_hot(logits.argmax(dim=1), logits.shape[1]).float()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_breaks_a_model_without_gradients(norm: Norm, data: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = data
    hard = _Hard(net)
    with torch.enable_grad():
        assert not hard(x[:2].clone().requires_grad_(True)).requires_grad  # a gradient attack has nothing to use
    eps = 2 * EPS[norm]
    adv, success = Square(norm=norm, queries=100)(hard, x, y, eps, generator=torch.Generator().manual_seed(0))
    clean_wrong = ~_robust(hard, x, y)
    assert int((success & ~clean_wrong).sum()) >= 5
    assert torch.equal(success, ~_robust(hard, adv, y))
    assert float(_size(adv - x, norm).max()) <= eps + 1e-6


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 20, 28), (3, 28, 20)])
def test_any_image_size_and_channels(norm: Norm, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], 10)).eval()
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(dim=1)  # all clean-correct
    eps = {"linf": 0.05, "l2": 0.5}[norm]
    adv, success = Square(norm=norm, queries=50)(net, x, y, eps, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float(_size(adv - x, norm).max()) <= eps + 1e-6
    assert torch.equal(success, ~_robust(net, adv, y))
    assert bool(success.any())


def test_restarts_attack_only_what_is_left(data: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = data
    model = _Recording(net)
    once = Square(queries=20)(net, x, y, EPS["linf"], generator=torch.Generator().manual_seed(0))
    twice = Square(queries=20, restarts=2)(model, x, y, EPS["linf"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(once[0][once[1]], twice[0][once[1]])  # the first restart is the same run
    assert int(twice[1].sum()) > int(once[1].sum())
    assert model.sizes[1 + 20] == int((~once[1]).sum())  # the second restart starts on the unbroken ones


@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_no_eps_returns_the_clean_images_without_queries(eps: float, data: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = data
    model = _Recording(net)
    adv, success = Square()(model, x[:16], y[:16], eps)
    assert torch.equal(adv, x[:16]) and torch.equal(success, ~_robust(net, x[:16], y[:16]))
    assert model.sizes == [16]  # the clean pass only


@pytest.mark.parametrize(("first_bad", "where"), [(1, "clean"), (2, "perturbed"), (5, "perturbed")])
def test_nan_logits_raise(first_bad: int, where: str) -> None:
    torch.manual_seed(0)
    net = NaNAfter(first_bad).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        y = net.inner(x).argmax(dim=1)  # all clean-correct, so the attack runs
    with pytest.raises(NonFiniteOutputError, match=f"^Square: .*{where}"):
        Square(queries=10)(net, x, y, 0.01)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"norm": "l1"}, "norm must be one of linf, l2, got 'l1'"),
        ({"queries": 0}, "queries must be .* at least 1, got 0"),
        ({"p_init": 0.0}, r"p_init must be in \(0, 1\], got 0.0"),
        ({"p_init": 1.5}, r"p_init must be in \(0, 1\], got 1.5"),
        ({"restarts": 0}, "restarts must be .* at least 1, got 0"),
    ],
)
def test_bad_parameters_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Square(**kwargs)  # type: ignore[arg-type]


def test_names() -> None:
    assert Square().name == "Square Linf (5000 queries)"
    assert Square(norm="l2", queries=1000, restarts=2).name == "Square L2 (1000 queries) x2 restarts"


@pytest.mark.parametrize("queries", [1, 7, 100, 499, 5000])
def test_p_schedule_matches_reference(queries: int) -> None:
    ref = torchattacks.Square(nn.Linear(1, 1), n_queries=queries, p_init=0.3)
    assert [p_schedule(0.3, i, queries) for i in range(queries)] == [ref.p_selection(i) for i in range(queries)]


def test_eta_matches_reference() -> None:
    ref = torchattacks.Square(nn.Linear(1, 1), norm="L2")
    for s in range(1, 20):
        expected = ref.eta(s)  # transposed at random
        ours = eta(s)
        assert ours.shape == (s, s)
        assert torch.allclose(ours, expected, atol=1e-6) or torch.allclose(ours.T, expected, atol=1e-6), s
        torch.testing.assert_close(ours.square().sum(), torch.tensor(1.0))


def test_margin_loss_matches_reference() -> None:
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    margin, _ = torchattacks.Square(nn.Identity()).margin_and_loss(logits.clone(), y)
    torch.testing.assert_close(margin_loss(logits, y), margin)
    assert torch.equal(margin_loss(logits, y) < 0, logits.argmax(dim=1) != y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_runs_on_cuda(norm: Norm, data: tuple[nn.Module, Tensor, Tensor]) -> None:
    net, x, y = data
    gpu = copy.deepcopy(net).cuda()
    xc, yc = x.cuda(), y.cuda()
    adv, success = Square(norm=norm, queries=50)(gpu, xc, yc, EPS[norm], generator=torch.Generator().manual_seed(0))
    again = Square(norm=norm, queries=50)(gpu, xc, yc, EPS[norm], generator=torch.Generator().manual_seed(0))
    assert adv.device == xc.device and success.device == xc.device
    assert float(_size(adv - xc, norm).max()) <= EPS[norm] + 1e-6
    assert torch.equal(success, gpu(adv).argmax(dim=1) != yc)
    assert torch.equal(adv, again[0])
