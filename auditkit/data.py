"""Load any image dataset into one in-memory form: uint8 images, labels, metadata columns.

Sources: an ImageFolder directory, a CSV manifest (``path,label`` + metadata columns),
an ``.npz`` (``x``, ``y`` + optional per-sample arrays) and the builtin ``digits``.
Bad image files are reported by path and skipped; past ``max_bad_fraction`` the load fails.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from auditkit.exceptions import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DIGITS_SIZE = 28
STREAM_MODES: tuple[str, ...] = ("auto", "on", "off")
STREAM_BYTES = 1 << 30  # --stream auto: image files past 1 GiB of decoded pixels stay on disk
DIGITS_LOW_CONTRAST_SITE = "B"
DIGITS_SITE_NOTE = (
    "'site' is a synthetic attribute made up for the demo: site B images were made low-contrast "
    "(grey background, faint strokes) and are rare in training (4%) but common in test (30%)."
)

T = TypeVar("T")
Tracker = Callable[[Iterable[T], int, str], Iterator[T]]


class FileImages:
    """Images decoded from their files when indexed, so a dataset never has to fit in memory.

    Indexing with an int, a slice, a list or an index tensor returns ``(B, C, H, W)`` uint8
    (an int: ``(C, H, W)``); :meth:`subset` is a lazy selection. Every image is converted to
    ``channels`` and resized to ``(H, W)`` exactly as the in-memory loaders do.
    """

    def __init__(self, paths: Sequence[Path], *, mode: str | None, shape: tuple[int, int, int]) -> None:
        self.paths = tuple(paths)
        self.mode = mode
        self.image_shape = shape

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), *self.image_shape))

    def __len__(self) -> int:
        return len(self.paths)

    def _one(self, i: int) -> Tensor:
        c, h, w = self.image_shape
        try:
            return _conform(decode_image(self.paths[i], mode=self.mode), (h, w), c)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{self.paths[i]}: could not be read during the audit ({exc}); was it changed?") from exc

    def _indices(self, key: int | slice | Sequence[int] | Tensor) -> list[int]:
        if isinstance(key, slice):
            return list(range(len(self.paths)))[key]
        if isinstance(key, Tensor):
            return [int(i) for i in key.flatten().tolist()]
        if isinstance(key, int):
            return [key]
        return [int(i) for i in key]

    def __getitem__(self, key: int | slice | Sequence[int] | Tensor) -> Tensor:
        if isinstance(key, int):
            return self._one(key)
        idx = self._indices(key)
        if not idx:
            return torch.empty((0, *self.image_shape), dtype=torch.uint8)
        return torch.stack([self._one(i) for i in idx])

    def subset(self, key: Sequence[int] | Tensor) -> FileImages:
        """The images at ``key``, still on disk."""
        return FileImages([self.paths[i] for i in self._indices(key)], mode=self.mode, shape=self.image_shape)

    def numpy(self) -> np.ndarray:
        """Every image decoded: ``(N, C, H, W)`` uint8 (this loads the whole dataset)."""
        return self[:].numpy()


Images = Tensor | FileImages


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset: pixels in memory, or decoded from files batch by batch.

    ``images``: ``(N, C, H, W)`` uint8, a tensor or a :class:`FileImages` (``--stream``);
    ``labels``: ``(N,)`` int64 class indices into ``class_names``; ``metadata`` maps a column
    name to ``N`` string values; ``ids`` name each sample (relative path or index) for reports.
    """

    images: Images
    labels: Tensor
    class_names: tuple[str, ...]
    metadata: Mapping[str, tuple[str, ...]]
    ids: tuple[str, ...]
    source: str
    format: str
    sha256: str
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def streamed(self) -> bool:
        return isinstance(self.images, FileImages)

    def take(self, indices: Tensor) -> ImageDataset:
        """The samples at ``indices`` ``(M,)`` as a dataset of their own (same classes and source)."""
        idx = indices.long().cpu()
        picked = idx.tolist()
        images = self.images.subset(idx) if isinstance(self.images, FileImages) else self.images[idx]
        return dataclasses.replace(
            self,
            images=images,
            labels=self.labels[idx],
            metadata={k: tuple(v[i] for i in picked) for k, v in self.metadata.items()},
            ids=tuple(self.ids[i] for i in picked),
        )


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """What every loader needs besides the path (see :func:`load_dataset`)."""

    class_names: Sequence[str] | None
    num_classes: int | None
    image_size: tuple[int, int] | None
    channels: int | None
    limit: int | None
    sample: int | None
    seed: int
    max_bad_fraction: float
    track: Tracker[tuple[Path, str, str]]
    stream: str = "auto"

    @property
    def mode(self) -> str | None:
        """The Pillow mode images are converted to (``None``: keep grey as grey, else RGB)."""
        return {None: None, 1: "L", 3: "RGB"}[self.channels]


