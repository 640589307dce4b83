"""One resolved, validated configuration: CLI flags > auditkit.toml > defaults.

The shared settings are declared in :mod:`auditkit.settings`, each check's in its module; this
module only composes them. ``auditkit.toml`` holds the shared settings at the top level and each
check's in its own section (``[rotation]``, ``[attack]``, …); a check's setting may also stand at
the top level.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, ValidationError, model_validator

from auditkit import registry
from auditkit.exceptions import ConfigError
from auditkit.io import read_toml
from auditkit.settings import SHARED, EngineSettings, InputSettings, OutputSettings, Settings, describe_error

PATH_KEYS = ("model", "data", "out")
S = TypeVar("S", bound=Settings)


def _default_checks() -> tuple[str, ...]:
    return tuple(registry.checks())


class AuditConfig(InputSettings, EngineSettings, OutputSettings):
    """Everything a run needs: the shared settings (flat) and each check's settings by name.

    Construct it from flat keys, as the CLI and the config file name them: a check's keys are
    routed to that check's settings (``AuditConfig(model=..., data=..., angles="0,90")``).
    """

    model: str = Field(description="Model file or folder.")
    data: str = Field(description="Dataset.")
    checks: tuple[str, ...] = Field(default_factory=_default_checks, description="The checks to run, in order.")
    check_settings: Mapping[str, Any] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise describe_error(exc, known=all_keys()) from None

    @model_validator(mode="before")
    @classmethod
    def _route(cls, values: Any) -> Any:
        """Flat (and sectioned) check keys -> one validated settings object per check that runs.

        The keys of a check that does not run (``[attack]`` in the file ``auditkit rotate --config``
        reads) are validated, so a typo still fails, but not kept: they cannot change what this run
        measures, so they stay out of its manifest and of the baseline comparison."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        given = dict(values.pop("check_settings", None) or {})
        runs = values.get("checks") if isinstance(values.get("checks"), (list, tuple)) else None
        for name, check in registry.checks().items():
            kind = check.settings_type
            if isinstance(given.get(name), kind):
                continue
            raw: dict[str, Any] = dict(given.get(name) or {})
            section = values.get(kind.section) if kind.section else None
            if isinstance(section, Mapping):
                raw.update(values.pop(kind.section))
            elif section is not None and kind.section not in kind.model_fields:  # e.g. attack = "pgd" is a setting
                raise ConfigError(f"[{kind.section}] must be a table of settings, got {section!r}")
            raw.update({k: values.pop(k) for k in list(values) if k in kind.model_fields})
            try:
                given[name] = kind.model_validate(raw)
            except ValidationError as exc:
                raise describe_error(exc) from None
        if runs is not None:
            given = {name: value for name, value in given.items() if name in runs}
        values["check_settings"] = given
        return values

    @model_validator(mode="after")
    def _consistent(self) -> AuditConfig:
        unknown = [c for c in self.checks if c not in registry.checks()]
        if unknown:
            raise ValueError(f"checks must be among {', '.join(registry.checks())}, got {unknown}")
        if self.resize is not None and self.crop is None:
            raise ValueError("resize needs crop too (--resize S --crop H W: resize the shorter side, then centre-crop)")
        return self

    def settings(self, kind: type[S]) -> S:
        """This run's settings of type ``kind`` (e.g. ``config.settings(RotationSettings)``)."""
        for value in self.check_settings.values():
            if isinstance(value, kind):
                return value
        raise KeyError(kind.__name__)

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat key (what the CLI and the config file use)."""
        out = {k: getattr(self, k) for k in type(self).model_fields if k != "check_settings"}
        for value in self.check_settings.values():
            out.update(value.model_dump())
        return out

    def replace(self, **changes: Any) -> AuditConfig:
        """A validated copy with flat keys changed."""
        return AuditConfig(**(self.flat() | changes))

    def as_pairs(self) -> tuple[tuple[str, str], ...]:
        """The config as ``(key, repr)`` pairs for the run manifest, without the run controls that
        cannot change a result."""
        shared = tuple(p for kind in SHARED for p in kind.model_validate(self.flat_of(kind)).pairs())
        checks = (("checks", repr(self.checks)),)
        return shared + checks + tuple(p for s in self.check_settings.values() for p in s.pairs())

    def flat_of(self, kind: type[Settings]) -> dict[str, Any]:
        return {k: getattr(self, k) for k in kind.model_fields}


def all_keys() -> tuple[str, ...]:
    """Every flat setting name."""
    kinds = (*SHARED, *(c.settings_type for c in registry.checks().values()))
    return (*(k for kind in kinds for k in kind.model_fields), "checks")


def comparable_keys(checks: Collection[str] | None = None) -> tuple[str, ...]:
    """Settings that change what a metric means: a baseline must agree on every one of them (the shared
    ones and those of ``checks``; ``None``: of every check)."""
    keys = [k for kind in SHARED for k in kind.comparable_keys()]
    kinds = [c.settings_type for name, c in registry.checks().items() if checks is None or name in checks]
    keys += [k for kind in kinds for k in kind.comparable_keys()]
    return tuple(keys)


def checks_run(pairs: tuple[tuple[str, str], ...]) -> frozenset[str] | None:
    """The checks a run's manifest config says it ran (``None``: it does not say, so every check)."""
    import ast

    text = dict(pairs).get("checks")
    try:
        return frozenset(ast.literal_eval(text)) if text is not None else None
    except (ValueError, SyntaxError, TypeError):
        return None


def default_reprs() -> dict[str, str]:
    """``repr`` of every setting's default, keyed like the manifest's config pairs."""
    out = {}
    for kind in (*SHARED, *(c.settings_type for c in registry.checks().values())):
        for name, info in kind.model_fields.items():
            if not info.is_required():
                out[name] = repr(info.get_default(call_default_factory=True))
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """Read ``auditkit.toml``; relative paths in it are taken relative to its folder."""
    doc = read_toml(path, "config file")
    values = {k.replace("-", "_"): v for k, v in doc.items()}
    for key in PATH_KEYS:
        if isinstance(values.get(key), str) and values[key] != "digits" and not values[key].startswith("digits:"):
            candidate = Path(values[key])
            if not candidate.is_absolute() and ":" not in values[key]:
                values[key] = str(path.parent / candidate)
    for key, value in list(values.items()):
        if isinstance(value, Mapping):
            values[key] = {k.replace("-", "_"): v for k, v in value.items()}
    return values


def resolve_config(cli: Mapping[str, Any], config_file: Path | None = None) -> AuditConfig:
    """Merge ``cli`` values (``None`` = not given) over the config file over the defaults."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_config_file(config_file))
    given = {k: v for k, v in cli.items() if v is not None}
    sections = {c.settings_type.section: c.settings_type for c in registry.checks().values()}
    for key in list(given):  # a flag beats the same key in its section of the file
        for section, kind in sections.items():
            if key in kind.model_fields and isinstance(values.get(section), Mapping):
                values[section] = {k: v for k, v in values[section].items() if k != key}
    values.update(given)
    for required in ("model", "data"):
        if not values.get(required):
            raise ConfigError(f'no {required} given: pass it as an argument or set {required} = "..." in auditkit.toml')
    where = f"{config_file}: " if config_file is not None else ""
    try:
        return AuditConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


__all__ = ["AuditConfig", "checks_run", "comparable_keys", "default_reprs", "read_config_file", "resolve_config"]
