"""Per-batch results persisted atomically, so an interrupted audit resumes where it stopped.

A run's folder is ``OUT/.auditkit-resume/<key>/`` where ``key`` hashes the model, the data and
every setting that changes a result. Inside, each engine loop (``call``) has a folder and each
finished batch one file, written atomically, so a kill can lose at most the batch in flight.
``--resume`` reuses the folder with the same key and refuses when the key changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditkit.exceptions import ConfigError
from auditkit.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    import torch
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")

RESUME_DIR = ".auditkit-resume"


def run_key(parts: Iterable[tuple[str, str]]) -> str:
    """A short hash of ``(name, value)`` pairs: the identity of a run's inputs and settings."""
    digest = hashlib.sha256()
    for name, value in parts:
        digest.update(f"{name}\x1f{value}\x1e".encode())
    return digest.hexdigest()[:20]


class BatchStore:
    """The saved batches of one run, under ``root / key``.

    ``open`` starts a new run (deleting any earlier partial one) or, with ``resume``, reuses the
    folder of the same key; it refuses to resume a run made with another model, data or config.
    """

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.key = key
        self.reused = 0

    @classmethod
    def open(
        cls, out: str | Path, key: str, *, resume: bool, describe: dict[str, str], main: bool = True
    ) -> BatchStore:
        root = Path(out) / RESUME_DIR
        folder = root / key
        if resume:
            if not folder.is_dir():
                others = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
                if others:
                    saved = _read_manifest(root / others[0])
                    changed = [k for k, v in describe.items() if saved.get(k) != v]
                    raise ConfigError(
                        f"cannot --resume: the partial run in {root} was made with a different "
                        f"{', '.join(changed) or 'configuration'}; run without --resume to start over"
                    )
                raise ConfigError(f"nothing to --resume in {root}; run without --resume to start")
        elif main and root.is_dir():
            shutil.rmtree(root, ignore_errors=True)
        if main:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "run.json", json.dumps(describe, indent=1, sort_keys=True))
        return cls(folder, key)

    def _path(self, call: str, start: int, stop: int) -> Path:
        return self.folder / call / f"{start:010d}-{stop:010d}.pt"

    def load(self, call: str, start: int, stop: int) -> list[Any] | None:
        """The outputs saved for samples ``start:stop`` of loop ``call``, or ``None``."""
        path = self._path(call, start, stop)
        if not path.is_file():
            return None
        try:
            out = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a file we cannot read is recomputed, never trusted
            return None
        self.reused += 1
        return list(out)

    def save(self, call: str, start: int, stop: int, outputs: list[Any]) -> None:
        buf = io.BytesIO()
        torch.save(_to_cpu(outputs), buf)
        atomic_write_bytes(self._path(call, start, stop), buf.getvalue())


def discard(out: str | Path) -> None:
    """Remove every saved batch under ``out`` (after the outputs are written)."""
    shutil.rmtree(Path(out) / RESUME_DIR, ignore_errors=True)


def call_name(index: int, description: str) -> str:
    """A folder name for the ``index``-th engine loop of a run."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", description).strip("-")[:60]
    return f"{index:04d}-{slug}"


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _read_manifest(folder: Path) -> dict[str, str]:
    try:
        doc = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in doc.items()}
    except (OSError, ValueError, AttributeError):
        return {}


__all__ = ["RESUME_DIR", "BatchStore", "call_name", "discard", "run_key"]
