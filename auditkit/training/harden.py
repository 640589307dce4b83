"""``auditkit harden``: adversarial training and/or rotation augmentation, audited before and after.

The flow: load the model and the training data -> hold out a validation split (model selection,
the overfitting guard) and, without ``--eval-data``, an evaluation split (written to
``eval.npz``) -> audit the original model -> train (checkpointed every epoch) -> save the new
model as safetensors + spec -> audit it with the same settings -> one report with both.
The evaluation attack is stronger than the training one (more steps, optional restarts), so a
gain is not an artefact of attacking with the method trained against.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auditkit.checks.attack import AttackResult, AttackSettings
from auditkit.checks.harden import HardenResult
from auditkit.checks.rotation import RotationResult, RotationSettings
from auditkit.config import AuditConfig
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import ImageDataset
from auditkit.inputs.models import save_model
from auditkit.io import atomic_write_bytes
from auditkit.pipeline import load_inputs, make_engine, raise_for_failures, run_audit, write_outputs
from auditkit.results import RunResults, collect_metrics, fmt
from auditkit.settings import HardenSettings
from auditkit.training.train import EpochLog, TrainConfig, TrainResult, fingerprint, fit

#: metrics compared before vs after (prefixes); interval bounds and per-class detail are left out
DELTA_PREFIXES = (
    "clean.accuracy",
    "attack.robust_accuracy",
    "rotation.mean_accuracy",
    "rotation.worst_accuracy",
    "spatial.accuracy",
    "subgroups.accuracy[",
    "subgroups.accuracy_gap",
    "subgroups.robust_accuracy",
)


@dataclass(frozen=True, kw_only=True)
class HardenConfig:
    """``audit`` holds the model, the training data, the output folder, the engine and audit
    settings; ``train`` how to train. Without ``eval_data`` an evaluation split is held out of the
    training data; a validation split always is."""

    audit: AuditConfig
    train: TrainConfig
    eval_data: str | None = None
    batch_size: int = 64
    fresh: bool = False
    resume: bool = False
    val_fraction: float = 0.1
    eval_fraction: float = 0.2
    eval_steps: int | None = None

    def __post_init__(self) -> None:
        for name in ("val_fraction", "eval_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 0.5), got {value}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ConfigError(f"--eval-steps must be at least 1, got {self.eval_steps}")
        if self.batch_size < 1:
            raise ConfigError(f"--train-batch-size must be at least 1, got {self.batch_size}")

    @property
    def attack_steps(self) -> int:
        """PGD steps of the evaluation attack under ``--strength fast``: at least 20 and twice the training
        attack's (``standard`` and ``thorough`` run APGD with their own 100 steps unless ``--eval-steps``)."""
        return self.eval_steps or max(20, 2 * self.train.attack_steps)


def harden_config(settings: HardenSettings, audit: AuditConfig) -> HardenConfig:
    """The run's configuration from ``auditkit harden``'s own settings, with ``audit`` holding the model,
    data, engine and audit settings."""
    train = TrainConfig(
        method=settings.method,
        eps=settings.eps,
        norm=settings.train_norm,
        attack_steps=settings.attack_steps,
        trades_beta=settings.trades_beta,
        rotate=settings.rotate,
        epochs=settings.epochs,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
    )
    return HardenConfig(
        audit=audit,
        train=train,
        eval_data=settings.eval_data,
        batch_size=settings.train_batch_size,
        fresh=settings.fresh,
        resume=settings.resume_training,
        val_fraction=settings.val_fraction,
        eval_fraction=settings.eval_fraction,
        eval_steps=settings.eval_steps,
    )


