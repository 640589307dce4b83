"""Plots as inline SVG strings (matplotlib, Agg backend, text kept as escaped SVG text)."""

from __future__ import annotations

import io
import re
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from auditkit.checks.attack import AttackResult
from auditkit.checks.clean import CleanResult
from auditkit.checks.harden import HardenResult
from auditkit.checks.rotation import RotationResult
from auditkit.checks.shortcut import ShortcutResult
from auditkit.checks.subgroups import SubgroupResult
from auditkit.results import Interval

_STYLE: Any = {"svg.fonttype": "none", "svg.hashsalt": "auditkit", "font.size": 9}


def to_svg(fig: Figure) -> str:
    """Serialise ``fig`` to an ``<svg>`` element (no XML prolog), then close it."""
    buf = io.StringIO()
    with plt.rc_context(_STYLE):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def per_class_accuracy(result: CleanResult) -> str:
    """Bar chart of per-class accuracy with 95% Wilson intervals as error bars."""
    with plt.rc_context(_STYLE):
        k = len(result.per_class)
        fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * k + 1.5), 2.8))
        vals = np.array([c.accuracy.value for c in result.per_class], dtype=float)
        low = np.array([c.accuracy.low for c in result.per_class], dtype=float)
        high = np.array([c.accuracy.high for c in result.per_class], dtype=float)
        x = np.arange(k)
        ax.bar(x, np.nan_to_num(vals), color="#4c78a8")
        ax.errorbar(
            x,
            np.nan_to_num(vals),
            yerr=[np.nan_to_num(vals - low), np.nan_to_num(high - vals)],
            fmt="none",
            ecolor="#333",
            capsize=2,
            lw=0.8,
        )
        ax.axhline(result.accuracy.value, color="#e45756", lw=1, ls="--", label="overall")
        ax.set_xticks(
            x,
            [_short(c.name) for c in result.per_class],
            rotation=45 if k > 12 else 0,
            ha="right" if k > 12 else "center",
        )
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy")
        ax.set_xlabel("true class")
        ax.legend(loc="lower right", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)


def confusion_matrix(result: CleanResult) -> str:
    """Heatmap of the confusion matrix, rows normalised to the true class, counts annotated."""
    cm = np.array(result.confusion, dtype=float)
    keep = np.flatnonzero((cm.sum(axis=0) + cm.sum(axis=1)) > 0)
    cm = cm[np.ix_(keep, keep)]
    names = [_short(result.class_names[i]) for i in keep]
    with plt.rc_context(_STYLE):
        k = len(keep)
        size = max(3.2, 0.38 * k + 1.6)
        fig, ax = plt.subplots(figsize=(size, size * 0.85))
        rows = cm.sum(axis=1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        ax.text(
                            j,
                            i,
                            f"{int(cm[i, j])}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "#222",
                        )
        upright = k <= 10 and max(map(len, names), default=0) <= 3  # short labels fit side by side
        ax.set_xticks(
            range(k), names, rotation=0 if upright else 45, ha="center" if upright else "right", rotation_mode="anchor"
        )
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return to_svg(fig)


def svg(text: str) -> Any:
    """An SVG plot, sanitised and marked safe for the report template (``markupsafe.Markup``)."""
    from markupsafe import Markup

    return Markup(sanitize_svg(text))


def sanitize_svg(svg: str) -> str:
    """Drop anything script-like from an SVG produced here (defence in depth)."""
    return re.sub(r"<script.*?</script>", "", svg, flags=re.S | re.I)


def _banded(ax: Any, x: np.ndarray, intervals: list[Interval], color: str, label: str) -> None:
    """A line of point estimates with its 95% interval as a shaded band."""
    low = np.array([i.low for i in intervals])
    high = np.array([i.high for i in intervals])
    ax.fill_between(x, low, high, color=color, alpha=0.22, lw=0, label="95% interval")
    ax.plot(x, np.array([i.value for i in intervals]), color=color, marker="o", ms=3.5, lw=1.5, label=label)


def rotation_curve(result: RotationResult) -> str:
    """Accuracy vs angle with its 95% band, the clean accuracy and the chance level."""
    angles = np.array([p.angle for p in result.points])
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7.0, 3.0))
        _banded(ax, angles, [p.accuracy for p in result.points], "#4c78a8", "accuracy")
        ax.axhline(result.clean_accuracy, color="#54a24b", lw=1, ls="--", label="clean (0°)")
        ax.axhline(1 / max(1, len(result.class_names)), color="#999", lw=1, ls=":", label="chance")
        ax.axvspan(
            -result.mean_range,
            result.mean_range,
            color="#f2cf5b",
            alpha=0.15,
            lw=0,
            label=f"±{result.mean_range:g}° range",
        )
        ax.set_xlabel("rotation angle (degrees, positive = counter-clockwise)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        if angles.size and angles.max() - angles.min() >= 180:
            ax.set_xticks(np.arange(-180, 181, 45))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)


