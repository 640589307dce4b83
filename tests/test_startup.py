"""The CLI starts without torch: building the commands, every ``--help``, ``--version``, ``gate`` and
``report`` import neither torch nor the other heavy packages a model run needs (docs/cli.md).

Each check runs in a fresh interpreter and asserts on ``sys.modules``, never on wall-clock time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer.main
from typer.testing import CliRunner

from auditkit.inputs.models import save_model
from auditkit.zoo import digits_cnn
from tests.conftest import DIGITS_SPEC

#: imported only where a model runs (and matplotlib where a report is rendered)
HEAVY = ("torch", "torchvision", "captum", "foolbox", "scipy", "sklearn", "matplotlib")

PROBE = """
import json, sys
from typer.testing import CliRunner
import auditkit.cli
results = []
for args in json.loads(sys.argv[1]):
    got = CliRunner().invoke(auditkit.cli.app, args)
    results.append([got.exit_code, got.output[-300:]])
heavy = sorted(m for m in {heavy} if m in sys.modules)
print(json.dumps({{"results": results, "heavy": heavy}}))
"""


def _run(*commands: list[str]) -> tuple[list[tuple[int, str]], list[str]]:
    """Run ``commands`` through the CLI in a fresh interpreter: their exit codes and outputs, and the
    heavy modules that were imported."""
    code = PROBE.format(heavy=repr(set(HEAVY)))
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(commands))], capture_output=True, text=True, check=True
    )
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    return [(c, o) for c, o in doc["results"]], doc["heavy"]


def test_importing_the_cli_imports_no_heavy_package() -> None:
    heavy = repr(HEAVY)
    code = f"import auditkit.cli, sys; loaded = [m for m in {heavy} if m in sys.modules]; assert not loaded, loaded"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_help_and_the_version_start_without_torch() -> None:
    from auditkit.cli import app

    group = typer.main.get_command(app)
    commands = [["--help"], ["--version"], *([name, "--help"] for name in group.commands)]
    results, heavy = _run(*commands)
    assert [code for code, _ in results] == [0] * len(commands), results
    assert results[1][1].strip() == "auditkit 0.1.0"
    assert heavy == []


@pytest.fixture(scope="module")
def results_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small rotation audit of an untrained digits CNN (this process may import torch)."""
    from auditkit.cli import app

    root = tmp_path_factory.mktemp("startup")
    torch.manual_seed(0)
    model = save_model(digits_cnn(num_classes=10).eval(), DIGITS_SPEC, root / "m.safetensors")
    args = ["rotate", str(model), "digits", "--limit", "16", "--angles", "0,90", "--no-spatial"]
    got = CliRunner().invoke(app, [*args, "--no-progress", "--out", str(root / "run")])
    assert got.exit_code == 0, got.output
    (root / "policy.toml").write_text('[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = 0\n')
    return root / "run" / "results.json"


def test_gate_runs_without_torch_or_matplotlib(results_json: Path) -> None:
    policy = results_json.parent.parent / "policy.toml"
    junit = results_json.parent.parent / "junit.xml"
    results, heavy = _run(["gate", str(results_json), "--policy", str(policy), "--junit", str(junit)])
    assert results[0][0] == 0, results
    assert "gate: passed" in results[0][1] and junit.is_file()
    assert heavy == []


def test_report_and_gate_with_out_render_without_torch(results_json: Path) -> None:
    policy = results_json.parent.parent / "policy.toml"
    html = results_json.parent.parent / "again.html"
    gated = results_json.parent.parent / "gated"
    results, heavy = _run(
        ["report", str(results_json), "--out", str(html)],
        ["gate", str(results_json), "--policy", str(policy), "--out", str(gated)],
    )
    assert [code for code, _ in results] == [0, 0], results
    assert html.is_file() and (gated / "index.html").is_file() and (gated / "results.json").is_file()
    assert [m for m in heavy if m != "matplotlib"] == []  # the report's plots need matplotlib, nothing more
