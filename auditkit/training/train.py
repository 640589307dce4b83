"""Training on the engine: plain, adversarial (PGD, fast FGSM, TRADES) and rotation-augmented.

One loop serves the demo (``method="standard"``) and ``auditkit harden``. Every random draw
(shuffle, rotation angles, attack starts) comes from one generator seeded with the engine's seed;
its state and torch's global RNG state are checkpointed with the weights, so an interrupted run
resumed from its last checkpoint ends with exactly the weights an uninterrupted run would have
(on the same device and build).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditkit.engine.loop import Batch, Engine, eval_mode
from auditkit.exceptions import ConfigError, DataError
from auditkit.inputs.data import ImageDataset
from auditkit.io import atomic_write_bytes
from auditkit.ops.attacks import NORMS, PGD, Norm, ascent, project
from auditkit.ops.perturb import Affine, rotations

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from torch.nn import functional as F
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")
    F = lazy("torch.nn.functional")

METHODS: tuple[str, ...] = ("standard", "pgd", "fgsm", "trades")
ADVERSARIAL: tuple[str, ...] = ("pgd", "fgsm", "trades")
CHECKPOINT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train. ``method``: standard, pgd (Madry et al.), fgsm (fast FGSM with a random
    start, Wong et al. 2020) or trades (Zhang et al. 2019); ``rotate`` > 0 adds random rotations
    in ``±rotate`` degrees (alone or combined with an adversarial method)."""

    method: str = "standard"
    eps: float = 8 / 255
    norm: str = "linf"
    attack_steps: int = 7
    trades_beta: float = 6.0
    rotate: float = 0.0
    epochs: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    overfit_drop: float = 0.2

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"--norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.method in ADVERSARIAL and not self.eps > 0:
            raise ConfigError(f"--eps must be positive for {self.method} training, got {self.eps}")
        if self.epochs < 1 or self.attack_steps < 1:
            raise ConfigError(f"--epochs and --attack-steps must be at least 1, got {self.epochs}, {self.attack_steps}")
        if not 0 <= self.rotate <= 180:
            raise ConfigError(f"--rotate takes degrees in [0, 180], got {self.rotate}")
        if not (self.lr > 0 and self.weight_decay >= 0 and self.trades_beta >= 0):
            raise ConfigError("--lr must be positive; --weight-decay and --trades-beta must not be negative")

    @property
    def adversarial(self) -> bool:
        return self.method in ADVERSARIAL

    @property
    def label(self) -> str:
        """Human-readable method, e.g. ``PGD-7 Linf eps 0.1 + rotation ±45°``."""
        norm = "Linf" if self.norm == "linf" else "L2"
        parts = {
            "standard": "standard training",
            "pgd": f"PGD-{self.attack_steps} {norm} eps {self.eps:.4g}",
            "fgsm": f"fast FGSM {norm} eps {self.eps:.4g}",
            "trades": f"TRADES (beta {self.trades_beta:g}, {self.attack_steps} steps) {norm} eps {self.eps:.4g}",
        }
        text = parts[self.method]
        if self.rotate > 0:
            text = (
                f"rotation ±{self.rotate:g}°" if self.method == "standard" else f"{text} + rotation ±{self.rotate:g}°"
            )
        return text


@dataclass(frozen=True)
class EpochLog:
    """One epoch: mean loss and accuracy on the inputs trained on (adversarial and/or rotated),
    and on the validation split: clean accuracy and, for adversarial methods, accuracy under
    PGD-10 and FGSM at the training epsilon (``nan`` when not measured)."""

    epoch: int
    loss: float
    accuracy: float
    lr: float = math.nan
    val_clean: float = math.nan
    val_pgd: float = math.nan
    val_fgsm: float = math.nan

    def describe(self) -> str:
        """``loss 0.1234, train acc 95.0%[, val clean 94.0%][, val PGD-10 …, val FGSM …]`` (no validation
        figures when there was no validation split)."""
        extra = "" if math.isnan(self.val_clean) else f", val clean {self.val_clean:.1%}"
        extra += "" if math.isnan(self.val_pgd) else f", val PGD-10 {self.val_pgd:.1%}, val FGSM {self.val_fgsm:.1%}"
        return f"loss {self.loss:.4f}, train acc {self.accuracy:.1%}{extra}"


@dataclass(frozen=True)
class TrainResult:
    """The epoch logs, which epoch's weights the model now holds, and the overfitting guard."""

    logs: tuple[EpochLog, ...]
    kept_epoch: int
    overfit_epoch: int | None
    resumed_from: int


