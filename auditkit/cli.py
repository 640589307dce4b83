"""The ``auditkit`` command line: parse -> settings -> one library call -> print -> exit code.

Options come from the settings declarations, so ``auditkit rotate --help`` lists only what rotate
uses. Every expected failure is one line on stderr and its exit code (docs/exit-codes.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from auditkit import __version__, options, registry
from auditkit.exceptions import ConfigError
from auditkit.messages import DEBUG, fail, handle_errors, say
from auditkit.settings import (
    OUTPUT_PANEL,
    SHARED,
    DemoSettings,
    EngineSettings,
    HardenSettings,
    InputSettings,
    OutputSettings,
    Settings,
)

CONFIG = options.option("auditkit.toml with the same keys as these flags; flags win.", "--config", "-c", panel="Run")
GATE = [
    options.option("Gate the results with this policy (TOML); exit 1 if a rule fails.", "--policy", panel=OUTPUT_PANEL),
    options.option("A baseline results.json for the policy's [baseline] rules.", "--baseline", panel=OUTPUT_PANEL),
    options.option("Write the gate's verdicts as JUnit XML here.", "--junit", panel=OUTPUT_PANEL),
    options.option("Append a Markdown verdict table here ($GITHUB_STEP_SUMMARY).", "--summary", panel=OUTPUT_PANEL),
]
ResultsArg = Annotated[
    Path, typer.Argument(help="A results.json written by auditkit.", metavar="RESULTS", show_default=False)
]
BaselineOpt = Annotated[Path | None, typer.Option(help="A baseline results.json.", show_default=False)]
JunitOpt = Annotated[Path | None, typer.Option(help="Write the verdicts as JUnit XML here.", show_default=False)]
SummaryOpt = Annotated[Path | None, typer.Option(help="Append a Markdown verdict table here.", show_default=False)]


def _audit_body(checks: tuple[str, ...] | None) -> Callable[[dict[str, Any]], None]:
    @handle_errors
    def body(values: dict[str, Any]) -> None:
        from auditkit import api
        from auditkit.config import resolve_config
        from auditkit.pipeline import raise_for_failures

        config_file = values.pop("config")
        gate = api.Gate(*(values.pop(k) for k in ("policy", "baseline", "junit", "summary")))
        values = {k: (None if v == [] else v) for k, v in values.items()} | {"checks": checks}
        config = resolve_config(values, config_file)
        _output_folder(Path(config.out), "--out")
        _output_file(gate.junit, "--junit")
        _output_file(gate.summary, "--summary")
        out = api.run(config, gate)
        if out.main:
            if values.get("resume"):
                say(f"resumed: {out.restored} batches restored, {out.computed} computed (rank 0)")
            _print_summary(out.results, out.json_path, out.html_path, out.shown)
        raise_for_failures(out.results)
        if out.verdict is not None:
            _finish_gate(out.verdict, quiet=not out.main)

    return body


#: one line per command in ``auditkit --help`` (a check without an entry shows its help's first sentence)
SUMMARIES = {
    "audit": "Every check in one pass; write results.json and index.html.",
    "rotate": "Accuracy against rotation angle, per class, and a worst-of-k spatial attack.",
    "attack": "Robust-accuracy curves over epsilons (Linf, L2) under APGD, PGD, FGSM or foolbox.",
    "corrupt": "Accuracy under natural corruptions (ImageNet-C: noise, blur, fog, digital, scale) at 5 severities.",
    "saliency": "Saliency maps through captum, with the parameter-randomisation sanity check.",
    "shortcut": "Shortcut probes, each against a control: planted cue, cue removal, backgrounds, object position.",
    "subgroups": "Errors per subgroup and intersection, with intervals and disparity tests.",
    "report": "Re-render index.html from a results.json alone.",
    "gate": "Gate a results.json against a policy (and a baseline run): exit 0 pass, 1 fail.",
    "demo": "Train a demo CNN (digits or Fashion-MNIST) and audit it.",
    "harden": "Adversarial and/or rotation training of MODEL, then a before/after audit.",
}


def _register_audit_commands(app: typer.Typer) -> None:
    checks = registry.checks().values()
    every = options.parameters([c.settings_type for c in checks])
    names = ", ".join(c.name for c in checks)
    audit_help = f"Audit MODEL on DATA with every check ({names}); write results.json and index.html."
    app.command("audit", help=audit_help, short_help=SUMMARIES["audit"], cls=options.Command)(
        options.command(_audit_body(None), [*options.parameters(SHARED), CONFIG, *GATE, *every])
    )
    for check in checks:
        if check.command:
            shared = options.parameters(SHARED, brief=True)  # advanced options: accepted, listed by audit --help
            params = [*shared, CONFIG, *GATE, *options.parameters([check.settings_type], brief=True)]
            body = _audit_body(("clean", check.name))
            app.command(check.command, help=check.help, short_help=SUMMARIES.get(check.command), cls=options.Command)(
                options.command(body, params)
            )


def _no_file_above(path: Path, flag: str) -> None:
    """Refuse an output path below a plain file (``a-file/sub``): it could never be created."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
            return


