"""auditkit: robustness and fairness audits for trained image classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

from auditkit.exceptions import (
    AuditkitError,
    ConfigError,
    DataError,
    ModelError,
    NonFiniteOutputError,
    UntrustedModelError,
    UsageError,
)

__all__ = [
    "AuditConfig",
    "AuditkitError",
    "CleanAccuracy",
    "CleanResult",
    "ConfigError",
    "DataError",
    "Engine",
    "FileImages",
    "ImageDataset",
    "ModelError",
    "ModelSpec",
    "NonFiniteOutputError",
    "RunResults",
    "UntrustedModelError",
    "UsageError",
    "World",
    "__version__",
    "load_dataset",
    "load_model",
    "render_report",
    "run_audit",
    "write_outputs",
]


def __getattr__(name: str) -> object:
    """Import the heavier parts (torch, matplotlib) only when first used."""
    import importlib

    homes = {
        "AuditConfig": "auditkit.config",
        "CleanAccuracy": "auditkit.checks.clean",
        "CleanResult": "auditkit.checks.clean",
        "Engine": "auditkit.engine.loop",
        "FileImages": "auditkit.inputs.data",
        "ImageDataset": "auditkit.inputs.data",
        "World": "auditkit.engine.distributed",
        "ModelSpec": "auditkit.inputs.models",
        "RunResults": "auditkit.results",
        "load_dataset": "auditkit.inputs.data",
        "load_model": "auditkit.inputs.models",
        "render_report": "auditkit.report.html",
        "run_audit": "auditkit.audit",
        "write_outputs": "auditkit.audit",
    }
    if name in homes:
        return getattr(importlib.import_module(homes[name]), name)
    raise AttributeError(f"module 'auditkit' has no attribute {name!r}")
