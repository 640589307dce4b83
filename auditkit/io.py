"""Atomic file writes: a crash never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditkit.exceptions import ConfigError, OutputWriteError

if TYPE_CHECKING:
    from auditkit.results import RunResults


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    return atomic_write_files([(Path(path), data)])[0]


def atomic_write_files(files: Sequence[tuple[Path, bytes]]) -> list[Path]:
    """Write several files as one unit: every file goes to a temporary file in its folder first
    (flushed to disk), and only when all are written are they renamed into place, one after the
    other. A failure while writing (a full disk) leaves every old file as it was and no temporary
    file behind. Returns the target paths.
    """
    temps: list[tuple[str, Path]] = []
    try:
        for target, data in files:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            except OSError as exc:
                raise OutputWriteError(f"cannot write {target}: {exc.strerror or exc}") from exc
            temps.append((tmp, target))
            try:
                os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; honour the umask like open() does
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise OutputWriteError(f"cannot write {target}: {exc.strerror or exc}") from exc
        for tmp, target in temps:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise OutputWriteError(f"cannot write {target}: {exc.strerror or exc}") from exc
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    return [target for target, _ in files]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file; unreadable or invalid files are a :class:`ConfigError` naming ``what``."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc


def write_outputs(results: RunResults, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``index.html`` into ``out_dir`` as a pair: both are rendered and
    written to temporary files first, then renamed into place, so a failure (a full disk) leaves
    the old pair untouched. Both carry the same run id."""
    from auditkit.report.html import render_report

    out = Path(out_dir)
    html = render_report(results)
    json_path, html_path = atomic_write_files(
        [(out / "results.json", results.to_json().encode()), (out / "index.html", html.encode())]
    )
    return json_path, html_path
