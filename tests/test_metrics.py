from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from auditkit.ops.metrics import ConfusionAccumulator, wilson_interval


@pytest.mark.parametrize(("k", "n"), [(0, 10), (5, 10), (10, 10), (97, 540), (1, 3)])
def test_wilson_matches_closed_form(k: int, n: int) -> None:
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    ci = wilson_interval(k, n)
    assert ci.value == pytest.approx(p)
    assert ci.low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert ci.high == pytest.approx(min(1.0, centre + half), abs=1e-9)
    assert ci.n == n


def test_wilson_empty_is_nan() -> None:
    ci = wilson_interval(0, 0)
    assert math.isnan(ci.value) and math.isnan(ci.low) and ci.n == 0


def test_streaming_confusion_equals_one_shot() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 1000), rng.integers(0, 5, 1000)
    acc = ConfusionAccumulator(num_classes=5)
    for start in range(0, 1000, 37):
        acc.update(y[start : start + 37], p[start : start + 37])
    assert np.array_equal(acc.compute(), confusion_matrix(y, p, labels=range(5)))
    other = ConfusionAccumulator(num_classes=5)
    other.update(y, p)
    acc.merge(other)
    assert np.array_equal(acc.compute(), 2 * confusion_matrix(y, p, labels=range(5)))