def _output_folder(path: Path, flag: str) -> None:
    """An output folder, checked before any work: not an existing file, not below one."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is an existing file; give a folder for results.json and index.html")
    _no_file_above(path, flag)


def _output_file(path: Path | None, flag: str) -> None:
    """An output file, checked before any work: not an existing folder, not below a file."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give the path of the file to write")
    _no_file_above(path, flag)


def _version(value: bool) -> None:
    if value:
        say(f"auditkit {__version__}")
        raise typer.Exit(0)


def _main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_version)
    ] = False,
) -> None:
    DEBUG[0] = DEBUG[0] or debug


def _single_process(command: str) -> None:
    """Training runs in one process: refuse a torch.distributed launch instead of racing on files."""
    from auditkit.engine.distributed import launched

    if launched():
        raise ConfigError(
            f"auditkit {command} runs in one process; start it without torchrun "
            "(only the audit commands shard over processes)"
        )


def _finish_gate(verdict: Any, *, quiet: bool = False) -> None:
    if not quiet:
        for v in verdict.verdicts:
            say(f"gate {v.status.upper():12s} {v.rule}: {v.message}")
        say(f"gate: {'passed' if verdict.passed else 'FAILED'}")
    if not verdict.passed:
        raise typer.Exit(1)


def _print_summary(results: Any, json_path: Path | None, html_path: Path | None, shown: tuple[str, ...] = ()) -> None:
    from auditkit.api import summary_lines

    out, err = summary_lines(results, json_path, html_path, shown)
    for line in out:
        say(line)
    for line in err:
        say(line, err=True)


@handle_errors
def report(
    results: ResultsArg,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="HTML file to write. [default: index.html beside RESULTS]", show_default=False
        ),
    ] = None,
    baseline: BaselineOpt = None,
) -> None:
    """Re-render the HTML report from a results.json alone, without re-running anything."""
    from auditkit.report.html import write_report
    from auditkit.results import RunResults, pair_notice

    target = out or results.with_name("index.html")
    _output_file(target, "--out")
    before = RunResults.read(baseline) if baseline is not None else None
    loaded = RunResults.read(results)
    notice = pair_notice(results, loaded)
    path = write_report(loaded, target, before)
    if notice and target.resolve() != results.with_name("index.html").resolve():
        say(f"warning: {notice}", err=True)
    say(f"report: {path}")


@handle_errors
def gate(
    results: ResultsArg,
    policy: Annotated[Path, typer.Option(help="Policy TOML: [[rule]] metric/op/value, [baseline].")],
    baseline: BaselineOpt = None,
    junit: JunitOpt = None,
    summary: SummaryOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Also write results.json + index.html with the verdicts here.", show_default=False
        ),
    ] = None,
) -> None:
    """Gate a results.json against a policy (and a baseline run): exit 0 pass, 1 fail."""
    from auditkit.gate import Gate, regate
    from auditkit.results import RunResults, pair_notice

    if out is not None:
        _output_folder(out, "--out")
    _output_file(junit, "--junit")
    _output_file(summary, "--summary")
    notice = pair_notice(results, RunResults.read(results))
    if notice:
        say(f"warning: {notice}", err=True)
    _finish_gate(regate(results, Gate(policy, baseline, junit, summary), out))


@handle_errors
def _demo(values: dict[str, Any]) -> None:
    from auditkit.demo import run_named_demo

    settings = DemoSettings.build(values)
    EngineSettings.build({"device": settings.device})  # a bad --device fails before any training
    if settings.out is not None:
        _output_folder(Path(settings.out), "--out")
    _single_process("demo")
    for line in run_named_demo(settings):
        say(line)


DEMO_HELP = (
    "Train a demo CNN and audit it: the embedded digits (no download; writes the dataset as PNG + CSV with a "
    "synthetic 'site' column, the model and the report under --out), or the real Fashion-MNIST (trains on its "
    "60,000 training images in a few minutes on a CPU and audits a seeded sample of its test split)."
)


