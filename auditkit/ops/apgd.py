"""Auto-PGD (APGD): PGD with momentum and an adaptive step size, under Linf and L2, in ``[0, 1]`` pixel space.

After F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690), Section 3 / Algorithm 1:

- the step size starts at ``2 * eps`` and is halved at checkpoints ``w_j = ceil(p_j * steps)``,
  ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, for each sample where
  (1) fewer than a fraction ``rho`` of the steps since the last checkpoint raised the loss, or
  (2) its step size was not halved at the last checkpoint and its best loss has not improved since;
  a sample whose step is halved restarts from its best point (highest loss) so far;
- each step is a projected gradient step followed by momentum ``alpha = 0.75`` (none on the first step);
  the L2 version normalises the gradient by its L2 norm, as in the authors' code;
- losses: cross-entropy, the Difference of Logits Ratio (DLR) and its targeted version (APGD-T), whose
  targets are, in turn, the 2nd, 3rd, ... ``n_targets + 1``-th largest clean logits; beside the paper's,
  the logit margin ``max_{i != y} z_i - z_y`` (Carlini & Wagner's loss). A targeted run may also be given
  one target per sample, or several (attacked in turn); targeted CE is ``-CE(z, t)`` and the targeted
  margin ``z_t - max_{i != t} z_i``.

A sample is done as soon as it is misclassified (it keeps that image). Restarts start at a random point
of the ball's boundary and only attack samples not broken yet. ``success`` is always the untargeted
criterion (misclassified), for APGD-T too, as in AutoAttack.

:func:`standard_attack` departs from AutoAttack in one measured way: APGD-T attacks the 3 classes the
model scores highest (after the label) at the strongest point APGD-CE found, not the 9 highest on the
clean image. Each of the 9 targets run on every survivor separately, on two digits CNNs (one
adversarially trained), 200 images, 3 epsilons per norm: APGD-T broke 35 points, of which those 3
targets broke 34 and the 3 highest clean classes 32 (docs/attack.md), for a third of the cost.
``thorough`` keeps AutoAttack's 9 (ranked the same way).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from auditkit.exceptions import ConfigError, NonFiniteOutputError
from auditkit.ops.attacks import NORMS, Norm, Progress, ascent, part, project

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from torch.nn import functional as F
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")
    F = lazy("torch.nn.functional")

Loss = Literal["ce", "dlr", "margin"]
LOSSES: tuple[str, ...] = ("ce", "dlr", "margin")
MOMENTUM = 0.75
STANDARD_TARGETS = 3  # APGD-T's targets in standard_attack (AutoAttack: 9)
AUTOATTACK_TARGETS = 9
_TINY = 1e-12


@dataclass(frozen=True, kw_only=True)
class APGD:
    """Auto-PGD (Croce & Hein 2020). ``targeted`` with the DLR loss is APGD-T.

    A targeted attack given no ``target`` attacks, in turn, the ``n_targets`` classes with the largest
    clean logits after the top one (capped at the number of classes minus one), as AutoAttack does.
    """

    norm: Norm = "linf"
    loss: Loss = "ce"
    steps: int = 100
    restarts: int = 1
    targeted: bool = False
    n_targets: int = 9
    rho: float = 0.75

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.steps < 1 or self.restarts < 1 or self.n_targets < 1:
            raise ConfigError(
                f"steps, restarts and n_targets must be at least 1, got {self.steps}, {self.restarts}, {self.n_targets}"
            )
        if not 0.0 < self.rho <= 1.0:
            raise ConfigError(f"rho must be in (0, 1], got {self.rho}")

    @property
    def name(self) -> str:
        norm = "Linf" if self.norm == "linf" else "L2"
        if self.targeted:
            kind = "APGD-T" if self.loss == "dlr" else f"APGD-{self.loss.upper()} targeted"
        else:
            kind = f"APGD-{self.loss.upper()}"
        extra = f" ({self.n_targets} targets)" if self.targeted else ""
        extra += f" x{self.restarts} restarts" if self.restarts > 1 else ""
        return f"{kind} {norm}{extra}"

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float,
        *,
        generator: torch.Generator | None = None,
        target: Tensor | None = None,
        progress: Progress | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attack a batch. ``x``: ``(B, C, H, W)`` in ``[0, 1]``; ``y``: ``(B,)`` labels; ``target``:
        for a targeted attack, ``(B,)`` one target class per sample or ``(B, T)`` ``T`` targets per
        sample attacked in turn (default: the top ``n_targets`` clean classes); ``progress`` is told the
        share of the steps done.

        Returns ``(x_adv, success)``: images ``(B, C, H, W)`` within ``eps`` of ``x`` and in ``[0, 1]``
        (``x`` itself where not ``success``), and ``(B,)`` bool, misclassified. Random starts are drawn
        on the CPU from ``generator``. Raises :class:`ConfigError` for DLR with too few classes and
        :class:`NonFiniteOutputError` for NaN or infinite logits.
        """
        adv, success, _ = self.run(model, x, y, eps, generator=generator, target=target, progress=progress)
        return adv, success

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float,
        *,
        generator: torch.Generator | None = None,
        target: Tensor | None = None,
        progress: Progress | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`__call__`, and also ``strongest`` ``(B, C, H, W)``: the adversarial image where
        ``success``, else the iterate of highest loss over every run (``x`` at ``eps`` 0)."""
        x = x.detach()
        with torch.enable_grad():
            with torch.no_grad():
                clean = _finite(model(x), "clean inputs")
            self._check_classes(clean.shape[1])
            if target is not None and not self.targeted:
                raise ConfigError("a target was given to an untargeted APGD; set targeted=True")
            best = x.clone()
            success = clean.argmax(dim=1) != y
            strongest, top_loss = x.clone(), torch.full((len(x),), float("-inf"), device=x.device)
            if eps <= 0:
                return best, success, strongest
            order = clean.float().argsort(dim=1, descending=True)
            n_targets = min(self.n_targets, clean.shape[1] - 1)
            if not self.targeted:
                targets: list[Tensor | None] = [None]
            elif target is not None:
                goals = target.to(x.device)
                targets = list(goals.unbind(dim=1)) if goals.ndim == 2 else [goals]
            else:
                targets = [order[:, k] for k in range(1, n_targets + 1)]
            runs = len(targets) * self.restarts
            for r, (goal, _) in enumerate(itertools.product(targets, range(self.restarts))):
                idx = torch.nonzero(~success).flatten()
                if len(idx) == 0:
                    break
                tgt = None if goal is None else goal[idx]
                adv, hit, top, loss = self._run(
                    model, x[idx], y[idx], tgt, eps, generator, part(progress, r / runs, 1 / runs)
                )
                best[idx[hit]] = adv[hit]
                success[idx[hit]] = True
                higher = ~hit & (loss > top_loss[idx])
                strongest[idx[higher]], top_loss[idx[higher]] = top[higher], loss[higher]
            strongest[success] = best[success]
        return best, success, strongest

    def _check_classes(self, n_classes: int) -> None:
        if self.loss == "dlr" and n_classes < 3:
            raise ConfigError(f"the DLR loss needs at least 3 classes, the model has {n_classes}")
        if self.targeted and self.loss == "dlr" and n_classes < 4:
            raise ConfigError(f"the targeted DLR loss (APGD-T) needs at least 4 classes, the model has {n_classes}")

    def _run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        eps: float,
        generator: torch.Generator | None,
        progress: Progress | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One APGD run from a random start on clean ``x`` ``(n, C, H, W)``, labels ``y`` ``(n,)``.

        Returns ``(adv, hit, top, top_loss)``: ``(n, C, H, W)`` images, ``(n,)`` bool, ``(n, C, H, W)``
        and ``(n,)``; ``adv`` is the first misclassified iterate where ``hit``, else ``x``; where not
        ``hit``, ``top`` is the iterate of highest loss and ``top_loss`` that loss (undefined where
        ``hit``). Samples leave the batch once misclassified.
        """
        n = x.shape[0]
        adv_out, hit = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        checkpoints = set(checkpoint_steps(self.steps))
        act = torch.arange(n, device=x.device)  # positions in the run of the samples still attacked
        x0, ya, ta = x, y, target
        cur = self._clip(x0 + self._start(x0, eps, generator), x0, eps)
        logits, loss, grad = self._forward(model, cur, ya, ta)
        prev = cur
        best_x, best_grad, best_loss = cur.clone(), grad.clone(), loss.clone()
        step = torch.full((n,), 2.0 * eps, device=x.device)
        last_loss, n_up = loss.clone(), torch.zeros(n, device=x.device)
        check_loss, reduced = loss.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        last_check = 0
        for i in range(self.steps + 1):
            if progress is not None:
                progress(i / (self.steps + 1))
            if i > 0:  # step i: x^(i) from x^(i-1), then the loss and gradient at x^(i)
                with torch.no_grad():
                    alpha = MOMENTUM if i > 1 else 1.0
                    z = self._clip(cur + ascent(grad, 1.0, self.norm) * _col(step, cur), x0, eps)
                    nxt = self._clip(cur + alpha * (z - cur) + (1 - alpha) * (cur - prev), x0, eps)
                prev, cur = cur, nxt
                logits, loss, grad = self._forward(model, cur, ya, ta)
            fooled = logits.argmax(dim=1) != ya
            if bool(fooled.any()):
                adv_out[act[fooled]] = cur[fooled]
                hit[act[fooled]] = True
                keep = ~fooled
                if not bool(keep.any()):
                    return adv_out, hit, adv_out, torch.zeros(n, device=x.device)
                act, x0, ya, cur, prev, logits, loss, grad = (
                    t[keep] for t in (act, x0, ya, cur, prev, logits, loss, grad)
                )
                ta = None if ta is None else ta[keep]
                best_x, best_grad, best_loss, step = (t[keep] for t in (best_x, best_grad, best_loss, step))
                last_loss, n_up, check_loss, reduced = (t[keep] for t in (last_loss, n_up, check_loss, reduced))
            if i == 0:
                continue
            with torch.no_grad():
                n_up += (loss > last_loss).float()
                last_loss = loss
                better = loss > best_loss
                best_x[better], best_grad[better], best_loss[better] = cur[better], grad[better], loss[better]
                if i in checkpoints:
                    oscillating = n_up < self.rho * (i - last_check)
                    stalled = ~reduced & (best_loss <= check_loss)
                    halve = oscillating | stalled
                    step[halve] /= 2.0
                    cur, grad, last_loss = cur.clone(), grad.clone(), last_loss.clone()
                    cur[halve], grad[halve], last_loss[halve] = best_x[halve], best_grad[halve], best_loss[halve]
                    reduced, check_loss, last_check = halve, best_loss.clone(), i
                    n_up = torch.zeros_like(n_up)
        top, top_loss = adv_out.clone(), torch.zeros(n, device=x.device)
        top[act], top_loss[act] = best_x, best_loss
        return adv_out, hit, top, top_loss

    def _forward(self, model: nn.Module, xa: Tensor, y: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``(n, K)``, per-sample loss ``(n,)`` and its input gradient ``(n, C, H, W)`` at ``xa``."""
        xa = xa.detach().requires_grad_(True)
        logits = _finite(model(xa), "perturbed inputs")
        z = logits.float()
        loss = loss_values(self.loss, z, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), xa)
        return logits.detach(), loss.detach(), grad.detach()

    def _clip(self, xa: Tensor, x0: Tensor, eps: float) -> Tensor:
        """Project ``xa`` onto the ``eps`` ball around ``x0``, then clip to ``[0, 1]``."""
        return (x0 + project(xa - x0, eps, self.norm)).clamp(0, 1)

    def _start(self, x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
        """A random perturbation ``(n, C, H, W)`` on the ball's boundary (norm exactly ``eps``)."""
        if self.norm == "linf":
            t = 2 * torch.rand(x.shape, generator=generator, device="cpu") - 1
            size = t.flatten(1).abs().amax(dim=1)
        else:
            t = torch.randn(x.shape, generator=generator, device="cpu")
            size = t.flatten(1).norm(dim=1)
        return (eps * t / _col(size.clamp_min(_TINY), t)).to(device=x.device, dtype=x.dtype)


def checkpoint_steps(steps: int) -> list[int]:
    """The iterations ``w_j = ceil(p_j * steps)``, ``j >= 1``, at which APGD may halve its step size."""
    out: list[int] = []
    prev, cur = 0, 22  # p_j in hundredths, exact
    while (w := -(-cur * steps // 100)) <= steps:
        if not out or w > out[-1]:
            out.append(w)
        prev, cur = cur, cur + max(cur - prev - 3, 6)
    return out


def loss_values(loss: Loss, logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """The per-sample loss APGD ascends, ``(n,)``, for logits ``(n, K)``, labels ``y`` and, when
    targeted, ``target`` ``(n,)``: higher means closer to misclassifying (or to the target)."""
    if target is None:
        if loss == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        return dlr_loss(logits, y) if loss == "dlr" else margin_loss(logits, y)
    if loss == "ce":
        return -F.cross_entropy(logits, target, reduction="none")
    return targeted_dlr_loss(logits, y, target) if loss == "dlr" else -margin_loss(logits, target)


def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """The logit margin ``max_{i != y} z_i - z_y`` for logits ``(n, K)``; returns ``(n,)`` (positive: wrong)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - z_y


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """DLR ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` for logits ``(n, K)``, ``K >= 3``; returns ``(n,)``."""
    top = logits.topk(3, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return -(z_y - others.amax(dim=1)) / (top[:, 0] - top[:, 2] + _TINY)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`` for logits ``(n, K)``, ``K >= 4``; ``(n,)``."""
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)


def standard_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: Norm,
    generator: torch.Generator | None,
    steps: int = 100,
    n_targets: int = STANDARD_TARGETS,
    restarts: int = 1,
    num_classes: int | None = None,
    progress: Progress | None = None,
) -> tuple[Tensor, Tensor]:
    """APGD-CE (``restarts`` random starts), then APGD-T on the samples it did not break, against the
    ``n_targets`` classes (after the label) with the largest logits at the strongest point APGD-CE
    reached: AutoAttack's "standard" without FAB and Square, and with the targets ranked where the
    attack stands rather than on the clean image. APGD-T needs 4 classes; below that only APGD-CE runs.

    ``x``: ``(B, C, H, W)`` in ``[0, 1]``; ``y``: ``(B,)``. Returns ``(x_adv, success)``, ``(B, C, H, W)``
    and ``(B,)`` bool (misclassified). ``num_classes`` saves a forward pass when known. ``progress`` is told
    the share of the work done (APGD-CE's runs and APGD-T's targets weighted alike).
    """
    k = num_classes if num_classes is not None else int(model(x[:1]).shape[1])
    targets = min(n_targets, k - 1) if k >= 4 else 0
    ce_share = restarts / (restarts + targets)
    ce = APGD(norm=norm, loss="ce", steps=steps, restarts=restarts)
    best, success, strongest = ce.run(model, x, y, eps, generator=generator, progress=part(progress, 0.0, ce_share))
    idx = torch.nonzero(~success).flatten()
    if len(idx) and eps > 0 and targets:
        goals = ranked_targets(model, strongest[idx], y[idx], targets)
        attack = APGD(norm=norm, loss="dlr", targeted=True, steps=steps, n_targets=targets)
        later = part(progress, ce_share, 1 - ce_share)
        adv, hit = attack(model, x[idx], y[idx], eps, generator=generator, target=goals, progress=later)
        best[idx[hit]] = adv[hit]
        success[idx[hit]] = True
    return best, success


def ranked_targets(model: nn.Module, x: Tensor, y: Tensor, n: int) -> Tensor:
    """``(B, n)`` classes other than ``y`` ``(B,)``, by decreasing logit of ``model`` at ``x`` ``(B, C, H, W)``."""
    with torch.no_grad():
        logits = _finite(model(x), "the strongest APGD-CE points").float()
    logits = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return logits.argsort(dim=1, descending=True)[:, :n]


def _finite(logits: Tensor, what: str, attack: str = "APGD") -> Tensor:
    """``logits`` unchanged, or :class:`NonFiniteOutputError` naming ``attack`` and how many rows are bad."""
    bad = ~torch.isfinite(logits.detach())
    if bool(bad.any()):
        rows = int(bad.any(dim=1).sum())
        raise NonFiniteOutputError(
            f"{attack}: the model returned NaN or infinite logits on {rows} of {logits.shape[0]} {what}"
        )
    return logits


def _col(v: Tensor, like: Tensor) -> Tensor:
    """``v`` ``(n,)`` viewed as ``(n, 1, 1, ...)`` to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.ndim - 1)))
