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

from auditkit.settings import OUTPUT_PANEL, Settings

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
        text += f" [default: {f'{default:.4g}' if isinstance(default, float) else default}]"
    return text


def parameter(kind: type[Settings], name: str, *, brief: bool = False) -> inspect.Parameter:
    """The Typer parameter for setting ``name`` of ``kind`` (``None`` = not given on the command line), in
    its ``--help`` panel; ``brief``: an advanced setting is accepted but not listed in ``--help``."""
    info = kind.model_fields[name]
    hint = _cli_type(info.annotation)
    panel = kind.panel_of(name)
    if name in POSITIONAL:
        marker: Any = typer.Argument(
            help=info.description, metavar=name.upper(), show_default=False, rich_help_panel=panel
        )
    else:
        flag, *short = kind.flag(name).split()
        if hint is bool and "/" not in flag:
            flag = f"{flag}/--no-{flag.removeprefix('--')}"
        if kind.is_multiple(name):
            hint = list[str]
        hidden = brief and kind.is_advanced(name)
        marker = typer.Option(flag, *short, help=_help(info), show_default=False, rich_help_panel=panel, hidden=hidden)
    annotation = Annotated[hint | None, marker]  # type: ignore[valid-type]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def parameters(kinds: Sequence[type[Settings]], *, brief: bool = False) -> list[inspect.Parameter]:
    """Every setting of ``kinds``, positional arguments first (``brief``: see :func:`parameter`)."""
    params = [parameter(kind, name, brief=brief) for kind in kinds for name in kind.model_fields]
    return sorted(params, key=lambda p: p.name not in POSITIONAL)


def option(help_text: str, *names: str, tp: Any = Path, panel: str | None = None) -> inspect.Parameter:
    """A command-line-only option (not a setting): ``--config``, ``--policy``, …"""
    name = names[0].removeprefix("--").replace("-", "_")
    marker = typer.Option(*names, help=help_text, show_default=False, rich_help_panel=panel)
    annotation = Annotated[tp | None, marker]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def command(body: Callable[[dict[str, Any]], None], params: Sequence[inspect.Parameter]) -> Callable[..., None]:
    """A function Typer can register, whose signature is ``params`` and which calls ``body(values)``."""

    def run(**values: Any) -> None:
        body(values)

    run.__signature__ = inspect.Signature(list(params))  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


# --- help: the options of a command in rich panels, one compact row each ---------------------------------------

PANEL_ORDER = ("Arguments", "Model", "Data", "Run", OUTPUT_PANEL)
TYPE_NAMES = {"str": "TEXT", "int": "INT", "float": "FLOAT", "path": "PATH", "bool": ""}


def _label(param: Any) -> str:
    """``MODEL``, ``--out, -o``, ``--[no-]spatial`` or ``--fresh/--fine-tune``."""
    if param.param_type_name == "argument":
        return str(param.display_name_raw)
    long = [o for o in param.opts if o.startswith("--")]
    short = [o for o in param.opts if not o.startswith("--")]
    first = long[0] if long else short.pop(0)
    if param.secondary_opts:
        other = param.secondary_opts[0]
        first = f"--[no-]{first[2:]}" if other == f"--no-{first[2:]}" else f"{first}/{other}"
    return ", ".join([first, *short])


def _type(param: Any, ctx: Any) -> str:
    """``TEXT``, ``INT INT``, ``TEXT...`` (repeatable); nothing for a flag."""
    shown = str(param.display_type(ctx)).strip("<>")
    inner = shown.removeprefix("list[").removesuffix("]")
    names = [TYPE_NAMES.get(t, t.upper()) for t in inner.split(",")]
    return " ".join(names) + ("..." if inner != shown else "")


def render_help(command: Any, ctx: Any) -> None:
    """Print the help of ``command`` (a command or the group): usage, help text, then its options grouped
    in rich panels by their ``rich_help_panel`` (declared once per setting, see :meth:`Settings.panel_of`),
    one row per option, and a group's commands."""
    from rich import box
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    panels: dict[str, list[tuple[Text, Text, Text]]] = {}
    helper = None
    hidden: list[str] = []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            hidden.append(_label(param))
            continue
        if param.name == "help":
            helper = param
            continue
        default = "Arguments" if param.param_type_name == "argument" else "Options"
        row = (Text(_label(param)), Text(_type(param, ctx)), _help_text(param))
        panels.setdefault(getattr(param, "rich_help_panel", None) or default, []).append(row)
    if helper is not None:
        home = next((p for p in ("Options", "Run") if p in panels), "Options")
        panels.setdefault(home, []).append((Text(_label(helper)), Text(""), _help_text(helper)))
    order = [p for p in PANEL_ORDER if p in panels] + [p for p in panels if p not in PANEL_ORDER and p != "Options"]
    order += ["Options"] if "Options" in panels else []
    if hasattr(command, "list_commands"):
        listed = [(name, command.get_command(ctx, name)) for name in command.list_commands(ctx)]
        rows = [(Text(name), Text(""), Text(cmd.short_help or _short_help(cmd.help or ""))) for name, cmd in listed]
        panels["Commands"], order = rows, [*order, "Commands"]
    label_width = max(len(r[0]) for rows in panels.values() for r in rows)
    type_width = max(len(r[1]) for rows in panels.values() for r in rows)

    console = Console(highlight=False)
    console.print(Text(command.get_usage(ctx), style="bold"))
    for paragraph in (command.help or "").split("\n\n"):
        console.print()
        console.print(Text(" ".join(paragraph.split())))
    console.print()
    for name in order:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(style="bold cyan", no_wrap=True, min_width=label_width)
        table.add_column(style="yellow", no_wrap=True, min_width=type_width)
        table.add_column(ratio=1)
        for row in panels[name]:
            table.add_row(*row)
        console.print(Panel(table, title=name, title_align="left", border_style="dim", box=box.ROUNDED))
    if hidden:
        console.print(Text(f"Also accepted (see auditkit audit --help): {', '.join(hidden)}.", style="dim"))


def _short_help(text: str, limit: int = 100) -> str:
    """The first sentence of a command's help, cut at a word near ``limit`` characters."""
    first = " ".join(text.split(". ")[0].split()).rstrip(".")
    return first if len(first) <= limit else first[: first.rfind(" ", 0, limit - 3)].rstrip(",;:") + "..."


def _help_text(param: Any) -> Any:
    from rich.text import Text

    text = str(getattr(param, "help", None) or "")
    main, sep, default = text.partition(" [default: ")
    out = Text(main)
    if sep:
        out.append(f" [default: {default}", style="dim")
    return out


class Command(typer.core.TyperCommand):
    """A command whose ``--help`` groups its options in rich panels, one row per option."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        render_help(self, ctx)
