from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from torch.nn import functional as F
from typer.testing import CliRunner

from auditkit.checks.saliency import (
    SaliencyMaps,
    SaliencyResult,
    find_last_conv,
    rank_correlation,
    relevance_mass,
)
from auditkit.cli import app
from auditkit.engine.loop import Engine
from auditkit.inputs.data import ImageDataset, load_dataset
from auditkit.inputs.models import AuditModel, LoadedModel, ModelSpec, load_model


@pytest.fixture(scope="module")
def demo_model(demo_run: Path) -> LoadedModel:
    loaded = load_model(demo_run / "model" / "model.safetensors")
    loaded.model.eval()
    return loaded


@pytest.fixture(scope="module")
def few(demo_run: Path, demo_model: LoadedModel) -> ImageDataset:
    return load_dataset(demo_run / "data" / "test.csv", class_names=demo_model.spec.class_names, limit=24)


def engine() -> Engine:
    return Engine(device="cpu", batch_size=10, progress=False)


def test_maps_equal_captum(demo_model: LoadedModel, few: ImageDataset) -> None:
    model = demo_model.model
    x = few.images.float() / 255
    with torch.no_grad():
        target = model(x).argmax(1)
    check = SaliencyMaps()
    ours = check.maps(model, few, target, engine(), None, "saliency")
    ref = Saliency(model).attribute(x.clone().requires_grad_(True), target=target, abs=True).abs().sum(1)
    torch.testing.assert_close(ours, ref)
    name, layer = find_last_conv(model)
    assert name == "net.features.3"
    ours_cam = check.maps(model, few, target, engine(), layer, "gradcam")
    cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    ref_cam = LayerAttribution.interpolate(cam, (28, 28), interpolate_mode="bilinear")[:, 0]
    torch.testing.assert_close(ours_cam, ref_cam)


def _edges(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, layer: torch.nn.Module | None) -> torch.Tensor:
    """A degenerate 'explainer': a Sobel edge map of the input that ignores the model."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]).view(1, 1, 3, 3)
    g = x.mean(1, keepdim=True)
    return (F.conv2d(g, k, padding=1).abs() + F.conv2d(g, k.transpose(2, 3), padding=1).abs())[:, 0]


def test_sanity_check_passes_gradients_and_fails_an_edge_detector(demo_model: LoadedModel, few: ImageDataset) -> None:
    check = SaliencyMaps(methods=("saliency", "edges"), per_kind=1, extra_methods={"edges": _edges})
    result = check.run(demo_model.model, few, engine=engine())
    assert isinstance(result, SaliencyResult)
    by = {s.method: s for s in result.sanity}
    assert by["saliency"].passed and by["saliency"].final < 0.5
    assert not by["edges"].passed and by["edges"].final > 0.99
    assert result.metrics()["saliency.sanity[method=edges]"] == 0.0
    assert len(result.examples) == 3 and all(len(e.maps) == 2 for e in result.examples)


def _resnet_on_noise() -> tuple[AuditModel, ImageDataset]:
    """A seeded, untrained 3-class ResNet-18 for 32x32 RGB input and 4 noise images."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval()
    model = AuditModel(net, ModelSpec(input_size=(32, 32), channels=3)).eval()
    data = ImageDataset(
        images=(torch.rand(4, 3, 32, 32) * 255).to(torch.uint8),
        labels=torch.tensor([0, 1, 2, 0]),
        class_names=("a", "b", "c"),
        metadata={},
        ids=("0", "1", "2", "3"),
        source="x",
        format="npz",
        sha256="0",
    )
    return model, data


def test_gradcam_finds_the_last_conv_of_a_resnet() -> None:
    model, data = _resnet_on_noise()
    name, layer = find_last_conv(model)
    assert name == "net.layer4.1.conv2"
    maps = SaliencyMaps(methods=("gradcam",)).maps(model, data, torch.tensor([0, 1, 2, 0]), engine(), layer, "gradcam")
    assert maps.shape == (4, 32, 32) and bool(torch.isfinite(maps).all())


def test_gradcam_warns_when_its_layer_is_smaller_than_4x4() -> None:
    """ResNet-18 at 32x32: the auto-picked last conv is 1x1, so its maps are one block (warned, with
    how to choose --layer); layer2 is 4x4 (no warning)."""
    from auditkit.results import Conditions

    model, data = _resnet_on_noise()
    for layer, size, warned in ((None, (1, 1), True), ("net.layer2.0.conv1", (4, 4), False)):
        check = SaliencyMaps(methods=("gradcam",), layer=layer, per_kind=1, sanity_samples=2)
        result = check.run(model.eval(), data, engine=engine())
        assert isinstance(result, SaliencyResult) and result.layer_size == size
        coarse = [f for f in result.findings(Conditions()) if "--layer" in f.text]
        assert bool(coarse) == warned and (not warned or coarse[0].severity == "warn")


def test_relevance_mass_and_rank_correlation() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[0, :2, :2] = 1.0
    maps[1, :, :] = 1.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True
    torch.testing.assert_close(relevance_mass(maps, mask), torch.tensor([1.0, 0.25]))
    a = torch.arange(16.0).view(1, 4, 4)
    assert rank_correlation(a, a * 3 + 1) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)


def test_demo_report_has_saliency(demo_run: Path) -> None:
    m = json.loads((demo_run / "results.json").read_text())["metrics"]
    assert m["saliency.sanity[method=saliency]"] == 1.0
    assert "saliency.randomization_spearman[method=gradcam]" in m
    html = demo_run / "index.html"
    assert "Sanity check" in html.read_text()
    assert html.stat().st_size < 5 * 1024 * 1024


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--layer", "net.nope"], "--layer 'net.nope' is not a layer"), (["--methods", "saliency,magic"], "magic")],
)
def test_bad_saliency_options_are_usage_errors(demo_run: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    out = CliRunner().invoke(
        app,
        [
            "saliency",
            str(demo_run / "model" / "model.safetensors"),
            str(demo_run / "data" / "test.csv"),
            "--limit",
            "20",
            "--out",
            str(tmp_path),
            "--no-progress",
            *args,
        ],
    )
    assert out.exit_code == 2, out.output
    assert needle in out.output