HARDEN_HELP = (
    "Adversarial training (PGD, fast FGSM, TRADES) and/or rotation augmentation of MODEL on DATA, then the same "
    "audit of the original and the new model, side by side. Writes OUT/model.safetensors (+ model.json), "
    "OUT/checkpoint.pt (every epoch; --resume continues from it), OUT/before/ and OUT/results.json + index.html."
)


def _harden_params() -> list[Any]:
    from auditkit.checks.attack import AttackSettings
    from auditkit.checks.rotation import RotationSettings

    engine = [n for n in EngineSettings.model_fields if n not in ("resume", "distributed", "stream", "workers")]
    picked: list[tuple[type[Settings], list[str]]] = [
        (InputSettings, list(InputSettings.model_fields)),
        (EngineSettings, engine),
        (OutputSettings, ["out"]),
    ]
    picked += [(AttackSettings, ["strength", "epsilons", "restarts"]), (RotationSettings, ["angles"])]
    params = [options.parameter(kind, name) for kind, names in picked for name in names]
    return params + options.parameters([HardenSettings])


@handle_errors
def _harden(values: dict[str, Any]) -> None:
    from auditkit.config import resolve_config
    from auditkit.training.harden import harden_config, run_harden

    own = {k: values.pop(k) for k in HardenSettings.model_fields}
    cfg = harden_config(
        HardenSettings.build(own),
        resolve_config({**values, "out": values["out"] if values["out"] is not None else "reports/harden"}),
    )
    _output_folder(Path(cfg.audit.out), "--out")
    say(f"hardening with {cfg.train.label}; auditing the original model first")
    _single_process("harden")
    result = run_harden(cfg, on_epoch=lambda log: say(f"epoch {log.epoch}/{cfg.train.epochs}: {log.describe()}"))
    out, err = result.summary_lines()
    for line in err:
        say(line, err=True)
    for line in out:
        say(line)


class OneLineUsageErrors(TyperGroup):
    """Click's own usage errors (an unknown option, a value of the wrong type, a flag given a value,
    a missing option) as the one ``auditkit: error:`` line every other error is, exit 2."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        options.render_help(self, ctx)

    def _usage_error(self, exc: Any, args: list[str]) -> str:
        """One line: click's message, which commands take an option this one does not, where to look."""
        ctx = getattr(exc, "ctx", None)
        name = ctx.info_name if ctx is not None and ctx.parent is not None else None
        name = name or next((a for a in args if a in self.commands), None)
        message = exc.format_message().rstrip(".")
        option = getattr(exc, "option_name", None)
        if option and any(option in p.opts for p in self.params):  # ``--debug=1``: an option of auditkit itself
            name = None
        if type(exc).__name__ == "NoSuchOption" and option and name:
            takers = [n for n, c in self.commands.items() if any(option in p.opts for p in c.params)]
            if takers:
                message = f"No such option for {name}: {option} (an option of {', '.join(takers)})"
        return f"{message} (see auditkit {name + ' ' if name else ''}--help)"

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:  # typer's click: UsageError, BadParameter, NoSuchOption, ...
            code = getattr(exc, "exit_code", 2)
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare ``auditkit``: the help, as before
                exc.show()  # type: ignore[attr-defined]
                sys.exit(code)
            fail(self._usage_error(exc, list(sys.argv[1:] if args is None else args)), code)
            sys.exit(code)
        except typer.Abort:
            fail("aborted", 1)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def build_app() -> typer.Typer:
    """The CLI: one command per registered check with a ``command``, ``audit`` with them all, and
    report, gate, demo and harden. Built from the registry, so a new check brings its command."""
    app = typer.Typer(
        name="auditkit",
        help="Robustness and fairness audits for trained image classifiers (PyTorch CNNs).\n\n"
        "Exit codes: 0 ok, 1 a gate failed, 2 usage/config error, 3 could not complete, "
        "4 untrusted model refused, 130 interrupted.",
        cls=OneLineUsageErrors,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    app.callback()(_main_options)
    _register_audit_commands(app)
    for fn in (report, gate):
        app.command(short_help=SUMMARIES[fn.__name__], cls=options.Command)(fn)

    app.command("demo", help=DEMO_HELP, short_help=SUMMARIES["demo"], cls=options.Command)(
        options.command(_demo, options.parameters([DemoSettings]))
    )
    app.command("harden", help=HARDEN_HELP, short_help=SUMMARIES["harden"], cls=options.Command)(
        options.command(_harden, _harden_params())
    )
    return app


app = build_app()


def main() -> None:  # pragma: no cover - console entry for ``python -m auditkit``
    app(prog_name="auditkit")
    sys.exit(0)
