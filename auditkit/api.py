"""The one run path: settings -> inputs -> checks -> gate -> the written pair -> CI outputs.

The CLI's audit commands, the demo, harden's before/after audits and the Python API
(:func:`audit`, ``auditkit.audit``) all call :func:`run`.
"""

from __future__ import annotations

import difflib
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from auditkit import registry
from auditkit.checks.base import Check, CheckFailure
from auditkit.config import AuditConfig, all_keys
from auditkit.exceptions import ConfigError, Interrupted
from auditkit.gate import Gate
from auditkit.inputs.data import InMemoryData, describe_in_memory
from auditkit.inputs.models import module_label
from auditkit.pipeline import InMemory, make_engine, raise_for_failures, run_audit, write_outputs

if TYPE_CHECKING:
    from auditkit.gate import GateResult
    from auditkit.results import RunResults


@dataclass(frozen=True)
class RunOutput:
    """A finished run: its results, where they were written (rank 0), the verdict, resume counts."""

    results: RunResults
    json_path: Path | None
    html_path: Path | None
    verdict: GateResult | None
    restored: int
    computed: int
    main: bool
    #: headlines already printed (above the progress bars) on the terminal stdout writes to
    shown: tuple[str, ...] = ()

    @property
    def crashed(self) -> tuple[CheckFailure, ...]:
        return tuple(c for c in self.results.checks if isinstance(c, CheckFailure))


