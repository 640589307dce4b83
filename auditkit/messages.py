"""The one place every message to the user goes through: one line, safe for CI logs, and the
documented exit code for every failure (docs/exit-codes.md)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click
import typer

from auditkit.exceptions import AuditkitError

F = TypeVar("F", bound=Callable[..., Any])
DEBUG = [bool(os.environ.get("AUDITKIT_DEBUG"))]


def one_line(text: str) -> str:
    """``text`` on one line that a CI log cannot read as a command: newlines become spaces and a
    leading ``::`` (GitHub Actions' workflow-command prefix) is broken up."""
    flat = " ".join(str(text).split())
    return ": :" + flat[2:] if flat.startswith("::") else flat


def say(text: str, *, err: bool = False) -> None:
    """Print one line (see :func:`one_line`)."""
    typer.echo(one_line(text), err=err)


def fail(message: str, code: int) -> typer.Exit:
    say(f"auditkit: error: {message}", err=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn every failure into one line on stderr and its exit code; a truly unexpected exception
    is exit 3, with the traceback only under ``auditkit --debug`` (or ``AUDITKIT_DEBUG=1``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AuditkitError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; files already written were kept", 130) from None
        except MemoryError:
            raise fail("out of memory; lower --batch-size or use --limit/--sample", 3) from None
        except (typer.Exit, typer.Abort, typer.TyperException, click.ClickException):
            raise
        except Exception as exc:
            if DEBUG[0]:
                raise
            text = str(exc)[:200]
            raise fail(
                f"unexpected {type(exc).__name__}: {text}; rerun with auditkit --debug for the traceback", 3
            ) from None

    return wrapper  # type: ignore[return-value]
