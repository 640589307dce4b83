"""The auditkit exception hierarchy: every expected failure is one of these.

Each class carries the process exit code the CLI returns for it (see docs/exit-codes.md).
"""

from __future__ import annotations


class AuditkitError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 3


class UsageError(AuditkitError):
    """Bad command-line usage or configuration (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """An invalid configuration value or file (exit 2)."""


class NotBuiltError(UsageError):
    """A command that is part of the plan but not built yet (exit 2)."""


class RunError(AuditkitError):
    """The run could not complete (exit 3)."""

    exit_code = 3


class DataError(RunError):
    """The dataset is missing, malformed or has too many bad files (exit 3)."""


class ModelError(RunError):
    """The model could not be loaded or run (exit 3)."""


class NonFiniteOutputError(ModelError):
    """The model produced NaN or infinite outputs (exit 3)."""


class OutputWriteError(RunError):
    """A result file could not be written (exit 3)."""


class UntrustedModelError(AuditkitError):
    """A model file that can execute code when loaded, refused without ``--trust-model`` (exit 4)."""

    exit_code = 4


class Interrupted(AuditkitError):
    """The run was interrupted (exit 130)."""

    exit_code = 130


__all__ = [
    "AuditkitError",
    "ConfigError",
    "DataError",
    "Interrupted",
    "ModelError",
    "NonFiniteOutputError",
    "NotBuiltError",
    "OutputWriteError",
    "RunError",
    "UntrustedModelError",
    "UsageError",
]