def summary_lines(
    results: RunResults, json_path: Path | None, html_path: Path | None, shown: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """What a finished run tells the user: a headline per check and the paths (stdout), warnings
    (stderr); headlines in ``shown`` (already on the same terminal) are not repeated."""
    out = [line for check in results.checks if (line := f"{check.kind}: {check.headline()}") not in shown]
    err = [f"warning: {w}" for w in results.manifest.warnings]
    if results.manifest.skipped_files:
        err.append(f"warning: skipped {len(results.manifest.skipped_files)} unreadable image file(s); see the report")
    return [*out, f"results: {json_path}", f"report:  {html_path}"], err


def run(
    config: AuditConfig, gate: Gate | None = None, *, given: InMemory | None = None, write: bool = True
) -> RunOutput:
    """Run the configured checks, gate them, write results.json + index.html into ``config.out``
    (rank 0 of a torch.distributed job only), then the CI outputs when no check crashed.

    ``given`` hands over a model and/or data held in memory (the Python API) in place of the files
    ``config`` names; ``write=False`` writes nothing at all (no pair, no batches saved for resuming).
    """
    from auditkit.engine import distributed as dist
    from auditkit.engine.resume import discard

    gate = gate or Gate()
    inputs = gate.load()
    if inputs is not None and inputs[1] is not None:  # refuse a mismatched baseline before any work
        from auditkit.gate import check_settings_comparable

        check_settings_comparable(config.as_pairs(), inputs[1])
    if not write and config.resume:
        raise ConfigError("resume continues a run saved in an output folder; give the folder (out=)")
    if write and Path(config.out).exists() and not Path(config.out).is_dir():
        raise ConfigError(f"--out {config.out} is an existing file; give a folder for results.json and index.html")
    world = dist.init(config.device, required=config.distributed)
    engine = make_engine(config, world)
    try:
        results = run_audit(config, engine=engine, save_batches=write, given=given)
    except KeyboardInterrupt:
        if not write:
            raise
        raise Interrupted(f"interrupted; finished batches are saved: rerun with --resume --out {config.out}") from None
    verdict = None
    if inputs is not None:
        from auditkit.gate import evaluate, with_gate

        verdict = evaluate(results, *inputs)
        results = with_gate(results, verdict)
    json_path = html_path = None
    if world.main and write:
        json_path, html_path = write_outputs(results, config.out)
        discard(config.out)
    world.barrier()
    dist.shutdown()
    shown = tuple(getattr(engine.sink, "shown_on_stdout", ()))
    out = RunOutput(results, json_path, html_path, verdict, engine.restored, engine.computed, world.main, shown)
    if verdict is not None and world.main and not out.crashed:
        from auditkit.gate import write_ci_outputs

        write_ci_outputs(verdict, results, junit=gate.junit, summary=gate.summary)
    return out


ModelSource = nn.Module | str | os.PathLike[str]
DataSource = InMemoryData | str | os.PathLike[str]


def audit(
    model: ModelSource,
    data: DataSource,
    *,
    checks: str | Sequence[str | type[Check]] | None = None,
    out: str | os.PathLike[str] | None = None,
    policy: str | os.PathLike[str] | None = None,
    baseline: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> RunResults:
    """Audit ``model`` on ``data``: what ``auditkit audit`` does, from Python, through the same run path.

    ``model``: an ``nn.Module`` held in memory, taking ``(N, C, H, W)`` images as the settings describe
    (``mean``/``std``, ``input_size``, ``channels``, ``class_names``, ``output``: it is wrapped exactly as a
    model file is), or a model file or folder as the CLI takes it. Moved to the run's device while it
    runs, then back; its train/eval mode is restored.

    ``data``: ``(x, y)`` or ``(x, y, metadata)`` with ``x`` ``(N, C, H, W)`` float in ``[0, 1]`` (or uint8),
    ``y`` ``(N,)`` integer class indices and ``metadata`` a dict of per-image columns (subgroups, cue
    boxes); a torch ``Dataset`` of ``(image, label)`` items (a ``(C, H, W)`` tensor in ``[0, 1]`` or a PIL
    image); a ``DataLoader`` of ``(images, labels)`` batches; or a path or ``"digits"`` as the CLI takes
    them. Images are stored as 8-bit pixels, as every loader stores them.

    ``checks``: names (or classes) of the checks to run, e.g. ``["rotation", "attack"]``; the clean check
    runs first, as in every CLI command. Default: every check, as ``auditkit audit``.

    ``out``: a folder to write results.json and index.html into, as the CLI does; ``None`` writes nothing.
    ``policy``/``baseline``: gate the results as ``--policy``/``--baseline`` do (the verdict is
    ``results.check(GateResult)``).

    ``settings``: every other setting, by its auditkit.toml key (the CLI flag with ``_``):
    ``device="cpu"``, ``strength="fast"``, ``angles="-30:30:10"``, ``epsilons=[0, 0.01]``, ``mean=(0.1,)``.

    Wrong names or values raise :class:`ConfigError`, bad data :class:`DataError`, a model that fails
    :class:`ModelError`; a check that crashes raises :class:`RunError` (after ``out`` is written).
    """
    values = _settings(settings)
    net: nn.Module | None = None
    if isinstance(model, nn.Module):
        net, values["model"] = model, module_label(model)
    elif isinstance(model, (str, os.PathLike)):
        values["model"] = os.fspath(model)
    else:
        raise ConfigError(f"model must be an nn.Module or a model file or folder; got a {type(model).__name__}")
    held: InMemoryData | None = None
    if isinstance(data, (str, os.PathLike)):
        values["data"] = os.fspath(data)
    else:
        held, values["data"] = data, describe_in_memory(data)
    values["checks"] = _check_names(checks)
    if out is not None:
        values["out"] = str(_path(out, "out"))
    config = AuditConfig(**values)
    given = InMemory(model=net, data=held)
    gate = Gate(policy=_path(policy, "policy"), baseline=_path(baseline, "baseline"))
    device = _device_of(net)
    try:
        output = run(config, gate, given=given, write=out is not None)
    finally:
        if net is not None and device is not None and _device_of(net) != device:
            net.to(device)
    raise_for_failures(output.results)
    return output.results


def _device_of(net: nn.Module | None) -> Any:
    """The device of a module's first parameter or buffer (``None``: it has none)."""
    if net is None:
        return None
    first = next(itertools.chain(net.parameters(), net.buffers()), None)
    return first.device if first is not None else None


def _path(value: object, name: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a path; got a {type(value).__name__}")
    return Path(value)


SETTINGS_GIVEN_BY_ARGUMENT = ("model", "data", "checks", "out", "check_settings")


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``**settings`` checked by name (one line naming the closest setting, and all of them); their
    values are validated by :class:`AuditConfig` as the CLI's and the config file's are."""
    known = sorted(k for k in all_keys() if k not in SETTINGS_GIVEN_BY_ARGUMENT)
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"audit() got an unknown setting {key!r}{hint}; the settings are the keys of auditkit.toml: "
                f"{', '.join(known)}"
            )
    names = settings.get("class_names")
    if isinstance(names, (list, tuple)) and any("," in str(n) for n in names):
        raise ConfigError(f"class_names: a class name cannot contain a comma, got {list(names)[:10]}")
    return dict(settings)


def _check_names(checks: str | Sequence[str | type[Check]] | None) -> tuple[str, ...]:
    """The checks to run, by name: ``"rotation,attack"``, ``["rotation", "attack"]`` or check classes;
    the clean check first, as every CLI command runs it."""
    known = registry.checks()
    if checks is None:
        return tuple(known)
    items: list[object]
    if isinstance(checks, str):
        items = [c.strip() for c in checks.split(",")]
    elif isinstance(checks, type):
        items = [checks]
    elif isinstance(checks, Iterable):
        items = list(checks)
    else:
        raise ConfigError(f"checks must be a list of check names ({', '.join(known)}); got {checks!r}")
    commands = {c.command: c.name for c in known.values() if c.command and c.command != c.name}
    names = []
    for item in items:
        name = item.name if isinstance(item, type) and issubclass(item, Check) else item
        if not isinstance(name, str) or name not in known:
            hint = (
                f" (the check of `auditkit {name}` is {commands[name]!r})"
                if isinstance(name, str) and name in commands
                else ""
            )
            raise ConfigError(f"checks must be among {', '.join(known)}; got {name!r}{hint}")
        names.append(name)
    return tuple(dict.fromkeys(["clean", *names]))
