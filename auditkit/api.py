"""The one run path: settings -> inputs -> checks -> gate -> the written pair -> CI outputs.

The CLI's audit commands, the demo and harden's before/after audits all call :func:`run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from auditkit.audit import make_engine, run_audit, write_outputs
from auditkit.checks.base import CheckFailure
from auditkit.config import AuditConfig
from auditkit.exceptions import ConfigError, Interrupted

if TYPE_CHECKING:
    from auditkit.gate import GateResult, Policy
    from auditkit.results import RunResults


@dataclass(frozen=True)
class Gate:
    """What to gate a run with: a policy, an optional baseline run, and where CI outputs go."""

    policy: Path | None = None
    baseline: Path | None = None
    junit: Path | None = None
    summary: Path | None = None

    def load(self) -> tuple[Policy, RunResults | None] | None:
        """The policy and baseline, read before any work so a bad one fails fast."""
        from auditkit.gate import load_policy
        from auditkit.results import RunResults

        if self.policy is None:
            if self.baseline is not None:
                raise ConfigError("--baseline needs --policy (its [baseline] table lists the metrics to compare)")
            if self.junit is not None or self.summary is not None:
                raise ConfigError("--junit and --summary write the gate's verdicts; they need --policy")
            return None
        return load_policy(self.policy), RunResults.read(self.baseline) if self.baseline is not None else None


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

    @property
    def crashed(self) -> tuple[CheckFailure, ...]:
        return tuple(c for c in self.results.checks if isinstance(c, CheckFailure))


def regate(results: Path, gate: Gate, out: Path | None = None) -> GateResult:
    """Gate a written results.json again (``auditkit gate``); with ``out``, also write the pair with
    the verdicts there. The CI outputs are written in any case."""
    from auditkit.gate import evaluate, with_gate, write_ci_outputs
    from auditkit.results import RunResults

    inputs = gate.load()
    if inputs is None:
        raise ConfigError("--policy is required to gate a results.json")
    loaded = RunResults.read(results)
    verdict = evaluate(loaded, *inputs)
    updated = with_gate(loaded, verdict)
    if out is not None:
        write_outputs(updated, out)
    write_ci_outputs(verdict, updated, junit=gate.junit, summary=gate.summary)
    return verdict


def summary_lines(results: RunResults, json_path: Path | None, html_path: Path | None) -> tuple[list[str], list[str]]:
    """What a finished run tells the user: a headline per check and the paths (stdout), warnings (stderr)."""
    out = [f"{check.kind}: {check.headline()}" for check in results.checks]
    err = [f"warning: {w}" for w in results.manifest.warnings]
    if results.manifest.skipped_files:
        err.append(f"warning: skipped {len(results.manifest.skipped_files)} unreadable image file(s); see the report")
    return [*out, f"results: {json_path}", f"report:  {html_path}"], err


def run(config: AuditConfig, gate: Gate | None = None) -> RunOutput:
    """Run the configured checks, gate them, write results.json + index.html into ``config.out``
    (rank 0 of a torch.distributed job only), then the CI outputs when no check crashed."""
    from auditkit.engine import distributed as dist
    from auditkit.engine.resume import discard

    gate = gate or Gate()
    inputs = gate.load()
    if inputs is not None and inputs[1] is not None:  # refuse a mismatched baseline before any work
        from auditkit.gate import check_settings_comparable

        check_settings_comparable(config.as_pairs(), inputs[1])
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise ConfigError(f"--out {config.out} is an existing file; give a folder for results.json and index.html")
    world = dist.init(config.device, required=config.distributed)
    engine = make_engine(config, world)
    try:
        results = run_audit(config, engine=engine, save_batches=True)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; finished batches are saved: rerun with --resume --out {config.out}") from None
    verdict = None
    if inputs is not None:
        from auditkit.gate import evaluate, with_gate

        verdict = evaluate(results, *inputs)
        results = with_gate(results, verdict)
    json_path = html_path = None
    if world.main:
        json_path, html_path = write_outputs(results, config.out)
        discard(config.out)
    world.barrier()
    dist.shutdown()
    out = RunOutput(results, json_path, html_path, verdict, engine.restored, engine.computed, world.main)
    if verdict is not None and world.main and not out.crashed:
        from auditkit.gate import write_ci_outputs

        write_ci_outputs(verdict, results, junit=gate.junit, summary=gate.summary)
    return out
