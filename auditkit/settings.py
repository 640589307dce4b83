"""Settings, declared once.

Every setting is one pydantic field: its type, bounds, default and help text, and whether it
changes what a metric means (``comparable``). Validation, the CLI options of each command, the
sections of ``auditkit.toml``, the run manifest and the keys that make a baseline comparable are
all derived from these declarations. The shared input, engine and output settings live here;
each check declares its own :class:`Settings` subclass in its module.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo

from auditkit.exceptions import ConfigError

#: the ``--help`` panel of where results go and how they are gated (``--out``, ``--policy``, ...)
OUTPUT_PANEL = "Output and gate"
# settings that change how a run is carried out, never what it finds: kept out of results.json
RUN_CONTROL = "run_control"


def setting(
    default: Any,
    help: str,
    *,
    comparable: bool = True,
    run_control: bool = False,
    flag: str | None = None,
    multiple: bool = False,
    panel: str | None = None,
    advanced: bool = False,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """Declare one setting: ``help`` becomes its ``--help`` text; ``comparable`` settings must agree
    between a run and its baseline; ``run_control`` settings are left out of results.json; ``flag``
    renames the CLI option; ``multiple`` makes it a repeatable option; ``panel`` is the ``--help`` panel
    it is listed in (default: its settings class's :attr:`Settings.panel`); ``advanced`` options are left out of
    the single-check commands' ``--help`` (still accepted there; ``auditkit audit --help`` lists them)."""
    extra = {
        "comparable": comparable and not run_control,
        RUN_CONTROL: run_control,
        "flag": flag,
        "multiple": multiple,
        "panel": panel,
        "advanced": advanced,
    }
    return Field(default, description=help, ge=ge, gt=gt, le=le, json_schema_extra=extra)  # type: ignore[arg-type]


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


class Settings(BaseModel):
    """Base of every settings group: frozen, unknown keys refused, validated once."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    #: the ``auditkit.toml`` section (``[rotation]``); empty for the shared top-level settings
    section: ClassVar[str] = ""
    #: the ``--help`` panel its options are listed in; empty: the section's name (``Rotation``)
    panel: ClassVar[str] = ""

    @classmethod
    def build(cls, values: dict[str, Any]) -> Self:
        """Validate ``values`` (``None`` = not given, so the default) into settings; one-line errors."""
        from pydantic import ValidationError

        try:
            return cls.model_validate({k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            raise describe_error(exc) from None

    @classmethod
    def declared(cls) -> Iterator[tuple[str, FieldInfo]]:
        yield from cls.model_fields.items()

    @classmethod
    def comparable_keys(cls) -> tuple[str, ...]:
        return tuple(name for name, info in cls.declared() if _extra(info).get("comparable"))

    @classmethod
    def run_controls(cls) -> tuple[str, ...]:
        return tuple(name for name, info in cls.declared() if _extra(info).get(RUN_CONTROL))

    @classmethod
    def flag(cls, name: str) -> str:
        """The CLI option for field ``name`` (``--cue-size``; ``"--out -o"`` adds a short alias)."""
        return _extra(cls.model_fields[name]).get("flag") or "--" + name.replace("_", "-")

    @classmethod
    def panel_of(cls, name: str) -> str:
        """The ``--help`` panel of field ``name``: its own ``panel``, else the class's, else the section's."""
        own = _extra(cls.model_fields[name]).get("panel")
        return str(own or cls.panel or cls.section.replace("_", " ").capitalize() or "Options")

    @classmethod
    def is_advanced(cls, name: str) -> bool:
        return bool(_extra(cls.model_fields[name]).get("advanced"))

    @classmethod
    def is_multiple(cls, name: str) -> bool:
        return bool(_extra(cls.model_fields[name]).get("multiple"))

    def pairs(self) -> tuple[tuple[str, str], ...]:
        """``(key, repr)`` for the run manifest, without run controls."""
        controls = self.run_controls()
        return tuple((k, repr(getattr(self, k))) for k in type(self).model_fields if k not in controls)


def join_list(value: Any) -> Any:
    """A TOML list (``angles = [0, 90]``) -> the comma text the CLI takes (``"0,90"``)."""
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


def parse_list(value: Any, item: type, name: str) -> Any:
    """``"0.485,0.456"`` (a CLI or TOML string) -> a tuple of ``item``; lists pass through."""
    if isinstance(value, str):
        try:
            return tuple(item(v.strip()) for v in value.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{name} takes comma-separated {item.__name__} values, got {value!r}") from None
    return value


class InputSettings(Settings):
    """What is audited: the model, the data, and how images reach the model."""

    panel: ClassVar[str] = "Model"

    model: str | None = setting(None, "Model file or folder (safetensors, .pt, TorchScript, .pt2).", comparable=False)
    data: str | None = setting(None, "Image or IDX folder, CSV, .npz, torchvision:<Name>:<root>, digits.", panel="Data")
    arch: str | None = setting(
        None, "Architecture: torchvision:<name>, timm:<name> or module:factory.", comparable=False
    )
    num_classes: int | None = setting(None, "Number of outputs to build --arch with.", ge=1)
    input_size: tuple[int, int] | None = setting(None, "Model input size H W; images are resized to it.")
    channels: Literal[1, 3] | None = setting(None, "Input channels the model expects (1 or 3).")
    mean: tuple[float, ...] | None = setting(None, "Normalisation mean per channel in [0,1] units, e.g. 0.5,0.5,0.5.")
    std: tuple[float, ...] | None = setting(None, "Normalisation std per channel, comma-separated.")
    class_names: str | None = setting(None, "Class names in output order: a comma list or a file (one per line).")
    output: str | None = setting(None, "Which output holds the logits: a tuple index or a dict key.", advanced=True)
    weights: str | None = setting(None, "torchvision:<Enum>.<NAME>: arch, classes and transform from it.")
    resize: int | None = setting(None, "Resize the shorter side to N pixels, then centre-crop to --crop.", ge=1)
    crop: tuple[int, int] | None = setting(None, "Centre-crop H W (after --resize).")
    resize_interpolation: Literal["bilinear", "bicubic", "nearest"] | None = setting(
        None, "Resize interpolation: bilinear, bicubic or nearest. [default: bilinear]", advanced=True
    )
    antialias: bool | None = setting(None, "Antialias when downsizing images. [default: on]", advanced=True)
    split: str | None = setting(None, "Split of an IDX folder or torchvision dataset (train, test).", panel="Data")
    trust_model: bool = setting(
        False, "Allow TorchScript, .pt2 and pickles (they run code when loaded).", comparable=False
    )
    limit: int | None = setting(None, "Use only the first N samples.", ge=1, panel="Data")
    sample: int | None = setting(None, "Use a seeded random sample of N samples.", ge=1, panel="Data")
    max_bad_fraction: float = setting(
        0.05,
        "Fail (exit 3) above this share of unreadable image files.",
        comparable=False,
        ge=0,
        le=1,
        panel="Data",
        advanced=True,
    )

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _floats(cls, value: Any) -> Any:
        return parse_list(value, float, "mean/std")

    @field_validator("mean", "std")
    @classmethod
    def _per_channel(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and len(value) not in (1, 3):
            raise ValueError(f"needs 1 or 3 values (one per channel), got {len(value)}")
        if value is not None and not all(math.isfinite(v) for v in value):
            raise ValueError(f"values must be finite numbers in [0, 1] pixel units, got {value}")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and min(value) <= 0:
            raise ValueError(f"values must be positive, got {value}")
        return value

    @field_validator("input_size", "crop")
    @classmethod
    def _size(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError(f"must be two positive integers H W, got {value}")
        return value

    @field_validator("output", mode="before")
    @classmethod
    def _output(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("output")
    @classmethod
    def _output_named(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be an output index (0, 1, ...) or a dict key, got an empty string")
        return value

    @field_validator("class_names", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value


DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


class EngineSettings(Settings):
    """How the work runs: device, batches, seeds, precision, scale."""

    panel: ClassVar[str] = "Run"

    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps.", comparable=False)
    batch_size: int = setting(256, "Batch size (halved on CUDA out-of-memory).", comparable=False, ge=1)
    seed: int = setting(0, "Random seed (0 to 2**32 - 1).", comparable=False, ge=0, le=2**32 - 1)
    deterministic: bool = setting(False, "Use deterministic torch algorithms.", comparable=False)
    progress: bool = setting(True, "Show progress bars on a terminal.", run_control=True)
    resume: bool = setting(False, "Continue an interrupted run in --out (refused if inputs changed).", run_control=True)
    distributed: bool = setting(
        False, "Require a torchrun launch (one is used automatically anyway).", run_control=True, advanced=True
    )
    stream: Literal["auto", "on", "off"] = setting(
        "auto",
        "Decode image files batch by batch: auto (past 1 GiB), on, off.",
        run_control=True,
        panel="Data",
        advanced=True,
    )
    workers: int = setting(
        0, "Worker processes decoding streamed images.", run_control=True, ge=0, panel="Data", advanced=True
    )
    amp: Literal["off", "bf16", "fp16"] = setting("off", "Mixed precision of forward passes: off, bf16, fp16.")
    amp_attack: bool = setting(False, "Use --amp for gradients too: faster, but can weaken attacks.", advanced=True)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        kind, sep, index = value.partition(":")
        if kind not in DEVICES or (sep and (kind != "cuda" or not index.isdigit())):
            raise ValueError(f"must be one of {', '.join(DEVICES)} (or cuda:N), got {value!r}")
        return value


class OutputSettings(Settings):
    """Where results go."""

    panel: ClassVar[str] = OUTPUT_PANEL

    out: str = setting("reports/latest", "Folder for results.json and index.html.", run_control=True, flag="--out -o")
    # the conditions that turn numbers into findings without a policy (docs/findings.md): they
    # colour the report and never change a measurement, so two runs stay comparable across them
    warn_drop: float = setting(
        0.05, "Findings: an accuracy drop warns from this (0.05 = 5 pt).", comparable=False, ge=0, le=1, advanced=True
    )
    fail_drop: float = setting(
        0.20, "Findings: an accuracy drop fails from this.", comparable=False, ge=0, le=1, advanced=True
    )
    warn_gap: float = setting(
        0.05, "Findings: a subgroup gap warns from this.", comparable=False, ge=0, le=1, advanced=True
    )
    fail_gap: float = setting(
        0.10, "Findings: a significant subgroup gap fails from this.", comparable=False, ge=0, le=1, advanced=True
    )

    @field_validator("out")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder for results.json and index.html, got an empty path")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        for kind in ("drop", "gap"):
            warn, fail = getattr(self, f"warn_{kind}"), getattr(self, f"fail_{kind}")
            if warn > fail:
                raise ValueError(f"warn_{kind} ({warn}) must not exceed fail_{kind} ({fail})")
        return self


SHARED: tuple[type[Settings], ...] = (InputSettings, EngineSettings, OutputSettings)


# --- the commands that are not checks: their own options, here so the CLI builds them without torch ---


class DemoSettings(Settings):
    """What ``auditkit demo`` trains and audits (its own CLI options)."""

    dataset: Literal["digits", "fashion-mnist"] = setting(
        "digits",
        "digits (scikit-learn's load_digits, embedded) or fashion-mnist (the real Fashion-MNIST from Debian's "
        "dataset-fashion-mnist package, read from --data-root).",
    )
    out: str | None = setting(
        None,
        "Output folder. [default: reports/demo; reports/demo-fashion with --dataset fashion-mnist]",
        flag="--out -o",
    )
    data_root: str | None = setting(
        None,
        "Folder with Fashion-MNIST's IDX files (--dataset fashion-mnist). [default: /usr/share/datasets/fashion-mnist]",
    )
    epochs: int | None = setting(None, "Training epochs for the demo CNN. [default: 8 digits, 4 fashion-mnist]", ge=1)
    seed: int = setting(0, "Random seed.")
    device: str = setting("auto", "auto, cpu, cuda or mps.")
    progress: bool = setting(True, "Show progress bars on a terminal.")

    @model_validator(mode="after")
    def _root(self) -> DemoSettings:
        if self.data_root is not None and self.dataset != "fashion-mnist":
            raise ValueError("--data-root applies to --dataset fashion-mnist only")
        return self


class HardenSettings(Settings):
    """How ``auditkit harden`` trains and evaluates (its own CLI options)."""

    section: ClassVar[str] = "harden"

    eval_data: str | None = setting(
        None, "Data for the before/after audit. [default: a held-out split of DATA, written to OUT/eval.npz]"
    )
    method: Literal["pgd", "fgsm", "trades", "standard"] = setting(
        "pgd", "pgd (Madry et al.), fgsm (fast FGSM, Wong et al.), trades, or standard."
    )
    eps: float = setting(8 / 255, "Training epsilon in [0,1] pixel units (Linf 8/255 = 0.0314).", ge=0)
    train_norm: Literal["linf", "l2"] = setting("linf", "linf or l2.", flag="--norm")
    attack_steps: int = setting(7, "PGD/TRADES steps during training.", ge=1)
    trades_beta: float = setting(6.0, "TRADES robustness weight beta.", ge=0)
    rotate: float = setting(
        0.0, "Random rotations within +/- this many degrees (0 = off); combines with --method.", ge=0, le=180
    )
    epochs: int = setting(10, "Training epochs.", ge=1)
    lr: float = setting(1e-3, "Peak learning rate of the one-cycle schedule (AdamW).", gt=0)
    weight_decay: float = setting(1e-4, "AdamW weight decay.", ge=0)
    train_batch_size: int = setting(64, "Training batch size.", ge=1)
    fresh: bool = setting(
        False, "Train from a fresh initialisation, not the given weights.", flag="--fresh/--fine-tune"
    )
    resume_training: bool = setting(
        False, "Continue an interrupted run from OUT/checkpoint.pt (same settings).", flag="--resume"
    )
    val_fraction: float = setting(0.1, "Share of DATA held out for validation.", gt=0, le=0.5)
    eval_fraction: float = setting(0.2, "Share of DATA held out to audit (no --eval-data).", gt=0, le=0.5)
    eval_steps: int | None = setting(
        None, "Steps of the evaluation attack. [default: fast max(20, 2 x --attack-steps); standard 100]", ge=1
    )


def describe_error(exc: Exception, where: str = "", known: tuple[str, ...] = ()) -> ConfigError:
    """A pydantic ``ValidationError`` as one line naming the setting, what is allowed and what was given."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return ConfigError(f"{where}{exc}")
    err = exc.errors()[0]
    name = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "setting"
    message = str(err["msg"]).removeprefix("Value error, ")
    given = err.get("input")
    shown = "" if isinstance(given, dict) else f", got {given!r}"
    if err["type"] == "extra_forbidden":
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return ConfigError(f"{where}unknown setting {name!r}{hint} (see auditkit audit --help)")
    if err["type"] == "missing":
        return ConfigError(f"{where}{name} must be set")
    if not err["loc"]:  # a rule across settings (model validator): its message names the flags
        return ConfigError(f"{where}{message}")
    return ConfigError(f"{where}{name}: {message}{shown if shown not in message else ''}")


def field_type(cls: type[Settings], name: str) -> Any:
    """The declared type of field ``name`` (for CLI generation)."""
    return typing.get_type_hints(cls)[name]
