from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditkit.exceptions import DataError
from auditkit.results import SCHEMA_VERSION, RunResults


def test_round_trip_is_exact(demo_run: Path) -> None:
    results = RunResults.read(demo_run / "results.json")
    again = RunResults.from_json(results.to_json())
    assert again == results
    assert results.to_json() == (demo_run / "results.json").read_text()


def test_results_json_shape(demo_run: Path) -> None:
    doc = json.loads((demo_run / "results.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION
    assert {"model_sha256", "data_sha256", "torch_version", "seed", "device", "config", "timings"} <= set(
        doc["manifest"]
    )
    assert doc["metrics"]["clean.accuracy"] >= 0.95
    kinds = [c["kind"] for c in doc["checks"]]
    assert kinds == ["clean", "rotation", "attack", "corrupt", "saliency", "shortcut", "subgroups", "gate"]
    assert doc["metrics"]["gate.passed"] == 1.0
    assert set(doc["samples"]["bits"]) >= {
        "clean.accuracy",
        "spatial.accuracy[attack=grid]",
        "rotation.accuracy[angle=90]",
    }


def test_newer_major_schema_refused(demo_run: Path, tmp_path: Path) -> None:
    doc = json.loads((demo_run / "results.json").read_text())
    doc["schema_version"] = "99.0"
    with pytest.raises(DataError, match=r"schema_version 99\.0"):
        RunResults.from_json(json.dumps(doc))


def test_not_results_json() -> None:
    with pytest.raises(DataError, match=r"not a valid auditkit results\.json"):
        RunResults.from_json('{"hello": 1}')


def test_the_pair_shares_a_run_id_and_a_mismatch_is_noticed(demo_run: Path, tmp_path: Path) -> None:
    import dataclasses
    import shutil

    from auditkit.pipeline import write_outputs
    from auditkit.results import pair_notice

    results = RunResults.read(demo_run / "results.json")
    doc = json.loads((demo_run / "results.json").read_text())
    assert doc["run_id"] == results.run_id and len(results.run_id) == 16
    assert f'<meta name="auditkit-run-id" content="{results.run_id}">' in (demo_run / "index.html").read_text()
    assert pair_notice(demo_run / "results.json", results) is None
    # a fresh run (no recorded id) gets an id from its content: another manifest, another id
    fresh = dataclasses.replace(results, recorded_run_id="")
    other = dataclasses.replace(fresh, manifest=dataclasses.replace(fresh.manifest, started_at="2000-01-01T00:00:00"))
    assert fresh.run_id != other.run_id
    write_outputs(other, tmp_path)
    shutil.copy(demo_run / "results.json", tmp_path / "results.json")  # the new report beside the old results
    notice = pair_notice(tmp_path / "results.json", results)
    assert notice is not None and other.run_id in notice and "auditkit report" in notice


def test_findings_rank_by_severity_and_are_stored(demo_run: Path) -> None:
    from auditkit.results import SEVERITIES

    results = RunResults.read(demo_run / "results.json")
    findings = results.findings()
    ranks = [SEVERITIES.index(f.severity) for f in findings]
    assert ranks == sorted(ranks) and findings
    assert {f.check for f in findings} >= {"clean", "rotation", "attack", "gate"}
    assert all(f.anchor and f.text.endswith((".", ")")) for f in findings)
    stored = json.loads((demo_run / "results.json").read_text())["findings"]
    assert [f["text"] for f in stored] == [f.text for f in findings]
    # the rotation drop is judged against clean accuracy, in points
    rotation = next(f for f in findings if f.metric.startswith("rotation.mean_accuracy"))
    drop = results.metrics["clean.accuracy"] - results.metrics[rotation.metric]
    assert rotation.value == f"{100 * drop:.1f} pt"
    assert rotation.severity == ("fail" if drop >= 0.20 else "warn" if drop >= 0.05 else "pass")


def test_conditions_decide_the_severities(demo_run: Path) -> None:
    from auditkit.results import Conditions

    results = RunResults.read(demo_run / "results.json")
    lenient = Conditions(warn_drop=0.99, fail_drop=1.0, warn_gap=0.99, fail_gap=1.0)
    strict = Conditions(warn_drop=0.0, fail_drop=0.0, warn_gap=0.0, fail_gap=0.0)
    by_metric = {f.metric: f.severity for f in results.findings(lenient)}
    assert by_metric[next(m for m in by_metric if m.startswith("rotation.mean_accuracy"))] == "pass"
    strict_sev = {f.metric: f.severity for f in results.findings(strict)}
    assert strict_sev[next(m for m in strict_sev if m.startswith("rotation.mean_accuracy"))] == "fail"
    assert Conditions().gap(0.047, significant=True) == "warn"
    assert Conditions().gap(0.2, significant=False) == "warn"
    assert Conditions().gap(0.2, significant=True) == "fail"
    assert Conditions().gap(0.01, significant=False) == "pass"


def test_a_runs_own_conditions_judge_its_findings(demo_run: Path, tmp_path: Path) -> None:
    """warn_drop ... set in auditkit.toml (or as flags) are recorded in the manifest, so the report,
    results.json and the step summary re-judge with them; a crossed pair is refused."""
    import dataclasses

    from auditkit.config import resolve_config
    from auditkit.exceptions import ConfigError
    from auditkit.gate import markdown_summary
    from auditkit.report.html import render_report
    from auditkit.results import Conditions

    (tmp_path / "auditkit.toml").write_text('model = "m.pt"\ndata = "digits"\nwarn_drop = 0.9\nfail_drop = 0.95\n')
    config = resolve_config({}, tmp_path / "auditkit.toml")
    assert (config.warn_drop, config.fail_drop, config.warn_gap) == (0.9, 0.95, 0.05)
    with pytest.raises(ConfigError, match=r"warn_gap .* must not exceed fail_gap"):
        resolve_config({"model": "m.pt", "data": "digits", "warn_gap": 0.5})

    results = RunResults.read(demo_run / "results.json")
    assert Conditions.of(results.manifest) == Conditions()
    rotation = next(m for m in results.metrics if m.startswith("rotation.mean_accuracy"))
    assert {f.metric: f.severity for f in results.findings()}[rotation] == "fail"
    pairs = tuple((k, v) for k, v in results.manifest.config if k not in ("warn_drop", "fail_drop"))
    lenient = dataclasses.replace(
        results,
        manifest=dataclasses.replace(results.manifest, config=(*pairs, ("warn_drop", "0.9"), ("fail_drop", "0.95"))),
        recorded_run_id="",
    )
    assert Conditions.of(lenient.manifest) == Conditions(warn_drop=0.9, fail_drop=0.95)
    assert {f.metric: f.severity for f in lenient.findings()}[rotation] == "pass"
    stored = json.loads(lenient.to_json())["findings"]
    assert next(f for f in stored if f["metric"] == rotation)["severity"] == "pass"
    assert "drops warn from 90.0 pt, fail from 95.0 pt" in render_report(lenient)
    assert "auditkit&#39;s default conditions" in render_report(results)
    from auditkit.gate import GateResult

    gate = results.check(GateResult)
    assert gate is not None
    assert "drops warn from 90.0 pt" in markdown_summary(gate, lenient)


def test_units_people_read() -> None:
    from auditkit.results import eps_label, points

    assert eps_label(8 / 255) == "8/255" and eps_label(1 / 255) == "1/255"
    assert eps_label(0.01) == "0.01" and eps_label(8 / 255, "l2") == "0.03137"
    assert points(0.047) == "4.7 pt" and points(float("nan")) == "n/a"
