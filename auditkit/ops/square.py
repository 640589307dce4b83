"""Square Attack: a gradient-free (score-based) attack by random search, under Linf and L2, in ``[0, 1]``.

After M. Andriushchenko, F. Croce, N. Flammarion and M. Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (arXiv:1912.00049), Algorithms 1-3, and the authors' code:

- the loss is the margin ``z_y - max_{k != y} z_k`` of the logits; a proposal replaces the current point
  when it lowers the margin (random search, one model query per step);
- each step changes a window of side ``s = round(sqrt(p * H * W))`` (at most ``min(H, W)``), where ``p``
  starts at ``p_init`` and is halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000
  of 10,000, rescaled to ``queries`` as the authors do (iteration ``i`` counts as ``int(i / queries * 10000)``);
- Linf: the start is vertical stripes of ``+-eps`` (one sign per column and channel); a step sets its
  window to ``x +- eps``, one sign per channel, redrawn while it would not change the image (as in the
  authors' original code);
- L2: the start is a grid of ``min(H, W) // 5``-sized windows, each the centred "pseudo-Gaussian" pair
  ``eta`` (Fig. 2) with a sign per channel, scaled to norm ``eps``; a step (Algorithm 3) draws two windows
  of odd side ``s >= 3``, moves the perturbation's mass of their union into the first one as ``eta`` with a
  random sign plus the window's old direction, adds any budget left under ``eps``, zeroes the second window,
  and rescales the whole perturbation to norm ``eps``. Window norms are per channel, as in the authors'
  code (AutoAttack after its L2 fix; torchattacks 3.5.1 predates that fix).

Windows, signs and ``eta``'s orientation are drawn per sample (the authors' PyTorch port shares them across
the batch) and window corners are uniform over all ``H - s + 1`` positions. A sample stops being queried as
soon as it is misclassified and keeps that image; restarts attack only the samples not broken yet.
``queries`` counts every query of a restart, the initial point included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from auditkit.exceptions import ConfigError
from auditkit.ops.apgd import _col, _finite
from auditkit.ops.attacks import NORMS, Norm, Progress, part

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")

_SCHEDULE: tuple[tuple[int, int], ...] = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
)  # (iteration out of 10,000 up to which p = p_init / divisor)
_LAST_DIVISOR = 512
_MAX_REDRAWS = 32  # Linf sign redraws per step; each leaves the image unchanged with probability <= 1/2
_TINY = 1e-12


@dataclass(frozen=True, kw_only=True)
class Square:
    """Square Attack (Andriushchenko et al. 2020), untargeted, margin loss. Needs no gradients.

    ``queries`` is the query budget per sample and restart; ``p_init`` the initial fraction of pixels
    a step changes. AutoAttack's standard setting: ``queries=5000, p_init=0.8, restarts=1``.
    """

    norm: Norm = "linf"
    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if isinstance(self.queries, bool) or not isinstance(self.queries, int) or self.queries < 1:
            raise ConfigError(f"queries must be an integer of at least 1, got {self.queries!r}")
        if not 0.0 < self.p_init <= 1.0:
            raise ConfigError(f"p_init must be in (0, 1], got {self.p_init!r}")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise ConfigError(f"restarts must be an integer of at least 1, got {self.restarts!r}")

    @property
    def name(self) -> str:
        norm = "Linf" if self.norm == "linf" else "L2"
        extra = f" x{self.restarts} restarts" if self.restarts > 1 else ""
        return f"Square {norm} ({self.queries} queries){extra}"

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attack a batch. ``x``: ``(B, C, H, W)`` in ``[0, 1]``; ``y``: ``(B,)`` labels; ``progress`` is
        told the share of the queries done.

        Returns ``(x_adv, success)``: images ``(B, C, H, W)`` within ``eps`` of ``x`` and in ``[0, 1]``
        (``x`` itself where the attack failed) and ``(B,)`` bool, misclassified. Runs under ``no_grad``;
        random draws are made on the CPU from ``generator``. Raises :class:`NonFiniteOutputError` for
        NaN or infinite logits.
        """
        with torch.no_grad():
            x = x.detach()
            clean = _finite(model(x), "clean inputs", "Square")
            best = x.clone()
            success = clean.argmax(dim=1) != y
            if eps <= 0:
                return best, success
            for r in range(self.restarts):
                idx = torch.nonzero(~success).flatten()
                if len(idx) == 0:
                    break
                share = part(progress, r / self.restarts, 1 / self.restarts)
                adv, hit = self._run(model, x[idx], y[idx], float(eps), generator, share)
                best[idx[hit]] = adv[hit]
                success[idx[hit]] = True
        return best, success

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float,
        generator: torch.Generator | None,
        progress: Progress | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One restart on clean ``x`` ``(n, C, H, W)``, labels ``y`` ``(n,)``: at most ``queries`` queries each.

        Returns ``(adv, hit)``: ``(n, C, H, W)`` and ``(n,)`` bool; ``adv`` is the first misclassified
        point where ``hit``, else ``x``. Only the samples not misclassified yet are forwarded.
        """
        n = x.shape[0]
        adv_out, hit = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        act = torch.arange(n, device=x.device)  # positions in the run of the samples still attacked
        x0, ya = x, y
        cur = self._start(x0, eps, generator)
        best_margin = torch.empty(0)
        for i in range(self.queries):
            if progress is not None and i % 10 == 0:
                progress(i / self.queries)
            if i > 0:
                p = p_schedule(self.p_init, i - 1, self.queries)
                if self.norm == "linf":
                    cand = _linf_step(x0, cur, eps, p, generator)
                else:
                    cand = _l2_step(x0, cur, eps, p, generator)
            else:
                cand = cur
            logits = _finite(model(cand), "perturbed inputs", "Square")
            margin = margin_loss(logits.float(), ya)
            fooled = logits.argmax(dim=1) != ya
            if i == 0:
                best_margin = margin
            else:
                better = (margin < best_margin) | fooled
                cur = torch.where(_col(better, cur), cand, cur)
                best_margin = torch.where(better, margin, best_margin)
            if bool(fooled.any()):
                adv_out[act[fooled]] = cand[fooled]
                hit[act[fooled]] = True
                keep = ~fooled
                if not bool(keep.any()):
                    break
                act, x0, ya, cur, best_margin = (t[keep] for t in (act, x0, ya, cur, best_margin))
        return adv_out, hit

    def _start(self, x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
        """The initial point ``(n, C, H, W)``: Linf vertical stripes, or the L2 grid of ``eta`` windows."""
        n, c, h, w = x.shape
        if self.norm == "linf":
            return (x + eps * _signs((n, c, 1, w), generator, x)).clamp(0, 1)
        s = max(min(h, w) // 5, 1)
        nh, nw = h // s, w // s
        oh, ow = (h - nh * s) // 2, (w - nw * s) // 2
        tiles = _etas(s, (n, nh, nw), generator, x)[:, None] * _signs((n, c, nh, nw, 1, 1), generator, x)
        delta = torch.zeros_like(x)
        delta[:, :, oh : oh + nh * s, ow : ow + nw * s] = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, nh * s, nw * s)
        return (x + eps * _unit(delta)).clamp(0, 1)


def p_schedule(p_init: float, it: int, queries: int) -> float:
    """The fraction ``p`` of pixels changed at iteration ``it`` (from 0) of ``queries``; the paper's schedule."""
    scaled = int(it / queries * 10000)
    for end, divisor in _SCHEDULE:
        if scaled <= end:
            return p_init / divisor
    return p_init / _LAST_DIVISOR


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The margin ``z_y - max_{k != y} z_k`` for logits ``(n, K)``; returns ``(n,)`` (``<= 0``: fooled)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return z_y - others.amax(dim=1)


