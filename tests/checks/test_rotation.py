from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from typer.testing import CliRunner

from auditkit.checks.rotation import RotationResult, RotationSweep, parse_angles
from auditkit.cli import app
from auditkit.engine.loop import Engine
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import ImageDataset, load_dataset
from auditkit.inputs.models import LoadedModel, load_model


@pytest.fixture(scope="module")
def demo_model(demo_run: Path) -> LoadedModel:
    return load_model(demo_run / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def test_data(demo_run: Path, demo_model: LoadedModel) -> ImageDataset:
    return load_dataset(demo_run / "data" / "test.csv", class_names=demo_model.spec.class_names)


def test_angle_zero_reproduces_clean_accuracy(demo_run: Path) -> None:
    doc = json.loads((demo_run / "results.json").read_text())
    m = doc["metrics"]
    assert m["rotation.accuracy[angle=0]"] == m["clean.accuracy"]
    for c in range(10):
        assert m[f"rotation.accuracy[angle=0,class={c}]"] == m[f"clean.accuracy[class={c}]"]


def test_matches_naive_torchvision_reference(demo_model: LoadedModel, test_data: ImageDataset) -> None:
    angles = (-150.0, -90.0, -30.0, 0.0, 15.0, 45.0, 90.0, 180.0)
    result = RotationSweep(angles=angles, spatial=False).run(
        demo_model.model, test_data, engine=Engine(device="cpu", batch_size=100, progress=False)
    )
    x = test_data.images.float() / 255
    model = demo_model.model.eval()
    for point in result.points:
        with torch.no_grad():
            pred = model(TF.rotate(x, point.angle, interpolation=InterpolationMode.BILINEAR)).argmax(1)
        reference = float((pred == test_data.labels).float().mean())
        assert point.accuracy.value == pytest.approx(reference, abs=0.005), point.angle


def test_demo_model_collapses_and_0_and_8_recover(demo_run: Path) -> None:
    from auditkit.results import RunResults

    result = RunResults.read(demo_run / "results.json").check(RotationResult)
    assert result is not None
    by_angle = {p.angle: p.accuracy.value for p in result.points}
    assert by_angle[0.0] >= 0.95
    assert by_angle[90.0] < 0.3 and by_angle[-90.0] < 0.3
    assert result.mean_accuracy.value < by_angle[0.0]
    recovered_at_180 = {r.class_name for r in result.recoveries if abs(r.angle) == 180}
    assert {"0", "8"} <= recovered_at_180
    assert result.default_class not in recovered_at_180
    html = (demo_run / "index.html").read_text()
    assert "Rotation robustness" in html and "look alike when turned" in html


def test_spatial_attack_is_brute_force(demo_model: LoadedModel, test_data: ImageDataset) -> None:
    data = load_dataset(test_data.source, class_names=demo_model.spec.class_names, sample=40, seed=1)
    check = RotationSweep(angles=(0.0,), spatial_angles=(-20.0, 0.0, 20.0), translate=2.0, translate_steps=3, k=5)
    result = check.run(demo_model.model, data, engine=Engine(device="cpu", batch_size=16, progress=False))
    sp = result.spatial
    assert sp is not None
    assert sp.grid.value <= sp.worst_of_k.value <= sp.random.value
    assert sp.grid.value <= sp.natural.value
    # independent reference: torchvision's affine for every grid point, one forward each
    x = data.images.float() / 255
    survived = torch.ones(len(data), dtype=torch.bool)
    model = demo_model.model.eval()
    for angle in (-20.0, 0.0, 20.0):
        for dx in (-2.0, 0.0, 2.0):
            for dy in (-2.0, 0.0, 2.0):
                moved = TF.affine(
                    x,
                    angle=-angle,
                    translate=[dx, dy],
                    scale=1.0,
                    shear=[0.0, 0.0],
                    interpolation=InterpolationMode.BILINEAR,
                )
                with torch.no_grad():
                    survived &= model(moved).argmax(1) == data.labels
    assert sp.grid.value == pytest.approx(float(survived.float().mean()), abs=1.5 / len(data))


def test_sweep_does_not_depend_on_batch_size(demo_model: LoadedModel, test_data: ImageDataset) -> None:
    data = load_dataset(test_data.source, class_names=demo_model.spec.class_names, limit=60)
    check = RotationSweep(
        angles=(-45.0, 0.0, 30.0, 180.0), spatial_angles=(-10.0, 10.0), translate=1.0, translate_steps=2, k=3
    )
    a = check.run(demo_model.model, data, engine=Engine(device="cpu", batch_size=1, progress=False))
    b = check.run(demo_model.model, data, engine=Engine(device="cpu", batch_size=64, progress=False))
    ma, mb = a.metrics(), b.metrics()
    assert ma.keys() == mb.keys()
    # counts are exact; the ECE comes from float32 probabilities, whose last bits depend on the batch
    assert {k: v for k, v in ma.items() if ".ece[" not in k} == {k: v for k, v in mb.items() if ".ece[" not in k}
    assert {k: v for k, v in ma.items() if ".ece[" in k} == pytest.approx({k: v for k, v in mb.items() if ".ece[" in k})


def test_metrics_names_for_gates(demo_run: Path) -> None:
    m = json.loads((demo_run / "results.json").read_text())["metrics"]
    for name in (
        "rotation.accuracy[angle=90]",
        "rotation.mean_accuracy[range=30]",
        "rotation.mean_accuracy[range=30].ci_low",
        "rotation.worst_accuracy",
        "rotation.worst_angle",
        "rotation.first_angle_below[fraction=0.5]",
        "spatial.accuracy[attack=grid]",
        "spatial.accuracy[attack=worst_of_10]",
        "rotation.accuracy[angle=180,class=8]",
    ):
        assert name in m, name
    assert m["rotation.worst_accuracy"] == min(
        v
        for k, v in m.items()
        if k.startswith("rotation.accuracy[angle=") and "," not in k and not k.endswith(("ci_low", "ci_high"))
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("-180:180:90", (-180.0, -90.0, 0.0, 90.0, 180.0)), ("0,90, 45", (0.0, 45.0, 90.0)), ("0:1:0.5", (0.0, 0.5, 1.0))],
)
def test_parse_angles(text: str, expected: tuple[float, ...]) -> None:
    assert parse_angles(text) == expected


