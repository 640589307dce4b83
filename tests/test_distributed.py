"""torch.distributed audits: 2 CPU processes with gloo give a single process's results exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from auditkit.engine.distributed import World, init
from auditkit.exceptions import ConfigError
from tests.conftest import comparable, scale_args, single_thread_env


def test_shards_are_disjoint_and_cover_every_batch() -> None:
    for n in (0, 1, 7, 8, 13):
        for size in (1, 2, 3, 5):
            shards = [list(World(rank, size).shard(n)) for rank in range(size)]
            flat = sorted(i for s in shards for i in s)
            assert flat == list(range(n))  # none lost, none twice, also when size does not divide n


def test_one_process_world_gathers_in_order() -> None:
    assert World().gather([(2, "c"), (0, "a"), (1, "b")]) == [(0, "a"), (1, "b"), (2, "c")]


def test_distributed_flag_without_launcher_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init("cpu") == World()
    with pytest.raises(ConfigError, match="torchrun"):
        init("cpu", required=True)


def test_torchrun_two_gloo_ranks_equal_a_single_process(demo_run: Path, scale_reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533"]
    cmd += ["-m", "auditkit", *scale_args(demo_run, out)]
    done = subprocess.run(cmd, env=single_thread_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results: ") == 1  # rank 0 alone writes and prints
    multi, single = comparable(out / "results.json"), comparable(scale_reference)
    assert multi["metrics"] == single["metrics"]  # every metric and interval bound
    assert multi["samples"] == single["samples"]  # every per-image outcome
    assert multi["checks"] == single["checks"]  # curves, intervals, galleries, verdicts
    assert multi == single
    assert not (out / ".auditkit-resume").exists()


def test_training_commands_refuse_a_distributed_launch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from auditkit.cli import app

    monkeypatch.setenv("WORLD_SIZE", "2")
    for args in (["demo", "--out", str(tmp_path)], ["harden", "m.safetensors", "digits:train", "--out", str(tmp_path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "runs in one process; start it without torchrun" in result.output
    assert not any(tmp_path.iterdir())
