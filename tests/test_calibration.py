"""Calibration ops against torchmetrics, scikit-learn and independent numpy computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from auditkit.exceptions import AuditkitError, NonFiniteOutputError
from auditkit.ops import calibration as C
from tests.conftest import small_digits_cnn

N_IMAGES = 360


@pytest.fixture(scope="module")
def digits_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(360, 10)`` of the trained small digits CNN on test images, and their labels."""
    net, x, y = small_digits_cnn(N_IMAGES)
    with torch.no_grad():
        return net(x).double(), y


def _torchmetrics(probs: np.ndarray, labels: np.ndarray, norm: str, bins: int = 15) -> float:
    p = torch.from_numpy(probs)
    y = torch.from_numpy(labels)
    return float(multiclass_calibration_error(p, y, num_classes=p.shape[1], n_bins=bins, norm=norm))


def _off_edges(conf: np.ndarray, bins: int = 15) -> None:
    """torchmetrics bins [lo, hi) and puts confidence 1 in a bin of its own; auditkit bins (lo, hi]:
    the comparison is exact only when no float32 confidence sits on an edge."""
    c32 = conf.astype(np.float32)
    edges = np.linspace(0, 1, bins + 1).astype(np.float32)
    assert not np.isin(c32, edges).any()


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_real_outputs_match_torchmetrics_and_scikit_learn(
    digits_logits: tuple[torch.Tensor, torch.Tensor], scale: float
) -> None:
    z, y = digits_logits[0] * scale, digits_logits[1]
    labels = y.numpy()
    probs = C.softmax(z)
    conf, hit = C.top_label(probs, labels)
    _off_edges(conf)
    assert C.ece(conf, hit) == pytest.approx(_torchmetrics(probs, labels, "l1"), abs=1e-6)
    assert C.mce(conf, hit) == pytest.approx(_torchmetrics(probs, labels, "max"), abs=1e-6)
    # the multiclass Brier score is scikit-learn's 2-D brier_score_loss on the [0, 2] scale
    ref = brier_score_loss(labels, probs, labels=np.arange(10), scale_by_half=False)
    assert C.brier_score(probs, labels) == pytest.approx(ref, rel=1e-9)
    # the top-label Brier score is the binary one on (correct, confidence)
    assert float(np.mean((conf - hit) ** 2)) == pytest.approx(brier_score_loss(hit.astype(int), conf), rel=1e-9)
    assert C.nll(z, labels) == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-9)
    assert C.nll(z, labels) == pytest.approx(log_loss(labels, probs, labels=np.arange(10)), rel=1e-9)
    assert 0 < C.ece(conf, hit) < C.mce(conf, hit) <= 1


