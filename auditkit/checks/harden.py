"""The result of ``auditkit harden`` as it is stored in results.json and shown in the report.

Training itself lives in :mod:`auditkit.training.train` and the flow in :mod:`auditkit.training.harden`; this
module holds only the typed result, so the report can render it without importing training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from auditkit.results import CheckResult, Conditions, Finding, Metric, fmt, pct, points
from auditkit.training.train import EpochLog


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

    title = "Hardening: before vs after"
    order = 1
    template = "harden.html.j2"

    def headline(self) -> str:
        parts = [f"{self.label}, kept epoch {self.kept_epoch}"]
        if self.overfit_epoch is not None:
            parts.append(f"catastrophic overfitting at epoch {self.overfit_epoch}")
        for name, old, new, _ in self.deltas:
            if name == "clean.accuracy" or name.startswith(("attack.robust_accuracy", "rotation.mean_accuracy")):
                if name.startswith("attack.robust_accuracy") and f"eps={fmt(self.eps)}]" not in name:
                    continue
                parts.append(f"{name} {pct(old)} → {pct(new)}")
        return "; ".join(parts)

    def report_context(self) -> dict[str, Any]:
        from auditkit.report import plots

        out: dict[str, Any] = {"training_svg": plots.svg(plots.harden_training(self)), "attack_svg": ""}
        out["rotation_svg"] = ""
        if self.after_attack:
            label = f"epsilon ({self.norm}, [0, 1] pixel units)"
            curve = plots.before_after(self.before_attack, self.after_attack, xlabel=label, ylabel="robust acc.")
            out["attack_svg"] = plots.svg(curve)
        if self.after_rotation:
            label = "rotation angle (degrees)"
            curve = plots.before_after(self.before_rotation, self.after_rotation, xlabel=label, ylabel="acc.")
            out["rotation_svg"] = plots.svg(curve)
        return out

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        out = []
        if self.overfit_epoch is not None:
            out.append(
                Finding(
                    "warn",
                    f"Training overfitted catastrophically at epoch {self.overfit_epoch} (robustness to the "
                    f"training attack collapsed); epoch {self.kept_epoch} was kept.",
                    str(self.overfit_epoch),
                    "harden.catastrophic_overfitting",
                )
            )
        for name, old, new, delta in self.deltas:
            if name == "clean.accuracy" or name.startswith(("attack.robust_accuracy", "rotation.mean_accuracy")):
                if name.startswith("attack.robust_accuracy") and f"eps={fmt(self.eps)}]" not in name:
                    continue
                sign = "+" if delta >= 0 else "−"
                out.append(
                    Finding(
                        "info",
                        f"{self.label} moved {name} from {pct(old)} to {pct(new)}.",
                        f"{sign}{points(abs(delta))}",
                        f"harden.change[{name}]",
                    )
                )
        return tuple(out) or (Finding("info", self.headline(), ""),)

    def metric_records(self) -> tuple[Metric, ...]:
        out = [Metric(f"harden.change[{name}]", delta, unit="points") for name, _, _, delta in self.deltas]
        out.append(
            Metric("harden.catastrophic_overfitting", 0.0 if self.overfit_epoch is None else 1.0, "lower", "flag")
        )
        return tuple(out)

    def delta(self, metric: str) -> float:
        """``after - before`` for ``metric`` (``nan`` when either run lacks it)."""
        return next((d for name, _, _, d in self.deltas if name == metric), float("nan"))
