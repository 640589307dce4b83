"""The check base class: ``run(model, data, engine) -> CheckResult`` is the template method."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, final

from torch import nn

from auditkit.data import ImageDataset
from auditkit.engine import Engine, eval_mode
from auditkit.results import CheckResult


class Check(ABC):
    """One audit check. Subclasses store keyword-only settings and implement :meth:`_run`."""

    name: ClassVar[str]

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

    def metrics(self) -> dict[str, float]:
        return {f"{self.check}.crashed": 1.0}
