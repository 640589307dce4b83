from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from auditkit.cli import app
from auditkit.inputs.models import save_model
from tests.conftest import DIGITS_SPEC

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args])
    return result.exit_code, result.output


def test_demo_trains_and_reports(demo_run: Path) -> None:
    doc = json.loads((demo_run / "results.json").read_text())
    assert doc["metrics"]["clean.accuracy"] >= 0.95
    html = (demo_run / "index.html").read_text()
    assert "Clean accuracy" in html and "synthetic attribute" in html
    assert (demo_run / "model" / "model.safetensors").is_file()
    assert (demo_run / "model" / "model.json").is_file()
    header = (demo_run / "data" / "test.csv").read_text().splitlines()[0]
    assert header == "path,label,site"


def test_demo_model_audited_like_any_user_model(demo_run: Path, tmp_path: Path) -> None:
    # the same weights as a plain state_dict + --arch give the same accuracy as the demo's audit
    from safetensors.torch import load_file

    state = load_file(str(demo_run / "model" / "model.safetensors"))
    torch.save(state, tmp_path / "user.pt")
    spec = json.loads((demo_run / "model" / "model.json").read_text())
    code, out = invoke(
        "subgroups",  # the same command body as audit, with the clean and subgroup checks only
        str(tmp_path / "user.pt"),
        str(demo_run / "data" / "test.csv"),
        "--arch",
        spec["arch"],
        "--num-classes",
        "10",
        "--mean",
        str(spec["mean"][0]),
        "--std",
        str(spec["std"][0]),
        "--channels",
        "1",
        "--input-size",
        "28",
        "28",
        "--out",
        str(tmp_path / "out"),
        "--batch-size",
        "17",
        "--no-progress",
    )
    assert code == 0, out
    mine = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    demo = json.loads((demo_run / "results.json").read_text())["metrics"]
    assert mine["clean.accuracy"] == demo["clean.accuracy"]
    assert "report:" in out


def test_audit_from_config_file(demo_run: Path) -> None:
    code, out = invoke(
        "audit",
        "--config",
        str(demo_run / "auditkit.toml"),
        "--limit",
        "50",
        "--out",
        str(demo_run / "limited"),
        "--no-progress",
    )
    assert code == 0, out
    assert json.loads((demo_run / "limited" / "results.json").read_text())["manifest"]["num_samples"] == 50


def test_report_rerenders_identically(demo_run: Path, tmp_path: Path) -> None:
    code, out = invoke("report", str(demo_run / "results.json"), "--out", str(tmp_path / "again.html"))
    assert code == 0, out
    assert (tmp_path / "again.html").read_text() == (demo_run / "index.html").read_text()


def test_help_lists_every_command() -> None:
    code, out = invoke("--help")
    assert code == 0
    for command in (
        "rotate",
        "attack",
        "harden",
        "shortcut",
        "subgroups",
        "saliency",
        "audit",
        "gate",
        "report",
        "demo",
    ):
        assert command in out


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["audit", "m.pt", "digits", "--device", "tpu"], 2, "device: must be one of"),
        (["audit", "m.pt", "digits", "--bogus"], 2, "No such option"),
        (["audit"], 2, "no model given"),
        (["audit", "missing.pt", "digits"], 3, "model file not found"),
        (["report", "nope.json"], 3, "cannot read results file"),
        (["demo", "--epochs", "0"], 2, "epochs: Input should be greater than or equal to 1"),
    ],
)
def test_errors_are_one_line_with_exit_code(args: list[str], code: int, needle: str, tmp_path: Path) -> None:
    got, out = invoke(*args)
    assert got == code, out
    assert needle in out
    assert "Traceback" not in out


def test_missing_data_exit_3(tmp_path: Path, tiny_net: torch.nn.Module) -> None:
    model = save_model(tiny_net, DIGITS_SPEC, tmp_path / "m.safetensors")
    code, out = invoke("audit", str(model), str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"))
    assert code == 3 and "dataset not found" in out
    assert not (tmp_path / "o").exists()


def test_nan_model_exit_3(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with torch.no_grad():
        net[1].weight.fill_(float("nan"))
    spec = DIGITS_SPEC.merged(arch="tests.test_cli:nan_net")
    model = save_model(net, spec, tmp_path / "m.safetensors")
    code, out = invoke("audit", str(model), "digits", "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 4 and "tests.test_cli:nan_net" in out, out  # a model.json may not name outside code
    code, out = invoke(
        "audit", str(model), "digits", "--arch", "tests.test_cli:nan_net", "--out", str(tmp_path / "o"), "--no-progress"
    )
    assert code == 3, out
    assert "NaN or infinite" in out


def nan_net(num_classes: int = 10) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, num_classes))


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_net: torch.nn.Module) -> None:
    import auditkit.api

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(auditkit.api, "run_audit", interrupted)
    model = save_model(tiny_net, DIGITS_SPEC, tmp_path / "m.safetensors")
    code, out = invoke("audit", str(model), "digits")
    assert code == 130 and "interrupted" in out


