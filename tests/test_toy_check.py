"""The proof that a check is one module: a toy check defined entirely here, with no edit to any
other file, gets a CLI command with its own --help, a config section, a results.json round trip
in a fresh process, a report section, a gateable metric and baseline refusal on its setting."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from torch import nn
from typer.testing import CliRunner

from auditkit import registry
from auditkit.checks.base import Check
from auditkit.engine.loop import Batch, Engine
from auditkit.inputs.data import ImageDataset
from auditkit.inputs.models import save_model
from auditkit.results import CheckResult, Metric
from auditkit.settings import Settings, setting
from tests.conftest import DIGITS_SPEC

ROOT = Path(__file__).resolve().parents[1]


class ToySettings(Settings):
    section: ClassVar[str] = "toy"

    toy_gain: float = setting(1.0, "Multiply the mean brightness by this.", ge=0)


@dataclass(frozen=True)
class ToyResult(CheckResult):
    kind = "toy"
    title = "Toy check"
    template = "<p>Mean brightness times the gain: <strong>{{ s.result.brightness | pct }}</strong>.</p>"

    brightness: float
    gain: float

    def headline(self) -> str:
        return f"brightness x gain = {self.brightness:.3f}"

    def metric_records(self) -> tuple[Metric, ...]:
        return (Metric("toy.brightness", self.brightness, "none"),)


class ToyCheck(Check):
    name = "toy"
    settings_type = ToySettings
    result_type = ToyResult
    command = "toy"
    help = "A toy check: mean pixel brightness times --toy-gain."

    def __init__(self, *, toy_gain: float = 1.0) -> None:
        self.gain = toy_gain

    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> ToyResult:
        def mean(b: Batch) -> tuple[float, int]:
            return float(b.x.sum()) / b.x[0].numel(), len(b.x)

        parts = list(engine.map(mean, data, description="toy"))
        total = sum(s for s, _ in parts) / sum(n for _, n in parts)
        return ToyResult(brightness=total * self.gain, gain=self.gain)


@pytest.fixture
def toy() -> Iterator[None]:
    registry.register(ToyCheck)
    yield
    registry._extra_checks.remove(ToyCheck)
    registry.checks.cache_clear()
    registry.result_types.cache_clear()


@pytest.fixture
def model(tmp_path: Path, tiny_net: nn.Module) -> Path:
    return save_model(tiny_net, DIGITS_SPEC, tmp_path / "model" / "model.safetensors")


def _run(app: object, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))  # type: ignore[arg-type]
    return result.exit_code, result.output


def test_toy_check_gets_every_part_of_the_shape(toy: None, model: Path, tmp_path: Path) -> None:
    from auditkit.cli import build_app
    from auditkit.config import resolve_config

    app = build_app()
    code, text = _run(app, "toy", "--help")
    assert code == 0 and "--toy-gain" in text and "--angles" not in text and "--epsilons" not in text
    code, text = _run(app, "rotate", "--help")
    assert "--toy-gain" not in text and "--angles" in text
    config = tmp_path / "auditkit.toml"
    config.write_text(f'model = "{model}"\ndata = "digits"\n[toy]\ntoy_gain = 0.5\n')
    assert resolve_config({}, config).settings(ToySettings).toy_gain == 0.5

    runs = {}
    for gain in ("0.5", "2"):
        out = tmp_path / f"gain-{gain}"
        code, text = _run(app, "toy", str(model), "digits", "--limit", "40", "--toy-gain", gain, "--out", str(out))
        assert code == 0, text
        runs[gain] = out
        doc = json.loads((out / "results.json").read_text())
        assert [c["kind"] for c in doc["checks"]] == ["clean", "toy"]
        assert ("toy_gain", gain.replace("2", "2.0")) in [tuple(p) for p in doc["manifest"]["config"]]
        assert "Mean brightness times the gain" in (out / "index.html").read_text()
    low = json.loads((runs["0.5"] / "results.json").read_text())["metrics"]["toy.brightness"]
    high = json.loads((runs["2"] / "results.json").read_text())["metrics"]["toy.brightness"]
    assert high == pytest.approx(4 * low) and low > 0

    policy = tmp_path / "policy.toml"
    policy.write_text(f'[[rule]]\nmetric = "toy.brightness"\nop = "<="\nvalue = {2 * low}\n')
    assert _run(app, "gate", str(runs["0.5"] / "results.json"), "--policy", str(policy))[0] == 0
    assert _run(app, "gate", str(runs["2"] / "results.json"), "--policy", str(policy))[0] == 1
    code, text = _run(
        app,
        "gate",
        str(runs["2"] / "results.json"),
        "--policy",
        str(policy),
        "--baseline",
        str(runs["0.5"] / "results.json"),
    )
    assert code == 3 and "toy_gain" in text, text


def test_results_decode_in_a_fresh_interpreter_through_the_entry_point(toy: None, model: Path, tmp_path: Path) -> None:
    from auditkit.cli import build_app

    out = tmp_path / "run"
    code, text = _run(build_app(), "toy", str(model), "digits", "--limit", "16", "--angles", "0", "--out", str(out))
    assert code != 0 and "--angles" in text  # not the toy command's option
    assert _run(build_app(), "toy", str(model), "digits", "--limit", "16", "--out", str(out))[0] == 0
    plugin = tmp_path / "plugin"
    dist = plugin / "toy_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[auditkit.checks]\ntoy = tests.test_toy_check:ToyCheck\n")
    code = (
        "from auditkit.results import RunResults; "
        f"r = RunResults.read({str(out / 'results.json')!r}); "
        "print(*[type(c).__name__ for c in r.checks])"
    )
    env = {"PYTHONPATH": f"{plugin}:{ROOT}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CleanResult", "ToyResult"]
    # without the plugin installed the kind is unknown: one line, exit 3 through the CLI
    done = subprocess.run(
        [sys.executable, "-m", "auditkit", "report", str(out / "results.json")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 3 and "unknown check kind 'toy'" in done.stderr


def test_builtin_results_decode_in_a_fresh_interpreter(model: Path, tmp_path: Path) -> None:
    from auditkit.cli import app

    out = tmp_path / "run"
    args = ["audit", str(model), "digits", "--limit", "24", "--angles", "0,90", "--no-spatial", "--epsilons", "0,0.1"]
    args += ["--steps", "2", "--methods", "saliency", "--out", str(out)]
    assert _run(app, *args)[0] == 0
    code = (
        "from auditkit.results import RunResults; "
        f"r = RunResults.read({str(out / 'results.json')!r}); print(*[c.kind for c in r.checks])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["clean", "rotation", "attack", "corrupt", "saliency", "shortcut", "subgroups"]