@dataclass(frozen=True)
class HardenOutput:
    """Paths written and both runs' results."""

    out: Path
    model_path: Path
    before: RunResults
    after: RunResults
    training: TrainResult

    def summary_lines(self) -> tuple[list[str], list[str]]:
        """What ``auditkit harden`` prints: the result's headline and the paths (stdout), warnings (stderr)."""
        err = []
        if self.training.overfit_epoch is not None:
            err.append(
                f"warning: catastrophic overfitting at epoch {self.training.overfit_epoch}; "
                f"kept the weights of epoch {self.training.kept_epoch}"
            )
        out = [f"harden: {self.after.checks[-1].headline()}", f"model:   {self.model_path}"]
        out += [f"before:  {self.out / 'before' / 'index.html'}", f"report:  {self.out / 'index.html'}"]
        return out, err


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """A seeded permutation of ``n`` cut into held-out parts of the given fractions and the rest
    (last). Each held-out part has at least one sample."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for f in fractions:
        size = max(1, round(n * f))
        parts.append(perm[start : start + size].sort().values)
        start += size
    if start >= n:
        raise ConfigError(f"the training data has {n} images: too few to hold out validation/evaluation splits")
    parts.append(perm[start:].sort().values)
    return parts


def write_npz(data: ImageDataset, path: Path) -> Path:
    """Write ``data`` as an ``.npz`` auditkit loads (images, labels, class names, metadata)."""
    import io

    buf = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v, dtype=str) for k, v in data.metadata.items()}
    arrays |= {"x": data.images.numpy(), "y": data.labels.numpy()}
    arrays["class_names"] = np.asarray(data.class_names, dtype=str)
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def _audit_checks(cfg: HardenConfig) -> tuple[str, ...]:
    checks = ["clean"]
    if cfg.train.adversarial:
        checks.append("attack")
    if cfg.train.rotate > 0:
        checks.append("rotation")
    return (*checks, "subgroups")


def audit_config(cfg: HardenConfig, model: str, data: str, out: Path) -> AuditConfig:
    """The audit run on the original and on the hardened model (same settings for both)."""
    t = cfg.train
    attack = cfg.audit.settings(AttackSettings)
    rotation = cfg.audit.settings(RotationSettings)
    epsilons = attack.epsilons or ",".join(fmt(round(t.eps * f, 6)) for f in (0, 0.25, 0.5, 0.75, 1.0))
    return cfg.audit.replace(
        model=model,
        data=data,
        out=str(out),
        checks=_audit_checks(cfg),
        norm=t.norm,
        epsilons=epsilons,
        steps=cfg.attack_steps if attack.strength == "fast" else cfg.eval_steps,
        mean_range=t.rotate or rotation.mean_range,
        spatial=False,
    )


def run_harden(cfg: HardenConfig, *, on_epoch: Callable[[EpochLog], None] | None = None) -> HardenOutput:
    """Train, save and audit before/after; everything lands under ``cfg.audit.out``.

    ``on_epoch`` is called after every epoch (after its checkpoint is written).
    """
    out = Path(cfg.audit.out)
    if cfg.resume and not (out / "checkpoint.pt").is_file():
        raise ConfigError(f"--resume: no checkpoint at {out / 'checkpoint.pt'}; run without --resume to start")
    engine = make_engine(cfg.audit.replace(batch_size=cfg.batch_size))
    engine.seed_everything()
    loaded, data, _ = load_inputs(cfg.audit, engine)
    if not loaded.spec.arch:
        raise ConfigError(
            f"harden needs the architecture to save the new weights: {loaded.path} is a {loaded.format}; "
            "give a state_dict or safetensors file with --arch"
        )
    own_eval = cfg.eval_data is None
    fractions = (cfg.val_fraction, cfg.eval_fraction) if own_eval else (cfg.val_fraction,)
    parts = split_indices(len(data), fractions, cfg.audit.seed)
    val, train = data.take(parts[0]), data.take(parts[-1])
    eval_path = cfg.eval_data or ""
    if own_eval:
        eval_path = str(write_npz(data.take(parts[1]), out / "eval.npz"))

    before_cfg = audit_config(cfg, cfg.audit.model, eval_path, out / "before")
    before = run_audit(before_cfg)
    write_outputs(before, out / "before")
    raise_for_failures(before)

    model = loaded.model
    if cfg.fresh:
        torch.manual_seed(cfg.audit.seed)
        for module in model.net.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    key = fingerprint(loaded.sha256, data.sha256, cfg.train, cfg.fresh, cfg.batch_size, cfg.audit.seed, fractions)
    training = fit(
        model,
        train,
        engine=engine,
        config=cfg.train,
        val=val,
        checkpoint=out / "checkpoint.pt",
        resume=cfg.resume,
        key=key,
        on_epoch=on_epoch,
    )
    model_path = save_model(model.net, loaded.spec, out / "model.safetensors")

    after_cfg = before_cfg.replace(  # the spec is saved beside the new weights
        model=str(model_path),
        arch=None,
        num_classes=None,
        input_size=None,
        channels=None,
        mean=None,
        std=None,
        weights=None,
        resize=None,
        crop=None,
    )
    after = run_audit(after_cfg)
    result = summarize(cfg, before, after, training, train=len(train), val=len(val), eval_source=eval_path)
    checks = (*after.checks, result)
    after = dataclasses.replace(after, checks=checks, metrics=collect_metrics(checks))
    write_outputs(after, out)
    raise_for_failures(after)
    return HardenOutput(out=out, model_path=model_path, before=before, after=after, training=training)


def summarize(
    cfg: HardenConfig,
    before: RunResults,
    after: RunResults,
    training: TrainResult,
    *,
    train: int,
    val: int,
    eval_source: str,
) -> HardenResult:
    """The :class:`HardenResult` for two audits of the same data with the same settings."""
    t = cfg.train
    deltas = []
    for name in sorted(set(before.metrics) & set(after.metrics)):
        if not name.startswith(DELTA_PREFIXES) or name.endswith((".ci_low", ".ci_high")) or "class=" in name:
            continue
        old, new = before.metrics[name], after.metrics[name]
        deltas.append((name, old, new, new - old))
    attack_after = after.check(AttackResult)
    return HardenResult(
        method=t.method,
        label=t.label,
        eps=t.eps,
        norm=t.norm,
        rotate=t.rotate,
        epochs=t.epochs,
        lr=t.lr,
        batch_size=cfg.batch_size,
        fresh=cfg.fresh,
        train_samples=train,
        val_samples=val,
        eval_source=eval_source,
        eval_attack=attack_after.attack if attack_after is not None else "",
        logs=training.logs,
        kept_epoch=training.kept_epoch,
        overfit_epoch=training.overfit_epoch,
        resumed_from=training.resumed_from,
        before_attack=_curve(before),
        after_attack=_curve(after),
        before_rotation=_rotation(before),
        after_rotation=_rotation(after),
        deltas=tuple(deltas),
    )


def _curve(results: RunResults) -> tuple[tuple[float, float, float, float], ...]:
    attack = results.check(AttackResult)
    if attack is None:
        return ()
    return tuple((p.eps, p.robust.value, p.robust.low, p.robust.high) for p in attack.curve)


def _rotation(results: RunResults) -> tuple[tuple[float, float], ...]:
    rotation = results.check(RotationResult)
    if rotation is None:
        return ()
    return tuple((p.angle, p.accuracy.value) for p in rotation.points)
