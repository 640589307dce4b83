"""The ``auditkit`` command line: parse -> config -> one library call -> print -> exit code.

Every expected failure is an :class:`AuditkitError` and becomes a one-line message on stderr
and its exit code (docs/exit-codes.md); no traceback reaches the user.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from auditkit.exceptions import AuditkitError, ConfigError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="auditkit",
    help="Robustness and fairness audits for trained image classifiers (PyTorch CNNs).\n\n"
    "Exit codes: 0 ok, 1 a gate failed, 2 usage/config error, 3 could not complete, "
    "4 untrusted model refused, 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"auditkit: error: {message}", err=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn auditkit errors and Ctrl-C into a one-line message and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AuditkitError as exc:
            raise _fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise _fail("interrupted; files already written were kept", 130) from None
        except MemoryError:
            raise _fail("out of memory; lower --batch-size or use --limit/--sample", 3) from None

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------- shared options
ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="Model file or folder (safetensors, state_dict .pt, TorchScript, .pt2, pickled module).",
        show_default=False,
    ),
]
DataArg = Annotated[
    str | None,
    typer.Argument(help="Dataset: image folder, CSV manifest (path,label,...), .npz, or 'digits'.", show_default=False),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="auditkit.toml with the same keys as these flags; flags win.", show_default=False
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        help="Architecture for weights-only files: torchvision:<name>, auditkit.zoo:<name> or package.module:factory.",
        show_default=False,
    ),
]
NumClassesOpt = Annotated[
    int | None, typer.Option(help="Number of outputs to build the architecture with.", show_default=False)
]
InputSizeOpt = Annotated[
    tuple[int, int] | None, typer.Option(help="Model input size H W; images are resized to it.", show_default=False)
]
ChannelsOpt = Annotated[int | None, typer.Option(help="Input channels the model expects (1 or 3).", show_default=False)]
MeanOpt = Annotated[
    str | None,
    typer.Option(
        help="Normalisation mean per channel, comma-separated, in [0,1] pixel units (e.g. 0.485,0.456,0.406).",
        show_default=False,
    ),
]
StdOpt = Annotated[str | None, typer.Option(help="Normalisation std per channel, comma-separated.", show_default=False)]
TrustOpt = Annotated[
    bool | None,
    typer.Option(
        "--trust-model/--no-trust-model",
        help="Allow TorchScript, .pt2 and pickled modules, which can run code when loaded.",
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="auto, cpu, cuda (or cuda:N) or mps. [default: auto]", show_default=False)
]
BatchOpt = Annotated[
    int | None,
    typer.Option(help="Batch size (halved automatically on CUDA out-of-memory). [default: 256]", show_default=False),
]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed. [default: 0]", show_default=False)]
DeterministicOpt = Annotated[
    bool | None,
    typer.Option("--deterministic/--no-deterministic", help="Use deterministic torch algorithms.", show_default=False),
]
LimitOpt = Annotated[int | None, typer.Option(help="Use only the first N samples.", show_default=False)]
SampleOpt = Annotated[int | None, typer.Option(help="Use a seeded random sample of N samples.", show_default=False)]
BadOpt = Annotated[
    float | None,
    typer.Option(
        help="Fail (exit 3) when more than this share of image files is unreadable. [default: 0.05]", show_default=False
    ),
]
OutOpt = Annotated[
    str | None,
    typer.Option(
        "--out",
        "-o",
        help="Output folder for results.json and index.html. [default: reports/latest]",
        show_default=False,
    ),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars on a terminal.")]
ResumeOpt = Annotated[
    bool | None,
    typer.Option(
        "--resume/--no-resume",
        help="Continue an interrupted run in the same --out folder: finished batches are not recomputed. "
        "Refused when the model, data or settings changed.",
        show_default=False,
    ),
]
DistributedOpt = Annotated[
    bool | None,
    typer.Option(
        "--distributed/--no-distributed",
        help="Require a torch.distributed launcher (torchrun sets it up; it is used automatically when present).",
        show_default=False,
    ),
]
StreamOpt = Annotated[
    str | None,
    typer.Option(
        help="Keep image files on disk and decode them batch by batch: auto (past 1 GiB of pixels), on, off. "
        "[default: auto]",
        show_default=False,
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(help="DataLoader worker processes decoding streamed images. [default: 0]", show_default=False),
]
AmpAttackOpt = Annotated[
    bool | None,
    typer.Option(
        "--amp-attack/--no-amp-attack",
        help="Also run gradient work (attacks, saliency) under --amp: faster on GPUs, but low-precision "
        "gradients can weaken an attack; compare with an fp32 run before trusting it.",
        show_default=False,
    ),
]
AmpOpt = Annotated[
    str | None,
    typer.Option(
        help="Mixed precision for forward-only checks: off, bf16 or fp16 (CUDA). Attacks stay fp32 unless "
        "--amp-attack. [default: off]",
        show_default=False,
    ),
]


def _floats(name: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--{name} takes comma-separated numbers like 0.485,0.456,0.406, got {text!r}") from None


def _opt(help_text: str, *names: str) -> Any:
    return typer.Option(*names, help=help_text, show_default=False)


AnglesOpt = Annotated[
    str | None, _opt("Rotation angles: start:stop:step (inclusive) or a list. [default: -180:180:10]")
]
MeanRangeOpt = Annotated[float | None, _opt("Summarise mean accuracy over +/- this many degrees. [default: 30]")]
FractionOpt = Annotated[
    float | None, _opt("Report the first angle where accuracy falls below this fraction of clean. [default: 0.5]")
]
InterpOpt = Annotated[str | None, _opt("Interpolation: bilinear or nearest. [default: bilinear]")]
FillOpt = Annotated[str | None, _opt("What fills the corners: zeros, border or reflection. [default: zeros]")]
SpatialOpt = Annotated[
    bool | None, _opt("Run the spatial attack (rotations x translations grid).", "--spatial/--no-spatial")
]
SpatialAnglesOpt = Annotated[str | None, _opt("Angles of the spatial attack grid. [default: -30:30:6]")]
TranslateOpt = Annotated[float | None, _opt("Largest shift in pixels of the spatial attack grid. [default: 3]")]
TranslateStepsOpt = Annotated[int | None, _opt("Shift values per axis, from -translate to +translate. [default: 5]")]
AttackOpt = Annotated[
    str | None, _opt("pgd, fgsm or foolbox:<AttackName> (e.g. foolbox:L2DeepFoolAttack). [default: pgd]")
]
NormOpt = Annotated[str | None, _opt("linf or l2. [default: linf]")]
EpsilonsOpt = Annotated[
    str | None, _opt("Epsilons in [0,1] pixel units: a list or start:stop:step. [default: linf 0,1/255..16/255]")
]
StepsOpt = Annotated[int | None, _opt("PGD steps. [default: 20]")]
RelStepOpt = Annotated[float | None, _opt("Step size as a multiple of epsilon. [default: 2.5/steps]")]
RestartsOpt = Annotated[int | None, _opt("Random restarts; the per-sample worst case is kept. [default: 1]")]
RandomStartOpt = Annotated[
    bool | None, _opt("Start PGD at a random point in the ball.", "--random-start/--no-random-start")
]
TargetedOpt = Annotated[
    bool | None, _opt("Targeted attack (each image towards the next class).", "--targeted/--untargeted")
]
MethodsOpt = Annotated[
    str | None,
    _opt("Saliency methods, comma-separated: saliency, input_x_gradient, integrated_gradients, smoothgrad, gradcam."),
]
SaliencyTargetOpt = Annotated[
    str | None, _opt("Explain the predicted class (pred), the true class (true) or a class name.")
]
LayerOpt = Annotated[str | None, _opt("Grad-CAM layer (module name). [default: the last Conv2d]")]
PolicyOpt = Annotated[Path | None, _opt("Gate the results with this policy (TOML); exit 1 when a rule fails.")]
BaselineOpt = Annotated[Path | None, _opt("A baseline results.json for the policy's [baseline] rules.")]
JunitOpt = Annotated[Path | None, _opt("Write the gate's verdicts as JUnit XML here.")]
SummaryOpt = Annotated[Path | None, _opt('Append a Markdown verdict table here (e.g. "$GITHUB_STEP_SUMMARY").')]
GroupOpt = Annotated[
    list[str] | None,
    _opt(
        "Metadata column to break errors down by; repeat for several (their intersection too). "
        "[default: every column with 2-20 values]",
        "--group",
    ),
]
MinSupportOpt = Annotated[int | None, _opt("Groups smaller than this are 'insufficient data'. [default: 30]")]
BinsOpt = Annotated[int | None, _opt("Bin numeric group columns into this many quantile bins.")]
CueOpt = Annotated[
    str | None, _opt("Planted cue: patch, border, or an image file stamped into the cue box. [default: patch]")
]
CuePositionOpt = Annotated[
    str | None, _opt("Where the cue goes: top-left, top-right, bottom-left, bottom-right, center. [default: top-left]")
]
CueSizeOpt = Annotated[int | None, _opt("Cue size in pixels of the model input (border width). [default: 4]")]
CueValueOpt = Annotated[float | None, _opt("Cue pixel value in [0, 1] for patch and border. [default: 1.0]")]
OcclusionOpt = Annotated[
    str | None, _opt("How cue boxes (manifest columns x0,y0,x1,y1) are hidden: mean, blur, noise. [default: mean]")
]
ShiftOpt = Annotated[float | None, _opt("Location probe: largest shift in pixels. [default: 2]")]
ShiftStepsOpt = Annotated[int | None, _opt("Location probe: shifts per axis. [default: 5]")]
WorstOfKOpt = Annotated[int | None, _opt("k random grid points for the worst-of-k attack. [default: 10]", "--k")]


def _audit_command(checks: tuple[str, ...] | None) -> Callable[..., None]:
    """One command body for ``audit`` (every built check) and the single-check commands."""

    @handle_errors
    def command(
        model: ModelArg = None,
        data: DataArg = None,
        config: ConfigOpt = None,
        arch: ArchOpt = None,
        num_classes: NumClassesOpt = None,
        input_size: InputSizeOpt = None,
        channels: ChannelsOpt = None,
        mean: MeanOpt = None,
        std: StdOpt = None,
        trust_model: TrustOpt = None,
        device: DeviceOpt = None,
        batch_size: BatchOpt = None,
        seed: SeedOpt = None,
        deterministic: DeterministicOpt = None,
        limit: LimitOpt = None,
        sample: SampleOpt = None,
        max_bad_fraction: BadOpt = None,
        out: OutOpt = None,
        angles: AnglesOpt = None,
        mean_range: MeanRangeOpt = None,
        fraction_of_clean: FractionOpt = None,
        interpolation: InterpOpt = None,
        fill: FillOpt = None,
        spatial: SpatialOpt = None,
        spatial_angles: SpatialAnglesOpt = None,
        translate: TranslateOpt = None,
        translate_steps: TranslateStepsOpt = None,
        k: WorstOfKOpt = None,
        attack: AttackOpt = None,
        norm: NormOpt = None,
        epsilons: EpsilonsOpt = None,
        steps: StepsOpt = None,
        rel_step: RelStepOpt = None,
        restarts: RestartsOpt = None,
        random_start: RandomStartOpt = None,
        targeted: TargetedOpt = None,
        methods: MethodsOpt = None,
        saliency_target: SaliencyTargetOpt = None,
        layer: LayerOpt = None,
        cue: CueOpt = None,
        cue_position: CuePositionOpt = None,
        cue_size: CueSizeOpt = None,
        cue_value: CueValueOpt = None,
        occlusion: OcclusionOpt = None,
        shift: ShiftOpt = None,
        shift_steps: ShiftStepsOpt = None,
        policy: PolicyOpt = None,
        baseline: BaselineOpt = None,
        junit: JunitOpt = None,
        summary: SummaryOpt = None,
        group: GroupOpt = None,
        min_support: MinSupportOpt = None,
        bins: BinsOpt = None,
        progress: ProgressOpt = True,
        resume: ResumeOpt = None,
        distributed: DistributedOpt = None,
        stream: StreamOpt = None,
        workers: WorkersOpt = None,
        amp: AmpOpt = None,
        amp_attack: AmpAttackOpt = None,
    ) -> None:
        values = dict(locals())
        values.pop("config")

        from auditkit import distributed as dist
        from auditkit.audit import make_engine, raise_for_failures, run_audit, write_outputs
        from auditkit.config import resolve_config
        from auditkit.resume import discard

        values["mean"], values["std"] = _floats("mean", mean), _floats("std", std)
        values["worst_of_k"] = values.pop("k")
        values["groups"] = tuple(values.pop("group") or ()) or None
        for key in ("policy", "baseline", "junit", "summary"):
            values.pop(key)
        values["checks"] = checks
        cfg = resolve_config(values, config)
        gate_inputs = _gate_inputs(policy, baseline)  # read before the long run: fail fast on a bad policy
        world = dist.init(cfg.device, required=cfg.distributed)
        engine = make_engine(cfg, world)
        try:
            results = run_audit(cfg, engine=engine, save_batches=True)
        except KeyboardInterrupt:
            raise _fail(f"interrupted; finished batches are saved: rerun with --resume --out {cfg.out}", 130) from None
        if cfg.resume and world.main:
            typer.echo(f"resumed: {engine.restored} batches restored, {engine.computed} computed (rank 0)")
        verdict = None
        if gate_inputs is not None:
            from auditkit.gate import evaluate, with_gate

            verdict = evaluate(results, *gate_inputs)
            results = with_gate(results, verdict)
        if world.main:
            json_path, html_path = write_outputs(results, cfg.out)
            discard(cfg.out)
            _print_summary(results, json_path, html_path)
        world.barrier()
        dist.shutdown()
        raise_for_failures(results)
        if verdict is not None:
            if world.main:
                from auditkit.gate import write_ci_outputs

                write_ci_outputs(verdict, results, junit=junit, summary=summary)
            _finish_gate(verdict, quiet=not world.main)

    return command


def _single_process(command: str) -> None:
    """Training runs in one process: refuse a torch.distributed launch instead of racing on files."""
    from auditkit.distributed import launched

    if launched():
        raise ConfigError(
            f"auditkit {command} runs in one process; start it without torchrun "
            "(only the audit commands shard over processes)"
        )


def _gate_inputs(policy: Path | None, baseline: Path | None) -> tuple[Any, Any] | None:
    from auditkit.gate import load_policy
    from auditkit.results import RunResults

    if policy is None:
        if baseline is not None:
            raise ConfigError("--baseline needs --policy (its [baseline] table lists the metrics to compare)")
        return None
    return load_policy(policy), RunResults.read(baseline) if baseline is not None else None


def _finish_gate(verdict: Any, *, quiet: bool = False) -> None:
    if not quiet:
        for v in verdict.verdicts:
            typer.echo(f"gate {v.status.upper():12s} {v.rule}: {v.message}")
        typer.echo(f"gate: {'passed' if verdict.passed else 'FAILED'}")
    if not verdict.passed:
        raise typer.Exit(1)


app.command(
    "audit",
    help="Audit MODEL on DATA with every check (clean accuracy, rotation, attack, saliency, shortcut, subgroups); "
    "write results.json and index.html.",
)(_audit_command(None))
app.command(
    "rotate",
    help="Accuracy against rotation angle, overall and per class, and a worst-of-k spatial attack "
    "(rotations x translations); writes results.json and index.html.",
)(_audit_command(("clean", "rotation")))
app.command(
    "attack",
    help="FGSM/PGD (Linf, L2) robust-accuracy curve over epsilons, or any foolbox attack, with soundness checks "
    "that flag gradient masking; writes results.json and index.html.",
)(_audit_command(("clean", "attack")))
app.command(
    "saliency",
    help="Saliency maps through captum (gradient, input x gradient, integrated gradients, SmoothGrad, Grad-CAM) "
    "for a deterministic selection of images, with the model-parameter randomisation sanity check.",
)(_audit_command(("clean", "saliency")))
app.command(
    "shortcut",
    help="Shortcut probes: stamp a cue (--cue) and see whether answers flip toward one class; hide the cue boxes the "
    "data gives (columns x0,y0,x1,y1) against a same-size control box; accuracy by position; saliency mass on the cue.",
)(_audit_command(("clean", "shortcut")))
app.command(
    "subgroups",
    help="Error breakdown per subgroup and per intersection of the data's metadata columns (--group), "
    "with 95% intervals, Holm-corrected disparity tests and the errors per group.",
)(_audit_command(("clean", "subgroups")))


def _print_summary(results: Any, json_path: Path, html_path: Path) -> None:
    from auditkit.report.html import headline

    for check in results.checks:
        typer.echo(f"{check.kind}: {headline(check)}")
    for warning in results.manifest.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if results.manifest.skipped_files:
        typer.echo(
            f"warning: skipped {len(results.manifest.skipped_files)} unreadable image file(s); see the report", err=True
        )
    typer.echo(f"results: {json_path}")
    typer.echo(f"report:  {html_path}")


@app.command()
@handle_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("reports/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs for the demo CNN.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    progress: ProgressOpt = True,
) -> None:
    """Train the embedded digits CNN (scikit-learn's load_digits, no download) and audit it.

    Writes the dataset (PNG + CSV manifest with a synthetic 'site' column), the model
    (safetensors + spec) and the report under --out.
    """
    from auditkit.demo import run_demo

    if epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    _single_process("demo")
    result = run_demo(out, seed=seed, epochs=epochs, device=device, progress=progress)
    last = result.training[-1]
    typer.echo(f"trained {result.model_path} ({len(result.training)} epochs, final train accuracy {last.accuracy:.1%})")
    _print_summary(result.results, result.out / "results.json", result.report)
    from auditkit.report.html import headline

    for name, probe in result.shortcut.items():
        found = [c for c in probe.checks if c.kind == "shortcut"]
        if found:
            typer.echo(f"shortcut probes, {name} model on data/tagged_test.csv: {headline(found[0])}")
    typer.echo(
        f"gate: policy {result.out / 'policy.toml'} (edit it and re-run: auditkit gate {result.out / 'results.json'} "
        f"--policy {result.out / 'policy.toml'})"
    )
    typer.echo(f"open it: file://{result.report.resolve()}")


@app.command()
@handle_errors
def report(
    results: Annotated[Path, typer.Argument(help="A results.json written by auditkit.", show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="HTML file to write. [default: index.html beside RESULTS]", show_default=False
        ),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="Another results.json to compare with (before/after).", show_default=False)
    ] = None,
) -> None:
    """Re-render the HTML report from a results.json alone, without re-running anything."""
    from auditkit.report.html import write_report
    from auditkit.results import RunResults

    loaded = RunResults.read(results)
    before = RunResults.read(baseline) if baseline is not None else None
    path = write_report(loaded, out or results.with_name("index.html"), before)
    typer.echo(f"report: {path}")


@app.command()
@handle_errors
def gate(
    results: Annotated[Path, typer.Argument(help="A results.json written by auditkit.", show_default=False)],
    policy: Annotated[
        Path, typer.Option(help="Policy TOML: [[rule]] metric/op/value, [baseline].", show_default=False)
    ],
    baseline: BaselineOpt = None,
    junit: JunitOpt = None,
    summary: SummaryOpt = None,
    out: Annotated[
        Path | None, _opt("Also write results.json + index.html with the verdicts into this folder.", "--out", "-o")
    ] = None,
) -> None:
    """Gate a results.json against a policy (and a baseline run): exit 0 pass, 1 fail."""
    from auditkit.audit import write_outputs
    from auditkit.gate import evaluate, with_gate, write_ci_outputs
    from auditkit.results import RunResults

    inputs = _gate_inputs(policy, baseline)
    if inputs is None:  # unreachable: --policy is required
        raise ConfigError("--policy is required")
    loaded = RunResults.read(results)
    verdict = evaluate(loaded, *inputs)
    updated = with_gate(loaded, verdict)
    if out is not None:
        write_outputs(updated, out)
    write_ci_outputs(verdict, updated, junit=junit, summary=summary)
    _finish_gate(verdict)


@app.command()
@handle_errors
def harden(
    model: ModelArg = None,
    data: Annotated[
        str | None,
        typer.Argument(help="Training data (any supported format).", show_default=False),
    ] = None,
    eval_data: Annotated[
        str | None,
        _opt("Data for the before/after audit. [default: a held-out split of DATA, written to OUT/eval.npz]"),
    ] = None,
    method: Annotated[
        str, typer.Option(help="pgd (Madry et al.), fgsm (fast FGSM, Wong et al.), trades, or standard.")
    ] = "pgd",
    eps: Annotated[float, typer.Option(help="Training epsilon in [0,1] pixel units (Linf 8/255 = 0.0314).")] = 8 / 255,
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf",
    attack_steps: Annotated[int, typer.Option(help="PGD/TRADES steps during training.")] = 7,
    trades_beta: Annotated[float, typer.Option(help="TRADES robustness weight beta.")] = 6.0,
    rotate: Annotated[
        float, typer.Option(help="Random rotations within +/- this many degrees (0 = off); combines with --method.")
    ] = 0.0,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the one-cycle schedule (AdamW).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-4,
    train_batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    fresh: Annotated[
        bool, typer.Option("--fresh/--fine-tune", help="Train from a fresh initialisation, not the given weights.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from OUT/checkpoint.pt (same settings).")
    ] = False,
    val_fraction: Annotated[float, typer.Option(help="Share of DATA held out for validation.")] = 0.1,
    eval_fraction: Annotated[float, typer.Option(help="Share of DATA held out to audit (no --eval-data).")] = 0.2,
    eval_steps: Annotated[
        int | None, _opt("PGD steps of the evaluation attack. [default: max(20, 2 x --attack-steps)]")
    ] = None,
    restarts: RestartsOpt = None,
    epsilons: Annotated[str | None, _opt("Evaluation epsilons. [default: 0, eps/4, eps/2, 3 eps/4, eps]")] = None,
    angles: AnglesOpt = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    trust_model: TrustOpt = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    seed: SeedOpt = None,
    deterministic: DeterministicOpt = None,
    limit: LimitOpt = None,
    sample: SampleOpt = None,
    out: Annotated[
        str, typer.Option("--out", "-o", help="Output folder: model, checkpoint, before/ and the after report.")
    ] = "reports/harden",
    progress: ProgressOpt = True,
) -> None:
    """Adversarial training (PGD, fast FGSM, TRADES) and/or rotation augmentation of MODEL on DATA, then the same
    audit of the original and the new model, side by side.

    Writes OUT/model.safetensors (+ model.json), OUT/checkpoint.pt (every epoch; --resume continues from it),
    OUT/before/ (the original's audit) and OUT/results.json + OUT/index.html (the new model's audit with the
    before/after comparison and the training curves).
    """
    from auditkit.config import resolve_config
    from auditkit.harden import HardenConfig, run_harden
    from auditkit.train import TrainConfig

    audit_values = {
        "model": model,
        "data": data,
        "out": out,
        "arch": arch,
        "num_classes": num_classes,
        "input_size": input_size,
        "channels": channels,
        "mean": _floats("mean", mean),
        "std": _floats("std", std),
        "trust_model": trust_model,
        "device": device,
        "batch_size": batch_size,
        "seed": seed,
        "deterministic": deterministic,
        "limit": limit,
        "sample": sample,
        "restarts": restarts,
        "epsilons": epsilons,
        "angles": angles,
        "progress": progress,
    }
    train = TrainConfig(
        method=method,
        eps=eps,
        norm=norm,
        attack_steps=attack_steps,
        trades_beta=trades_beta,
        rotate=rotate,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
    )
    cfg = HardenConfig(
        audit=resolve_config(audit_values),
        train=train,
        eval_data=eval_data,
        batch_size=train_batch_size,
        fresh=fresh,
        resume=resume,
        val_fraction=val_fraction,
        eval_fraction=eval_fraction,
        eval_steps=eval_steps,
    )

    def show(log: Any) -> None:
        extra = "" if log.val_pgd != log.val_pgd else f", val PGD-10 {log.val_pgd:.1%}, val FGSM {log.val_fgsm:.1%}"
        typer.echo(
            f"epoch {log.epoch}/{epochs}: loss {log.loss:.4f}, train acc {log.accuracy:.1%}, "
            f"val clean {log.val_clean:.1%}{extra}"
        )

    typer.echo(f"hardening with {train.label}; auditing the original model first")
    _single_process("harden")
    result = run_harden(cfg, on_epoch=show)
    h = result.after.checks[-1]
    from auditkit.report.html import headline

    if result.training.overfit_epoch is not None:
        typer.echo(
            f"warning: catastrophic overfitting at epoch {result.training.overfit_epoch}; "
            f"kept the weights of epoch {result.training.kept_epoch}",
            err=True,
        )
    typer.echo(f"harden: {headline(h)}")
    typer.echo(f"model:   {result.model_path}")
    typer.echo(f"before:  {result.out / 'before' / 'index.html'}")
    typer.echo(f"report:  {result.out / 'index.html'}")


def main() -> None:  # pragma: no cover - console entry for ``python -m auditkit``
    app(prog_name="auditkit")
    sys.exit(0)
