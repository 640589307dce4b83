"""Calibration: is the model confident when it is right, and only then?

Pure functions on arrays (numpy arrays or CPU tensors; computed in float64):

- ``logits`` ``(N, K)`` raw scores; ``probs`` ``(N, K)`` their softmax; ``labels`` ``(N,)`` int.
- ``confidence`` ``(N,)`` the top-label probability; ``correct`` ``(N,)`` 0/1 (top label == label).

Bins (``bins``, default :data:`DEFAULT_BINS`): ``equal-width`` splits ``[0, 1]`` into ``bins``
intervals ``(lo, hi]`` (the first one closed, ``[0, 1/bins]``), as in Guo et al. 2017;
``equal-mass`` sorts the samples by confidence (stable) and cuts them into ``min(bins, N)``
consecutive groups whose sizes differ by at most one (the first ``N % bins`` one larger).

- ECE: ``sum_b n_b / N * |accuracy_b - mean confidence_b|``; MCE: ``max_b |accuracy_b - confidence_b|``
  over non-empty bins.
- Brier (multiclass): ``mean_i sum_k (p_ik - [y_i = k])^2``, in ``[0, 2]`` (scikit-learn's
  ``brier_score_loss`` with 2-D probabilities and ``scale_by_half=False``).
- NLL: ``mean_i -log p_i,y_i`` (natural log), from a log-sum-exp of the logits.

Non-finite logits are refused with :class:`auditkit.exceptions.NonFiniteOutputError`, as the
engine's clean pass refuses them: no number is computed from a NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from auditkit.exceptions import ConfigError, NonFiniteOutputError
from auditkit.results import Interval

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import ArrayLike, NDArray
else:
    from auditkit._lazy import lazy

    np = lazy("numpy")

Binning = Literal["equal-width", "equal-mass"]
BINNINGS: tuple[str, ...] = ("equal-width", "equal-mass")
DEFAULT_BINS = 15
#: an error made with at least this top-label probability is "confident and wrong"
CONFIDENT = 0.9
DEFAULT_RESAMPLES = 1000
#: bootstrap draws held in memory at once (resamples x samples)
BOOTSTRAP_CHUNK = 2_000_000
#: the temperature search interval (a bounded scalar search on log T)
TEMPERATURE_RANGE = (0.05, 20.0)


@dataclass(frozen=True)
class ReliabilityBin:
    """One non-empty bin of a reliability diagram: its confidence range ``(low, high]``, sample count,
    mean confidence and accuracy."""

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


@dataclass(frozen=True)
class TemperatureScaling:
    """A what-if, not applied to the model: the temperature ``T`` fitted (minimum NLL of
    ``logits / T``) on ``fit_n`` seeded samples, and ECE/NLL on the other ``eval_n`` before and after."""

    temperature: float
    fit_n: int
    eval_n: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    seed: int


def _float_array(x: ArrayLike, ndim: int, name: str) -> NDArray[np.float64]:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if a.ndim != ndim:
        raise ConfigError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    return a


def check_logits(logits: ArrayLike, what: str = "calibration") -> NDArray[np.float64]:
    """``logits`` ``(N, K)`` as float64, or :class:`NonFiniteOutputError` naming ``what`` and how many
    rows hold a NaN or infinite value."""
    z = _float_array(logits, 2, "logits")
    bad = ~np.isfinite(z).all(axis=1)
    if bad.any():
        raise NonFiniteOutputError(
            f"{what}: the model returned NaN or infinite logits on {int(bad.sum())} of {z.shape[0]} samples"
        )
    return z


def log_softmax(logits: ArrayLike) -> NDArray[np.float64]:
    """``(N, K)`` log-probabilities from finite logits ``(N, K)`` (stable log-sum-exp, float64)."""
    z = check_logits(logits)
    shifted = z - z.max(axis=1, keepdims=True)
    out: NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def softmax(logits: ArrayLike) -> NDArray[np.float64]:
    """``(N, K)`` probabilities from finite logits ``(N, K)``."""
    return np.exp(log_softmax(logits))


def top_label(probs: ArrayLike, labels: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """``confidence`` ``(N,)`` (the largest probability) and ``correct`` ``(N,)`` (its class is the label)
    from ``probs`` ``(N, K)`` and ``labels`` ``(N,)``; ties go to the lowest class, as ``argmax``."""
    p = _float_array(probs, 2, "probs")
    y = np.asarray(labels).astype(np.int64).ravel()
    if y.shape[0] != p.shape[0]:
        raise ConfigError(f"labels has {y.shape[0]} entries but probs {p.shape[0]} rows")
    pred = p.argmax(axis=1)
    return p[np.arange(len(p)), pred], pred == y


def _pair(confidence: ArrayLike, correct: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    conf = _float_array(confidence, 1, "confidence")
    hit = _float_array(correct, 1, "correct")
    if conf.shape != hit.shape:
        raise ConfigError(f"confidence {conf.shape} and correct {hit.shape} differ in length")
    if not np.isfinite(conf).all():
        raise NonFiniteOutputError(f"calibration: {int((~np.isfinite(conf)).sum())} confidences are NaN or infinite")
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ConfigError(f"confidences must be probabilities in [0, 1], got {conf.min():.4g} to {conf.max():.4g}")
    return conf, hit


def _check_bins(bins: int, binning: str) -> None:
    if not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    if binning not in BINNINGS:
        raise ConfigError(f"binning must be one of {', '.join(BINNINGS)}, got {binning!r}")


def bin_index(confidence: ArrayLike, bins: int = DEFAULT_BINS) -> NDArray[np.int64]:
    """Equal-width bin ``(N,)`` of each confidence ``(N,)``: bin ``b`` holds ``(b/bins, (b+1)/bins]``
    (bin 0 also holds 0)."""
    conf = _float_array(confidence, 1, "confidence")
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: NDArray[np.int64] = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1).astype(np.int64)
    return out


def _mass_groups(conf: NDArray[np.float64], bins: int) -> NDArray[np.int64]:
    """Equal-mass bin ``(N,)`` of each sample: rank by confidence (stable), then ``min(bins, N)``
    consecutive groups of sizes differing by at most one."""
    n = conf.size
    groups = min(bins, n)
    order = np.argsort(conf, kind="stable")
    which = np.empty(n, dtype=np.int64)
    for g, part in enumerate(np.array_split(order, groups) if groups else []):
        which[part] = g
    return which


def reliability(
    confidence: ArrayLike, correct: ArrayLike, *, bins: int = DEFAULT_BINS, binning: Binning = "equal-width"
) -> tuple[ReliabilityBin, ...]:
    """The reliability diagram of ``confidence`` ``(N,)`` and ``correct`` ``(N,)``: one
    :class:`ReliabilityBin` per non-empty bin, in confidence order (for equal width its fixed edges,
    empty bins left out; for equal mass ``min(bins, N)`` bins, each spanning its samples' confidences)."""
    _check_bins(bins, binning)
    conf, hit = _pair(confidence, correct)
    if binning == "equal-width":
        which = bin_index(conf, bins)
        count = np.bincount(which, minlength=bins)
        lows = np.linspace(0.0, 1.0, bins + 1)[:-1]
        highs = np.linspace(0.0, 1.0, bins + 1)[1:]
    else:
        which = _mass_groups(conf, bins)
        groups = min(bins, conf.size)
        count = np.bincount(which, minlength=groups)
        lows = np.array([conf[which == g].min() for g in range(groups)])
        highs = np.array([conf[which == g].max() for g in range(groups)])
    size = len(count)
    conf_sum = np.bincount(which, weights=conf, minlength=size)
    hit_sum = np.bincount(which, weights=hit, minlength=size)
    return tuple(
        ReliabilityBin(
            float(lows[b]), float(highs[b]), int(count[b]), float(conf_sum[b] / count[b]), float(hit_sum[b] / count[b])
        )
        for b in range(size)
        if count[b]
    )


def calibration_errors(
    confidence: ArrayLike, correct: ArrayLike, *, bins: int = DEFAULT_BINS, binning: Binning = "equal-width"
) -> tuple[float, float]:
    """``(ECE, MCE)`` of ``confidence`` ``(N,)`` and ``correct`` ``(N,)``; ``nan`` for no samples."""
    rows = reliability(confidence, correct, bins=bins, binning=binning)
    n = sum(r.count for r in rows)
    if n == 0:
        return math.nan, math.nan
    gaps = [abs(r.accuracy - r.confidence) for r in rows]
    return float(sum(r.count * g for r, g in zip(rows, gaps, strict=True)) / n), float(max(gaps))


def ece(
    confidence: ArrayLike, correct: ArrayLike, *, bins: int = DEFAULT_BINS, binning: Binning = "equal-width"
) -> float:
    """Expected calibration error of ``confidence`` ``(N,)`` and ``correct`` ``(N,)`` (see the module)."""
    return calibration_errors(confidence, correct, bins=bins, binning=binning)[0]


def mce(confidence: ArrayLike, correct: ArrayLike, *, bins: int = DEFAULT_BINS) -> float:
    """Maximum calibration error over the non-empty equal-width bins."""
    return calibration_errors(confidence, correct, bins=bins)[1]


def _labels(labels: ArrayLike, n: int, k: int) -> NDArray[np.int64]:
    """``labels`` ``(N,)`` as class indices, refused unless there is one per row and each is in ``[0, K)``."""
    y = np.asarray(labels).astype(np.int64).ravel()
    if len(y) != n:
        raise ConfigError(f"calibration needs one label per row of scores: {len(y)} labels for {n} rows")
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise ConfigError(f"labels must be class indices in [0, {k}), got values from {y.min()} to {y.max()}")
    return y


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multiclass Brier score ``mean_i sum_k (p_ik - onehot_ik)^2`` in ``[0, 2]`` of ``probs`` ``(N, K)``."""
    p = _float_array(probs, 2, "probs")
    y = _labels(labels, p.shape[0], p.shape[1])
    if p.shape[0] == 0:
        return math.nan
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def nll(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood (natural log) of ``labels`` ``(N,)`` under ``logits`` ``(N, K)``."""
    logp = log_softmax(logits)
    y = _labels(labels, logp.shape[0], logp.shape[1])
    if logp.shape[0] == 0:
        return math.nan
    return float(-logp[np.arange(len(y)), y].mean())


def bootstrap_ece(
    confidence: ArrayLike,
    correct: ArrayLike,
    *,
    bins: int = DEFAULT_BINS,
    binning: Binning = "equal-width",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """ECE of ``confidence`` ``(N,)``/``correct`` ``(N,)`` with a percentile bootstrap interval:
    ``n_resamples`` resamples of the N samples with replacement, drawn from
    ``numpy.random.default_rng(seed)``. ECE is biased upwards on small samples, so the interval
    sits mostly above the point estimate. Every field is ``nan`` with no samples."""
    _check_bins(bins, binning)
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be at least 1, got {n_resamples}")
    conf, hit = _pair(confidence, correct)
    n = conf.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    point = ece(conf, hit, bins=bins, binning=binning)
    rng = np.random.default_rng(seed)
    which = bin_index(conf, bins)
    parts = []
    step = max(1, BOOTSTRAP_CHUNK // n)  # resamples drawn at a time: memory stays bounded for large N
    for start in range(0, n_resamples, step):
        r = min(step, n_resamples - start)
        draws = rng.integers(0, n, size=(r, n))  # the same stream as drawing all resamples at once
        if binning == "equal-width":
            cells = (which[draws] + bins * np.arange(r)[:, None]).ravel()
            gap = np.bincount(cells, weights=(conf[draws] - hit[draws]).ravel(), minlength=bins * r)
            parts.append(np.abs(gap.reshape(r, bins)).sum(axis=1) / n)
        else:
            parts.append(np.array([ece(conf[d], hit[d], bins=bins, binning=binning) for d in draws]))
    values = np.concatenate(parts)
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return Interval(point, float(low), float(high), n, level)


def confident_wrong(
    confidence: ArrayLike, correct: ArrayLike, *, threshold: float = CONFIDENT
) -> tuple[NDArray[np.int64], int]:
    """The errors made with confidence ``>= threshold``: their indices ``(M,)``, most confident first
    (ties: lower index first), and the number of errors in all."""
    conf, hit = _pair(confidence, correct)
    wrong = np.flatnonzero(hit == 0)
    sure = wrong[conf[wrong] >= threshold]
    order: NDArray[np.int64] = sure[np.argsort(-conf[sure], kind="stable")].astype(np.int64)
    return order, int(wrong.size)


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """The temperature ``T`` minimising the NLL of ``logits / T`` (``(N, K)``, labels ``(N,)``): a bounded
    scalar search on ``log T`` over :data:`TEMPERATURE_RANGE` (deterministic; ``T > 1`` softens an
    overconfident model)."""
    from scipy.optimize import minimize_scalar

    z = check_logits(logits, "temperature scaling")
    y = np.asarray(labels).astype(np.int64).ravel()
    if z.shape[0] == 0:
        raise ConfigError("temperature scaling needs at least one sample")
    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: nll(z / math.exp(log_t), y), bounds=(lo, hi), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(found.x))


def temperature_what_if(
    logits: ArrayLike, labels: ArrayLike, *, seed: int = 0, bins: int = DEFAULT_BINS
) -> TemperatureScaling | None:
    """Fit a temperature on a seeded random half of ``logits`` ``(N, K)``/``labels`` ``(N,)`` and report
    equal-width ECE and NLL on the other half before and after dividing the logits by it; ``None``
    with fewer than 4 samples. Information only: the model is not changed."""
    z = check_logits(logits, "temperature scaling")
    y = np.asarray(labels).astype(np.int64).ravel()
    n = z.shape[0]
    if n < 4:
        return None
    perm = np.random.default_rng(seed).permutation(n)
    fit, held = perm[: n // 2], perm[n // 2 :]
    t = fit_temperature(z[fit], y[fit])

    def scores(scale: float) -> tuple[float, float]:
        conf, hit = top_label(softmax(z[held] / scale), y[held])
        return ece(conf, hit, bins=bins), nll(z[held] / scale, y[held])

    (ece_before, nll_before), (ece_after, nll_after) = scores(1.0), scores(t)
    return TemperatureScaling(
        temperature=t,
        fit_n=len(fit),
        eval_n=len(held),
        ece_before=ece_before,
        ece_after=ece_after,
        nll_before=nll_before,
        nll_after=nll_after,
        seed=seed,
    )


@dataclass(frozen=True)
class CalibrationSummary:
    """Everything measured on one set of logits: equal-width ECE (with its bootstrap interval) and
    MCE, equal-mass ECE, Brier, NLL, the reliability diagram, the confident-and-wrong count and the
    temperature what-if."""

    bins: int
    ece: Interval
    resamples: int
    ece_equal_mass: float
    mce: float
    brier: float
    nll: float
    mean_confidence: float
    threshold: float
    errors: int
    confident_wrong: int
    reliability: tuple[ReliabilityBin, ...]
    temperature: TemperatureScaling | None

    @property
    def confident_wrong_share(self) -> float:
        """Share of the errors made with confidence ``>= threshold`` (0 when there is no error)."""
        return self.confident_wrong / self.errors if self.errors else 0.0


def summarize(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    bins: int = DEFAULT_BINS,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    threshold: float = CONFIDENT,
) -> tuple[CalibrationSummary, NDArray[np.int64]]:
    """The :class:`CalibrationSummary` of ``logits`` ``(N, K)`` and ``labels`` ``(N,)``, and the indices
    ``(M,)`` of the confident-and-wrong samples, most confident first."""
    z = check_logits(logits)
    y = np.asarray(labels).astype(np.int64).ravel()
    if z.shape[0] == 0:
        nan = math.nan
        empty = CalibrationSummary(
            bins, Interval(nan, nan, nan, 0), n_resamples, nan, nan, nan, nan, nan, threshold, 0, 0, (), None
        )
        return empty, np.zeros(0, dtype=np.int64)
    probs = softmax(z)
    conf, hit = top_label(probs, y)
    ece_ci = bootstrap_ece(conf, hit, bins=bins, n_resamples=n_resamples, seed=seed)
    _, worst = calibration_errors(conf, hit, bins=bins)
    sure, errors = confident_wrong(conf, hit, threshold=threshold)
    summary = CalibrationSummary(
        bins=bins,
        ece=ece_ci,
        resamples=n_resamples,
        ece_equal_mass=ece(conf, hit, bins=bins, binning="equal-mass"),
        mce=worst,
        brier=brier_score(probs, y),
        nll=nll(z, y),
        mean_confidence=float(conf.mean()) if conf.size else math.nan,
        threshold=threshold,
        errors=errors,
        confident_wrong=int(sure.size),
        reliability=reliability(conf, hit, bins=bins),
        temperature=temperature_what_if(z, y, seed=seed, bins=bins),
    )
    return summary, sure
