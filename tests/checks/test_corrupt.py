"""The corruption sweep: metrics against an independent computation, published outcomes, fail-closed,
bad settings, mCE, the report section."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, recall_score
from torch import nn

from auditkit.checks.corrupt import (
    CorruptionResult,
    CorruptionSweep,
    CorruptSettings,
    corruption_errors,
    image_seed,
)
from auditkit.checks.subgroups import Subgroups
from auditkit.engine.loop import Engine
from auditkit.exceptions import AuditkitError, ConfigError, NonFiniteOutputError
from auditkit.inputs.data import ImageDataset
from auditkit.ops.corrupt import corrupt, names_for
from auditkit.results import Conditions, _decode, _encode
from tests.conftest import NaNAfter, small_digits_cnn

N = 48
BATCH = 32


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, ImageDataset]:
    net, x, y = small_digits_cnn(N)
    data = ImageDataset(
        images=(x * 255).round().to(torch.uint8),
        labels=y,
        class_names=tuple(str(i) for i in range(10)),
        metadata={"half": tuple("ab"[i * 2 // N] for i in range(N))},
        ids=tuple(f"img{i}" for i in range(N)),
        source="digits",
        format="npz",
        sha256="0",
    )
    return net, data


@pytest.fixture(scope="module")
def swept(trained: tuple[nn.Module, ImageDataset]) -> tuple[CorruptionResult, Engine]:
    net, data = trained
    engine = Engine(device="cpu", batch_size=BATCH, progress=False, seed=3)
    result = CorruptionSweep().run(net, data, engine=engine)
    assert isinstance(result, CorruptionResult)
    return result, engine


def _independent_logits(net: nn.Module, data: ImageDataset, name: str, severity: int) -> torch.Tensor:
    """The corrupted images rebuilt one at a time with the ops (each with its own seeded generator), then
    one plain forward pass: logits ``(N, 10)``."""
    x = data.images.float() / 255
    gens = [torch.Generator().manual_seed(image_seed(3, i, name, severity)) for i in range(N)]
    parts = [corrupt(x[i : i + 1], name, severity, gens[i]) for i in range(N)]
    with torch.no_grad():
        return net(torch.cat(parts))


def test_results_do_not_depend_on_the_batch_size(
    trained: tuple[nn.Module, ImageDataset], swept: tuple[CorruptionResult, Engine]
) -> None:
    """Every image draws its own corruption: batches of 5 (uneven) give the same numbers as batches of 32."""
    net, data = trained
    result, _ = swept
    small = CorruptionSweep(corruptions="gaussian_noise,fog,elastic_transform,motion_blur,contrast").run(
        net, data, engine=Engine(device="cpu", batch_size=5, progress=False, seed=3)
    )
    assert isinstance(small, CorruptionResult)
    ours = result.metrics()
    for key, value in small.metrics().items():
        if "corruption=" in key:  # accuracies exactly; ECE up to float32 logits' last bits (batch-size dependent)
            assert value == pytest.approx(ours[key], abs=1e-6 if ".ece[" in key else 1e-12), key


def _independent_predictions(net: nn.Module, data: ImageDataset, name: str, severity: int) -> np.ndarray:
    return _independent_logits(net, data, name, severity).argmax(1).numpy()


def test_metrics_match_an_independent_computation(
    trained: tuple[nn.Module, ImageDataset], swept: tuple[CorruptionResult, Engine]
) -> None:
    net, data = trained
    result, _ = swept
    y = data.labels.numpy()
    assert tuple(c.name for c in result.curves) == names_for(1)  # saturate left out for grey images
    assert result.skipped == ("saturate (needs RGB images)",)
    means = {}
    every = []
    for curve in result.curves:
        accs = []
        for p in curve.points:
            pred = _independent_predictions(net, data, curve.name, p.severity)
            acc = accuracy_score(y, pred)
            assert p.accuracy.value == pytest.approx(acc, abs=1e-12), (curve.name, p.severity)
            assert p.accuracy.low <= acc <= p.accuracy.high and p.accuracy.n == N
            recall = recall_score(y, pred, labels=list(range(10)), average=None, zero_division=np.nan)
            ours = np.array([ci.value for ci in p.per_class])
            np.testing.assert_allclose(ours, recall, atol=1e-12)
            accs.append(acc)
            every.append(pred == y)
        means[curve.name] = float(np.mean(accs))
        assert curve.mean_accuracy.value == pytest.approx(means[curve.name], abs=1e-12)
    assert result.mean_accuracy.value == pytest.approx(float(np.mean(every)), abs=1e-12)
    worst = min(means, key=lambda k: means[k])
    assert result.worst_corruption == worst and result.worst_accuracy == pytest.approx(means[worst])
    metrics = result.metrics()
    assert metrics["corrupt.mean_accuracy"] == result.mean_accuracy.value
    assert metrics[f"corrupt.mean_accuracy[corruption={worst}]"] == pytest.approx(means[worst])
    assert "corrupt.accuracy[corruption=fog,severity=3].ci_low" in metrics
    assert "corrupt.accuracy[corruption=fog,severity=3,class=7]" in metrics
    clean = accuracy_score(y, net(data.images.float() / 255).argmax(1).detach().numpy())
    assert metrics["corrupt.mean_drop"] == pytest.approx(clean - result.mean_accuracy.value)
    seven = data.labels.numpy() == 7
    assert metrics["corrupt.mean_accuracy[class=7]"] == pytest.approx(float(np.mean(np.array(every)[:, seven])))


@pytest.mark.parametrize(("name", "severity"), [("contrast", 5), ("gaussian_noise", 3), ("pixelate", 1)])
def test_calibration_under_corruption_matches_torchmetrics(
    trained: tuple[nn.Module, ImageDataset], swept: tuple[CorruptionResult, Engine], name: str, severity: int
) -> None:
    """corrupt.ece[...] is the ECE (15 equal-width bins) of the answers on exactly the corrupted images."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    net, data = trained
    result, _ = swept
    logits = _independent_logits(net, data, name, severity).double()
    reference = float(multiclass_calibration_error(logits.softmax(1), data.labels, num_classes=10, n_bins=15))
    point = next(p for p in result.curve(name).points if p.severity == severity)
    assert point.ece == pytest.approx(reference, abs=1e-6)
    assert result.metrics()[f"corrupt.ece[corruption={name},severity={severity}]"] == point.ece


