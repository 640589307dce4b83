"""Calibration plots as SVG strings (matplotlib, through :mod:`auditkit.report.plots`' serialisation)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from auditkit.ops.calibration import CalibrationSummary
from auditkit.report import plots


def reliability_diagram(cal: CalibrationSummary) -> str:
    """Accuracy against mean confidence per equal-width bin (bars, the gap to the diagonal in red),
    with the number of images per bin below."""
    rows = cal.reliability
    lows = np.array([r.low for r in rows])
    width = (np.array([r.high for r in rows]) - lows) if rows else np.array([])
    count = np.array([r.count for r in rows], dtype=float)
    acc = np.array([r.accuracy for r in rows], dtype=float)
    conf = np.array([r.confidence for r in rows], dtype=float)
    filled = count > 0
    with plt.rc_context(plots._STYLE):
        fig, (top, bottom) = plt.subplots(
            2, 1, figsize=(4.2, 4.2), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
        )
        top.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="perfect calibration")
        top.bar(lows[filled], acc[filled], width=width[filled], align="edge", color="#4c78a8", edgecolor="white")
        top.bar(
            lows[filled],
            conf[filled] - acc[filled],
            bottom=acc[filled],
            width=width[filled],
            align="edge",
            color="#e45756",
            alpha=0.35,
            edgecolor="#e45756",
            lw=0.6,
            label="gap to the mean confidence",
        )
        top.set_xlim(0, 1)
        top.set_ylim(0, 1.02)
        top.set_ylabel("accuracy")
        top.set_title(f"ECE {cal.ece.value:.3f} ({cal.bins} equal-width bins)", fontsize=9, pad=22)
        top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False, fontsize=8)
        bottom.bar(lows, count, width=width, align="edge", color="#888", edgecolor="white")
        bottom.set_yscale("symlog", linthresh=1)
        bottom.set_ylabel("images")
        bottom.set_xlabel("confidence (top-label probability)")
        for ax in (top, bottom):
            ax.spines[["top", "right"]].set_visible(False)
    return plots.to_svg(fig)


def confidence_curve(
    x: Sequence[float],
    accuracy: Sequence[float],
    confidence: Sequence[float],
    ece: Sequence[float],
    *,
    xlabel: str,
) -> str:
    """Accuracy, mean confidence and ECE against a perturbation parameter (angle, epsilon): where
    confidence stays above accuracy the model does not know that it is failing."""
    xs = np.asarray(x, dtype=float)
    with plt.rc_context(plots._STYLE):
        fig, ax = plt.subplots(figsize=(7.0, 2.6))
        ax.plot(xs, np.asarray(accuracy, dtype=float), color="#4c78a8", marker="o", ms=3, lw=1.5, label="accuracy")
        ax.plot(
            xs, np.asarray(confidence, dtype=float), color="#f58518", marker="o", ms=3, lw=1.5, label="mean confidence"
        )
        ax.plot(xs, np.asarray(ece, dtype=float), color="#e45756", ls="--", lw=1.2, label="ECE")
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    return plots.to_svg(fig)
