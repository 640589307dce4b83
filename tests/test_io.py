from __future__ import annotations

import os
from pathlib import Path

import pytest

from auditkit.exceptions import OutputWriteError
from auditkit.io import atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "results.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert os.listdir(target.parent) == ["results.json"]


def test_crash_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "index.html"
    target.write_text("old report")

    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new report " * 1000)
    assert target.read_text() == "old report"
    assert os.listdir(tmp_path) == ["index.html"]


def test_unwritable_destination_is_an_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputWriteError, match="cannot write"):
        atomic_write_text(blocker / "results.json", "{}")


def test_a_pair_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from auditkit.io import atomic_write_files

    old = {"results.json": "old results", "index.html": "old report"}
    for name, text in old.items():
        (tmp_path / name).write_text(text)
    real_fsync, calls = os.fsync, []

    def disk_full_on_second_file(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_on_second_file)
    pair = [(tmp_path / "results.json", b"new results"), (tmp_path / "index.html", b"new report")]
    with pytest.raises(OutputWriteError, match=r"index\.html: No space left on device"):
        atomic_write_files(pair)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == old  # both old, no temporary file left
    monkeypatch.setattr(os, "fsync", real_fsync)
    atomic_write_files(pair)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "results.json": "new results",
        "index.html": "new report",
    }