def catastrophic_overfitting(logs: list[EpochLog], drop: float = 0.2) -> bool:
    """Wong et al.'s failure of FGSM training: validation PGD accuracy collapses (``drop`` or
    more below its best so far) while FGSM accuracy stays well above it (the model has learnt to
    defeat the one-step attack, not to be robust)."""
    if len(logs) < 2:
        return False
    last, best = logs[-1], max(log.val_pgd for log in logs[:-1])
    if math.isnan(last.val_pgd) or math.isnan(best):
        return False
    return best - last.val_pgd >= drop and last.val_fgsm - last.val_pgd >= drop


def fingerprint(*parts: object) -> str:
    """A short hash of everything that must match for ``--resume`` to continue a run."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def fit(
    model: nn.Module,
    data: ImageDataset,
    *,
    engine: Engine,
    config: TrainConfig | None = None,
    val: ImageDataset | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    key: str = "",
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Train ``model`` (an :class:`AuditModel`: inputs stay in ``[0, 1]``) with AdamW and a
    one-cycle schedule.

    ``checkpoint``: written atomically after every epoch; with ``resume`` the run continues from
    it, and is refused when its ``key`` (see :func:`fingerprint`) differs. ``val`` feeds the
    per-epoch validation numbers and, for fast FGSM, the catastrophic-overfitting guard: training
    stops and the best epoch's weights are restored.
    """
    cfg = config or TrainConfig()
    engine.to_device(model)
    steps_per_epoch = -(-len(data) // engine.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    logs: list[EpochLog] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    gen = torch.Generator().manual_seed(engine.seed)
    if resume:
        logs, best = _restore(checkpoint, key, model, opt, sched, gen)
    resumed_from = start = len(logs)
    overfit: int | None = None
    # one bar over every epoch still to run, counting the images trained on; validation has its own
    with engine.task(f"training ({cfg.label})", (cfg.epochs - start) * len(data)) as bar:
        for epoch in range(start, cfg.epochs):
            perm = torch.randperm(len(data), generator=gen)
            shuffled = dataclasses.replace(
                data, images=data.images[perm], labels=data.labels[perm], metadata={}, ids=()
            )
            step = _step(model, cfg, opt, sched, gen)
            totals = [0.0, 0, 0]
            desc = f"epoch {epoch + 1}/{cfg.epochs} ({cfg.label})"
            bar.describe(f"training {desc}")
            for loss_sum, correct, n in engine.map(step, shuffled, description=desc, grad=True, task=bar):
                totals[0] += loss_sum
                totals[1] += correct
                totals[2] += n
            model.eval()
            log = EpochLog(
                epoch=epoch + 1,
                loss=totals[0] / totals[2],
                accuracy=totals[1] / totals[2],
                lr=float(opt.param_groups[0]["lr"]),
                **(_validate(model, val, cfg, engine) if val is not None and len(val) else {}),
            )
            logs.append(log)
            score = log.val_pgd if cfg.adversarial else log.val_clean
            if not math.isnan(score) and (best is None or score > best[0]):
                best = (score, log.epoch, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            if cfg.method == "fgsm" and catastrophic_overfitting(logs, cfg.overfit_drop):
                overfit = log.epoch
            if checkpoint is not None:
                _save_checkpoint(checkpoint, model, opt, sched, gen, logs, best, key)
            if on_epoch is not None:
                on_epoch(log)
            if overfit is not None:
                break
    kept = logs[-1].epoch if logs else 0
    if overfit is not None and best is not None:
        model.load_state_dict(best[2])
        kept = best[1]
    model.eval()
    return TrainResult(logs=tuple(logs), kept_epoch=kept, overfit_epoch=overfit, resumed_from=resumed_from)


def _restore(
    checkpoint: Path | None, key: str, model: nn.Module, opt: Any, sched: Any, gen: torch.Generator
) -> tuple[list[EpochLog], tuple[float, int, dict[str, Tensor]] | None]:
    """Load ``checkpoint`` into the model, optimizer, schedule and generators; refuse another run's."""
    if checkpoint is None or not checkpoint.is_file():
        raise ConfigError(f"--resume: no checkpoint at {checkpoint}; run without --resume to start")
    state = _load_checkpoint(checkpoint)
    if state.get("key") != key or state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(
            f"--resume: {checkpoint} was written for another model, data or training settings; "
            "use the same command line, or run without --resume to start over"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    best = None
    if state["best_state"] is not None:
        best = (float(state["best_score"]), int(state["best_epoch"]), state["best_state"])
    return [EpochLog(*row) for row in state["logs"]], best


def _step(
    model: nn.Module, cfg: TrainConfig, opt: Any, sched: Any, gen: torch.Generator
) -> Callable[[Batch], tuple[float, int, int]]:
    """One optimisation step on a batch: ``(loss x B, correct, B)``."""
    rotate = Affine()

    def step(b: Batch) -> tuple[float, int, int]:
        x = b.x
        if cfg.rotate > 0:
            angles = (torch.rand(len(x), generator=gen) * 2 - 1) * cfg.rotate
            x = rotate(x, rotations(angles).to(x.device))
        x_train = _adversarial_inputs(model, x, b.y, cfg, gen)
        model.train()
        logits = model(x_train)
        if cfg.method == "trades":
            natural = model(x)
            robust = F.kl_div(F.log_softmax(logits, 1), F.softmax(natural, 1), reduction="batchmean")
            loss = F.cross_entropy(natural, b.y) + cfg.trades_beta * robust
        else:
            loss = F.cross_entropy(logits, b.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        return float(loss.detach()) * len(b.y), int((logits.argmax(1) == b.y).sum()), len(b.y)

    return step


def _adversarial_inputs(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """The inputs to train on ``(B, C, H, W)``: ``x`` itself, or adversarial examples crafted
    in eval mode."""
    norm: Norm = cfg.norm  # type: ignore[assignment]  # validated
    if not cfg.adversarial:
        return x
    with eval_mode(model):
        if cfg.method == "pgd":
            adv, _ = PGD(norm=norm, steps=cfg.attack_steps, early_stop=False)(model, x, y, cfg.eps, generator=gen)
        elif cfg.method == "fgsm":
            attack = PGD(norm=norm, steps=1, rel_step=1.25, random_start=True, early_stop=False)
            adv, _ = attack(model, x, y, cfg.eps, generator=gen)
        else:
            adv = _trades_adversary(model, x, cfg, norm, gen)
    return adv.detach()


def _trades_adversary(model: nn.Module, x: Tensor, cfg: TrainConfig, norm: Norm, gen: torch.Generator) -> Tensor:
    """TRADES' inner maximisation: ``attack_steps`` ascent steps on KL(f(x) || f(x'))."""
    with torch.no_grad():
        target = F.softmax(model(x), dim=1)
    noise = torch.randn(x.shape, generator=gen).to(x.device)
    adv = (x + 0.001 * noise).clamp(0, 1)
    alpha = 2.5 * cfg.eps / cfg.attack_steps
    for _ in range(cfg.attack_steps):
        adv = adv.detach().requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(adv), dim=1), target, reduction="sum")
        (grad,) = torch.autograd.grad(kl, adv)
        adv = (x + project(adv.detach() + ascent(grad, alpha, norm) - x, cfg.eps, norm)).clamp(0, 1)
    return adv.detach()


def _validate(model: nn.Module, val: ImageDataset, cfg: TrainConfig, engine: Engine) -> dict[str, float]:
    """Validation accuracy: clean, and for adversarial methods under PGD-10 and FGSM at ``eps``."""
    norm: Norm = cfg.norm  # type: ignore[assignment]  # validated
    pgd, fgsm = PGD(norm=norm, steps=10), PGD.fgsm(norm=norm)
    gen = torch.Generator().manual_seed(engine.seed)

    def run(b: Batch) -> tuple[int, int, int, int]:
        with torch.no_grad():
            clean = int((model(b.x).argmax(1) == b.y).sum())
        if not cfg.adversarial:
            return clean, 0, 0, len(b.y)
        _, hit_pgd = pgd(model, b.x, b.y, cfg.eps, generator=gen)
        _, hit_fgsm = fgsm(model, b.x, b.y, cfg.eps)
        return clean, int((~hit_pgd).sum()), int((~hit_fgsm).sum()), len(b.y)

    sums = [0, 0, 0, 0]
    with eval_mode(model):
        for row in engine.map(run, val, description="validation", grad=True):
            sums = [a + b for a, b in zip(sums, row, strict=True)]
    n = max(sums[3], 1)
    out = {"val_clean": sums[0] / n}
    if cfg.adversarial:
        out |= {"val_pgd": sums[1] / n, "val_fgsm": sums[2] / n}
    return out


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    logs: list[EpochLog],
    best: tuple[float, int, dict[str, Tensor]] | None,
    key: str,
) -> None:
    """Everything needed to continue: weights, optimizer and schedule state, logs, best epoch.

    Written as a plain ``torch.save`` of tensors, numbers and strings (loadable with
    ``weights_only=True``), atomically, so a kill mid-write leaves the previous checkpoint.
    """
    state: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "key": key,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "logs": [dataclasses.astuple(log) for log in logs],
        "best_score": best[0] if best else None,
        "best_epoch": best[1] if best else None,
        "best_state": best[2] if best else None,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so, do not guess
        raise DataError(f"cannot read checkpoint {path}: {type(exc).__name__}; delete it to start over") from exc
    if not isinstance(state, dict):
        raise DataError(f"{path} is not an auditkit training checkpoint; delete it to start over")
    return state