def _no_track(it: Iterable[T], total: int, description: str) -> Iterator[T]:
    yield from it


def digits_split(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """scikit-learn's digits, upsampled to 28x28, split 70/30 (stratified, seeded).

    Each split has ``x`` ``(N, 1, 28, 28)`` uint8, ``y`` ``(N,)`` int64 and ``site`` ``(N,)``:
    a synthetic acquisition site. Site ``B`` images are low-contrast (grey background, faint
    strokes) and rare in training (4%) but common in test (30%).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1)
    y = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, idx, share_b in (("train", np.sort(idx_train), 0.04), ("test", np.sort(idx_test), 0.30)):
        site = np.where(rng.random(len(idx)) < share_b, DIGITS_LOW_CONTRAST_SITE, "A")
        imgs = x[torch.from_numpy(idx)].clone()
        low = torch.from_numpy(site == DIGITS_LOW_CONTRAST_SITE)
        imgs[low] = 0.35 + 0.2 * imgs[low]
        out[name] = {
            "x": (imgs * 255).round().to(torch.uint8).numpy(),
            "y": y[idx],
            "site": site.astype(str),
        }
    return out


def decode_image(path: Path, *, mode: str | None) -> Tensor:
    """Decode one image file to ``(C, H, W)`` uint8; ``mode`` is ``"L"``, ``"RGB"`` or ``None``.

    Pillow's decompression-bomb warning is escalated to an error.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            target = mode or ("L" if img.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
            converted = img.convert(target)
    return TF.pil_to_tensor(converted)


def _resolve_in(base: Path, raw: str, where: str) -> Path:
    """Resolve ``raw`` relative to ``base``; reject absolute paths and escapes (``..``, symlinks)."""
    if not raw:
        raise DataError(f"{where}: empty path")
    if Path(raw).is_absolute():
        raise DataError(f"{where}: absolute path {raw!r} rejected; manifest paths must be relative to its folder")
    full = (base / raw).resolve()
    if not full.is_relative_to(base):
        raise DataError(f"{where}: path {raw!r} escapes the manifest's folder {base}; rejected")
    return full


def _subset(n: int, limit: int | None, sample: int | None, seed: int) -> np.ndarray:
    idx = np.arange(n)
    if sample is not None:
        if sample <= 0:
            raise ConfigError(f"--sample must be positive, got {sample}")
        if sample < n:
            idx = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    if limit is not None:
        if limit <= 0:
            raise ConfigError(f"--limit must be positive, got {limit}")
        idx = idx[:limit]
    return idx


def _map_labels(
    raw: Sequence[str], class_names: Sequence[str] | None, num_classes: int | None, where: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Turn label strings into indices: by the model's class names if known, else by value."""
    if class_names:
        lookup = {name: i for i, name in enumerate(class_names)}
        out = np.empty(len(raw), dtype=np.int64)
        for i, label in enumerate(raw):
            if label not in lookup:
                shown = list(class_names)[:20]
                raise DataError(f"{where[i]}: label {label!r} is not among the model's classes {shown}")
            out[i] = lookup[label]
        return out, tuple(class_names)
    if raw and all(s.lstrip("-").isdigit() for s in raw):
        ints = np.array([int(s) for s in raw], dtype=np.int64)
        k = num_classes if num_classes is not None else int(ints.max()) + 1
        bad = np.flatnonzero((ints < 0) | (ints >= k))
        if bad.size:
            raise DataError(f"{where[bad[0]]}: label {ints[bad[0]]} is not a class index in [0, {k})")
        return ints, tuple(str(i) for i in range(k))
    names = tuple(sorted(set(raw)))
    if num_classes is not None and len(names) > num_classes:
        raise DataError(f"data has {len(names)} classes {list(names)[:20]} but the model has {num_classes} outputs")
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup[s] for s in raw], dtype=np.int64), names


