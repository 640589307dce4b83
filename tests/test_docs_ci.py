"""docs/ci.md runs as written: its policy gates the demo run, and its shell snippet, verbatim, audits
against a baseline and gates an existing run (the YAML, which needs a CI service, is left out)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

DOC = Path(__file__).resolve().parents[1] / "docs" / "ci.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def commands(snippet: str) -> list[str]:
    """The snippet's commands: continuation lines joined, comments dropped."""
    joined = snippet.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_policy_gates_the_demo_run(demo_run: Path, tmp_path: Path) -> None:
    """Every rule of the documented policy names a metric the demo run has (no 'error' verdict)."""
    import json

    from auditkit.cli import app

    (policy,) = blocks("toml")
    tomllib.loads(policy)
    (tmp_path / "policy.toml").write_text(policy)
    result = CliRunner().invoke(
        app, ["gate", str(demo_run / "results.json"), "--policy", str(tmp_path / "policy.toml"), "--out", str(tmp_path)]
    )
    assert result.exit_code in (0, 1), result.output
    verdicts = json.loads((tmp_path / "results.json").read_text())["checks"][-1]["result"]["verdicts"]
    assert len(verdicts) == policy.count("[[rule]]") and all(v["status"] in ("pass", "fail") for v in verdicts)


def test_the_shell_snippet_runs_verbatim(demo_run: Path, tmp_path: Path) -> None:
    """In a folder laid out as the snippet expects (the demo model, 60 of its test images, the policy,
    a baseline from an earlier run), each command exits 0 or 1 (gate verdicts), never 2 or 3, and
    writes what the doc says it writes."""
    (policy,) = blocks("toml")
    (snippet,) = blocks("bash")
    shutil.copy(demo_run / "model" / "model.safetensors", tmp_path / "model.safetensors")
    shutil.copy(demo_run / "model" / "model.json", tmp_path / "model.json")
    rows = (demo_run / "data" / "test.csv").read_text().splitlines()[:61]
    for row in rows[1:]:
        rel = row.split(",")[0]
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_run / "data" / rel, tmp_path / "data" / rel)
    (tmp_path / "data" / "test.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "policy.toml").write_text(policy)
    bin_dir = str(Path(sys.executable).parent)
    summary = tmp_path / "step-summary.md"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GITHUB_STEP_SUMMARY": str(summary)}
    env["OMP_NUM_THREADS"] = os.environ.get("AUDITKIT_TEST_THREADS", "2")

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )

    audit, gate = commands(snippet)
    assert audit.startswith("auditkit audit") and gate.startswith("auditkit gate")
    # the baseline: the same audit, run earlier (what main's artifact holds)
    first = sh("auditkit audit model.safetensors data/test.csv --out baseline --no-progress")
    assert first.returncode == 0, first.stderr
    ran = sh(audit)
    assert ran.returncode in (0, 1), ran.stdout + ran.stderr
    assert "refused" not in ran.stderr
    for name in ("results.json", "index.html", "gate.xml"):
        assert (tmp_path / "reports" / "ci" / name).is_file()
    assert "| rule |" in summary.read_text()
    again = sh(gate)
    assert again.returncode == ran.returncode, again.stdout + again.stderr
    assert (tmp_path / "gate.xml").is_file()
