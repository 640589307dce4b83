"""One resolved, validated configuration: CLI flags > auditkit.toml > defaults."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auditkit.engine import DEVICES
from auditkit.exceptions import ConfigError
from auditkit.io import read_toml

AVAILABLE_CHECKS: tuple[str, ...] = ("clean", "rotation", "attack", "saliency", "shortcut", "subgroups")
LIST_AS_TEXT = ("angles", "spatial_angles", "epsilons", "methods")
PATH_KEYS = ("model", "data", "out")
# settings that change how a run is carried out, never what it finds: kept out of results.json
RUN_CONTROLS = ("out", "progress", "resume", "distributed", "stream", "workers")


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """Everything a run needs. Field names are the config-file keys and the CLI flags."""

    model: str
    data: str
    arch: str | None = None
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    trust_model: bool = False
    device: str = "auto"
    batch_size: int = 256
    seed: int = 0
    deterministic: bool = False
    limit: int | None = None
    sample: int | None = None
    max_bad_fraction: float = 0.05
    out: str = "reports/latest"
    checks: tuple[str, ...] = AVAILABLE_CHECKS
    progress: bool = True
    # scale and resilience (all but amp/amp_attack are RUN_CONTROLS: they never change a result)
    resume: bool = False
    distributed: bool = False
    stream: str = "auto"
    workers: int = 0
    amp: str = "off"
    amp_attack: bool = False
    # rotation
    angles: str = "-180:180:10"
    mean_range: float = 30.0
    fraction_of_clean: float = 0.5
    interpolation: str = "bilinear"
    fill: str = "zeros"
    spatial: bool = True
    spatial_angles: str = "-30:30:6"
    translate: float = 3.0
    translate_steps: int = 5
    worst_of_k: int = 10
    # attack
    attack: str = "pgd"
    norm: str = "linf"
    epsilons: str | None = None
    steps: int = 20
    rel_step: float | None = None
    restarts: int = 1
    random_start: bool = True
    targeted: bool = False
    # saliency
    methods: str = "saliency,input_x_gradient,integrated_gradients,smoothgrad,gradcam"
    saliency_target: str = "pred"
    layer: str | None = None
    # shortcut
    cue: str = "patch"
    cue_position: str = "top-left"
    cue_size: int = 4
    cue_value: float = 1.0
    occlusion: str = "mean"
    shift: float = 2.0
    shift_steps: int = 5
    # subgroups
    groups: tuple[str, ...] = ()
    min_support: int = 30
    bins: int | None = None

    def as_pairs(self) -> tuple[tuple[str, str], ...]:
        """The config as ``(key, repr)`` pairs for the run manifest, without the run controls
        (``RUN_CONTROLS``) that cannot change a result."""
        return tuple(
            (f.name, repr(getattr(self, f.name))) for f in dataclasses.fields(self) if f.name not in RUN_CONTROLS
        )


FIELDS = {f.name: f for f in dataclasses.fields(AuditConfig)}


def read_config_file(path: Path) -> dict[str, Any]:
    """Read ``auditkit.toml``; relative paths in it are taken relative to its folder."""
    doc = read_toml(path, "config file")
    values = {k.replace("-", "_"): v for k, v in doc.items()}
    for key in PATH_KEYS:
        if isinstance(values.get(key), str) and values[key] != "digits" and not values[key].startswith("digits:"):
            candidate = Path(values[key])
            if not candidate.is_absolute():
                values[key] = str(path.parent / candidate)
    return values


def _coerce(name: str, value: Any) -> Any:
    hint = typing.get_type_hints(AuditConfig)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must be set")
    inner = next((a for a in args if a is not type(None)), hint) if optional else hint
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if inner is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if inner is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        if inner is str:
            if not isinstance(value, (str, Path)):
                raise TypeError
            return str(value)
        if origin is tuple:
            item_type = typing.get_args(inner)[0]
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise TypeError
            return tuple(item_type(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {_describe(inner)}, got {value!r}") from None
    return value


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is tuple:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def resolve_config(cli: Mapping[str, Any], config_file: Path | None = None) -> AuditConfig:
    """Merge ``cli`` values (``None`` = not given) over the config file over the defaults."""
    values: dict[str, Any] = {}
    if config_file is not None:
        file_values = read_config_file(config_file)
        unknown = sorted(set(file_values) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {config_file}; allowed: {', '.join(sorted(FIELDS))}")
        values.update(file_values)
    values.update({k: v for k, v in cli.items() if v is not None})
    for key in LIST_AS_TEXT:
        if isinstance(values.get(key), (list, tuple)):
            values[key] = ",".join(str(v) for v in values[key])
    for required in ("model", "data"):
        if not values.get(required):
            raise ConfigError(f'no {required} given: pass it as an argument or set {required} = "..." in auditkit.toml')
    coerced = {k: _coerce(k, v) for k, v in values.items() if k in FIELDS}
    config = AuditConfig(**coerced)
    validate(config)
    return config


def parse_methods(text: str) -> tuple[str, ...]:
    """``"saliency, gradcam"`` -> ``("saliency", "gradcam")``."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


