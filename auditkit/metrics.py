"""Pure metric functions and streaming accumulators (update batch by batch, then compute)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix

from auditkit.results import Interval


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Proportion ``successes / n`` with its Wilson score interval (scipy's ``binomtest``).

    With ``n == 0`` the proportion is undefined and every field is ``nan``.
    """
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