def rotation_per_class(result: RotationResult) -> str:
    """Small multiples: accuracy vs angle for each class, the overall curve in grey behind."""
    angles = np.array([p.angle for p in result.points])
    overall = np.array([p.accuracy.value for p in result.points])
    shown = [c for c in range(len(result.class_names)) if result.points and result.points[0].per_class[c].n > 0][:30]
    cols = min(5, max(1, len(shown)))
    rows = -(-len(shown) // cols)
    recovered = {(r.class_name) for r in result.recoveries}
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.5 * rows), sharex=True, sharey=True, squeeze=False)
        for ax in axes.flat:
            ax.set_visible(False)
        for ax, c in zip(axes.flat, shown, strict=False):
            ax.set_visible(True)
            acc = np.array([p.per_class[c].value for p in result.points])
            name = result.class_names[c]
            ax.plot(angles, overall, color="#bbb", lw=1)
            ax.plot(angles, acc, color="#e45756" if name in recovered else "#4c78a8", lw=1.4)
            ax.set_title(_short(name) + (" ★" if name in recovered else ""), fontsize=9)
            ax.set_ylim(0, 1.05)
            if angles.size and angles.max() - angles.min() >= 180:
                ax.set_xticks([-180, -90, 0, 90, 180])
            ax.tick_params(labelsize=7)
        fig.supxlabel("angle (degrees)", fontsize=8)
        fig.supylabel("accuracy", fontsize=8)
        fig.tight_layout()
    return to_svg(fig)


def subgroup_bars(result: SubgroupResult, attribute: str) -> str:
    """Horizontal bars of accuracy per group of one attribute, sorted, with 95% whiskers."""
    groups = sorted((g for g in result.groups if g.attribute == attribute), key=lambda g: g.accuracy.value)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 0.35 * len(groups) + 1.0))
        y = np.arange(len(groups))
        vals = np.array([g.accuracy.value for g in groups])
        lows = np.array([g.accuracy.low for g in groups])
        highs = np.array([g.accuracy.high for g in groups])
        colors = ["#4c78a8" if g.sufficient else "#c9c9c9" for g in groups]
        ax.barh(y, np.nan_to_num(vals), color=colors)
        ax.errorbar(
            np.nan_to_num(vals),
            y,
            xerr=[np.nan_to_num(vals - lows), np.nan_to_num(highs - vals)],
            fmt="none",
            ecolor="#333",
            capsize=2,
            lw=0.8,
        )
        ax.axvline(result.overall.value, color="#e45756", ls="--", lw=1, label="overall")
        ax.set_yticks(y, [f"{_short(g.value, 24)} (n={g.n})" + ("" if g.sufficient else " *") for g in groups])
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("accuracy")
        ax.legend(loc="lower right", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)


def attack_curve(result: AttackResult) -> str:
    """Robust accuracy vs epsilon with its 95% band; clean accuracy and chance for reference."""
    eps = np.array([p.eps for p in result.curve])
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.0))
        _banded(ax, eps, [p.robust for p in result.curve], "#e45756", result.attack)
        ax.axhline(1 / max(1, len(result.class_names)), color="#999", lw=1, ls=":", label="chance")
        ax.set_xlabel(f"epsilon ({'Linf' if result.norm == 'linf' else 'L2'} norm, [0, 1] pixel units)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="upper right", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)


def harden_training(result: HardenResult) -> str:
    """Per epoch: training loss (left) and training / validation accuracies (right); the epoch
    whose weights were kept and a detected catastrophic overfitting are marked."""
    logs = result.logs
    epochs = np.array([log.epoch for log in logs])
    with plt.rc_context(_STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 2.8))
        left.plot(epochs, [log.loss for log in logs], "o-", color="#4c78a8", ms=3)
        left.set_xlabel("epoch")
        left.set_ylabel("training loss")
        series = [
            ("accuracy", "training inputs", "#4c78a8"),
            ("val_clean", "validation, clean", "#54a24b"),
            ("val_pgd", "validation, PGD-10", "#e45756"),
            ("val_fgsm", "validation, FGSM", "#f58518"),
        ]
        for attr, label, color in series:
            vals = np.array([getattr(log, attr) for log in logs], dtype=float)
            if np.isfinite(vals).any():
                right.plot(epochs, vals, "o-", color=color, ms=3, label=label)
        right.axvline(result.kept_epoch, color="#333", lw=1, ls="--", label=f"kept (epoch {result.kept_epoch})")
        if result.overfit_epoch is not None:
            right.axvline(result.overfit_epoch, color="#b00", lw=1.5, ls=":", label="catastrophic overfitting")
        right.set_xlabel("epoch")
        right.set_ylabel("accuracy")
        right.set_ylim(0, 1.02)
        right.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        for ax in (left, right):
            ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)


def before_after(
    before: tuple[tuple[float, ...], ...], after: tuple[tuple[float, ...], ...], *, xlabel: str, ylabel: str
) -> str:
    """Two curves on one plot: rows ``(x, value[, low, high])`` before (grey) and after (blue);
    intervals, when given, are drawn as bands."""
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.0))
        for rows, color, label in ((before, "#888", "before"), (after, "#4c78a8", "after")):
            if not rows:
                continue
            arr = np.array(rows, dtype=float)
            ax.plot(arr[:, 0], arr[:, 1], "o-", color=color, ms=3, label=label)
            if arr.shape[1] >= 4:
                ax.fill_between(arr[:, 0], arr[:, 2], arr[:, 3], color=color, alpha=0.2, lw=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="best", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)


def location_heatmap(result: ShortcutResult) -> str:
    """Accuracy by shift of the content (dx across, dy down) as a heat map with values."""
    loc = result.location
    grid = np.array(loc.accuracy, dtype=float)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(3.6, 3.0))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="upper")
        ticks = [f"{s:g}" for s in loc.shifts]
        ax.set_xticks(range(len(ticks)), ticks)
        ax.set_yticks(range(len(ticks)), ticks)
        ax.set_xlabel("shift right (px)")
        ax.set_ylabel("shift down (px)")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                color = "w" if grid[i, j] < 0.6 else "k"
                ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", fontsize=7, color=color)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy")
    return to_svg(fig)