def _conform(im: Tensor, size: tuple[int, int] | None, c: int) -> Tensor:
    """One ``(C, H, W)`` uint8 image converted to ``c`` channels and resized to ``size``."""
    if im.shape[0] != c:
        im = im.expand(3, -1, -1) if im.shape[0] == 1 else TF.rgb_to_grayscale(im)
    if size is not None and tuple(im.shape[-2:]) != tuple(size):
        im = TF.resize(im, list(size), antialias=True)
    return im


def _target_shape(
    chans: set[int], sizes: set[tuple[int, int]], size: tuple[int, int] | None, channels: int | None
) -> tuple[int, tuple[int, int]]:
    """The channels and ``(H, W)`` every image is brought to; several sizes need ``--input-size``."""
    if size is None and len(sizes) > 1:
        raise DataError(
            f"images have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}); pass --input-size H W to resize them"
        )
    c = channels or (3 if 3 in chans else 1)
    return c, (tuple(size) if size is not None else next(iter(sizes)))  # type: ignore[return-value]


def _stack(images: list[Tensor], size: tuple[int, int] | None, channels: int | None) -> Tensor:
    sizes = {(int(im.shape[-2]), int(im.shape[-1])) for im in images}
    c, hw = _target_shape({int(im.shape[0]) for im in images}, sizes, size, channels)
    return torch.stack([_conform(im, hw, c) for im in images]).contiguous()


def _dataset_hash(images: Tensor | hashlib._Hash, labels: Tensor, metadata: Mapping[str, Sequence[str]]) -> str:
    """SHA-256 of the pixels (or a digest already fed with them), labels and metadata."""
    if isinstance(images, Tensor):
        digest = hashlib.sha256()
        digest.update(images.numpy().tobytes())
    else:
        digest = images
    digest.update(labels.numpy().tobytes())
    for key in sorted(metadata):
        digest.update(key.encode())
        digest.update("\x1f".join(metadata[key]).encode())
    return digest.hexdigest()


def _finish(
    *,
    images: Images,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    metadata: Mapping[str, Sequence[str]],
    ids: Sequence[str],
    source: str,
    fmt: str,
    skipped: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
    digest: hashlib._Hash | None = None,
) -> ImageDataset:
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    meta = {k: tuple(str(v) for v in vals) for k, vals in metadata.items()}
    if digest is None and not isinstance(images, Tensor):
        raise TypeError("a streamed dataset needs the digest of its decoded images")
    return ImageDataset(
        images=images,
        labels=lab,
        class_names=class_names,
        metadata=meta,
        ids=tuple(ids),
        source=source,
        format=fmt,
        sha256=_dataset_hash(digest if digest is not None else images, lab, meta),  # type: ignore[arg-type]
        skipped=tuple(skipped),
        notes=tuple(notes),
    )


@dataclass
class _Decoded:
    """What one pass over the image files found: the images (unless streamed), and the hash."""

    images: Images
    kept: list[int]
    skipped: list[tuple[str, str]]
    digest: hashlib._Hash


def _decode_files(rows: list[tuple[Path, str, str]], o: LoadOptions) -> _Decoded:
    """Decode ``(path, shown_name, where)`` rows once: skip bad files, hash the pixels, and keep
    the images in memory unless streaming (``--stream on``, or ``auto`` past ``STREAM_BYTES``)."""
    images: list[Tensor] | None = [] if o.stream != "on" else None
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    chans: set[int] = set()
    sizes: set[tuple[int, int]] = set()
    digest = hashlib.sha256()
    held = 0
    for i, (path, shown, _where) in enumerate(o.track(rows, len(rows), "decoding images")):
        try:
            im = decode_image(path, mode=o.mode)
        except FileNotFoundError:
            skipped.append((shown, "file not found"))
            continue
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            reason = (
                "decompression bomb" if "decompression bomb" in str(exc).lower() else " ".join(str(exc).split())[:160]
            )
            skipped.append((shown, reason or type(exc).__name__))
            continue
        kept.append(i)
        chans.add(int(im.shape[0]))
        sizes.add((int(im.shape[1]), int(im.shape[2])))
        digest.update(f"{tuple(im.shape)}".encode())
        digest.update(im.numpy().tobytes())
        if images is not None:
            images.append(im)
            held += im.numel()
            if o.stream == "auto" and held > STREAM_BYTES:
                images = None  # too big to hold: decode batch by batch during the audit instead
    if rows and len(skipped) / len(rows) > o.max_bad_fraction:
        examples = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise DataError(
            f"{len(skipped)} of {len(rows)} image files could not be read (more than "
            f"{o.max_bad_fraction:.0%}); first: {examples}"
        )
    if not kept:
        raise DataError("no readable images in the dataset")
    c, hw = _target_shape(chans, sizes, o.image_size, o.channels)
    digest.update(f"channels={c};size={hw}".encode())
    out: Images = (
        torch.stack([_conform(im, hw, c) for im in images]).contiguous()
        if images is not None
        else FileImages([rows[i][0] for i in kept], mode=o.mode, shape=(c, *hw))
    )
    return _Decoded(out, kept, skipped, digest)