def validate(config: AuditConfig) -> None:
    """Check closed choices and ranges; messages name the parameter, the allowed values and the value."""
    if config.device.split(":")[0] not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {config.device!r}")
    if config.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {config.batch_size}")
    if config.input_size is not None and (len(config.input_size) != 2 or min(config.input_size) < 1):
        raise ConfigError(f"input_size must be two positive integers H W, got {config.input_size}")
    if config.channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {config.channels}")
    for key in ("mean", "std"):
        val = getattr(config, key)
        if val is not None and len(val) not in (1, 3):
            raise ConfigError(f"{key} must have 1 or 3 values (one per channel), got {len(val)}")
    if config.std is not None and min(config.std) <= 0:
        raise ConfigError(f"std values must be positive, got {config.std}")
    if not 0.0 <= config.max_bad_fraction <= 1.0:
        raise ConfigError(f"max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}")
    for key in ("limit", "sample", "num_classes"):
        val = getattr(config, key)
        if val is not None and val < 1:
            raise ConfigError(f"{key} must be positive, got {val}")
    from auditkit.checks.rotation import parse_angles
    from auditkit.perturb import FILLS, INTERPOLATIONS

    parse_angles(config.angles)
    parse_angles(config.spatial_angles)
    if config.interpolation not in INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {config.interpolation!r}")
    if config.fill not in FILLS:
        raise ConfigError(f"fill must be one of {', '.join(FILLS)}, got {config.fill!r}")
    if not 0 < config.fraction_of_clean <= 1:
        raise ConfigError(f"fraction_of_clean must be in (0, 1], got {config.fraction_of_clean}")
    if config.translate < 0 or config.translate_steps < 1 or config.worst_of_k < 1 or config.mean_range < 0:
        raise ConfigError("translate and mean_range must be >= 0, translate_steps and worst_of_k >= 1")
    from auditkit.attacks import NORMS
    from auditkit.checks.attack import parse_epsilons

    if config.norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {config.norm!r}")
    parse_epsilons(config.epsilons, config.norm)
    if config.attack not in ("pgd", "fgsm") and not config.attack.startswith("foolbox:"):
        raise ConfigError(f"attack must be pgd, fgsm or foolbox:<AttackName>, got {config.attack!r}")
    if config.steps < 1 or config.restarts < 1:
        raise ConfigError(f"steps and restarts must be at least 1, got {config.steps} and {config.restarts}")
    from auditkit.checks.saliency import METHODS

    bad_methods = [m for m in parse_methods(config.methods) if m not in METHODS]
    if bad_methods:
        raise ConfigError(f"methods must be among {', '.join(METHODS)}, got {bad_methods}")
    if config.min_support < 1:
        raise ConfigError(f"min_support must be at least 1, got {config.min_support}")
    if config.bins is not None and config.bins < 2:
        raise ConfigError(f"bins must be at least 2, got {config.bins}")
    from auditkit.checks.shortcut import OCCLUSIONS, POSITIONS

    if config.occlusion not in OCCLUSIONS:
        raise ConfigError(f"occlusion must be one of {', '.join(OCCLUSIONS)}, got {config.occlusion!r}")
    if config.cue_position not in POSITIONS:
        raise ConfigError(f"cue_position must be one of {', '.join(POSITIONS)}, got {config.cue_position!r}")
    if config.cue_size < 1 or not 0 <= config.cue_value <= 1:
        raise ConfigError(f"cue_size must be >= 1 and cue_value in [0, 1], got {config.cue_size}, {config.cue_value}")
    if config.shift < 0 or config.shift_steps < 1:
        raise ConfigError(f"shift must be >= 0 and shift_steps >= 1, got {config.shift}, {config.shift_steps}")
    from auditkit.data import STREAM_MODES
    from auditkit.engine import AMP_MODES

    if config.stream not in STREAM_MODES:
        raise ConfigError(f"stream must be one of {', '.join(STREAM_MODES)}, got {config.stream!r}")
    if config.amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {config.amp!r}")
    if config.workers < 0:
        raise ConfigError(f"workers must be >= 0, got {config.workers}")
    unknown = [c for c in config.checks if c not in AVAILABLE_CHECKS]
    if unknown:
        raise ConfigError(f"checks must be among {list(AVAILABLE_CHECKS)} got {unknown}")
