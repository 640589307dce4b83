"""The one engine: device, batching, eval and grad modes, seeding, OOM back-off, progress.

Every loop over a dataset goes through :meth:`Engine.map`; checks never write their own.
The clean forward pass is computed once per (model, dataset) and shared via :meth:`Engine.predict`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from auditkit.data import ImageDataset
from auditkit.exceptions import AuditkitError, ConfigError, ModelError, NonFiniteOutputError, RunError
from auditkit.progress import track as _track

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda|mps`` (or ``cuda:N``) to an available ``torch.device``."""
    base = name.split(":")[0]
    if base not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if base == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(name)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, and restore each one's original mode afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    for m, _ in saved:
        m.training = False
    try:
        yield model
    finally:
        for m, mode in saved:
            m.training = mode


@dataclass(frozen=True)
class Batch:
    """A slice of a dataset on the engine's device: ``x`` ``(B, C, H, W)`` float in ``[0, 1]``."""

    start: int
    stop: int
    x: Tensor
    y: Tensor


@dataclass(frozen=True)
class Predictions:
    """The clean forward pass: ``logits`` ``(N, K)`` float32 on the CPU, ``pred``/``label`` ``(N,)``."""

    logits: Tensor
    pred: Tensor
    label: Tensor

    @property
    def correct(self) -> Tensor:
        return self.pred == self.label

    @property
    def confidence(self) -> Tensor:
        return torch.softmax(self.logits, dim=1).max(dim=1).values


@dataclass(frozen=True)
class Outcome:
    """A per-sample score in ``[0, 1]`` from one check: ``values`` ``(N,)``, 1 = robust/correct.

    ``metric`` names the accuracy-type metric these (0/1) values average to, so a baseline run can
    be compared sample by sample; ``per_group`` outcomes are broken down by ``subgroups``.
    """

    key: str
    label: str
    values: Tensor
    metric: str = ""
    per_group: bool = True