def test_crashing_check_fails_closed_with_the_error_in_the_report(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_net: torch.nn.Module
) -> None:
    from auditkit.checks.rotation import RotationSweep

    def boom(self: object, *args: object) -> None:
        raise RuntimeError("sweep exploded")

    monkeypatch.setattr(RotationSweep, "_run", boom)
    model = save_model(tiny_net, DIGITS_SPEC, tmp_path / "m.safetensors")
    code, out = invoke("rotate", str(model), "digits", "--limit", "20", "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 3, out
    assert "check 'rotation' crashed" in out and "Traceback" not in out
    html = (tmp_path / "o" / "index.html").read_text()
    assert "sweep exploded" in html and "Check that crashed" in html
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert doc["metrics"]["rotation.crashed"] == 1.0


def test_report_with_baseline_shows_before_and_after(demo_run: Path, tmp_path: Path) -> None:
    doc = json.loads((demo_run / "results.json").read_text())
    doc["metrics"]["clean.accuracy"] = 0.5
    before = tmp_path / "before.json"
    before.write_text(json.dumps(doc))
    code, out = invoke(
        "report", str(demo_run / "results.json"), "--baseline", str(before), "--out", str(tmp_path / "cmp.html")
    )
    assert code == 0, out
    html = (tmp_path / "cmp.html").read_text()
    assert "Compared with the baseline" in html
    row = html[html.index("<code>clean.accuracy</code>") :][:300]
    assert "50.0%" in row and "+45.9 pt" in row  # the baseline value and the change, in percent


def test_each_command_lists_only_its_own_and_the_shared_options() -> None:
    own = {
        "rotate": ("--angles", "--fill", "--k"),
        "attack": ("--epsilons", "--norm", "--restarts"),
        "subgroups": ("--group", "--min-support", "--bins"),
        "saliency": ("--methods", "--layer"),
        "shortcut": ("--cue-size", "--occlusion"),
    }
    shared = ("--class-names", "--resize", "--device", "--out", "--policy", "--config")
    for command, flags in own.items():
        code, text = invoke(command, "--help")
        assert code == 0, text
        assert all(f in text for f in (*flags, *shared)), (command, text)
        others = [f for c, fs in own.items() if c != command for f in fs]
        assert not [f for f in others if f in text.split()], (command, others)
    code, text = invoke("audit", "--help")
    assert all(f in text for fs in own.values() for f in fs)


def test_version() -> None:
    code, out = invoke("--version")
    assert code == 0 and out.strip() == "auditkit 0.1.0"


def test_help_groups_options_in_panels_and_names_the_advanced_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    code, text = invoke("rotate", "--help")
    assert code == 0
    for panel in ("Model", "Data", "Run", "Output and gate", "Rotation"):
        assert f"─ {panel} " in text, panel
    panels, footer = text.rsplit("╰", 1)
    assert "--stream" not in panels and "--stream" in footer and "--epsilons" not in text
    code, text = invoke("audit", "--help")
    assert all(f"─ {p} " in text for p in ("Attack", "Saliency", "Shortcut", "Subgroups")) and "│ --stream" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["rotate", "m.pt", "digits", "--epsilons", "0.1"], "No such option for rotate: --epsilons (an option of"),
        (["subgroups", "m.pt", "digits", "--angles", "0,90"], "No such option for subgroups: --angles"),
        (["gate"], "Missing argument 'RESULTS' (see auditkit gate --help)"),
        (["rotate", "m.pt", "digits", "--input-size", "3"], "requires 2 arguments (see auditkit rotate --help)"),
        (["rotate", "m.pt", "digits", "--limit", "many"], "Invalid value for '--limit'"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("auditkit: error:") and needle in lines[0], lines


def test_advanced_options_are_accepted_by_a_check_command(tmp_path: Path) -> None:
    code, out = invoke("rotate", "missing.pt", "digits", "--workers", "0", "--stream", "off", "--out", str(tmp_path))
    assert code == 3 and "model file not found" in out  # parsed and validated; failed on the model only


def test_config_sections_of_checks_not_run_are_validated_but_not_kept(tmp_path: Path) -> None:
    from auditkit.config import resolve_config
    from auditkit.exceptions import ConfigError

    cfg_file = tmp_path / "auditkit.toml"
    cfg_file.write_text('model = "m"\ndata = "digits"\n[rotation]\nangles = "0,90"\n[attack]\nepsilons = "0,0.5"\n')
    cfg = resolve_config({"checks": ("clean", "rotation")}, cfg_file)
    assert set(cfg.check_settings) == {"clean", "rotation"}
    pairs = dict(cfg.as_pairs())
    assert pairs["angles"] == "'0,90'" and "epsilons" not in pairs
    assert "epsilons" in dict(resolve_config({}, cfg_file).as_pairs())  # audit runs every check: kept
    cfg_file.write_text('model = "m"\ndata = "digits"\n[attack]\nepsilon = "0.1"\n')
    with pytest.raises(ConfigError, match="unknown setting 'epsilon'"):
        resolve_config({"checks": ("clean", "rotation")}, cfg_file)


def test_baseline_compares_the_settings_of_the_checks_both_runs_ran(demo_run: Path) -> None:
    import dataclasses

    from auditkit.config import resolve_config
    from auditkit.exceptions import DataError
    from auditkit.gate import check_settings_comparable
    from auditkit.results import RunResults

    loaded = RunResults.read(demo_run / "results.json")
    audit = resolve_config({"model": "m", "data": "digits", "epsilons": "0,0.5"}).as_pairs()
    baseline = dataclasses.replace(loaded, manifest=dataclasses.replace(loaded.manifest, config=audit))
    rotate = resolve_config({"model": "m", "data": "digits", "checks": ("clean", "rotation")}).as_pairs()
    check_settings_comparable(rotate, baseline)  # attack did not run now: its settings cannot matter
    with pytest.raises(DataError, match="different configuration \\(epsilons:"):
        check_settings_comparable(resolve_config({"model": "m", "data": "digits"}).as_pairs(), baseline)
