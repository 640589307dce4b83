"""``auditkit demo --dataset fashion-mnist``: the refusal without the data, and a small real run on it.

The real run needs Debian's ``dataset-fashion-mnist`` package: it fails when ``CI`` is set (CI
installs the package) and is skipped elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from auditkit.cli import app
from auditkit.demo_fashion import FASHION_CLASSES, FASHION_DATA_ROOT, FashionDemoOutput, run_fashion_demo
from auditkit.exceptions import ConfigError

runner = CliRunner()


@pytest.mark.parametrize("root", ["missing", "empty"])
def test_refuses_without_the_data(root: str, tmp_path: Path) -> None:
    data_root = tmp_path / root
    if root == "empty":
        data_root.mkdir()
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["demo", "--dataset", "fashion-mnist", "--data-root", str(data_root), "--out", str(out), "--no-progress"],
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "apt-get install dataset-fashion-mnist" in lines[0]
    assert "--data-root" in lines[0] and str(data_root) in lines[0]
    assert not out.exists()  # refused before anything was written


def test_refuses_an_unknown_dataset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--dataset", "cifar10", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "auditkit: error: dataset: Input should be 'digits' or 'fashion-mnist', got 'cifar10'"
    ]


def test_data_root_only_with_fashion(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "--data-root applies to --dataset fashion-mnist only" in result.stderr


@pytest.fixture(scope="module")
def fashion_demo(tmp_path_factory: pytest.TempPathFactory) -> FashionDemoOutput:
    """A small real run: 4,000 training images for 2 epochs, 100 test images audited."""
    try:
        from auditkit.demo_fashion import require_fashion_mnist

        require_fashion_mnist(FASHION_DATA_ROOT)
    except ConfigError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs dataset-fashion-mnist, but: {exc}")
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("fashion")
    return run_fashion_demo(
        out, data_root=FASHION_DATA_ROOT, epochs=2, device="cpu", progress=False, train_limit=4000, audit_sample=100
    )


def _results(demo: FashionDemoOutput) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((demo.out / "results.json").read_text())
    return doc


def test_model_carries_the_fashion_class_names(fashion_demo: FashionDemoOutput) -> None:
    spec = json.loads((fashion_demo.out / "model" / "model.json").read_text())
    assert tuple(spec["class_names"]) == FASHION_CLASSES
    assert spec["class_names"][6] == "Shirt" and spec["class_names"][9] == "Ankle boot"
    assert 0.2 < spec["mean"][0] < 0.4 and 0.25 < spec["std"][0] < 0.45  # Fashion-MNIST pixels, not digits
    assert tuple(_results(fashion_demo)["manifest"]["class_names"]) == FASHION_CLASSES


def test_audit_ran_on_a_sample_of_the_real_test_split(fashion_demo: FashionDemoOutput) -> None:
    doc = _results(fashion_demo)
    manifest = doc["manifest"]
    assert manifest["num_samples"] == 100
    assert "split test" in manifest["data_path"]
    assert (fashion_demo.out / "index.html").stat().st_size > 10_000
    kinds = [c["kind"] for c in doc["checks"]]
    assert kinds[:5] == ["clean", "rotation", "attack", "corrupt", "saliency"] and "gate" in kinds
    # trained on real data: far above chance (10%) even with 4,000 images and 2 epochs
    assert doc["metrics"]["clean.accuracy"] > 0.6
    # the corruption sweep ran on the real images: every corruption for grey images, and its heat map
    corrupt = next(c["result"] for c in doc["checks"] if c["kind"] == "corrupt")
    assert len(corrupt["curves"]) == 14 and 0 < doc["metrics"]["corrupt.mean_accuracy"] < 1
    assert 'id="corrupt"' in (fashion_demo.out / "index.html").read_text()


def test_rotation_has_a_per_class_curve(fashion_demo: FashionDemoOutput) -> None:
    metrics = _results(fashion_demo)["metrics"]
    for name in FASHION_CLASSES:
        for angle in ("0", "90", "180"):
            assert f"rotation.accuracy[angle={angle},class={name}]" in metrics
    # upright beats upside down for a model trained only upright
    assert metrics["rotation.accuracy[angle=0]"] > metrics["rotation.accuracy[angle=180]"] + 0.2


def test_attack_curve_falls_with_epsilon(fashion_demo: FashionDemoOutput) -> None:
    metrics = _results(fashion_demo)["metrics"]
    curve = [metrics[f"attack.robust_accuracy[norm=linf,eps={e}]"] for e in ("0", "0.01", "0.02", "0.05", "0.1")]
    assert curve[0] == pytest.approx(metrics["clean.accuracy"])
    assert curve == sorted(curve, reverse=True)
    assert curve[-1] < curve[0] - 0.3


def test_config_file_reruns_the_same_audit(fashion_demo: FashionDemoOutput, tmp_path: Path) -> None:
    # the written auditkit.toml points at the same model, data split and sample: same numbers again
    out = tmp_path / "rerun"
    config = fashion_demo.out / "auditkit.toml"
    result = runner.invoke(
        app,
        ["rotate", "--config", str(config), "--no-spatial", "--angles", "0,180", "--out", str(out), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    again = json.loads((out / "results.json").read_text())["metrics"]
    first = _results(fashion_demo)["metrics"]
    assert again["clean.accuracy"] == first["clean.accuracy"]
    assert again["rotation.accuracy[angle=180,class=Shirt]"] == first["rotation.accuracy[angle=180,class=Shirt]"]


def test_policy_gates_the_demo(fashion_demo: FashionDemoOutput) -> None:
    result = runner.invoke(
        app, ["gate", str(fashion_demo.out / "results.json"), "--policy", str(fashion_demo.out / "policy.toml")]
    )
    assert result.exit_code in (0, 1), result.output  # a verdict, never a usage error or a missing metric
    assert "clean.accuracy[class=Shirt] >= 0.5" in result.output
    assert "ERROR" not in result.output
