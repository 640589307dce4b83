"""Where the errors are: metrics per subgroup and per intersection, with intervals and Holm.

The numbers come from :func:`subgroup_stats`, a pure function of labels, predictions and group
columns (cross-checked against fairlearn's MetricFrame in the tests); the check feeds it the
engine's shared clean pass and the per-sample outcomes other checks published (rotation,
spatial attack), so robustness is broken down per subgroup too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from auditkit.checks.base import Check
from auditkit.checks.clean import Example
from auditkit.engine.loop import Engine, Outcome
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import ImageDataset
from auditkit.inputs.images import to_data_uri
from auditkit.ops.calibration import DEFAULT_BINS, ece
from auditkit.ops.metrics import holm, mean_interval, wilson_interval
from auditkit.results import CheckResult, Conditions, Finding, Interval, Metric, pct, points
from auditkit.settings import Settings, setting

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
else:
    from auditkit._lazy import lazy

    np = lazy("numpy")
    torch = lazy("torch")

MISSING = "(missing)"
MISSING_TOKENS = frozenset({"", "nan", "NaN", "NA", "N/A", "None", "null"})
MAX_AUTO_LEVELS = 20


@dataclass(frozen=True)
class ClassRates:
    """One-vs-rest rates of one class inside a group."""

    name: str
    recall: Interval
    false_positive_rate: Interval
    false_negative_rate: Interval


@dataclass(frozen=True)
class Robustness:
    """A published per-sample outcome (e.g. survives the spatial attack) averaged over a group."""

    key: str
    label: str
    value: Interval


@dataclass(frozen=True)
class GroupStats:
    """Everything measured for one group (``attribute`` may be an intersection ``a×b``)."""

    attribute: str
    value: str
    key: str
    n: int
    sufficient: bool
    accuracy: Interval
    balanced_accuracy: float
    ece: float
    data_share: float
    error_share: float
    p_value: float
    p_holm: float
    per_class: tuple[ClassRates, ...]
    confusion: tuple[tuple[int, ...], ...]
    robustness: tuple[Robustness, ...]
    errors: tuple[Example, ...]


@dataclass(frozen=True)
class Disparity:
    """Accuracy disparity across the groups of one attribute (groups with enough support only)."""

    attribute: str
    compared: int
    best: str
    worst: str
    gap: float
    ratio: float
    significant: tuple[str, ...]
    inconclusive: tuple[str, ...]


@dataclass(frozen=True)
class SubgroupResult(CheckResult):
    """Per-group and per-intersection breakdown of errors, with disparity summaries."""

    kind = "subgroups"

    attributes: tuple[str, ...]
    min_support: int
    alpha: float
    class_names: tuple[str, ...]
    overall: Interval
    groups: tuple[GroupStats, ...]
    disparities: tuple[Disparity, ...]
    notes: tuple[str, ...]

    title = "Subgroups"
    template = "subgroups.html.j2"

    def headline(self) -> str:
        if not self.groups:
            return "no metadata column to group by"
        worst = [d for d in self.disparities if d.compared >= 2]
        if not worst:
            return "fewer than two groups with enough data"
        d = max(worst, key=lambda d: d.gap)
        flag = f"; {len(d.significant)} group(s) differ significantly (Holm)" if d.significant else ""
        return f"largest accuracy gap {points(d.gap)} by {d.attribute} ({d.best} vs {d.worst}){flag}"

    def report_context(self) -> dict[str, Any]:
        from auditkit.report import plots

        return {"bars": {a: plots.svg(plots.subgroup_bars(self, a)) for a in self.attributes}}

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        by_key = {(g.attribute, g.value): g for g in self.groups}
        out = []
        for d in self.disparities:
            best, worst = by_key.get((d.attribute, d.best)), by_key.get((d.attribute, d.worst))
            if d.compared < 2 or best is None or worst is None:
                continue
            err_b, err_w = 1 - best.accuracy.value, 1 - worst.accuracy.value
            times = f"{err_w / err_b:.1f}× as often as" if err_b > 0 else "more often than"
            sig = d.worst in d.significant
            p = f", p = {worst.p_holm:.2g} after Holm" if math.isfinite(worst.p_holm) else ""
            out.append(
                Finding(
                    conditions.gap(d.gap, sig),
                    f"Images with {d.attribute} = {d.worst} are wrong {times} those with {d.attribute} = {d.best} "
                    f"({pct(err_w)} vs {pct(err_b)} error, {worst.n} and {best.n} images{p}"
                    f"{'' if sig else '; not significant'}).",
                    points(d.gap),
                    f"subgroups.accuracy_gap[attribute={d.attribute}]",
                )
            )
        if not out:
            out.append(Finding("info", f"No subgroup comparison: {self.headline()}.", ""))
        return tuple(out)

    def metric_records(self) -> tuple[Metric, ...]:
        out: list[Metric] = []
        for g in self.groups:
            value = g.accuracy if g.sufficient else Interval(math.nan, math.nan, math.nan, g.n)
            out.append(Metric.of(f"subgroups.accuracy[{g.key}]", value))
            out.append(Metric(f"subgroups.error_rate[{g.key}]", 1.0 - value.value, "lower"))
            out.append(Metric(f"subgroups.n[{g.key}]", float(g.n), "none", "images"))
            out.append(Metric(f"subgroups.p_holm[{g.key}]", g.p_holm if g.sufficient else math.nan, "none", "p"))
            out.append(Metric(f"subgroups.ece[{g.key}]", g.ece if g.sufficient else math.nan, "lower"))
            for r in g.robustness:
                robust = r.value.value if g.sufficient else math.nan
                out.append(Metric(f"subgroups.robust_accuracy[{g.key},outcome={r.key}]", robust))
        for d in self.disparities:
            out.append(Metric(f"subgroups.accuracy_gap[attribute={d.attribute}]", d.gap, "lower"))
            out.append(Metric(f"subgroups.accuracy_ratio[attribute={d.attribute}]", d.ratio))
            count = float(len(d.significant))
            out.append(Metric(f"subgroups.significant_groups[attribute={d.attribute}]", count, "lower", "groups"))
        return tuple(out)


def normalise_column(values: Sequence[str], *, bins: int | None) -> list[str]:
    """Category labels for one metadata column: missing values named, numbers binned if asked."""
    cleaned = [MISSING if v.strip() in MISSING_TOKENS else v.strip() for v in values]
    present = [v for v in cleaned if v != MISSING]
    if not bins or not present:
        return cleaned
    try:
        numbers = np.array([float(v) for v in present])
    except ValueError:
        return cleaned  # not numeric: keep as categories
    edges = np.unique(np.quantile(numbers, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        return cleaned
    labels = []
    for v in cleaned:
        if v == MISSING:
            labels.append(MISSING)
            continue
        i = min(int(np.searchsorted(edges, float(v), side="right")) - 1, len(edges) - 2)
        closing = "]" if i == len(edges) - 2 else ")"
        labels.append(f"[{edges[i]:g}, {edges[i + 1]:g}{closing}")
    return labels


class _Level(NamedTuple):
    level: str
    mask: np.ndarray
    n: int
    hits: int
    p: float
    cm: np.ndarray
    sufficient: bool


def subgroup_stats(
    *,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    columns: Mapping[str, Sequence[str]],
    class_names: Sequence[str],
    min_support: int = 30,
    alpha: float = 0.05,
    outcomes: Sequence[Outcome] = (),
) -> tuple[tuple[GroupStats, ...], tuple[Disparity, ...]]:
    """Per-group statistics for each column and, with several columns, their intersection.

    ``y_true``/``y_pred``/``confidence`` are ``(N,)``; each column has ``N`` category labels. ``ece`` is
    the group's expected calibration error (:func:`auditkit.ops.calibration.ece`, ``DEFAULT_BINS``
    equal-width bins).
    Each group is compared with the rest of the data by Fisher's exact test on correct/wrong
    counts; p-values are Holm-adjusted within each attribute. Groups with fewer than
    ``min_support`` samples are reported but marked insufficient and left out of disparities.
    """
    from scipy.stats import fisher_exact
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    n_total = len(y_true)
    correct = y_true == y_pred
    total_errors = int((~correct).sum())
    k = len(class_names)
    groupings: list[tuple[str, list[str], list[str]]] = [(a, [a], list(v)) for a, v in columns.items()]
    if len(columns) > 1:
        names = list(columns)
        combined = ["|".join(parts) for parts in zip(*(columns[a] for a in names), strict=True)]
        groupings.append(("×".join(names), names, combined))
    groups: list[GroupStats] = []
    disparities: list[Disparity] = []
    for attribute, parts, labels in groupings:
        arr = np.asarray(labels, dtype=object)
        levels = sorted(set(labels))
        stats_for_attr: list[_Level] = []
        for level in levels:
            mask = arr == level
            n = int(mask.sum())
            hits = int(correct[mask].sum())
            rest_n, rest_hits = n_total - n, int(correct[~mask].sum())
            sufficient = n >= min_support
            if sufficient and rest_n > 0:
                p = float(fisher_exact([[hits, n - hits], [rest_hits, rest_n - rest_hits]]).pvalue)
            else:
                p = math.nan
            cm = confusion_matrix(y_true[mask], y_pred[mask], labels=np.arange(k)) if n else np.zeros((k, k), int)
            stats_for_attr.append(_Level(level, mask, n, hits, p, cm, sufficient))
        adjusted = holm([s.p for s in stats_for_attr])
        for s, p_adj in zip(stats_for_attr, adjusted, strict=True):
            mask, n, cm, level = s.mask, s.n, s.cm, s.level
            key_parts = level.split("|") if len(parts) > 1 else [level]
            key = ",".join(f"{a}={v}" for a, v in zip(parts, key_parts, strict=True))
            groups.append(
                GroupStats(
                    attribute=attribute,
                    value=" & ".join(key_parts) if len(parts) > 1 else level,
                    key=key,
                    n=n,
                    sufficient=s.sufficient,
                    accuracy=wilson_interval(s.hits, n),
                    balanced_accuracy=float(balanced_accuracy_score(y_true[mask], y_pred[mask])) if n else math.nan,
                    ece=ece(confidence[mask], correct[mask], bins=DEFAULT_BINS),
                    data_share=n / n_total if n_total else math.nan,
                    error_share=int((~correct[mask]).sum()) / total_errors if total_errors else 0.0,
                    p_value=s.p,
                    p_holm=float(p_adj),
                    per_class=_class_rates(cm, class_names),
                    confusion=tuple(tuple(int(v) for v in row) for row in cm),
                    robustness=tuple(
                        Robustness(key=o.key, label=o.label, value=_outcome_interval(o.values.numpy()[mask]))
                        for o in outcomes
                    ),
                    errors=(),
                )
            )
        disparities.append(_disparity(attribute, [g for g in groups if g.attribute == attribute], alpha))
    return tuple(groups), tuple(disparities)


def _outcome_interval(values: np.ndarray) -> Interval:
    if values.size and np.isin(values, (0.0, 1.0)).all():
        return wilson_interval(int(values.sum()), int(values.size))
    return mean_interval(torch.from_numpy(values.astype(np.float64)))


def _class_rates(cm: np.ndarray, class_names: Sequence[str]) -> tuple[ClassRates, ...]:
    total = int(cm.sum())
    rates = []
    for c, name in enumerate(class_names):
        tp = int(cm[c, c])
        fn = int(cm[c].sum()) - tp
        fp = int(cm[:, c].sum()) - tp
        tn = total - tp - fn - fp
        rates.append(
            ClassRates(
                name=name,
                recall=wilson_interval(tp, tp + fn),
                false_positive_rate=wilson_interval(fp, fp + tn),
                false_negative_rate=wilson_interval(fn, tp + fn),
            )
        )
    return tuple(rates)


def _disparity(attribute: str, groups: list[GroupStats], alpha: float) -> Disparity:
    ok = [g for g in groups if g.sufficient]
    inconclusive = tuple(g.value for g in groups if not g.sufficient)
    significant = tuple(g.value for g in ok if g.p_holm < alpha)
    if len(ok) < 2:
        return Disparity(attribute, len(ok), "", "", math.nan, math.nan, significant, inconclusive)
    best = max(ok, key=lambda g: g.accuracy.value)
    worst = min(ok, key=lambda g: g.accuracy.value)
    ratio = worst.accuracy.value / best.accuracy.value if best.accuracy.value > 0 else math.nan
    return Disparity(
        attribute=attribute,
        compared=len(ok),
        best=best.value,
        worst=worst.value,
        gap=best.accuracy.value - worst.accuracy.value,
        ratio=ratio,
        significant=significant,
        inconclusive=inconclusive,
    )


#: columns that describe an image's geometry (a mask file, a box), never a group of people or sites
NOT_GROUPS: frozenset[str] = frozenset({"mask", "x0", "y0", "x1", "y1"})


def resolve_group_columns(data: ImageDataset, requested: Sequence[str]) -> list[str]:
    """The requested columns (checked), or every metadata column with 2 to 20 distinct values, except a
    mask column and box coordinates."""
    available = sorted(data.metadata)
    if requested:
        missing = [c for c in requested if c not in data.metadata]
        if missing:
            raise ConfigError(f"--group {missing[0]!r} is not a column of the data; available: {available or 'none'}")
        return list(requested)
    return [c for c in available if c not in NOT_GROUPS and 2 <= len(set(data.metadata[c])) <= MAX_AUTO_LEVELS]


class SubgroupSettings(Settings):
    """Settings of the subgroup breakdown (``[subgroups]`` in auditkit.toml)."""

    section: ClassVar[str] = "subgroups"

    groups: tuple[str, ...] = setting(
        (),
        "Metadata column to break errors down by; repeatable (intersections too). [default: columns with 2-20 values]",
        flag="--group",
        multiple=True,
    )
    min_support: int = setting(30, "Groups smaller than this are 'insufficient data'.", ge=1)
    bins: int | None = setting(None, "Bin numeric group columns into this many quantile bins.", ge=2)


class Subgroups(Check):
    """Error breakdown per subgroup and intersection of the dataset's metadata columns."""

    name = "subgroups"
    settings_type = SubgroupSettings
    result_type = SubgroupResult
    command = "subgroups"
    help = (
        "Error breakdown per subgroup and per intersection of the data's metadata columns (--group), "
        "with 95% intervals, Holm-corrected disparity tests and the errors per group."
    )
    runs_last = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Subgroups:
        s = SubgroupSettings.model_validate(settings)
        return cls(groups=s.groups, min_support=s.min_support, bins=s.bins)

    def __init__(
        self,
        *,
        groups: tuple[str, ...] = (),
        min_support: int = 30,
        bins: int | None = None,
        alpha: float = 0.05,
        max_examples: int = 6,
    ) -> None:
        if min_support < 1:
            raise ConfigError(f"min_support must be at least 1, got {min_support}")
        if bins is not None and bins < 2:
            raise ConfigError(f"bins must be at least 2, got {bins}")
        self.groups = groups
        self.min_support = min_support
        self.bins = bins
        self.alpha = alpha
        self.max_examples = max_examples

    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> SubgroupResult:
        names = resolve_group_columns(data, self.groups)
        notes = []
        if not names:
            notes.append("the data has no metadata column to group by (a CSV manifest column or an .npz array)")
        columns = {c: normalise_column(data.metadata[c], bins=self.bins) for c in names}
        preds = engine.predict(model, data)
        y_true, y_pred = preds.label.numpy(), preds.pred.numpy()
        confidence = preds.confidence.numpy()
        groups, disparities = subgroup_stats(
            y_true=y_true,
            y_pred=y_pred,
            confidence=confidence,
            columns=columns,
            class_names=data.class_names,
            min_support=self.min_support,
            alpha=self.alpha,
            outcomes=[o for o in engine.outcomes(data) if o.per_group],
        )
        groups = tuple(self._with_examples(g, columns, data, y_true, y_pred, confidence) for g in groups)
        return SubgroupResult(
            attributes=tuple(names),
            min_support=self.min_support,
            alpha=self.alpha,
            class_names=data.class_names,
            overall=wilson_interval(int((y_true == y_pred).sum()), len(y_true)),
            groups=groups,
            disparities=disparities,
            notes=tuple(notes),
        )

    def _with_examples(
        self,
        g: GroupStats,
        columns: Mapping[str, Sequence[str]],
        data: ImageDataset,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        confidence: np.ndarray,
    ) -> GroupStats:
        """Attach the group's most confident mistakes (single attributes only, deterministic)."""
        if g.attribute not in columns or self.max_examples == 0:
            return g
        mask = (np.asarray(columns[g.attribute], dtype=object) == g.value) & (y_true != y_pred)
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(-confidence[idx], kind="stable")][: self.max_examples]
        names = data.class_names
        examples = tuple(
            Example(
                id=data.ids[i],
                label=names[int(y_true[i])],
                pred=names[int(y_pred[i])],
                confidence=float(confidence[i]),
                image=to_data_uri(data.images[i]),
            )
            for i in idx.tolist()
        )
        return replace(g, errors=examples)