def eta(s: int) -> Tensor:
    """The L2 update window ``(s, s)`` of unit norm (Fig. 2): a centred pseudo-Gaussian bump on the top
    ``s // 2`` rows and its negative on the rest; each bump is ``sum_{k >= d} 1 / (k + 1)^2`` over
    ``k < K``, ``d`` the Chebyshev distance from the rectangle's centre."""

    def bump(a: int, b: int) -> Tensor:
        d = torch.maximum((torch.arange(a) - a // 2).abs()[:, None], (torch.arange(b) - b // 2).abs()[None, :])
        terms = 1.0 / torch.arange(1, max(a // 2, b // 2) + 2, dtype=torch.float64) ** 2
        tail = terms.flip(0).cumsum(0).flip(0)  # tail[d] = sum_{k >= d} 1 / (k + 1)^2
        out = tail[d]
        return out / out.square().sum().sqrt().clamp_min(_TINY)

    out = torch.cat([bump(s // 2, s), -bump(s - s // 2, s)])
    return (out / out.square().sum().sqrt()).float()


def _linf_step(x0: Tensor, cur: Tensor, eps: float, p: float, generator: torch.Generator | None) -> Tensor:
    """A Linf proposal: one window per sample set to ``x0 +- eps`` (a sign per channel), clipped to [0, 1]."""
    n, c, h, w = x0.shape
    s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
    mask = _window_mask(_corners(n, s, h, w, generator, x0), s, h, w)
    cand = torch.where(mask, (x0 + eps * _signs((n, c, 1, 1), generator, x0)).clamp(0, 1), cur)
    for _ in range(_MAX_REDRAWS):  # redraw the signs of proposals that would not change the image
        same = torch.nonzero((cand == cur).flatten(1).all(dim=1)).flatten()
        if len(same) == 0:
            break
        sign = _signs((len(same), c, 1, 1), generator, x0)
        cand[same] = torch.where(mask[same], (x0[same] + eps * sign).clamp(0, 1), cur[same])
    return cand


def _l2_step(x0: Tensor, cur: Tensor, eps: float, p: float, generator: torch.Generator | None) -> Tensor:
    """An L2 proposal (Algorithm 3): window 1 gets ``eta`` plus its old direction and the mass of windows
    1 and 2 (per channel) plus any budget left under ``eps``; window 2 is zeroed; the result has norm
    ``eps`` before clipping to [0, 1]."""
    n, c, h, w = x0.shape
    s = max(round(math.sqrt(p * h * w)), 3)
    s = min(s + 1 if s % 2 == 0 else s, h, w)
    delta = cur - x0
    (r1, c1), (r2, c2) = _corners(n, s, h, w, generator, x0), _corners(n, s, h, w, generator, x0)
    steps = torch.arange(s, device=x0.device)
    index = (
        torch.arange(n, device=x0.device)[:, None, None, None],
        torch.arange(c, device=x0.device)[None, :, None, None],
        (r1[:, None] + steps)[:, None, :, None],
        (c1[:, None] + steps)[:, None, None, :],
    )
    window = delta[index]  # (n, c, s, s)
    second = _window_mask((r2, c2), s, h, w)
    squares = delta.square()
    mass = (squares * (_window_mask((r1, c1), s, h, w) | second)).sum(dim=(2, 3), keepdim=True)  # (n, c, 1, 1)
    spare = (eps**2 - squares.sum(dim=(1, 2, 3))).clamp_min(0) / c  # (n,)
    new = _etas(s, (n,), generator, x0)[:, None] * _signs((n, c, 1, 1), generator, x0)
    new = new + window / (_channel_norm(window) + _TINY)
    new = new / (_channel_norm(new) + _TINY) * (_col(spare, mass) + mass).sqrt()
    delta = delta.masked_fill(second, 0.0)
    delta[index] = new
    return (x0 + eps * _unit(delta)).clamp(0, 1)


def _corners(n: int, s: int, h: int, w: int, generator: torch.Generator | None, like: Tensor) -> tuple[Tensor, Tensor]:
    """Top-left corners ``(n,)``, ``(n,)`` of ``s x s`` windows, uniform over the ``(h - s + 1)(w - s + 1)`` places."""
    u = torch.rand((2, n), generator=generator, device="cpu", dtype=torch.float64)
    rows = (u[0] * (h - s + 1)).long().clamp(max=h - s)
    cols = (u[1] * (w - s + 1)).long().clamp(max=w - s)
    return rows.to(like.device), cols.to(like.device)


def _window_mask(corners: tuple[Tensor, Tensor], s: int, h: int, w: int) -> Tensor:
    """``(n, 1, h, w)`` bool, true inside each sample's ``s x s`` window at ``corners``."""
    rows, cols = corners
    ih = torch.arange(h, device=rows.device)
    iw = torch.arange(w, device=rows.device)
    in_h = (ih >= rows[:, None]) & (ih < rows[:, None] + s)
    in_w = (iw >= cols[:, None]) & (iw < cols[:, None] + s)
    return (in_h[:, :, None] & in_w[:, None, :])[:, None]


def _signs(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Random ``+-1`` of ``shape``, drawn on the CPU, on ``like``'s device and dtype."""
    u = torch.rand(shape, generator=generator, device="cpu")
    return torch.where(u < 0.5, -1.0, 1.0).to(device=like.device, dtype=like.dtype)


def _etas(s: int, shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``eta(s)`` or its transpose (chance 1/2 each) for each of ``shape``: ``(*shape, s, s)``."""
    e = eta(s)
    flip = torch.rand(shape, generator=generator, device="cpu") < 0.5
    return torch.stack([e, e.T])[flip.long()].to(device=like.device, dtype=like.dtype)


def _channel_norm(t: Tensor) -> Tensor:
    """Per-sample, per-channel L2 norms ``(n, c, 1, 1)`` of ``t`` ``(n, c, H, W)``."""
    return t.square().sum(dim=(2, 3), keepdim=True).sqrt()


def _unit(delta: Tensor) -> Tensor:
    """``delta`` ``(n, ...)`` scaled to unit L2 norm per sample (zero stays zero)."""
    return delta / _col(delta.flatten(1).norm(dim=1) + _TINY, delta)