def load_dataset(
    source: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    max_bad_fraction: float = 0.05,
    track: Tracker[tuple[Path, str, str]] = _no_track,
    stream: str = "auto",
) -> ImageDataset:
    """Load ``source``: a folder (ImageFolder), a ``.csv`` manifest, an ``.npz`` or ``digits``.

    ``class_names``/``num_classes`` come from the model so labels are checked against it;
    ``image_size`` ``(H, W)`` and ``channels`` resize/convert images on load. ``stream``
    (``auto|on|off``) decides whether image files stay on disk and are decoded batch by batch
    (``auto``: when the decoded pixels pass ``STREAM_BYTES``); arrays are always in memory.
    """
    if channels not in (None, 1, 3):
        raise ConfigError(f"--channels must be 1 or 3, got {channels}")
    if stream not in STREAM_MODES:
        raise ConfigError(f"--stream must be one of {', '.join(STREAM_MODES)}, got {stream!r}")
    src = str(source)
    if src in ("digits", "digits:test", "digits:train"):
        split = digits_split(seed=0)["train" if src.endswith("train") else "test"]
        idx = _subset(len(split["y"]), limit, sample, seed)
        images = torch.from_numpy(split["x"][idx])
        if channels == 3 or (image_size is not None and tuple(image_size) != (DIGITS_SIZE, DIGITS_SIZE)):
            images = _stack(list(images), image_size, channels)
        labels, names = _map_labels(
            [str(v) for v in split["y"][idx]], class_names, num_classes, [f"digits[{i}]" for i in idx]
        )
        return _finish(
            images=images,
            labels=labels,
            class_names=names,
            metadata={"site": split["site"][idx].tolist()},
            ids=[f"digits/{i}" for i in idx],
            source=src,
            fmt="builtin",
            notes=(DIGITS_SITE_NOTE,),
        )
    path = Path(source)
    if not path.exists():
        raise DataError(f"dataset not found: {path} (give a folder, a .csv manifest, an .npz or 'digits')")
    options = LoadOptions(
        class_names=class_names,
        num_classes=num_classes,
        image_size=image_size,
        channels=channels,
        limit=limit,
        sample=sample,
        seed=seed,
        max_bad_fraction=max_bad_fraction,
        track=track,
        stream=stream,
    )
    if path.is_dir():
        return _load_image_folder(path, options)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_manifest(path, options)
    if suffix == ".npz":
        return _load_npz(path, options)
    raise DataError(f"cannot tell the format of {path}: expected a folder, a .csv manifest or an .npz")


