"""Plain supervised training on the engine (used by the demo; ``harden`` builds on it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from auditkit.data import ImageDataset
from auditkit.engine import Batch, Engine


@dataclass(frozen=True)
class EpochLog:
    """One epoch: mean training loss and training accuracy."""

    epoch: int
    loss: float
    accuracy: float


def fit(
    model: nn.Module,
    data: ImageDataset,
    *,
    engine: Engine,
    epochs: int = 8,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
) -> list[EpochLog]:
    """Train ``model`` (an :class:`AuditModel`, so inputs stay in ``[0, 1]``) with Adam.

    Shuffling is seeded from ``engine.seed``; batches come from :meth:`Engine.map`.
    """
    engine.to_device(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(data) // engine.batch_size))
    gen = torch.Generator().manual_seed(engine.seed)
    logs = []
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(data), generator=gen)
        shuffled = ImageDataset(
            images=data.images[perm],
            labels=data.labels[perm],
            class_names=data.class_names,
            metadata={},
            ids=(),
            source=data.source,
            format=data.format,
            sha256=data.sha256,
        )

        def step(b: Batch) -> tuple[float, int, int]:
            opt.zero_grad(set_to_none=True)
            logits = model(b.x)
            loss = nn.functional.cross_entropy(logits, b.y)
            loss.backward()
            opt.step()
            sched.step()
            return float(loss.detach()) * len(b.y), int((logits.argmax(1) == b.y).sum()), len(b.y)

        totals = [0.0, 0, 0]
        for loss_sum, correct, n in engine.map(
            step, shuffled, description=f"training epoch {epoch + 1}/{epochs}", grad=True
        ):
            totals[0] += loss_sum
            totals[1] += correct
            totals[2] += n
        logs.append(EpochLog(epoch=epoch + 1, loss=totals[0] / totals[2], accuracy=totals[1] / totals[2]))
    model.eval()
    return logs
