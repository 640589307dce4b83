from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_score, recall_score

from auditkit.checks.clean import CleanAccuracy, CleanResult
from auditkit.engine.loop import Engine
from auditkit.inputs.data import load_dataset
from auditkit.inputs.models import AuditModel
from tests.conftest import DIGITS_SPEC


def test_clean_metrics_match_scikit_learn(tiny_net: torch.nn.Module) -> None:
    model = AuditModel(tiny_net, DIGITS_SPEC)
    data = load_dataset("digits", limit=200)
    engine = Engine(device="cpu", batch_size=33, progress=False)
    result = CleanAccuracy(max_examples=5).run(model, data, engine=engine)
    assert isinstance(result, CleanResult)
    with torch.no_grad():
        pred = model(data.images.float() / 255).argmax(1).numpy()
    y = data.labels.numpy()
    labels = np.arange(10)
    assert result.accuracy.value == pytest.approx(accuracy_score(y, pred))
    assert result.accuracy.low <= result.accuracy.value <= result.accuracy.high
    assert result.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred))
    recalls = recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    precisions = precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    for k, c in enumerate(result.per_class):
        assert c.support == int((y == k).sum())
        assert c.accuracy.value == pytest.approx(recalls[k])
        assert c.precision == pytest.approx(precisions[k], nan_ok=True)
    assert np.array_equal(np.array(result.confusion).sum(), len(y))
    assert len(result.errors) == min(5, int((pred != y).sum()))
    assert all(e.label != e.pred and e.image.startswith("data:image/png;base64,") for e in result.errors)
    metrics = result.metrics()
    assert metrics["clean.accuracy"] == result.accuracy.value
    assert metrics["clean.accuracy[class=3]"] == result.per_class[3].accuracy.value


def test_top_confusions_rank_off_diagonal_cells() -> None:
    from auditkit.checks.clean import CleanResult
    from auditkit.ops.metrics import wilson_interval

    cm = ((5, 3, 0), (1, 6, 0), (4, 0, 2))
    result = CleanResult(
        accuracy=wilson_interval(13, 21),
        balanced_accuracy=0.5,
        mean_confidence=0.5,
        class_names=("shirt", "pullover", "coat"),
        per_class=(),
        confusion=cm,
        errors=(),
    )
    assert result.top_confusions() == (
        ("coat", "shirt", 4, 4 / 6),
        ("shirt", "pullover", 3, 3 / 8),
        ("pullover", "shirt", 1, 1 / 7),
    )
    assert result.top_confusions(1) == (("coat", "shirt", 4, 4 / 6),)
