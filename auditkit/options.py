"""CLI options derived from the settings declarations: one Typer option per setting, so a command
lists exactly the shared settings and its own checks' settings, with their help and defaults."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic.fields import FieldInfo

from auditkit.settings import Settings

POSITIONAL = ("model", "data")


def _cli_type(tp: Any) -> Any:
    """The type Typer parses for a declared type; pydantic validates the rest afterwards."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return type(typing.get_args(tp)[0])
    if origin is tuple:
        inner = typing.get_args(tp)
        if len(inner) == 2 and inner[1] is Ellipsis:
            return list[inner[0]] if inner[0] is str else str  # type: ignore[valid-type]
        return tp
    return tp


def _help(info: FieldInfo) -> str:
    text = info.description or ""
    default = info.get_default(call_default_factory=True)
    if default not in (None, (), "") and "[default:" not in text and not isinstance(default, bool):
        text += f" [default: {default}]"
    return text


def parameter(kind: type[Settings], name: str) -> inspect.Parameter:
    """The Typer parameter for setting ``name`` of ``kind`` (``None`` = not given on the command line)."""
    info = kind.model_fields[name]
    hint = _cli_type(typing.get_type_hints(kind)[name])
    if name in POSITIONAL:
        marker: Any = typer.Argument(help=info.description, metavar=name.upper(), show_default=False)
    else:
        flag, *short = kind.flag(name).split()
        if hint is bool and "/" not in flag:
            flag = f"{flag}/--no-{flag.removeprefix('--')}"
        if kind.is_multiple(name):
            hint = list[str]
        marker = typer.Option(flag, *short, help=_help(info), show_default=False)
    annotation = Annotated[hint | None, marker]  # type: ignore[valid-type]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def parameters(kinds: Sequence[type[Settings]]) -> list[inspect.Parameter]:
    """Every setting of ``kinds``, positional arguments first."""
    params = [parameter(kind, name) for kind in kinds for name in kind.model_fields]
    return sorted(params, key=lambda p: p.name not in POSITIONAL)


def option(help_text: str, *names: str, tp: Any = Path) -> inspect.Parameter:
    """A command-line-only option (not a setting): ``--config``, ``--policy``, …"""
    name = names[0].removeprefix("--").replace("-", "_")
    annotation = Annotated[tp | None, typer.Option(*names, help=help_text, show_default=False)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def command(body: Callable[[dict[str, Any]], None], params: Sequence[inspect.Parameter]) -> Callable[..., None]:
    """A function Typer can register, whose signature is ``params`` and which calls ``body(values)``."""

    def run(**values: Any) -> None:
        body(values)

    run.__signature__ = inspect.Signature(list(params))  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run