def test_the_summary_agrees_with_the_single_functions(digits_logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    z, y = digits_logits
    summary, sure = C.summarize(z, y, n_resamples=200, seed=3)
    probs = C.softmax(z)
    conf, hit = C.top_label(probs, y.numpy())
    assert summary.bins == 15 and summary.resamples == 200
    assert summary.ece.value == pytest.approx(_torchmetrics(probs, y.numpy(), "l1"), abs=1e-6)
    assert summary.mce == pytest.approx(_torchmetrics(probs, y.numpy(), "max"), abs=1e-6)
    assert summary.errors == int((pred_wrong := ~hit).sum())
    assert set(sure.tolist()) == set(np.flatnonzero(pred_wrong & (conf >= 0.9)).tolist())
    assert summary.confident_wrong == len(sure)
    assert summary.confident_wrong_share == len(sure) / summary.errors
    assert sum(b.count for b in summary.reliability) == N_IMAGES
    assert summary.temperature is not None and summary.temperature.seed == 3


@pytest.mark.parametrize(
    ("conf", "hit", "expected_ece"),
    [
        ([1.0, 1.0, 1.0], [1, 1, 1], 0.0),  # all correct and certain
        ([0.7, 0.75, 0.8], [1, 1, 1], 0.25),  # all correct, underconfident
        ([0.3, 0.95, 0.6, 0.55], [0, 0, 0, 0], 0.6),  # all wrong: ECE = mean confidence
        ([0.61, 0.62, 0.64, 0.65], [1, 0, 0, 1], 0.13),  # one bin: |accuracy - mean confidence|
    ],
)
def test_hand_made_edge_cases(conf: list[float], hit: list[int], expected_ece: float) -> None:
    c, h = np.array(conf), np.array(hit)
    assert C.ece(c, h) == pytest.approx(expected_ece)
    if len(np.unique(C.bin_index(c))) == 1:  # one bin: MCE is ECE
        assert C.mce(c, h) == pytest.approx(expected_ece)
    if c.max() < 1:  # torchmetrics puts confidence 1 in a bin of its own
        # two-class probabilities whose top label is class 1 with confidence c; the label decides correctness
        probs = np.stack([1 - c, c], axis=1)
        labels = np.where(h == 1, 1, 0)
        assert C.ece(c, h) == pytest.approx(_torchmetrics(probs, labels, "l1"), abs=1e-6)
        assert C.mce(c, h) == pytest.approx(_torchmetrics(probs, labels, "max"), abs=1e-6)


def test_bins_are_closed_on_the_right() -> None:
    edges = np.linspace(0, 1, 16)
    assert C.bin_index(edges).tolist() == [0, *range(15)]
    assert C.bin_index(np.array([0.5]), bins=2).tolist() == [0]
    # the existing subgroup ECE example: bins (0.933, 1] and (0.533, 0.6]
    assert C.ece(np.array([0.95, 0.95, 0.55, 0.55]), np.array([1, 0, 1, 1])) == pytest.approx(0.45)


def _equal_mass_reference(conf: np.ndarray, hit: np.ndarray, bins: int) -> float:
    """Equal-mass ECE the long way: sort, hand out sizes, walk the groups."""
    order = sorted(range(len(conf)), key=lambda i: (conf[i], i))
    groups = min(bins, len(conf))
    sizes = [len(conf) // groups + (1 if g < len(conf) % groups else 0) for g in range(groups)]
    total, start = 0.0, 0
    for size in sizes:
        members = order[start : start + size]
        start += size
        total += size * abs(np.mean([hit[i] for i in members]) - np.mean([conf[i] for i in members]))
    return total / len(conf)


@pytest.mark.parametrize("bins", [1, 7, 15])
def test_equal_mass_bins_against_numpy(digits_logits: tuple[torch.Tensor, torch.Tensor], bins: int) -> None:
    conf, hit = C.top_label(C.softmax(digits_logits[0]), digits_logits[1].numpy())
    got = C.ece(conf, hit, bins=bins, binning="equal-mass")
    assert got == pytest.approx(_equal_mass_reference(conf, hit, bins), rel=1e-12)
    rows = C.reliability(conf, hit, bins=bins, binning="equal-mass")
    assert len(rows) == bins and {r.count for r in rows} <= {N_IMAGES // bins, N_IMAGES // bins + 1}
    assert all(a.high <= b.low for a, b in itertools.pairwise(rows))
    if bins == 1:  # one bin: |accuracy - mean confidence|
        assert got == pytest.approx(abs(hit.mean() - conf.mean()))
    # fewer samples than bins: one sample per bin
    assert C.ece(conf[:5], hit[:5], bins=15, binning="equal-mass") == pytest.approx(np.mean(np.abs(conf[:5] - hit[:5])))


def test_reliability_diagram_counts_and_means() -> None:
    conf = np.array([0.1, 0.15, 0.45, 0.5, 0.55, 0.95, 0.99, 1.0])
    hit = np.array([0, 0, 1, 0, 1, 1, 1, 0])
    rows = C.reliability(conf, hit, bins=4)
    assert [r.count for r in rows] == [2, 2, 1, 3]  # (0, .25], (.25, .5], (.5, .75], (.75, 1]
    assert [r.low for r in rows] == [0.0, 0.25, 0.5, 0.75] and rows[-1].high == 1.0
    assert rows[1].confidence == pytest.approx(0.475) and rows[1].accuracy == 0.5
    assert rows[3].accuracy == pytest.approx(2 / 3) and rows[3].confidence == pytest.approx((0.95 + 0.99 + 1) / 3)
    # empty bins are left out (no nan in results.json)
    assert [(r.low, r.high, r.count) for r in C.reliability(np.array([0.9, 0.3]), np.array([1, 0]), bins=4)] == [
        (0.25, 0.5, 1),
        (0.75, 1.0, 1),
    ]


def test_confident_and_wrong() -> None:
    conf = np.array([0.95, 0.5, 0.9, 0.99, 0.3, 0.97])
    hit = np.array([0, 0, 0, 1, 0, 0])
    sure, errors = C.confident_wrong(conf, hit)
    assert sure.tolist() == [5, 0, 2] and errors == 5  # >= 0.9, most confident first
    assert C.confident_wrong(conf, hit, threshold=0.96)[0].tolist() == [5]
    assert C.confident_wrong(conf, np.ones(6))[0].tolist() == []


def test_temperature_scaling(digits_logits: tuple[torch.Tensor, torch.Tensor]) -> None:
    z, y = digits_logits
    labels = y.numpy()
    hot = z * 5  # an overconfident model
    t_hot = C.fit_temperature(hot, labels)
    assert t_hot > 1
    # the minimum of the NLL over a fine grid of temperatures, as an independent reference
    grid = np.exp(np.linspace(np.log(0.5), np.log(20), 4001))
    ref = grid[np.argmin([F.cross_entropy(hot / t, y).item() for t in grid])]
    assert t_hot == pytest.approx(ref, rel=2e-3)
    # torch's LBFGS on log T reaches the same temperature
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(hot / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert t_hot == pytest.approx(float(log_t.detach().exp()), rel=1e-3)

    what = C.temperature_what_if(hot, labels, seed=7)
    assert what is not None
    assert what.fit_n + what.eval_n == N_IMAGES and what.temperature > 1
    fit = np.random.default_rng(7).permutation(N_IMAGES)[: N_IMAGES // 2]
    assert C.nll(hot[fit] / what.temperature, labels[fit]) < C.nll(hot[fit], labels[fit])  # on the fit half
    assert what.nll_after < what.nll_before and what.ece_after < what.ece_before  # on the held-out half
    assert C.temperature_what_if(hot, labels, seed=7) == what
    assert C.temperature_what_if(hot, labels, seed=8) != what
    assert C.temperature_what_if(hot[:3], labels[:3]) is None


def test_bootstrap_interval(digits_logits: tuple[torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    conf, hit = C.top_label(C.softmax(digits_logits[0]), digits_logits[1].numpy())
    ci = C.bootstrap_ece(conf, hit, n_resamples=500, seed=0)
    assert ci.low <= ci.value <= ci.high and ci.n == N_IMAGES and ci.low < ci.high
    assert ci.value == C.ece(conf, hit)
    assert C.bootstrap_ece(conf, hit, n_resamples=500, seed=0) == ci
    assert C.bootstrap_ece(conf, hit, n_resamples=500, seed=1) != ci
    # the vectorised resampling equals resampling one by one with the same draws
    draws = np.random.default_rng(0).integers(0, N_IMAGES, size=(500, N_IMAGES))
    values = [C.ece(conf[d], hit[d]) for d in draws]
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), rel=1e-9)
    # drawn a few resamples at a time (bounded memory on large data): the same interval
    monkeypatch.setattr(C, "BOOTSTRAP_CHUNK", 7 * N_IMAGES)
    assert C.bootstrap_ece(conf, hit, n_resamples=500, seed=0) == ci
    mass = C.bootstrap_ece(conf, hit, n_resamples=50, seed=0, binning="equal-mass")
    assert mass.value == C.ece(conf, hit, binning="equal-mass") and mass.low <= mass.high


def test_non_finite_logits_and_bad_arguments_are_refused() -> None:
    z = torch.randn(6, 3, dtype=torch.float64)
    z[2, 1] = float("nan")
    z[4, 0] = float("inf")
    with pytest.raises(NonFiniteOutputError, match="2 of 6 samples") as exc:
        C.summarize(z, torch.zeros(6, dtype=torch.long))
    assert isinstance(exc.value, AuditkitError) and "\n" not in str(exc.value)
    for call in (C.nll, C.fit_temperature, C.temperature_what_if):
        with pytest.raises(NonFiniteOutputError):
            call(z, np.zeros(6, dtype=int))
    with pytest.raises(AuditkitError, match="bins must be a positive integer"):
        C.ece(np.array([0.5]), np.array([1]), bins=0)
    with pytest.raises(AuditkitError, match="binning must be one of equal-width, equal-mass"):
        C.ece(np.array([0.5]), np.array([1]), binning="quantile")  # type: ignore[arg-type]
    assert math.isnan(C.ece(np.array([]), np.array([])))


def test_labels_that_do_not_fit_the_scores_are_refused() -> None:
    from auditkit.exceptions import ConfigError
    from auditkit.ops.calibration import brier_score, nll

    probs = np.full((3, 4), 0.25)
    with pytest.raises(ConfigError, match="one label per row"):
        brier_score(probs, [0, 1])
    with pytest.raises(ConfigError, match=r"class indices in \[0, 4\)"):
        nll(np.zeros((3, 4)), [0, 1, -1])
    with pytest.raises(ConfigError, match=r"class indices in \[0, 4\)"):
        brier_score(probs, [0, 1, 4])
