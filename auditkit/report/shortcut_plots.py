"""Plots of the shortcut probes' object-position grid (the report's SVGs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from auditkit.report.plots import _STYLE, to_svg

if TYPE_CHECKING:
    from auditkit.checks.shortcut import ObjectPosition


def position_heatmaps(position: ObjectPosition) -> str:
    """Accuracy by where the object was pasted: all images, then each class (up to 9), as small heat maps."""
    panels = [("all", position.accuracy), *position.per_class[:9]]
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(1.5 * len(panels) + 0.8, 1.9), squeeze=False)
        im = None
        for ax, (name, grid) in zip(axes[0], panels, strict=True):
            g = np.array(grid, dtype=float)
            im = ax.imshow(g, vmin=0, vmax=1, cmap="viridis", origin="upper")
            ax.set_title(name if len(name) <= 12 else name[:11] + "…", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            for i in range(g.shape[0]):
                for j in range(g.shape[1]):
                    color = "w" if g[i, j] < 0.6 else "k"
                    ax.text(j, i, f"{g[i, j]:.0%}", ha="center", va="center", fontsize=6, color=color)
        if im is not None:
            fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.02, label="accuracy")
    return to_svg(fig)
