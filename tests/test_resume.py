"""Resumable audits: a killed run resumes to the identical results.json, recomputing nothing finished."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from auditkit.cli import app
from auditkit.engine.loop import Engine
from auditkit.engine.resume import RESUME_DIR, BatchStore, call_name, run_key
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import load_dataset
from tests.conftest import comparable, scale_args, single_thread_env


def _saved(out: Path) -> list[Path]:
    return sorted((out / RESUME_DIR).glob("*/*/*.pt"))


def test_killed_run_resumes_to_the_identical_results(demo_run: Path, scale_reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "auditkit", *scale_args(demo_run, out)]
    proc = subprocess.Popen(cmd, env=single_thread_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    # kill -9 while the PGD curve is under way: some of its batches are saved, the rest are not
    while not any("PGD" in p.parent.name for p in _saved(out)) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    finished = len(_saved(out))
    assert finished >= 8  # at least the clean pass (7 batches) and one attack batch

    done = subprocess.run([*cmd, "--resume"], env=single_thread_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    restored = re.search(r"resumed: (\d+) batches restored, (\d+) computed", done.stdout)
    assert restored is not None, done.stdout
    assert int(restored.group(1)) == finished  # nothing finished was recomputed
    assert int(restored.group(2)) > 0
    assert comparable(out / "results.json") == comparable(scale_reference)
    assert not (out / RESUME_DIR).exists()  # cleaned up once the outputs are written


def test_resume_refuses_changed_settings_and_missing_runs(demo_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, scale_args(demo_run, out, "--resume"))
    assert result.exit_code == 2
    assert "nothing to --resume" in result.output
    # leave a partial run behind, as an interrupted one would
    store_root = out / RESUME_DIR / "0123"
    store_root.mkdir(parents=True)
    (store_root / "run.json").write_text(json.dumps({"model": "m", "data": "d", "config": "c"}))
    result = runner.invoke(app, scale_args(demo_run, out, "--resume"))
    assert result.exit_code == 2
    assert "different model, data, config" in result.output
    assert "\n" not in result.output.strip()


def test_engine_restores_saved_batches_instead_of_computing(tmp_path: Path) -> None:
    data = load_dataset("digits", limit=50)
    calls: list[int] = []

    def fn(b: object) -> torch.Tensor:
        calls.append(b.start)  # type: ignore[attr-defined]
        return b.x.sum(dim=(1, 2, 3)).cpu()  # type: ignore[attr-defined]

    def run(resume: bool, interrupt_after: int | None = None) -> tuple[torch.Tensor, Engine]:
        engine = Engine(device="cpu", batch_size=8, progress=False)
        engine.store = BatchStore.open(tmp_path, "k1", resume=resume, describe={"k": "1"})
        outs = []
        for i, out in enumerate(engine.map(fn, data, description="sum")):
            outs.append(out)
            if interrupt_after is not None and i + 1 == interrupt_after:
                raise KeyboardInterrupt
        return torch.cat(outs), engine

    with pytest.raises(KeyboardInterrupt):
        run(resume=False, interrupt_after=3)
    assert calls == [0, 8, 16]
    calls.clear()
    resumed, engine = run(resume=True)
    assert calls == [24, 32, 40, 48]  # the first three batches came from disk
    assert (engine.restored, engine.computed) == (3, 4)
    fresh = Engine(device="cpu", batch_size=8, progress=False)
    assert torch.equal(resumed, torch.cat(list(fresh.map(fn, data, description="sum"))))


def test_a_new_run_replaces_an_old_partial_one(tmp_path: Path) -> None:
    old = BatchStore.open(tmp_path, "old", resume=False, describe={})
    old.save(call_name(0, "x"), 0, 1, [torch.ones(1)])
    assert old.load(call_name(0, "x"), 0, 1) == [torch.ones(1)]
    assert old.load(call_name(0, "x"), 0, 2) is None  # another batch grid (e.g. after OOM back-off): recomputed
    BatchStore.open(tmp_path, "new", resume=False, describe={})
    assert [p.name for p in (tmp_path / RESUME_DIR).iterdir()] == ["new"]
    with pytest.raises(ConfigError):
        BatchStore.open(tmp_path, "other", resume=True, describe={})
    assert run_key([("a", "1")]) != run_key([("a", "2")])


def test_ctrl_c_exits_130_and_says_how_to_resume(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import auditkit.checks.rotation as rotation

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rotation.RotationSweep, "_run", interrupted)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, scale_args(demo_run, out))
    assert result.exit_code == 130
    assert f"rerun with --resume --out {out}" in result.output
    assert _saved(out)  # the clean pass finished before the interruption and is kept
    assert not (out / "results.json").exists()


def test_corruption_sweep_resumes_to_the_identical_result(tmp_path: Path) -> None:
    """Interrupted after two of its five batches, the corruption sweep restores them and draws the same
    random corruptions for the rest (each batch's seed depends only on the run's seed and its start)."""
    from auditkit.checks.corrupt import CorruptionSweep
    from auditkit.zoo import digits_cnn

    data = load_dataset("digits", limit=40)
    torch.manual_seed(0)
    net = digits_cnn(width=4).eval()
    check = CorruptionSweep(corruptions=("gaussian_noise", "elastic_transform"), severities=(2, 5), strips=0)
    calls = {"n": 0}

    def interrupt(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 5 + 2 * 4 + 1:  # the clean pass (5 batches), two sweep batches of 4 forwards each
            raise KeyboardInterrupt

    def run(resume: bool) -> tuple[dict[str, float], Engine]:
        engine = Engine(device="cpu", batch_size=8, progress=False, seed=1)
        engine.store = BatchStore.open(tmp_path, "corrupt", resume=resume, describe={"k": "1"})
        return check.run(net, data, engine=engine).metrics(), engine

    hook = net.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(resume=False)
    hook.remove()
    resumed, engine = run(resume=True)
    assert engine.restored == 5 + 2 and engine.computed == 3
    fresh = check.run(net, data, engine=Engine(device="cpu", batch_size=8, progress=False, seed=1)).metrics()
    assert resumed == fresh


def test_batches_saved_by_older_code_are_refused_not_misread(tmp_path: Path) -> None:
    """A partial run saved before the batch layout changed (its run.json has no 'batches' entry) is
    refused by name, even when model, data and settings match."""
    from auditkit.exceptions import ConfigError
    from auditkit.pipeline import BATCH_FORMAT

    describe = {"model": "m", "data": "d", "config": "c", "device": "cpu", "auditkit": "0.1.0"}
    old = tmp_path / RESUME_DIR / "old"
    old.mkdir(parents=True)
    (old / "run.json").write_text(json.dumps(describe))
    with pytest.raises(ConfigError, match=r"made with a different batches;"):
        BatchStore.open(tmp_path, "new", resume=True, describe={**describe, "batches": BATCH_FORMAT})
