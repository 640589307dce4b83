"""The check base class: ``run(model, data, engine) -> CheckResult`` is the template method."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, final

from auditkit.engine.loop import Engine, eval_mode
from auditkit.inputs.data import ImageDataset
from auditkit.results import CheckResult, Conditions, Finding, Metric
from auditkit.settings import Settings

if TYPE_CHECKING:
    from torch import nn


class NoSettings(Settings):
    """A check without settings of its own."""


class Check(ABC):
    """One audit check. Subclasses store keyword-only settings and implement :meth:`_run`.

    The class attributes are what the registry, the CLI and the report need: ``settings_type``
    declares the settings once; ``command`` (a CLI command running the clean pass and this
    check) with its ``help``; ``result_type`` decodes results.json.
    """

    name: ClassVar[str]
    settings_type: ClassVar[type[Settings]] = NoSettings
    result_type: ClassVar[type[CheckResult]]
    command: ClassVar[str | None] = None
    help: ClassVar[str] = ""
    #: runs after the others (it reads the per-sample outcomes they publish)
    runs_last: ClassVar[bool] = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Check:
        """The check configured by its validated settings (field names are constructor keywords)."""
        kwargs: dict[str, Any] = settings.model_dump()
        return cls(**kwargs)

    @final
    def run(self, model: nn.Module, data: ImageDataset, *, engine: Engine) -> CheckResult:
        """Run the check with ``model`` on the engine's device in eval mode (restored after)."""
        engine.to_device(model)
        with eval_mode(model):
            return self._run(model, data, engine)

    @abstractmethod
    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> CheckResult: ...


@dataclass(frozen=True)
class CheckFailure(CheckResult):
    """A check that crashed: the run fails closed (exit 3) and the report shows the error."""

    kind = "failure"

    check: str
    error: str

    title = "Check that crashed"
    template = "failure.html.j2"

    @property
    def anchor(self) -> str:
        return f"{self.kind}-{self.check}"

    def headline(self) -> str:
        return f"CRASHED — {self.check}: {self.error[:120]}"

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        return (Finding("fail", f"The {self.check} check could not complete: {self.error[:200]}", "crashed"),)

    def metric_records(self) -> tuple[Metric, ...]:
        return (Metric(f"{self.check}.crashed", 1.0, "lower", "flag"),)