def test_per_image_outcomes_are_published_and_broken_down_per_group(
    trained: tuple[nn.Module, ImageDataset], swept: tuple[CorruptionResult, Engine]
) -> None:
    net, data = trained
    result, engine = swept
    outcomes = {o.key: o for o in engine.outcomes(data)}
    key = "corrupt.accuracy[corruption=contrast,severity=5]"
    pred = _independent_predictions(net, data, "contrast", 5)
    assert outcomes[key].metric == key and not outcomes[key].per_group
    np.testing.assert_array_equal(outcomes[key].values.numpy(), (pred == data.labels.numpy()).astype(np.float32))
    mean = outcomes["corrupt_mean"]
    assert mean.per_group and float(mean.values.mean()) == pytest.approx(result.mean_accuracy.value)
    assert f"corrupt_mean[corruption={result.worst_corruption}]" in outcomes
    groups = Subgroups(groups=("half",), min_support=1).run(net, data, engine=engine)
    first = groups.groups[0]  # type: ignore[attr-defined]
    robust = {r.key: r.value.value for r in first.robustness}
    members = np.array(data.metadata["half"]) == first.value
    assert robust["corrupt_mean"] == pytest.approx(float(mean.values.numpy()[members].mean()))


def test_findings_report_and_json_round_trip(swept: tuple[CorruptionResult, Engine]) -> None:
    result, _ = swept
    findings = result.findings(Conditions())
    assert findings[0].metric == "corrupt.mean_accuracy"
    assert result.worst_corruption.replace("_", " ") in findings[1].text
    assert all(f.metric for f in findings)
    decoded = _decode(CorruptionResult, _encode(result))
    assert decoded.metrics() == pytest.approx(result.metrics(), nan_ok=True)
    from auditkit.report.html import _environment

    ctx = result.report_context()
    html = _environment().get_template("sections/corrupt.html.j2").render(s={"result": result, **ctx})
    assert "<svg" in html and html.count('<img src="data:image/png;base64,') == 3 * (1 + len(result.severities))
    assert len(result.examples) == 3 and result.examples[0].frames[0].severity == 0


