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

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo

from auditkit.exceptions import ConfigError

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
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """Declare one setting: ``help`` becomes its ``--help`` text; ``comparable`` settings must agree
    between a run and its baseline; ``run_control`` settings are left out of results.json; ``flag``
    renames the CLI option; ``multiple`` makes it a repeatable option."""
    extra = {"comparable": comparable and not run_control, RUN_CONTROL: run_control, "flag": flag, "multiple": multiple}
    return Field(default, description=help, ge=ge, gt=gt, le=le, json_schema_extra=extra)  # type: ignore[arg-type]


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


class Settings(BaseModel):
    """Base of every settings group: frozen, unknown keys refused, validated once."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    #: the ``auditkit.toml`` section (``[rotation]``); empty for the shared top-level settings
    section: ClassVar[str] = ""

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

    model: str | None = setting(
        None,
        "Model file or folder (safetensors, state_dict .pt, TorchScript, .pt2, pickled module).",
        comparable=False,
    )
    data: str | None = setting(
        None,
        "Dataset: image folder, MNIST-style IDX folder, CSV manifest (path,label,...), .npz, "
        "torchvision:<Dataset>:<root> or 'digits'.",
    )
    arch: str | None = setting(
        None,
        "Architecture for weights-only files: torchvision:<name>, timm:<name>, auditkit.zoo:<name> or "
        "package.module:factory.",
        comparable=False,
    )
    num_classes: int | None = setting(None, "Number of outputs to build the architecture with.", ge=1)
    input_size: tuple[int, int] | None = setting(None, "Model input size H W; images are resized to it.")
    channels: Literal[1, 3] | None = setting(None, "Input channels the model expects (1 or 3).")
    mean: tuple[float, ...] | None = setting(
        None, "Normalisation mean per channel, comma-separated, in [0,1] pixel units (e.g. 0.485,0.456,0.406)."
    )
    std: tuple[float, ...] | None = setting(None, "Normalisation std per channel, comma-separated.")
    class_names: str | None = setting(
        None,
        "The model's classes in output order: a comma list or a file with one name per line. [default: model.json, "
        "the --weights categories, ImageFolder's sorted folders, or integer labels as indices]",
    )
    output: str | None = setting(
        None, "Which of the model's outputs are the logits, when it returns a tuple/list (an index) or a dict (a key)."
    )
    weights: str | None = setting(
        None,
        "torchvision:<WeightsEnum>.<NAME> (e.g. ResNet18_Weights.IMAGENET1K_V1): take the architecture, classes, "
        "mean/std and eval transform from torchvision's enum; nothing is downloaded, MODEL is still your file.",
    )
    resize: int | None = setting(None, "Resize the shorter side to this many pixels, then centre-crop to --crop.", ge=1)
    crop: tuple[int, int] | None = setting(None, "Centre-crop H W (after --resize).")
    resize_interpolation: Literal["bilinear", "bicubic", "nearest"] | None = setting(
        None, "Interpolation for resizing images: bilinear, bicubic or nearest. [default: bilinear]"
    )
    antialias: bool | None = setting(None, "Antialias when downsizing images. [default: on]")
    split: str | None = setting(None, "Split of an MNIST-style IDX folder or a torchvision dataset (train or test).")
    trust_model: bool = setting(
        False, "Allow TorchScript, .pt2 and pickled modules, which can run code when loaded.", comparable=False
    )
    limit: int | None = setting(None, "Use only the first N samples.", ge=1)
    sample: int | None = setting(None, "Use a seeded random sample of N samples.", ge=1)
    max_bad_fraction: float = setting(
        0.05, "Fail (exit 3) when more than this share of image files is unreadable.", comparable=False, ge=0, le=1
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

    device: str = setting("auto", "auto, cpu, cuda (or cuda:N) or mps.", comparable=False)
    batch_size: int = setting(256, "Batch size (halved automatically on CUDA out-of-memory).", comparable=False, ge=1)
    seed: int = setting(0, "Random seed (0 to 2**32 - 1).", comparable=False, ge=0, le=2**32 - 1)
    deterministic: bool = setting(False, "Use deterministic torch algorithms.", comparable=False)
    progress: bool = setting(True, "Show progress bars on a terminal.", run_control=True)
    resume: bool = setting(
        False,
        "Continue an interrupted run in the same --out folder: finished batches are not recomputed. "
        "Refused when the model, data or settings changed.",
        run_control=True,
    )
    distributed: bool = setting(
        False,
        "Require a torch.distributed launcher (torchrun sets it up; it is used automatically when present).",
        run_control=True,
    )
    stream: Literal["auto", "on", "off"] = setting(
        "auto",
        "Keep image files on disk and decode them batch by batch: auto (past 1 GiB of pixels), on, off.",
        run_control=True,
    )
    workers: int = setting(0, "DataLoader worker processes decoding streamed images.", run_control=True, ge=0)
    amp: Literal["off", "bf16", "fp16"] = setting(
        "off",
        "Mixed precision for forward-only checks: off, bf16 or fp16 (CUDA). Attacks stay fp32 unless --amp-attack.",
    )
    amp_attack: bool = setting(
        False,
        "Also run gradient work (attacks, saliency) under --amp: faster on GPUs, but low-precision gradients can "
        "weaken an attack; compare with an fp32 run before trusting it.",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        kind, sep, index = value.partition(":")
        if kind not in DEVICES or (sep and (kind != "cuda" or not index.isdigit())):
            raise ValueError(f"must be one of {', '.join(DEVICES)} (or cuda:N), got {value!r}")
        return value


class OutputSettings(Settings):
    """Where results go."""

    out: str = setting(
        "reports/latest", "Output folder for results.json and index.html.", run_control=True, flag="--out -o"
    )

    @field_validator("out")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a folder for results.json and index.html, got an empty path")
        return value


SHARED: tuple[type[Settings], ...] = (InputSettings, EngineSettings, OutputSettings)


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
