"""Plots of the corruption sweep as inline SVG (matplotlib), built on :mod:`auditkit.report.plots`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from auditkit.report.plots import _STYLE, _short, to_svg

if TYPE_CHECKING:
    from auditkit.checks.corrupt import CorruptionResult

WORST_SHOWN = 3  # corruptions drawn in the per-class curves
COLOURS = ("#e45756", "#f58518", "#4c78a8")


def severity_heatmap(result: CorruptionResult) -> str:
    """Accuracy of each corruption (rows, worst first) at each severity (columns) plus the mean column,
    annotated in percent; the clean accuracy is in the title."""
    curves = sorted(result.curves, key=lambda c: (c.mean_accuracy.value, c.name))
    sev = list(result.severities)
    grid = np.array([[p.accuracy.value for p in c.points] + [c.mean_accuracy.value] for c in curves], dtype=float)
    grid = grid.reshape(len(curves), len(sev) + 1)
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(0.62 * (len(sev) + 1) + 2.6, 0.3 * max(1, len(curves)) + 1.1))
        im = ax.imshow(np.nan_to_num(grid, nan=0.0), cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = grid[i, j]
                text = "n/a" if np.isnan(v) else f"{100 * v:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color="#111")
        ax.set_xticks(range(len(sev) + 1), [str(s) for s in sev] + ["mean"])
        ax.set_yticks(range(len(curves)), [c.name.replace("_", " ") for c in curves])
        ax.axvline(len(sev) - 0.5, color="white", lw=2)
        ax.set_xlabel("severity")
        ax.set_title(f"accuracy (%) — clean {100 * result.clean_accuracy:.1f}%", fontsize=9)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03, label="accuracy")
    return to_svg(fig)


def worst_per_class(result: CorruptionResult) -> str:
    """Small multiples, one per class: accuracy vs severity (0 = clean) under the worst corruptions."""
    worst = sorted(result.curves, key=lambda c: (c.mean_accuracy.value, c.name))[:WORST_SHOWN]
    shown = [k for k, d in enumerate(result.class_drops) if d.support > 0][:30]
    cols = min(5, max(1, len(shown)))
    rows = -(-len(shown) // cols) if shown else 1
    x = np.array([0, *result.severities])
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(
            rows, cols, figsize=(1.55 * cols, 1.3 * rows + 0.5), sharex=True, sharey=True, squeeze=False
        )
        for ax in axes.flat:
            ax.set_visible(False)
        for ax, k in zip(axes.flat, shown, strict=False):
            ax.set_visible(True)
            clean = result.class_drops[k].clean
            for c, colour in zip(worst, COLOURS, strict=False):
                acc = [clean, *(p.per_class[k].value for p in c.points)]
                ax.plot(x, acc, color=colour, lw=1.3, marker="o", ms=2, label=c.name.replace("_", " "))
            ax.set_title(_short(result.class_names[k]), fontsize=8)
            ax.set_ylim(0, 1.05)
            ax.set_xticks(x)
            ax.tick_params(labelsize=6.5)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(
            handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=7.5, bbox_to_anchor=(0.5, 0)
        )
        fig.supxlabel("severity (0 = clean)", fontsize=8, y=0.06)
        fig.supylabel("accuracy", fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    return to_svg(fig)
