"""Clean accuracy: overall and per class with Wilson intervals, confusion matrix, examples of errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auditkit.checks.base import Check
from auditkit.data import ImageDataset
from auditkit.engine import Engine
from auditkit.images import to_data_uri
from auditkit.metrics import ConfusionAccumulator, wilson_interval
from auditkit.results import CheckResult, Interval


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

    def metrics(self) -> dict[str, float]:
        out = {
            "clean.accuracy": self.accuracy.value,
            "clean.accuracy.ci_low": self.accuracy.low,
            "clean.accuracy.ci_high": self.accuracy.high,
            "clean.error_rate": 1.0 - self.accuracy.value,
            "clean.balanced_accuracy": self.balanced_accuracy,
            "clean.n": float(self.accuracy.n),
        }
        for c in self.per_class:
            out[f"clean.accuracy[class={c.name}]"] = c.accuracy.value
        return out


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

    def __init__(self, *, max_examples: int = 16) -> None:
        self.max_examples = max_examples

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
        )
