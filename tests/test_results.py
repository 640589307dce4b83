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
    assert kinds == ["clean", "rotation", "attack", "saliency", "shortcut", "subgroups", "gate"]
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

    from auditkit.audit import write_outputs
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