class Engine:
    """Runs functions over a dataset in batches on one device.

    Settings are stored by the constructor; nothing is loaded or allocated until used.
    On CUDA out-of-memory the batch size is halved and the batch retried, so results do not
    depend on the batch size.
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        batch_size: int = 256,
        seed: int = 0,
        deterministic: bool = False,
        progress: bool = True,
        forward_factor: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.seed = seed
        self.deterministic = deterministic
        self.progress = progress
        self.forward_factor = forward_factor
        self._clean: list[tuple[nn.Module, ImageDataset, Predictions]] = []
        self._outcomes: list[tuple[ImageDataset, Outcome]] = []

    def publish(self, data: ImageDataset, outcome: Outcome) -> None:
        """Share a per-sample outcome of one check (e.g. robust or not) with later checks."""
        self._outcomes.append((data, outcome))

    def outcomes(self, data: ImageDataset) -> list[Outcome]:
        """Per-sample outcomes published so far for ``data``, in publication order."""
        return [o for d, o in self._outcomes if d is data]

    def seed_everything(self) -> None:
        """Seed Python, NumPy and torch; switch on deterministic algorithms if asked."""
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

    def track(self, iterable: Iterable[T], total: int, description: str) -> Iterator[T]:
        """A progress bar over ``iterable`` (shown only on a terminal and when enabled)."""
        return _track(iterable, total, description, enabled=self.progress)

    def to_device(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def batch(self, data: ImageDataset, start: int, stop: int) -> Batch:
        """Images ``start:stop`` as float ``[0, 1]`` on the device."""
        x = data.images[start:stop].to(self.device, non_blocking=True).float().div_(255.0)
        y = data.labels[start:stop].to(self.device, non_blocking=True)
        return Batch(start, stop, x, y)

    def map(
        self,
        fn: Callable[[Batch], T],
        data: ImageDataset,
        *,
        description: str,
        grad: bool = False,
    ) -> Iterator[T]:
        """Apply ``fn`` to consecutive batches of ``data``; yields one output per batch.

        ``grad=False`` runs under ``torch.inference_mode``; ``grad=True`` enables autograd.
        A CUDA out-of-memory error halves the batch size and retries the same samples.
        """
        n = len(data)
        steps = -(-n // self.batch_size)
        mode = torch.enable_grad if grad else torch.inference_mode

        def batches() -> Iterator[T]:
            start = 0
            while start < n:
                stop = min(start + self.batch_size, n)
                try:
                    with mode():
                        out = fn(self.batch(data, start, stop))
                except torch.OutOfMemoryError as exc:
                    if self.batch_size == 1:
                        raise RunError(
                            "out of memory even with batch size 1; use a smaller model or --device cpu"
                        ) from exc
                    self.batch_size = max(1, self.batch_size // 2)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                yield out
                start = stop

        return self.track(batches(), steps, description)

    def sweep(
        self,
        model: nn.Module,
        data: ImageDataset,
        perturbation: Callable[[Tensor, Tensor], Tensor],
        params: Tensor,
        *,
        description: str,
        identity: Tensor | None = None,
    ) -> Tensor:
        """Predicted class of every sample under every parameter row: ``(N, P)`` int64.

        ``params`` is ``(P, D)``; ``perturbation(x, p)`` takes ``x`` ``(B, C, H, W)`` and one
        parameter row per image ``(B, D)``. Several parameter rows share a forward batch (up to
        ``forward_factor`` times the batch size). Rows flagged in ``identity`` ``(P,)`` reuse the
        clean pass instead of running the model again, so they reproduce it exactly.
        """
        n_params = int(params.shape[0])
        clean = self.predict(model, data)
        same = identity if identity is not None else torch.zeros(n_params, dtype=torch.bool)
        todo = torch.nonzero(~same).flatten()
        out = torch.empty(len(data), n_params, dtype=torch.int64)
        out[:, same] = clean.pred.unsqueeze(1)
        if len(todo) == 0:
            return out
        dev_params = params[todo].to(self.device)

        def run(b: Batch) -> tuple[int, int, Tensor]:
            size = b.x.shape[0]
            chunk = max(1, (self.batch_size * self.forward_factor) // size)
            preds = []
            for start in range(0, len(todo), chunk):
                p = dev_params[start : start + chunk]
                c = p.shape[0]
                # parameter-major layout: rows [p0 x B, p1 x B, ...] so a perturbation can share work per row
                xs = b.x.repeat(c, *([1] * (b.x.ndim - 1)))
                logits = model(perturbation(xs, p.repeat_interleave(size, dim=0)))
                preds.append(logits.argmax(dim=1).view(c, size).t().cpu())
            return b.start, b.stop, torch.cat(preds, dim=1)

        with eval_mode(model):
            for start, stop, preds in self.map(run, data, description=description):
                out[start:stop, todo] = preds
        return out

    def predict(self, model: nn.Module, data: ImageDataset) -> Predictions:
        """The clean forward pass over ``data``, computed once per (model, data) and cached."""
        for m, d, preds in self._clean:
            if m is model and d is data:
                return preds
        self.to_device(model)
        chunks: list[Tensor] = []
        with eval_mode(model):
            try:
                for logits in self.map(lambda b: model(b.x).float().cpu(), data, description="clean pass"):
                    chunks.append(logits)
            except (AuditkitError, KeyboardInterrupt):
                raise
            except Exception as exc:
                msg = " ".join(str(exc).split())[:240]
                raise ModelError(f"model failed during the clean pass: {type(exc).__name__}: {msg}") from exc
        logits = torch.cat(chunks) if chunks else torch.empty(0, 0)
        finite = torch.isfinite(logits).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()[:3].tolist()
            raise NonFiniteOutputError(
                f"model produced NaN or infinite outputs for {int((~finite).sum())} samples "
                f"(e.g. {', '.join(data.ids[i] for i in bad)})"
            )
        preds = Predictions(logits=logits, pred=logits.argmax(dim=1), label=data.labels.clone())
        self._clean.append((model, data, preds))
        return preds