@pytest.mark.parametrize("bad", ["a:b:c", "10:0:5", "0:10:0", "", "1:2"])
def test_parse_angles_rejects(bad: str) -> None:
    with pytest.raises(ConfigError, match="--angles"):
        parse_angles(bad)


def test_bad_choices_are_usage_errors(demo_run: Path) -> None:
    out = CliRunner().invoke(
        app, ["rotate", str(demo_run / "model" / "model.safetensors"), "digits", "--fill", "mirror"]
    )
    assert out.exit_code == 2
    assert "fill: Input should be 'zeros', 'border' or 'reflection', got 'mirror'" in out.output


def test_rotate_cli_on_torchvision_state_dict(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((12, 32, 32, 3)).astype(np.float32), y=np.arange(12) % 3)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pt")
    result = CliRunner().invoke(
        app,
        [
            "rotate",
            str(tmp_path / "r18.pt"),
            str(tmp_path / "d.npz"),
            "--arch",
            "torchvision:resnet18",
            "--num-classes",
            "3",
            "--input-size",
            "32",
            "32",
            "--channels",
            "3",
            "--mean",
            "0",
            "--std",
            "1",
            "--angles",
            "-90:90:45",
            "--spatial-angles",
            "-10,10",
            "--translate",
            "1",
            "--translate-steps",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [c["kind"] for c in doc["checks"]] == ["clean", "rotation"]
    assert doc["metrics"]["rotation.accuracy[angle=0]"] == doc["metrics"]["clean.accuracy"]
    assert "rotation.accuracy[angle=-45]" in doc["metrics"]
    assert (tmp_path / "out" / "index.html").is_file()


def test_grid_sizes_are_capped_with_a_message_naming_the_flags() -> None:
    from auditkit.checks.rotation import RotationSettings
    from auditkit.checks.shortcut import ShortcutSettings
    from auditkit.config import AuditConfig

    RotationSettings(translate_steps=40, spatial=False)  # 11 angles x 40^2 = 17,600 > 10,000: only spatial counts
    with pytest.raises(ConfigError, match=r"spatial grid .* has 17600 points; at most 10000"):
        AuditConfig.build({"model": "m", "data": "digits", "translate_steps": 40})
    AuditConfig.build({"model": "m", "data": "digits", "translate_steps": 40, "spatial": False})
    with pytest.raises(ConfigError, match="shift_steps"):
        AuditConfig.build({"model": "m", "data": "digits", "shift_steps": 101})
    assert ShortcutSettings(shift_steps=100).shift_steps == 100


def test_ece_per_angle_matches_torchmetrics(demo_model: LoadedModel, test_data: ImageDataset) -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    from auditkit.ops.perturb import Affine, rotations

    data = load_dataset(test_data.source, class_names=demo_model.spec.class_names, limit=120)
    angles = (-90.0, 0.0, 30.0)
    result = RotationSweep(angles=angles, spatial=False).run(
        demo_model.model, data, engine=Engine(device="cpu", batch_size=50, progress=False)
    )
    model = demo_model.model.eval()
    x = data.images.float() / 255
    m = result.metrics()
    for point in result.points:
        # the same rotation, outside the engine: one forward of every image, then torchmetrics
        turned = Affine()(x, rotations(torch.tensor([point.angle] * len(x), dtype=torch.float64)))
        with torch.no_grad():
            probs = torch.softmax(model(turned).double(), dim=1)
        ref = float(multiclass_calibration_error(probs, data.labels, 10, n_bins=15, norm="l1"))
        assert point.ece == pytest.approx(ref, abs=1e-4), point.angle
        assert point.confidence == pytest.approx(float(probs.max(dim=1).values.mean()), abs=1e-5)
        assert m[f"rotation.ece[angle={point.angle:g}]"] == point.ece
    names = {r.name: r.direction for r in result.metric_records()}
    assert names["rotation.ece[angle=30]"] == "lower"
    html = result.report_context()["confidence_svg"]
    assert html.startswith("<svg") and "mean confidence" in html


def test_demo_rotation_calibration(demo_run: Path) -> None:
    from auditkit.results import Conditions, RunResults

    results = RunResults.read(demo_run / "results.json")
    result = results.check(RotationResult)
    assert result is not None
    m = results.metrics
    assert m["rotation.ece[angle=0]"] == pytest.approx(m["clean.ece"], abs=1e-6)  # the clean pass, float32 softmax
    worst = next(p for p in result.points if p.angle == result.worst_angle)
    assert worst.confidence is not None and worst.confidence > worst.accuracy.value  # confidently wrong when turned
    assert any(f.metric == f"rotation.ece[angle={worst.angle:g}]" for f in result.findings(Conditions()))
    assert "Does the model know when it fails?" in (demo_run / "index.html").read_text()
