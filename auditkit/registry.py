"""The one registry of checks: an explicit list, plus third-party checks from the
``auditkit.checks`` entry point group.

Nothing registers itself on import: decoding a results.json, building the CLI or running an
audit asks this module, which imports the listed classes when first needed.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from auditkit.exceptions import ConfigError

if TYPE_CHECKING:
    from auditkit.checks.base import Check
    from auditkit.results import CheckResult

ENTRY_POINT_GROUP = "auditkit.checks"

#: the built-in checks, in the order they run (a check that reads others' outcomes comes last)
BUILTIN_CHECKS: tuple[str, ...] = (
    "auditkit.checks.clean:CleanAccuracy",
    "auditkit.checks.rotation:RotationSweep",
    "auditkit.checks.attack:AdversarialAttack",
    "auditkit.checks.corrupt:CorruptionSweep",
    "auditkit.checks.saliency:SaliencyMaps",
    "auditkit.checks.shortcut:ShortcutProbes",
    "auditkit.checks.subgroups:Subgroups",
)
#: result types that no check's ``run`` returns directly (a crash, hardening, the gate's verdicts)
EXTRA_RESULTS: tuple[str, ...] = (
    "auditkit.checks.base:CheckFailure",
    "auditkit.checks.harden:HardenResult",
    "auditkit.gate:GateResult",
)

_extra_checks: list[type[Check]] = []


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def register(check: type[Check]) -> type[Check]:
    """Add a check class programmatically (the entry point does the same for installed packages)."""
    _extra_checks.append(check)
    checks.cache_clear()
    result_types.cache_clear()
    return check


@functools.cache
def checks() -> dict[str, type[Check]]:
    """Every check by name: the built-ins, then entry-point and :func:`register`-ed ones."""
    found: list[type[Check]] = [_load(ref) for ref in BUILTIN_CHECKS]
    found += [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    found += _extra_checks
    out: dict[str, type[Check]] = {}
    flags: dict[str, str] = {}
    for cls in found:
        if cls.name in out and out[cls.name] is not cls:
            raise ConfigError(f"two checks are named {cls.name!r} ({out[cls.name].__module__}, {cls.__module__})")
        for field in cls.settings_type.model_fields:
            owner = flags.setdefault(field, cls.name)
            if owner != cls.name:
                raise ConfigError(f"checks {owner!r} and {cls.name!r} both declare the setting {field!r}")
        out[cls.name] = cls
    return out


@functools.cache
def result_types() -> dict[str, type[CheckResult]]:
    """Every result type by its ``kind``, for decoding results.json."""
    types: dict[str, type[CheckResult]] = {cls.result_type.kind: cls.result_type for cls in checks().values()}
    for ref in EXTRA_RESULTS:
        cls = _load(ref)
        types[cls.kind] = cls
    return types


def check(name: str) -> type[Check]:
    """The check class called ``name`` (exit 2 naming the known ones otherwise)."""
    known = checks()
    if name not in known:
        raise ConfigError(f"checks must be among {', '.join(known)}, got {name!r}")
    return known[name]
