"""auditkit: robustness and fairness audits for trained image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from auditkit.exceptions import (
    AuditkitError,
    ConfigError,
    DataError,
    ModelError,
    NonFiniteOutputError,
    RunError,
    UntrustedModelError,
    UsageError,
)

if TYPE_CHECKING:
    from auditkit.api import audit as audit

__all__ = [
    "AdversarialAttack",
    "AttackResult",
    "AuditConfig",
    "AuditkitError",
    "CleanAccuracy",
    "CleanResult",
    "ConfigError",
    "CorruptionResult",
    "CorruptionSweep",
    "DataError",
    "Engine",
    "FileImages",
    "GateResult",
    "ImageDataset",
    "ModelError",
    "ModelSpec",
    "NonFiniteOutputError",
    "RotationResult",
    "RotationSweep",
    "RunError",
    "RunResults",
    "SaliencyCheck",
    "SaliencyMaps",
    "SaliencyResult",
    "ShortcutProbes",
    "ShortcutResult",
    "SubgroupBreakdown",
    "SubgroupResult",
    "Subgroups",
    "UntrustedModelError",
    "UsageError",
    "World",
    "__version__",
    "audit",
    "load_dataset",
    "load_model",
    "render_report",
    "run_audit",
    "write_outputs",
]

#: where each lazily imported name lives: ``(module, attribute)``
_HOMES: dict[str, tuple[str, str]] = {
    "AdversarialAttack": ("auditkit.checks.attack", "AdversarialAttack"),
    "AttackResult": ("auditkit.checks.attack", "AttackResult"),
    "AuditConfig": ("auditkit.config", "AuditConfig"),
    "CleanAccuracy": ("auditkit.checks.clean", "CleanAccuracy"),
    "CleanResult": ("auditkit.checks.clean", "CleanResult"),
    "CorruptionResult": ("auditkit.checks.corrupt", "CorruptionResult"),
    "CorruptionSweep": ("auditkit.checks.corrupt", "CorruptionSweep"),
    "Engine": ("auditkit.engine.loop", "Engine"),
    "FileImages": ("auditkit.inputs.data", "FileImages"),
    "GateResult": ("auditkit.gate", "GateResult"),
    "ImageDataset": ("auditkit.inputs.data", "ImageDataset"),
    "ModelSpec": ("auditkit.inputs.models", "ModelSpec"),
    "RotationResult": ("auditkit.checks.rotation", "RotationResult"),
    "RotationSweep": ("auditkit.checks.rotation", "RotationSweep"),
    "RunResults": ("auditkit.results", "RunResults"),
    "SaliencyCheck": ("auditkit.checks.saliency", "SaliencyMaps"),  # alias
    "SaliencyMaps": ("auditkit.checks.saliency", "SaliencyMaps"),
    "SaliencyResult": ("auditkit.checks.saliency", "SaliencyResult"),
    "ShortcutProbes": ("auditkit.checks.shortcut", "ShortcutProbes"),
    "ShortcutResult": ("auditkit.checks.shortcut", "ShortcutResult"),
    "SubgroupBreakdown": ("auditkit.checks.subgroups", "Subgroups"),  # alias
    "SubgroupResult": ("auditkit.checks.subgroups", "SubgroupResult"),
    "Subgroups": ("auditkit.checks.subgroups", "Subgroups"),
    "World": ("auditkit.engine.distributed", "World"),
    "audit": ("auditkit.api", "audit"),
    "load_dataset": ("auditkit.inputs.data", "load_dataset"),
    "load_model": ("auditkit.inputs.models", "load_model"),
    "render_report": ("auditkit.report.html", "render_report"),
    "run_audit": ("auditkit.pipeline", "run_audit"),
    "write_outputs": ("auditkit.pipeline", "write_outputs"),
}


def __getattr__(name: str) -> object:
    """Import the heavier parts (torch, matplotlib) only when first used."""
    import importlib

    if name in _HOMES:
        module, attr = _HOMES[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'auditkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
