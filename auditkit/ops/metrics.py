"""Pure metric functions and streaming accumulators (update batch by batch, then compute)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from auditkit.results import Interval

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import ArrayLike, NDArray
    from scipy import stats
    from torch import Tensor
else:
    from auditkit._lazy import lazy

    np = lazy("numpy")
    stats = lazy("scipy.stats")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Proportion ``successes / n`` with its Wilson score interval (scipy's ``binomtest``).

    With ``n == 0`` the proportion is undefined and every field is ``nan``.
    """
    from scipy.stats import binomtest

    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), int(n), confidence)


class ConfusionAccumulator:
    """Streaming confusion matrix: ``update`` per batch, ``compute`` at the end.

    Memory is ``O(num_classes**2)`` whatever the dataset size; accumulators from disjoint
    shards combine with :meth:`merge`.
    """

    def __init__(self, *, num_classes: int) -> None:
        self.num_classes = num_classes
        self._counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        """Add a batch; ``y_true`` and ``y_pred`` are integer labels of shape ``(B,)``."""
        from sklearn.metrics import confusion_matrix

        t = np.asarray(y_true).ravel()
        if t.size == 0:
            return
        self._counts += confusion_matrix(t, np.asarray(y_pred).ravel(), labels=np.arange(self.num_classes)).astype(
            np.int64
        )

    def merge(self, other: ConfusionAccumulator) -> None:
        self._counts += other._counts

    def compute(self) -> NDArray[np.int64]:
        """The ``(K, K)`` matrix: rows are true classes, columns predicted classes."""
        return self._counts.copy()


def mean_interval(values: Tensor, confidence: float = 0.95, *, clip: bool = True) -> Interval:
    """Mean of per-sample scores ``(N,)`` with a t interval, clipped to [0, 1] (scores in [0, 1]) unless
    ``clip`` is off (scores of any sign)."""
    v = values.double().numpy()
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    m = float(v.mean())
    if n < 2 or float(v.std()) == 0.0:
        return Interval(m, m, m, n, confidence)
    low, high = stats.t.interval(confidence, n - 1, loc=m, scale=stats.sem(v))
    if not clip:
        return Interval(m, float(low), float(high), n, confidence)
    return Interval(m, max(0.0, float(low)), min(1.0, float(high)), n, confidence)


def holm(p_values: ArrayLike) -> NDArray[np.float64]:
    """Holm-Bonferroni adjusted p-values (``nan`` entries are left out and stay ``nan``)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
