from __future__ import annotations

import json
from dataclasses import replace

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


# ---------------------------------------------------------------------------------------------- calibration
@pytest.fixture(scope="module")
def trained_clean() -> tuple[CleanResult, np.ndarray, np.ndarray]:
    """The clean check on 300 digits with the small trained CNN, and that CNN's probabilities and labels."""
    from tests.conftest import small_digits_cnn

    net, _, _ = small_digits_cnn(1)
    data = load_dataset("digits", limit=300)
    result = CleanAccuracy(max_examples=40, resamples=300).run(
        net, data, engine=Engine(device="cpu", batch_size=64, progress=False, seed=5)
    )
    assert isinstance(result, CleanResult)
    with torch.no_grad():
        probs = torch.softmax(net(data.images.float() / 255).double(), dim=1).numpy()
    return result, probs, data.labels.numpy()


def test_calibration_metrics_match_torchmetrics_and_scikit_learn(
    trained_clean: tuple[CleanResult, np.ndarray, np.ndarray],
) -> None:
    from sklearn.metrics import brier_score_loss, log_loss
    from torchmetrics.functional.classification import multiclass_calibration_error

    result, probs, y = trained_clean
    m = result.metrics()
    p, t = torch.from_numpy(probs), torch.from_numpy(y)
    assert m["clean.ece"] == pytest.approx(
        float(multiclass_calibration_error(p, t, 10, n_bins=15, norm="l1")), abs=1e-5
    )
    assert m["clean.mce"] == pytest.approx(
        float(multiclass_calibration_error(p, t, 10, n_bins=15, norm="max")), abs=1e-5
    )
    assert m["clean.brier"] == pytest.approx(brier_score_loss(y, probs, labels=np.arange(10), scale_by_half=False))
    assert m["clean.nll"] == pytest.approx(log_loss(y, probs, labels=np.arange(10)), rel=1e-5)
    assert m["clean.ece.ci_low"] <= m["clean.ece"] <= m["clean.ece.ci_high"]
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    wrong = pred != y
    sure = int((wrong & (conf >= 0.9)).sum())
    assert m["clean.confident_wrong"] == pytest.approx(sure / wrong.sum())
    assert m["clean.confident_wrong_count"] == sure
    cal = result.calibration
    assert cal is not None and cal.bins == 15 and cal.resamples == 300 and cal.errors == int(wrong.sum())
    assert cal.temperature is not None and cal.temperature.seed == 5  # the engine's seed
    assert m["clean.temperature"] == cal.temperature.temperature
    names = {r.name: r for r in result.metric_records()}
    assert all(names[k].direction == "lower" for k in ("clean.ece", "clean.mce", "clean.brier", "clean.nll"))
    assert names["clean.ece"].interval is not None and names["clean.temperature"].direction == "none"
    # the shown confident mistakes are the errors at >= 90% confidence, most confident first
    shown = result.confident_errors
    assert len(shown) == min(sure, 40) and all(e.confidence >= 0.9 for e in shown)
    assert shown == result.errors[: len(shown)]


def _calibrated(ece: float, errors: int, confident: int) -> CleanResult:
    from auditkit.ops.calibration import CalibrationSummary, ReliabilityBin
    from auditkit.ops.metrics import wilson_interval
    from auditkit.results import Interval

    cal = CalibrationSummary(
        bins=15,
        ece=Interval(ece, ece / 2, ece * 2, 100),
        resamples=1000,
        ece_equal_mass=ece,
        mce=0.3,
        brier=0.2,
        nll=0.5,
        mean_confidence=0.9,
        threshold=0.9,
        errors=errors,
        confident_wrong=confident,
        reliability=(ReliabilityBin(0.8, 13 / 15, 40, 0.83, 0.7), ReliabilityBin(14 / 15, 1.0, 60, 0.97, 0.9)),
        temperature=None,
    )
    return CleanResult(
        accuracy=wilson_interval(100 - errors, 100),
        balanced_accuracy=0.8,
        mean_confidence=0.9,
        class_names=("a", "b"),
        per_class=(),
        confusion=((50, 0), (errors, 50 - errors)),
        errors=(),
        calibration=cal,
    )


def test_calibration_findings() -> None:
    from auditkit.results import Conditions

    found = {f.metric: f for f in _calibrated(0.08, 22, 12).findings(Conditions())}
    assert found["clean.ece"].severity == "warn" and "above 5%" in found["clean.ece"].text
    assert "overconfident" in found["clean.ece"].text  # mean confidence 90% against 78% accuracy
    assert found["clean.confident_wrong"].severity == "warn"
    assert "12 of 22 errors were made with >= 90% confidence" in found["clean.confident_wrong"].text
    calm = {f.metric: f for f in _calibrated(0.03, 22, 0).findings(Conditions())}
    assert calm["clean.ece"].severity == "pass" and "clean.confident_wrong" not in calm


def test_calibration_round_trips_and_old_results_still_decode() -> None:
    from auditkit.results import Conditions, _decode, _encode

    result = _calibrated(0.08, 22, 12)
    doc = json.loads(json.dumps(_encode(result), allow_nan=False))
    assert _decode(CleanResult, doc) == result
    del doc["calibration"]  # a results.json written before calibration was measured
    old = _decode(CleanResult, doc)
    assert old == replace(result, calibration=None)
    assert not any(k.startswith(("clean.ece", "clean.brier")) for k in old.metrics())
    assert [f.metric for f in old.findings(Conditions())] == ["clean.accuracy"]


def test_reliability_diagram_and_confident_gallery_render() -> None:
    from auditkit.report.html import _environment

    result = _calibrated(0.08, 22, 12)
    ctx = result.report_context()
    assert ctx["reliability_svg"].startswith("<svg") and "ECE 0.080 (15 equal-width bins)" in ctx["reliability_svg"]
    html = _environment().get_template("sections/clean.html.j2").render(s={"result": result, **ctx})
    assert "Is the model confident when it is wrong?" in html and "8.0%" in html
    old = (
        _environment()
        .get_template("sections/clean.html.j2")
        .render(s={"result": replace(result, calibration=None), **ctx, "reliability_svg": ""})
    )
    assert "Is the model confident when it is wrong?" not in old