def _load_image_folder(root: Path, o: LoadOptions) -> ImageDataset:
    from torchvision.datasets.folder import find_classes, make_dataset

    root = root.resolve()
    try:
        folders, folder_index = find_classes(str(root))
        entries = make_dataset(str(root), folder_index, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{root} is not an ImageFolder (one sub-folder per class): {exc}") from exc
    if not entries:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under the class folders of {root}")
    entries = [entries[i] for i in _subset(len(entries), o.limit, o.sample, o.seed)]
    rows = []
    for file, _ in entries:
        full = Path(file).resolve()
        shown = str(Path(file).relative_to(root))
        if not full.is_relative_to(root):
            raise DataError(f"{shown}: a symlink that points outside {root}; rejected")
        rows.append((full, shown, shown))
    found = _decode_files(rows, o)
    kept = found.kept
    raw = [folders[entries[i][1]] for i in kept]
    labels, names = _map_labels(raw, o.class_names or folders, o.num_classes, [rows[i][1] for i in kept])
    return _finish(
        images=found.images,
        labels=labels,
        class_names=names,
        metadata={},
        ids=[rows[i][1] for i in kept],
        source=str(root),
        fmt="imagefolder",
        skipped=found.skipped,
        digest=found.digest,
    )


def _load_manifest(path: Path, o: LoadOptions) -> ImageDataset:
    base = path.parent.resolve()
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read manifest {path}: {exc}") from exc
    missing = [c for c in ("path", "label") if c not in fields]
    if missing:
        raise DataError(f"manifest {path} lacks column(s) {missing}; it has {fields}. Required: path,label")
    if not records:
        raise DataError(f"manifest {path} has no rows")
    records = [records[i] for i in _subset(len(records), o.limit, o.sample, o.seed)]
    rows = []
    for n, rec in enumerate(records):
        where = f"{path.name} row {n + 2}"
        raw = (rec.get("path") or "").strip()
        rows.append((_resolve_in(base, raw, where), raw, where))
    found = _decode_files(rows, o)
    kept = found.kept
    raw_labels = [(records[i].get("label") or "").strip() for i in kept]
    labels, names = _map_labels(raw_labels, o.class_names, o.num_classes, [rows[i][2] for i in kept])
    meta_cols = [c for c in fields if c not in ("path", "label")]
    notes = _read_card(path)
    metadata = {c: [(records[i].get(c) or "").strip() for i in kept] for c in meta_cols}
    return _finish(
        images=found.images,
        labels=labels,
        class_names=names,
        metadata=metadata,
        ids=[rows[i][1] for i in kept],
        source=str(path),
        fmt="manifest",
        skipped=found.skipped,
        notes=notes,
        digest=found.digest,
    )


def card_path(manifest: Path) -> Path:
    """The optional dataset card beside a manifest: ``test.csv`` -> ``test.card.json``."""
    return manifest.with_suffix(".card.json")


def _read_card(manifest: Path) -> tuple[str, ...]:
    """Notes from the dataset card (``{"notes": ["..."]}``), shown in the report."""
    card = card_path(manifest)
    if not card.is_file():
        return ()
    try:
        doc = json.loads(card.read_text(encoding="utf-8"))
        notes = doc.get("notes", [])
        if not isinstance(notes, list):
            raise ValueError("'notes' must be a list of strings")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"cannot read dataset card {card}: {exc}") from exc
    return tuple(str(n) for n in notes)


def _load_npz(path: Path, o: LoadOptions) -> ImageDataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as .npz (pickled object arrays are not allowed): {exc}") from exc
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} must hold arrays 'x' (images) and 'y' (labels); it has {sorted(arrays)}")
    x, y = arrays.pop("x"), arrays.pop("y")
    if len(x) != len(y):
        raise DataError(f"{path}: x has {len(x)} images but y has {len(y)} labels")
    stored_names = arrays.pop("class_names", None)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = np.transpose(x, (0, 3, 1, 2))
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"{path}: x has shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if x.dtype != np.uint8:
        xf = x.astype(np.float32)
        if not np.isfinite(xf).all() or xf.min() < 0 or xf.max() > 1:
            raise DataError(f"{path}: float images must lie in [0, 1]; got range [{xf.min()}, {xf.max()}]")
        x = np.round(xf * 255).astype(np.uint8)
    idx = _subset(len(y), o.limit, o.sample, o.seed)
    images = torch.from_numpy(np.ascontiguousarray(x[idx]))
    if o.channels is not None or o.image_size is not None:
        images = _stack(list(images), o.image_size, o.channels)
    names_given = o.class_names or (tuple(str(s) for s in stored_names) if stored_names is not None else None)
    y_sel = y[idx]
    if names_given and np.issubdtype(y_sel.dtype, np.integer):
        raw = [names_given[int(v)] if 0 <= int(v) < len(names_given) else str(v) for v in y_sel]
    else:
        raw = [str(v) for v in y_sel]
    where = [f"{path.name}[{i}]" for i in idx]
    labels, names = _map_labels(raw, names_given, o.num_classes, where)
    metadata = {k: [str(v) for v in arr[idx]] for k, arr in arrays.items() if arr.ndim == 1 and len(arr) == len(y)}
    return _finish(
        images=images,
        labels=labels,
        class_names=names,
        metadata=metadata,
        ids=[f"{path.name}[{i}]" for i in idx],
        source=str(path),
        fmt="npz",
    )
