"""Batched, differentiable image perturbations: ``(x, params) -> x'`` on the engine's device.

A perturbation is applied to a whole batch at once, with one parameter row per sample, so a
sweep can put several parameter values into one forward batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from torch import Tensor
    from torch.nn import functional as F
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")
    F = lazy("torch.nn.functional")

Interpolation = Literal["bilinear", "nearest"]
Fill = Literal["zeros", "border", "reflection"]
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "nearest")
FILLS: tuple[str, ...] = ("zeros", "border", "reflection")


@dataclass(frozen=True, kw_only=True)
class Affine:
    """Rotate about the image centre then translate, as one ``grid_sample``.

    Parameters per sample are rows ``(angle_degrees, dx_pixels, dy_pixels)``; a positive angle
    turns the image counter-clockwise (torchvision's convention), positive ``dx`` moves it right
    and positive ``dy`` down. ``fill`` says what enters from outside the image.
    """

    interpolation: Interpolation = "bilinear"
    fill: Fill = "zeros"

    def __call__(self, x: Tensor, params: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)``; ``params``: ``(B, 3)`` -> ``(B, C, H, W)``.

        Consecutive rows with the same parameters share one sampling grid (a sweep lays its
        batch out parameter by parameter), which saves building a grid per image.
        """
        b, _, h, w = x.shape
        p = params.to(device=x.device, dtype=torch.float32)
        blocks, counts = torch.unique_consecutive(p, dim=0, return_counts=True)
        if len(blocks) * 8 > b:
            return self._sample(x, self._grids(p, h, w))
        grids = self._grids(blocks, h, w)
        out = []
        start = 0
        for k, n in enumerate(counts.tolist()):
            out.append(self._sample(x[start : start + n], grids[k : k + 1].expand(n, -1, -1, -1)))
            start += n
        return torch.cat(out)

    def _grids(self, p: Tensor, h: int, w: int) -> Tensor:
        """Sampling grids ``(P, H, W, 2)`` for parameter rows ``(P, 3)``."""
        theta_rad = p[:, 0] * (math.pi / 180.0)
        cos, sin = torch.cos(theta_rad), torch.sin(theta_rad)
        # affine_grid maps output coordinates to input coordinates (normalised to [-1, 1]);
        # rotating the image by +a samples the input at the output point rotated by -a.
        theta = torch.zeros(p.shape[0], 2, 3, device=p.device, dtype=torch.float32)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * (h / w)
        theta[:, 1, 0] = sin * (w / h)
        theta[:, 1, 1] = cos
        # translation by (dx, dy) pixels: sample the input at (x - dx, y - dy), rotated back
        tx = -2.0 * p[:, 1] / w
        ty = -2.0 * p[:, 2] / h
        theta[:, 0, 2] = cos * tx - sin * (h / w) * ty
        theta[:, 1, 2] = sin * (w / h) * tx + cos * ty
        return F.affine_grid(theta, [p.shape[0], 1, h, w], align_corners=False)

    def _sample(self, x: Tensor, grid: Tensor) -> Tensor:
        return F.grid_sample(x.float(), grid, mode=self.interpolation, padding_mode=self.fill, align_corners=False).to(
            x.dtype
        )

    @staticmethod
    def is_identity(params: Tensor) -> Tensor:
        """``(P, 3)`` -> ``(P,)`` bool: which parameter rows leave the image unchanged."""
        return (params.abs() < 1e-9).all(dim=1)


def rotations(angles: Tensor) -> Tensor:
    """Angles ``(P,)`` in degrees -> affine parameter rows ``(P, 3)`` with no translation."""
    return torch.stack([angles.float(), torch.zeros_like(angles.float()), torch.zeros_like(angles.float())], dim=1)


def spatial_grid(angles: Tensor, shifts: Tensor) -> Tensor:
    """Every (angle, dx, dy) combination: ``(len(angles) * len(shifts)**2, 3)``."""
    a, dx, dy = torch.meshgrid(angles.float(), shifts.float(), shifts.float(), indexing="ij")
    return torch.stack([a.flatten(), dx.flatten(), dy.flatten()], dim=1)
