"""One PGD loop for FGSM and PGD under Linf and L2, in ``[0, 1]`` pixel space.

FGSM is PGD with one step of size epsilon and no random start. Perturbations are always
projected onto the epsilon ball and clipped to ``[0, 1]``. Early stopping drops a sample from
further steps as soon as it is misclassified (its perturbation is kept). Restarts keep the
per-sample worst case.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from auditkit.exceptions import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from torch.nn import functional as F
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")
    F = lazy("torch.nn.functional")

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
#: called with the cumulative fraction (0 to 1) of an attack's work done on a batch (``Batch.report``)
Progress = Callable[[float], None]


def part(progress: Progress | None, start: float, width: float) -> Progress | None:
    """``progress`` for a sub-task that covers ``[start, start + width]`` of the whole."""
    if progress is None:
        return None
    return lambda done: progress(start + width * done)


@dataclass(frozen=True, kw_only=True)
class PGD:
    """Projected gradient descent on the cross-entropy loss (Madry et al.).

    ``step_size`` defaults to ``rel_step * eps`` (2.5 * eps / steps for PGD, eps for FGSM).
    ``targeted`` attacks move each sample towards ``target`` instead of away from its label.
    """

    norm: Norm = "linf"
    steps: int = 20
    rel_step: float | None = None
    random_start: bool = True
    restarts: int = 1
    early_stop: bool = True
    targeted: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.steps < 1 or self.restarts < 1:
            raise ConfigError(f"steps and restarts must be at least 1, got {self.steps} and {self.restarts}")

    @classmethod
    def fgsm(cls, *, norm: Norm = "linf", targeted: bool = False) -> PGD:
        """The fast gradient sign method: one full-size step, no random start."""
        return cls(norm=norm, steps=1, rel_step=1.0, random_start=False, restarts=1, targeted=targeted)

    @property
    def name(self) -> str:
        kind = "FGSM" if self.steps == 1 and not self.random_start else f"PGD-{self.steps}"
        extra = f" x{self.restarts} restarts" if self.restarts > 1 else ""
        return f"{kind} {'Linf' if self.norm == 'linf' else 'L2'}{' targeted' if self.targeted else ''}{extra}"

    def step_size(self, eps: float) -> float:
        rel = self.rel_step if self.rel_step is not None else 2.5 / self.steps
        return rel * eps

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float,
        *,
        target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attack a batch. ``x``: ``(B, C, H, W)`` in ``[0, 1]``; ``y``: ``(B,)`` labels.

        Returns ``(x_adv, success)``: adversarial images ``(B, C, H, W)`` and ``(B,)`` bool
        (misclassified, or classified as ``target`` when targeted). Must run with grad enabled.
        """
        if self.targeted and target is None:
            raise ConfigError("a targeted attack needs target labels")
        goal = target if self.targeted and target is not None else y
        best = x.detach().clone()
        success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if eps <= 0:
            with torch.no_grad():
                success = self._hit(model(x), goal)
            return best, success
        alpha = self.step_size(eps)
        for _ in range(self.restarts):
            todo = ~success if self.early_stop else torch.ones_like(success)
            idx = torch.nonzero(todo).flatten()
            if len(idx) == 0:
                break
            xi, gi = x[idx], goal[idx]
            delta = self._init(xi, eps, generator) if self.random_start else torch.zeros_like(xi)
            adv, hit = self._run(model, xi, gi, delta, eps, alpha)
            new = hit & ~success[idx]
            best[idx[new]] = adv[new]
            success[idx[new]] = True
            if not self.early_stop:
                keep = ~success[idx]
                best[idx[keep]] = adv[keep]
        return best, success

    def _run(
        self, model: nn.Module, x: Tensor, goal: Tensor, delta: Tensor, eps: float, alpha: float
    ) -> tuple[Tensor, Tensor]:
        """The loop: ``steps`` gradient steps; returns the final images and which samples are hit.

        With early stopping, the forward pass of each step also tells which samples are already
        hit; those keep their current image and leave the batch.
        """
        adv = (x + delta).clamp(0, 1).detach()
        hit = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)
        sign = -1.0 if self.targeted else 1.0
        for _ in range(self.steps):
            xa = (adv[active] if self.early_stop else adv).requires_grad_(True)
            logits = model(xa)
            ga = goal[active] if self.early_stop else goal
            if self.early_stop:
                now = self._hit(logits.detach(), ga)
                if bool(now.any()):
                    hit[active[now]] = True
                    keep = ~now
                    active = active[keep]
                    if len(active) == 0:
                        break
                    logits, xa_sel, ga = logits[keep], keep, ga[keep]
                else:
                    xa_sel = None
            loss = sign * F.cross_entropy(logits, ga, reduction="sum")
            (grad,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                if self.early_stop:
                    if xa_sel is not None:
                        grad = grad[xa_sel]
                    base, start = adv[active], x[active]
                    adv[active] = (
                        start + project(base + ascent(grad, alpha, self.norm) - start, eps, self.norm)
                    ).clamp(0, 1)
                else:
                    adv = (x + project(adv + ascent(grad, alpha, self.norm) - x, eps, self.norm)).clamp(0, 1)
        with torch.no_grad():
            if len(active):
                hit[active] = self._hit(model(adv[active]), goal[active])
        return adv, hit

    def _hit(self, logits: Tensor, goal: Tensor) -> Tensor:
        pred = logits.argmax(dim=1)
        return pred == goal if self.targeted else pred != goal

    def _init(self, x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
            return (2 * u - 1) * eps
        g = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
        g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
        r = torch.rand(x.shape[0], generator=generator, device="cpu").to(x.device) ** (1.0 / x[0].numel())
        return g * (eps * r).view(-1, *([1] * (x.ndim - 1)))


def ascent(grad: Tensor, alpha: float, norm: Norm) -> Tensor:
    """One steepest-ascent step of length ``alpha`` under ``norm`` for ``grad`` ``(B, ...)``."""
    if norm == "linf":
        return alpha * grad.sign()
    flat = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return alpha * grad / flat.view(-1, *([1] * (grad.ndim - 1)))


def project(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    """Project perturbations ``delta`` ``(B, ...)`` onto the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (eps / norms).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.ndim - 1)))
