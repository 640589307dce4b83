"""The result of ``auditkit harden`` as it is stored in results.json and shown in the report.

Training itself lives in :mod:`auditkit.train` and the flow in :mod:`auditkit.harden`; this
module holds only the typed result, so the report can render it without importing training.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditkit.results import CheckResult
from auditkit.train import EpochLog


@dataclass(frozen=True)
class HardenResult(CheckResult):
    """What training did and what it changed: settings, per-epoch logs, before/after curves and
    the change of every headline metric (``after - before``)."""

    kind = "harden"

    method: str
    label: str
    eps: float
    norm: str
    rotate: float
    epochs: int
    lr: float
    batch_size: int
    fresh: bool
    train_samples: int
    val_samples: int
    eval_source: str
    eval_attack: str
    logs: tuple[EpochLog, ...]
    kept_epoch: int
    overfit_epoch: int | None
    resumed_from: int
    before_attack: tuple[tuple[float, float, float, float], ...]
    after_attack: tuple[tuple[float, float, float, float], ...]
    before_rotation: tuple[tuple[float, float], ...]
    after_rotation: tuple[tuple[float, float], ...]
    deltas: tuple[tuple[str, float, float, float], ...]

    def metrics(self) -> dict[str, float]:
        out = {f"harden.change[{name}]": delta for name, _, _, delta in self.deltas}
        out["harden.catastrophic_overfitting"] = 0.0 if self.overfit_epoch is None else 1.0
        return out

    def delta(self, metric: str) -> float:
        """``after - before`` for ``metric`` (``nan`` when either run lacks it)."""
        return next((d for name, _, _, d in self.deltas if name == metric), float("nan"))
