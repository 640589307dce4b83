"""Bad input, table-driven (issue 16): every row is one line on stderr starting
``auditkit: error:``, the documented exit code, no traceback, and no half-written outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from auditkit.cli import app
from auditkit.inputs.models import save_model
from tests.conftest import DIGITS_SPEC


class NanWhenRotated(nn.Module):
    """Finite on pixel-exact images (k/255), NaN on interpolated (rotated) ones."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        off_grid = ((x * 255 - (x * 255).round()).abs().flatten(1).amax(dim=1) > 1e-3)[:, None]
        out = self.linear(x.flatten(1))
        return torch.where(off_grid, torch.full_like(out, float("nan")), out)


def nan_when_rotated(num_classes: int = 10) -> NanWhenRotated:
    return NanWhenRotated(num_classes)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    from auditkit.zoo import digits_cnn

    model = save_model(digits_cnn(), DIGITS_SPEC, root / "model" / "model.safetensors")
    spec = DIGITS_SPEC.merged(arch="tests.test_bad_input:nan_when_rotated", mean=(0.0,), std=(1.0,))
    nan_model = save_model(NanWhenRotated(), spec, root / "nan" / "model.safetensors")
    good = root / "good"
    result = CliRunner().invoke(
        app, ["rotate", str(model), "digits", "--limit", "16", "--angles", "0", "--out", str(good)]
    )
    assert result.exit_code == 0, result.output
    (root / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" * 8)
    doc = json.loads((good / "results.json").read_text())
    doc["metrics"] = [1, 2]
    (root / "list-metrics.json").write_text(json.dumps(doc))
    (root / "latin1.toml").write_bytes('model = "m"\ndata = "digits"\n# caf\xe9\n'.encode("latin-1"))
    (root / "tolerance.toml").write_text('[baseline]\nmetrics = ["clean.accuracy"]\ntolerance = "1%"\n')
    (root / "empty.toml").write_text("# no rules\n")
    (root / "policy.toml").write_text('[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = 0\n')
    (root / "a-file").write_text("not a folder")
    spec_dir = root / "spec"
    save_model(digits_cnn(), DIGITS_SPEC, spec_dir / "model.safetensors")
    bad_spec = json.loads((spec_dir / "model.json").read_text()) | {"input_size": 28}
    (spec_dir / "model.json").write_text(json.dumps(bad_spec))
    return {
        "root": root,
        "model": model,
        "nan": nan_model,
        "results": good / "results.json",
        "spec_model": spec_dir / "model.safetensors",
    }


def _audit(files: dict[str, Path], *extra: str) -> list[str]:
    out = files["root"] / "out"
    return ["rotate", str(files["model"]), "digits", "--limit", "16", "--angles", "0", "--out", str(out), *extra]


ROWS: list[tuple[str, int, str]] = [
    ("epsilons-nan", 2, "--epsilons"),
    ("epsilons-empty", 2, "--epsilons is empty"),
    ("epsilons-above-1", 2, "[0, 1] pixel units"),
    ("angles-inf", 2, "finite numbers"),
    ("angles-too-many", 2, "grid points"),
    ("device-index", 2, "device: must be one of"),
    ("results-binary", 3, "not UTF-8"),
    ("results-metrics-list", 3, "not a valid auditkit results.json"),
    ("config-latin1", 2, "not UTF-8"),
    ("policy-tolerance-text", 2, "tolerance must be a non-negative number"),
    ("policy-empty", 2, "would check nothing"),
    ("spec-input-size-int", 2, "input_size must be a list"),
    ("out-is-a-file", 2, "--out"),
    ("junit-without-policy", 2, "need --policy"),
    ("nan-on-rotated-images", 3, "check 'rotation' crashed"),
]


def _args(name: str, f: dict[str, Path]) -> list[str]:
    root = f["root"]
    return {
        "epsilons-nan": ["attack", str(f["model"]), "digits", "--epsilons", "nan"],
        "epsilons-empty": ["attack", str(f["model"]), "digits", "--epsilons", ""],
        "epsilons-above-1": ["attack", str(f["model"]), "digits", "--epsilons", "0,2"],
        "angles-inf": ["rotate", str(f["model"]), "digits", "--angles", "0:inf:1"],
        "angles-too-many": ["rotate", str(f["model"]), "digits", "--angles", "0:360:1e-9"],
        "device-index": _audit(f, "--device", "cpu:abc"),
        "results-binary": ["report", str(root / "binary.json")],
        "results-metrics-list": ["gate", str(root / "list-metrics.json"), "--policy", str(root / "policy.toml")],
        "config-latin1": ["rotate", "--config", str(root / "latin1.toml")],
        "policy-tolerance-text": ["gate", str(f["results"]), "--policy", str(root / "tolerance.toml")],
        "policy-empty": ["gate", str(f["results"]), "--policy", str(root / "empty.toml")],
        "spec-input-size-int": ["rotate", str(f["spec_model"]), "digits", "--out", str(root / "o-spec")],
        "out-is-a-file": [
            "rotate",
            str(f["model"]),
            "digits",
            "--limit",
            "8",
            "--angles",
            "0",
            "--out",
            str(root / "a-file"),
        ],
        "junit-without-policy": _audit(f, "--junit", str(root / "j.xml")),
        "nan-on-rotated-images": [
            "rotate",
            str(f["nan"]),
            "digits",
            "--arch",
            "tests.test_bad_input:nan_when_rotated",
            "--limit",
            "16",
            "--angles",
            "0,45",
            "--no-spatial",
            "--out",
            str(root / "o-nan"),
        ],
    }[name]


@pytest.mark.parametrize(("name", "code", "needle"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_and_its_exit_code(files: dict[str, Path], name: str, code: int, needle: str) -> None:
    result = CliRunner().invoke(app, _args(name, files))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    errors = [line for line in lines if line.startswith("auditkit: error:")]
    assert len(errors) == 1 and needle in errors[0], lines
    assert not (files["root"] / "j.xml").exists()


def test_nan_check_is_recorded_as_crashed_with_null_metrics(files: dict[str, Path]) -> None:
    out = files["root"] / "o-nan"
    CliRunner().invoke(app, _args("nan-on-rotated-images", files))
    doc = json.loads((out / "results.json").read_text())
    kinds = [c["kind"] for c in doc["checks"]]
    assert kinds == ["clean", "failure"] and "16 of 16 images" in doc["checks"][1]["result"]["error"]
    assert doc["metrics"]["rotation.crashed"] == 1.0
    assert not any(k.startswith("rotation.accuracy") for k in doc["metrics"])
    assert (out / "index.html").is_file()  # the pair is complete


def test_messages_cannot_inject_ci_workflow_commands() -> None:
    from auditkit.messages import one_line

    assert one_line("group\n::error::pwned") == "group ::error::pwned"
    assert not one_line("::error::pwned").startswith("::")


def test_outputs_honour_the_umask(files: dict[str, Path]) -> None:
    import os

    mode = (files["results"]).stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask
