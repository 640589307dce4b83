"""Clean accuracy: overall and per class with Wilson intervals, confusion matrix, examples of errors,
and calibration (is the model confident when it is wrong? :mod:`auditkit.ops.calibration`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auditkit.checks.base import Check
from auditkit.engine.loop import Engine
from auditkit.inputs.data import ImageDataset
from auditkit.inputs.images import to_data_uri
from auditkit.ops.calibration import CONFIDENT, DEFAULT_BINS, DEFAULT_RESAMPLES, CalibrationSummary, summarize
from auditkit.ops.metrics import ConfusionAccumulator, wilson_interval
from auditkit.results import CheckResult, Conditions, Finding, Interval, Metric, pct, points

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
else:
    from auditkit._lazy import lazy

    np = lazy("numpy")
    torch = lazy("torch")

#: an expected calibration error above this warns (a 5-point average gap between confidence and accuracy)
ECE_WARN = 0.05


@dataclass(frozen=True)
class ClassAccuracy:
    """One class: recall (accuracy on its samples) with interval, precision, support."""

    name: str
    accuracy: Interval
    precision: float
    support: int


@dataclass(frozen=True)
class Example:
    """One sample shown in the report: its id, true and predicted class, confidence, thumbnail."""

    id: str
    label: str
    pred: str
    confidence: float
    image: str


@dataclass(frozen=True)
class CleanResult(CheckResult):
    """Accuracy on unperturbed data."""

    kind = "clean"

    accuracy: Interval
    balanced_accuracy: float
    mean_confidence: float
    class_names: tuple[str, ...]
    per_class: tuple[ClassAccuracy, ...]
    confusion: tuple[tuple[int, ...], ...]
    errors: tuple[Example, ...]
    #: ``None`` in results.json files written before calibration was measured
    calibration: CalibrationSummary | None = None

    @property
    def confident_errors(self) -> tuple[Example, ...]:
        """The shown errors made with at least the calibration threshold's confidence (most confident first)."""
        cal = self.calibration
        return tuple(e for e in self.errors if cal is not None and e.confidence >= cal.threshold)

    def top_confusions(self, k: int = 8) -> tuple[tuple[str, str, int, float], ...]:
        """The ``k`` most frequent mistakes from the confusion matrix: ``(true, predicted, count,
        share of the true class's images)``, most frequent first (ties: matrix order)."""
        cells = [
            (count, i, j) for i, row in enumerate(self.confusion) for j, count in enumerate(row) if i != j and count > 0
        ]
        cells.sort(key=lambda c: -c[0])
        support = [sum(row) for row in self.confusion]
        return tuple((self.class_names[i], self.class_names[j], count, count / support[i]) for count, i, j in cells[:k])

    title = "Clean accuracy"
    template = "clean.html.j2"

    def headline(self) -> str:
        a = self.accuracy
        return f"{pct(a.value)} accuracy (95% CI {pct(a.low)}–{pct(a.high)}) on {a.n} images"

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        a = self.accuracy
        out = [
            Finding(
                "info",
                f"The model is right on {pct(a.value)} of {a.n} unaltered images (95% CI {pct(a.low)}–{pct(a.high)}).",
                pct(a.value),
                "clean.accuracy",
            )
        ]
        counted = [c for c in self.per_class if c.support > 0]
        if len(counted) >= 2:
            worst = min(counted, key=lambda c: c.accuracy.value)
            drop = a.value - worst.accuracy.value
            out.append(
                Finding(
                    conditions.drop(drop),
                    f"Class '{worst.name}' is recognised least: {pct(worst.accuracy.value)} of its "
                    f"{worst.support} images, {points(drop)} below the overall accuracy.",
                    points(drop),
                    f"clean.accuracy[class={worst.name}]",
                )
            )
        out += self._calibration_findings()
        return tuple(out)

    def _calibration_findings(self) -> list[Finding]:
        cal = self.calibration
        if cal is None or cal.ece.n == 0:
            return []
        e = cal.ece
        side = "overconfident" if cal.mean_confidence > self.accuracy.value else "underconfident"
        ci = f"95% CI {pct(e.low)}–{pct(e.high)}, {cal.bins} equal-width bins"
        out = [
            Finding(
                "warn",
                f"Confidence does not match accuracy: expected calibration error {pct(e.value)} ({ci}), above "
                f"{pct(ECE_WARN, 0)}; the model is {side} (mean confidence {pct(cal.mean_confidence)}, accuracy "
                f"{pct(self.accuracy.value)}).",
                pct(e.value),
                "clean.ece",
            )
            if e.value > ECE_WARN
            else Finding(
                "pass",
                f"Confidence matches accuracy: expected calibration error {pct(e.value)} ({ci}), at most "
                f"{pct(ECE_WARN, 0)}.",
                pct(e.value),
                "clean.ece",
            )
        ]
        if cal.confident_wrong:
            out.append(
                Finding(
                    "warn",
                    f"{cal.confident_wrong} of {cal.errors} errors were made with >= {pct(cal.threshold, 0)} "
                    "confidence: a confidence threshold would not catch them.",
                    pct(cal.confident_wrong_share),
                    "clean.confident_wrong",
                )
            )
        return out

    def report_context(self) -> dict[str, Any]:
        from auditkit.report import calibration_plots, plots

        cal = self.calibration
        return {
            "per_class_svg": plots.svg(plots.per_class_accuracy(self)),
            "confusion_svg": plots.svg(plots.confusion_matrix(self)),
            "reliability_svg": plots.svg(calibration_plots.reliability_diagram(cal)) if cal and cal.ece.n else "",
        }

    def metric_records(self) -> tuple[Metric, ...]:
        records = [
            Metric.of("clean.accuracy", self.accuracy),
            Metric("clean.error_rate", 1.0 - self.accuracy.value, "lower"),
            Metric("clean.balanced_accuracy", self.balanced_accuracy),
            Metric("clean.n", float(self.accuracy.n), "none", "images"),
        ]
        records += [Metric(f"clean.accuracy[class={c.name}]", c.accuracy.value) for c in self.per_class]
        cal = self.calibration
        if cal is not None and cal.ece.n:
            records += [
                Metric.of("clean.ece", cal.ece, "lower"),
                Metric("clean.ece_equal_mass", cal.ece_equal_mass, "lower"),
                Metric("clean.mce", cal.mce, "lower"),
                Metric("clean.brier", cal.brier, "lower", "score"),
                Metric("clean.nll", cal.nll, "lower", "nats"),
                Metric("clean.confident_wrong", cal.confident_wrong_share, "lower"),
                Metric("clean.confident_wrong_count", float(cal.confident_wrong), "lower", "images"),
            ]
            if cal.temperature is not None:
                records.append(Metric("clean.temperature", cal.temperature.temperature, "none", "factor"))
        return tuple(records)


def summarize_confusion(
    cm: np.ndarray, class_names: tuple[str, ...]
) -> tuple[Interval, float, tuple[ClassAccuracy, ...]]:
    """From a ``(K, K)`` confusion matrix: accuracy interval, balanced accuracy, per-class rows."""
    total = int(cm.sum())
    correct = int(np.trace(cm))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    per_class = tuple(
        ClassAccuracy(
            name=name,
            accuracy=wilson_interval(int(cm[k, k]), int(support[k])),
            precision=float(cm[k, k] / predicted[k]) if predicted[k] else float("nan"),
            support=int(support[k]),
        )
        for k, name in enumerate(class_names)
    )
    present = support > 0
    balanced = float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else float("nan")
    return wilson_interval(correct, total), balanced, per_class


class CleanAccuracy(Check):
    """Clean accuracy from the engine's shared clean pass (no extra forward pass)."""

    name = "clean"
    result_type = CleanResult

    def __init__(
        self,
        *,
        max_examples: int = 16,
        bins: int = DEFAULT_BINS,
        resamples: int = DEFAULT_RESAMPLES,
        threshold: float = CONFIDENT,
    ) -> None:
        self.max_examples = max_examples
        self.bins = bins
        self.resamples = resamples
        self.threshold = threshold

    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> CleanResult:
        preds = engine.predict(model, data)
        acc = ConfusionAccumulator(num_classes=data.num_classes)
        acc.update(preds.label.numpy(), preds.pred.numpy())
        cm = acc.compute()
        accuracy, balanced, per_class = summarize_confusion(cm, data.class_names)
        confidence = preds.confidence
        wrong = torch.nonzero(~preds.correct).flatten()
        # most confident mistakes first: the ones a reader should look at
        order = wrong[torch.argsort(confidence[wrong], descending=True, stable=True)][: self.max_examples]
        names = data.class_names
        errors = tuple(
            Example(
                id=data.ids[i],
                label=names[int(preds.label[i])],
                pred=names[int(preds.pred[i])],
                confidence=float(confidence[i]),
                image=to_data_uri(data.images[i]),
            )
            for i in order.tolist()
        )
        return CleanResult(
            accuracy=accuracy,
            balanced_accuracy=balanced,
            mean_confidence=float(confidence.mean()) if len(confidence) else float("nan"),
            class_names=names,
            per_class=per_class,
            confusion=tuple(tuple(int(v) for v in row) for row in cm),
            errors=errors,
            calibration=summarize(
                preds.logits,
                preds.label,
                bins=self.bins,
                n_resamples=self.resamples,
                seed=engine.seed,
                threshold=self.threshold,
            )[0],
        )