def test_non_finite_logits_under_corruption_fail_closed(trained: tuple[nn.Module, ImageDataset]) -> None:
    """The clean pass is fine (call 1), the corrupted ones are NaN: refused with the corruption named, also
    inside the pipeline's own guard."""
    _, data = trained
    net = NaNAfter(first_bad=2).eval()
    engine = Engine(device="cpu", batch_size=64, progress=False)
    check = CorruptionSweep(corruptions=("contrast",), severities=(2,))
    with (
        pytest.raises(NonFiniteOutputError, match=r"contrast severity 2 \(48\)"),
        engine.finite_outputs(net, "check 'corrupt'"),
    ):
        check.run(net, data, engine=engine)


def test_bad_settings_are_one_line_config_errors(trained: tuple[nn.Module, ImageDataset]) -> None:
    with pytest.raises(ConfigError, match=r"gaussian_noise, shot_noise, .*unknown: 'fogg'"):
        CorruptionSweep(corruptions=("fogg",))
    with pytest.raises(ConfigError, match=r"corruptions: must be among .*elastic_transform.*unknown: fogg"):
        CorruptSettings.build({"corruptions": "fog,fogg"})
    for bad in ((0,), (6,), (1, 6)):
        with pytest.raises(ConfigError, match="from 1 to 5"):
            CorruptionSweep(severities=bad)
    for text in ("0", "6", "1:6", "x"):
        with pytest.raises(ConfigError, match="severities: must be integers from 1 to 5"):
            CorruptSettings.build({"severities": text})
    assert CorruptSettings.build({"corruptions": ["fog", "scale"], "severities": [1, 3]}).severities == "1,3"
    net, data = trained
    with pytest.raises(ConfigError, match="saturate needs RGB images") as info:
        CorruptionSweep(corruptions=("saturate",)).run(net, data, engine=Engine(device="cpu", progress=False))
    assert isinstance(info.value, AuditkitError) and "\n" not in str(info.value)


def test_mce_against_a_baseline() -> None:
    """CE = sum of errors / sum of the baseline's; relative CE subtracts each run's clean error."""
    from auditkit.checks.corrupt import CorruptionCurve, SeverityPoint
    from auditkit.ops.metrics import wilson_interval

    def run(clean: float, accs: dict[str, list[float]]) -> CorruptionResult:
        curves = tuple(
            CorruptionCurve(
                name=name,
                family="noise",
                points=tuple(SeverityPoint(s + 1, wilson_interval(round(a * 100), 100), ()) for s, a in enumerate(v)),
                mean_accuracy=wilson_interval(round(np.mean(v) * 100), 100),
                per_class_mean=(),
            )
            for name, v in accs.items()
        )
        return CorruptionResult(
            class_names=(), severities=(1, 2), image_size=(8, 8), channels=1, size_scale=8 / 224,
            clean_accuracy=clean, curves=curves, mean_accuracy=wilson_interval(0, 1), worst_corruption="",
            worst_accuracy=math.nan, class_drops=(), skipped=(), examples=(),
        )  # fmt: skip

    new = run(0.9, {"fog": [0.8, 0.6], "pixelate": [0.9, 0.9]})
    old = run(0.8, {"fog": [0.6, 0.2], "pixelate": [0.8, 0.8], "contrast": [0.5, 0.5]})
    e = corruption_errors(new, old)
    assert e.corruptions == ("fog", "pixelate")
    assert e.ce == pytest.approx(((0.2 + 0.4) / (0.4 + 0.8), (0.1 + 0.1) / (0.2 + 0.2)))
    assert e.relative_ce[0] == pytest.approx(((0.2 - 0.1) + (0.4 - 0.1)) / ((0.4 - 0.2) + (0.8 - 0.2)))
    assert math.isnan(e.relative_ce[1])  # the baseline lost nothing to pixelate: undefined, not infinite
    assert e.mce == pytest.approx(np.mean(e.ce))
    assert {m.name for m in e.metric_records()} >= {"corrupt.mce", "corrupt.relative_mce", "corrupt.ce[corruption=fog]"}
    with pytest.raises(ConfigError, match="did not measure contrast"):
        corruption_errors(old, new)
    with pytest.raises(ConfigError, match="same severities"):
        corruption_errors(new, dataclasses.replace(old, severities=(1, 3)))
