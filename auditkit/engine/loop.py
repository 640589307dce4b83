"""The one engine: device, batching, eval and grad modes, seeding, OOM back-off, progress.

Every loop over a dataset goes through :meth:`Engine.map`; checks never write their own.
The clean forward pass is computed once per (model, dataset) and shared via :meth:`Engine.predict`.

Progress counts images (or images x perturbations), never batches. Each :meth:`Engine.map` is a bar of
its own unless it is given a ``task`` of the caller (:meth:`Engine.task`: one bar over several loops,
e.g. the saliency sanity check). Inside a batch the work function may report how far it got with
:meth:`Batch.report` (an attack's steps, a sweep's parameter chunks): the bar then moves even when
the whole dataset is one batch, and its ETA is known after the first report.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from auditkit.engine.distributed import World
from auditkit.engine.progress import NullSink, ProgressSink, Task, terminal_sink
from auditkit.engine.resume import BatchStore, call_name
from auditkit.exceptions import AuditkitError, ConfigError, ModelError, NonFiniteOutputError, RunError
from auditkit.inputs.data import FileImages, ImageDataset

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn
else:
    from auditkit._lazy import lazy

    np = lazy("numpy")
    torch = lazy("torch")

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")
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


def _no_progress(done: float) -> None:
    pass


@dataclass(frozen=True)
class Batch:
    """A slice of a dataset on the engine's device: ``x`` ``(B, C, H, W)`` float in ``[0, 1]``.

    ``seed`` depends only on the engine's seed, the loop and ``start``: randomness drawn from
    :meth:`generator` (or the global RNG, which is seeded with it) is the same whichever process
    runs the batch and whether or not earlier batches were run or restored.
    """

    start: int
    stop: int
    x: Tensor
    y: Tensor
    seed: int = field(default=0, compare=False)
    progress: Callable[[float], None] = field(default=_no_progress, compare=False, repr=False)

    def generator(self) -> torch.Generator:
        """A CPU generator seeded for this batch."""
        return torch.Generator().manual_seed(self.seed)

    def report(self, done: float) -> None:
        """Tell the progress bar that ``done`` (0 to 1) of this batch's work is finished: cumulative,
        not an increment, so a loop calls ``b.report((i + 1) / steps)``. Optional: the bar is moved past
        the batch when it returns anyway. Long work on one batch (an attack's steps) should call it so
        that a dataset that fits in one batch does not show a frozen bar."""
        self.progress(min(1.0, max(0.0, float(done))))


def _load_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim``: hands freed heap pages back to the OS (a no-op elsewhere).

    Each batch allocates large temporaries from the heap; small results kept between them pin the
    heap, so without trimming the peak memory grows with the number of batches (measured: +13% at
    17,280 images vs 540). Trimming once per batch keeps it flat.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def release() -> None:
        trim(0)

    return release


_release_freed_memory = _load_trim()


def batch_seed(seed: int, description: str, start: int) -> int:
    """A 63-bit seed for the batch at ``start`` of the loop named ``description``."""
    digest = hashlib.blake2b(f"{seed}\x1f{description}\x1f{start}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


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
    depend on the batch size. Under torch.distributed (``world``) each rank runs its share of the
    batch grid and receives every batch's output; with a ``store`` finished batches are saved and,
    on resume, restored instead of recomputed.
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        batch_size: int = 256,
        seed: int = 0,
        deterministic: bool = False,
        progress: bool | ProgressSink = True,
        forward_factor: int = 1,
        world: World | None = None,
        workers: int = 0,
        amp: str = "off",
        amp_attack: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        if amp not in AMP_MODES:
            raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
        if workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {workers}")
        self.world = world or World()
        device_obj = resolve_device(device)
        if self.world.active and device_obj.type == "cuda" and device_obj.index is None:
            device_obj = torch.device("cuda", self.world.local_rank)
        self.device = device_obj
        if amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU or --amp off")
        self.batch_size = batch_size
        self.seed = seed
        self.deterministic = deterministic
        if not self.world.main:
            self.sink: ProgressSink = NullSink()  # only rank 0 shows progress
        elif isinstance(progress, bool):
            self.sink = terminal_sink(progress)
        else:
            self.sink = progress
        self.progress = not isinstance(self.sink, NullSink)
        self.forward_factor = forward_factor
        self.workers = workers
        self.amp = amp
        self.amp_attack = amp_attack
        self.store: BatchStore | None = None
        self.restored = 0  # batches taken from the store instead of computed
        self.computed = 0
        self._calls = 0
        self._clean: list[tuple[nn.Module, ImageDataset, Predictions]] = []
        self._outcomes: list[tuple[ImageDataset, Outcome]] = []
        self._counting_nonfinite = 0  # > 0 inside sweep/predict, which count non-finite outputs themselves

    @contextlib.contextmanager
    def finite_outputs(self, model: nn.Module, what: str) -> Iterator[None]:
        """Every forward pass of ``model`` inside this block must return finite logits ``(B, K)``.

        A NaN or infinite logit in any pass (attack steps, saliency, probes) raises
        :class:`NonFiniteOutputError` naming ``what`` and how many inputs of that batch were
        affected, so no number is ever computed from it. :meth:`sweep` and :meth:`predict` count
        the affected images over the whole pass themselves.
        """

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._counting_nonfinite or not isinstance(output, torch.Tensor) or not output.is_floating_point():
                return
            if output.numel() == 0:
                return
            finite = torch.isfinite(output.detach()).reshape(output.shape[0], -1).all(dim=1)
            if not bool(finite.all()):
                raise NonFiniteOutputError(
                    f"{what}: the model returned NaN or infinite logits for {int((~finite).sum())} of "
                    f"{output.shape[0]} inputs in one batch; no number from this pass is reported"
                )

        handle = model.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def counting_nonfinite(self) -> Iterator[None]:
        """Inside, the engine's own non-finite check is off: the caller counts non-finite outputs
        itself (per angle, per corruption) and refuses them with a message naming where they arose."""
        self._counting_nonfinite += 1
        try:
            yield
        finally:
            self._counting_nonfinite -= 1

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

    @contextlib.contextmanager
    def task(self, description: str, total: float, *, unit: str = "images") -> Iterator[Task]:
        """A bar of ``total`` units for work the caller spans over several loops: pass it as
        ``map(..., task=...)`` (each image then advances it by ``per_image``) or advance it directly.
        Its bar goes away when the block ends."""
        task = Task(self.sink, description, total, unit)
        try:
            yield task
        finally:
            task.close()

    def track(self, iterable: Iterable[T], total: int, description: str, *, unit: str = "images") -> Iterator[T]:
        """Yield from ``iterable`` (``total`` items, each one ``unit``) while its bar advances."""
        with self.task(description, total, unit=unit) as task:
            for item in iterable:
                yield item
                task.advance(1)

    def note(self, line: str) -> None:
        """A line that stays where the bars were (a finished check's headline); shown only when
        progress is, on stderr."""
        self.sink.note(line)

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda"

    def to_device(self, model: nn.Module) -> nn.Module:
        if self.channels_last:
            return model.to(self.device).to(memory_format=torch.channels_last)
        return model.to(self.device)

    def autocast(self, grad: bool = False) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for forward-only work when ``--amp`` is on; gradient work (attacks,
        saliency) stays fp32 unless ``amp_attack`` (``--amp-attack``)."""
        if self.amp == "off" or (grad and not self.amp_attack):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _to_batch(
        self,
        images: Tensor,
        labels: Tensor,
        start: int,
        stop: int,
        seed: int = 0,
        progress: Callable[[float], None] = _no_progress,
    ) -> Batch:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(start, stop, x, labels.to(self.device, non_blocking=True), seed, progress)

    def batch(self, data: ImageDataset, start: int, stop: int) -> Batch:
        """Images ``start:stop`` as float ``[0, 1]`` on the device."""
        return self._to_batch(data.images[start:stop], data.labels[start:stop], start, stop)

    def _fetch(self, data: ImageDataset, cells: list[tuple[int, int]]) -> Iterator[Tensor]:
        """uint8 images of each cell, in order: decoded by DataLoader workers for file datasets."""
        if isinstance(data.images, FileImages) and self.workers > 0 and len(cells) > 1:
            from torch.utils.data import DataLoader

            loader: DataLoader[Tensor] = DataLoader(
                _Cells(data.images, cells),
                batch_size=None,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
            )
            yield from loader
            return
        for start, stop in cells:
            images = data.images[start:stop]
            yield images.pin_memory() if self.device.type == "cuda" and isinstance(data.images, FileImages) else images

    def map(
        self,
        fn: Callable[[Batch], T],
        data: ImageDataset,
        *,
        description: str,
        grad: bool = False,
        per_image: int = 1,
        unit: str = "images",
        task: Task | None = None,
    ) -> Iterator[T]:
        """Apply ``fn`` to consecutive batches of ``data``; yields outputs in batch order.

        ``grad=False`` runs under ``torch.inference_mode`` (and ``--amp``); ``grad=True`` enables
        autograd. A CUDA out-of-memory error halves the batch size and retries the same samples.
        Each batch runs with the global RNG seeded by :func:`batch_seed`. Under torch.distributed
        this rank runs every ``world.size``-th batch and yields every batch's outputs (gathered).

        Progress: a bar named ``description`` of ``len(data) * per_image`` ``unit`` (``per_image``: the
        perturbations each image goes through), or, given the caller's ``task``, that task advanced by
        as much. ``fn`` may report progress inside a batch with :meth:`Batch.report`. Under
        torch.distributed rank 0 shows its share scaled to the whole dataset.
        """
        n = len(data)
        size = self.batch_size
        cells = [(s, min(s + size, n)) for s in range(0, n, size)]
        call = call_name(self._calls, description)
        self._calls += 1
        mine = [cells[i] for i in self.world.shard(len(cells))]
        local_n = sum(stop - start for start, stop in mine)
        per_unit = per_image * (n / local_n if local_n else 1.0)  # units one local image stands for
        bar: list[Task] = [task] if task is not None else []  # the bar, once iteration starts
        store = self.store
        saved = {c: store.load(call, *c) for c in mine} if store is not None else {}
        todo = [c for c in mine if saved.get(c) is None]
        mode = torch.enable_grad if grad else torch.inference_mode

        def run_cell(cell: tuple[int, int], images: Tensor) -> list[T]:
            outs: list[T] = []
            s, stop = cell
            base = bar[0].completed
            while s < stop:
                e = min(s + self.batch_size, stop)
                seed = batch_seed(self.seed, description, s)
                before, weight = base + (s - cell[0]) * per_unit, (e - s) * per_unit

                def report(done: float, before: float = before, weight: float = weight) -> None:
                    bar[0].update(before + done * weight)

                try:
                    torch.manual_seed(seed)
                    with mode(), self.autocast(grad):
                        part = images[s - cell[0] : e - cell[0]]
                        b = self._to_batch(part, data.labels[s:e], s, e, seed, report)
                        outs.append(fn(b))
                    bar[0].update(before + weight)
                    _release_freed_memory()
                except torch.OutOfMemoryError as exc:
                    if self.batch_size == 1:
                        raise RunError(
                            "out of memory even with batch size 1; use a smaller model or --device cpu"
                        ) from exc
                    self.batch_size = max(1, self.batch_size // 2)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                s = e
            if store is not None:
                store.save(call, *cell, list(outs))
            self.computed += 1
            return outs

        def local() -> Iterator[list[T]]:
            # the global RNG is re-seeded per batch and restored once afterwards (not per batch:
            # saving the state per batch fragments the heap and grows memory with the data)
            cpu_state = torch.get_rng_state()
            cuda_state = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
            own = None if task is not None else Task(self.sink, description, n * per_image, unit)
            if own is not None:
                bar.append(own)
            fetched = self._fetch(data, todo)
            try:
                for cell in mine:
                    restored = saved.get(cell)
                    if restored is not None:
                        self.restored += 1
                        bar[0].advance((cell[1] - cell[0]) * per_unit)
                        yield restored
                    else:
                        yield run_cell(cell, next(fetched))
                if own is not None:
                    own.update(own.total)  # exact, whatever the rounding of a distributed share
            finally:
                if own is not None:
                    own.close()
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, self.device)

        progress = local()
        if not self.world.active:
            return (out for outs in progress for out in outs)
        index = {c: i for i, c in enumerate(cells)}
        gathered = self.world.gather([(index[c], outs) for c, outs in zip(mine, progress, strict=True)])
        return (out for _, outs in gathered for out in outs)

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
        clean pass instead of running the model again, so they reproduce it exactly. The bar counts
        the perturbed images the model sees (images x parameter rows not flagged), moving after each
        forward pass.
        """
        return self.sweep_scored(model, data, perturbation, params, description=description, identity=identity)[0]

    def sweep_scored(
        self,
        model: nn.Module,
        data: ImageDataset,
        perturbation: Callable[[Tensor, Tensor], Tensor],
        params: Tensor,
        *,
        description: str,
        identity: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """As :meth:`sweep`, and the top-label probability: ``(N, P)`` int64 and ``(N, P)`` float32."""
        n_params = int(params.shape[0])
        clean = self.predict(model, data)
        same = identity if identity is not None else torch.zeros(n_params, dtype=torch.bool)
        todo = torch.nonzero(~same).flatten()
        out = torch.empty(len(data), n_params, dtype=torch.int64)
        conf = torch.empty(len(data), n_params, dtype=torch.float32)
        out[:, same] = clean.pred.unsqueeze(1)
        conf[:, same] = clean.confidence.float().unsqueeze(1)
        if len(todo) == 0:
            return out, conf
        dev_params = params[todo].to(self.device)

        def run(b: Batch) -> tuple[int, int, Tensor, Tensor]:
            size = b.x.shape[0]
            chunk = max(1, (self.batch_size * self.forward_factor) // size)
            preds, confs = [], []
            for start in range(0, len(todo), chunk):
                p = dev_params[start : start + chunk]
                c = p.shape[0]
                # parameter-major layout: rows [p0 x B, p1 x B, ...] so a perturbation can share work per row
                xs = b.x.repeat(c, *([1] * (b.x.ndim - 1)))
                logits = model(perturbation(xs, p.repeat_interleave(size, dim=0))).float()
                pred = logits.argmax(dim=1).masked_fill(~torch.isfinite(logits).all(dim=1), -1)
                preds.append(pred.view(c, size).t().cpu())
                confs.append(torch.softmax(logits, dim=1).max(dim=1).values.view(c, size).t().cpu())
                b.report((start + c) / len(todo))
            return b.start, b.stop, torch.cat(preds, dim=1), torch.cat(confs, dim=1)

        with eval_mode(model), self.counting_nonfinite():
            sweep = self.map(run, data, description=description, per_image=len(todo), unit="perturbed images")
            for start, stop, preds, confs in sweep:
                out[start:stop, todo] = preds
                conf[start:stop, todo] = confs
        bad = out < 0
        if bool(bad.any()):  # never score a NaN logit as an answer
            raise NonFiniteOutputError(
                f"{description}: the model returned NaN or infinite logits on {int(bad.sum())} perturbed inputs "
                f"({int(bad.any(dim=1).sum())} of {len(data)} images)"
            )
        return out, conf

    def predict(self, model: nn.Module, data: ImageDataset) -> Predictions:
        """The clean forward pass over ``data``, computed once per (model, data) and cached."""
        for m, d, preds in self._clean:
            if m is model and d is data:
                return preds
        self.to_device(model)
        chunks: list[Tensor] = []
        with eval_mode(model), self.counting_nonfinite():
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


if TYPE_CHECKING:
    _CellsBase = torch.utils.data.Dataset[Tensor]
else:
    _CellsBase = object  # DataLoader takes any map-style dataset (__getitem__, __len__); no torch at import


class _Cells(_CellsBase):
    """A map-style dataset of whole batches (``cells``) of a :class:`FileImages`, for DataLoader."""

    def __init__(self, images: FileImages, cells: list[tuple[int, int]]) -> None:
        self.images = images
        self.cells = cells

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i: int) -> Tensor:
        start, stop = self.cells[i]
        return self.images[start:stop]
