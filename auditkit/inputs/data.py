"""Load any image dataset into one in-memory form: uint8 images, labels, metadata columns.

Sources: an ImageFolder directory, a CSV manifest (``path,label`` + metadata columns),
an ``.npz`` (``x``, ``y`` + optional per-sample arrays) and the builtin ``digits``.
Bad image files are reported by path and skipped; past ``max_bad_fraction`` the load fails.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

from auditkit.exceptions import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import Tensor
    from torchvision.transforms.v2 import functional as TF
else:
    from auditkit._lazy import lazy

    np = lazy("numpy")
    torch = lazy("torch")
    Image = lazy("PIL.Image")
    TF = lazy("torchvision.transforms.v2.functional")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DIGITS_SIZE = 28
STREAM_MODES: tuple[str, ...] = ("auto", "on", "off")
STREAM_BYTES = 1 << 30  # --stream auto: image files past 1 GiB of decoded pixels stay on disk
DIGITS_LOW_CONTRAST_SITE = "B"
DIGITS_SITE_NOTE = (
    "'site' is a synthetic attribute made up for the demo: site B images were made low-contrast "
    "(grey background, faint strokes) and are rare in training (4%) but common in test (30%)."
)

SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing", "t10k", "dev"})
RESIZE_INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest")
IDX_PATTERN = re.compile(r"^(?P<split>.+?)-(?P<kind>images|labels)[-.](?P<idx>idx[13])-ubyte(?:\.gz)?$")
TORCHVISION_DATASETS: tuple[str, ...] = ("MNIST", "FashionMNIST", "KMNIST")
PICKLED_DATASETS: tuple[str, ...] = ("CIFAR10", "CIFAR100")

T = TypeVar("T")
Tracker = Callable[[Iterable[T], int, str], Iterator[T]]


@dataclass(frozen=True)
class Preprocess:
    """How each decoded image becomes the model's input size (before any normalisation).

    The default is a plain resize to ``size`` ``(H, W)``. ``resize`` + ``crop`` is the standard
    evaluation pipeline: resize the shorter side to ``resize``, then centre-crop ``(H, W)``.
    """

    size: tuple[int, int] | None = None
    resize: int | None = None
    crop: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.interpolation not in RESIZE_INTERPOLATIONS:
            raise ConfigError(
                f"--resize-interpolation must be one of {', '.join(RESIZE_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.resize is not None and self.crop is None:
            raise ConfigError("--resize S needs --crop H W (resize the shorter side, then centre-crop)")
        if self.resize is not None and self.resize < 1:
            raise ConfigError(f"--resize must be a positive number of pixels, got {self.resize}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise ConfigError(f"--crop must be two positive integers H W, got {self.crop}")

    @property
    def output_size(self) -> tuple[int, int] | None:
        """The ``(H, W)`` every image ends at, if fixed by the settings."""
        return tuple(self.crop) if self.crop is not None else self.size  # type: ignore[return-value]

    def apply(self, im: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """``im`` ``(C, H, W)`` uint8 -> ``(C, H', W')`` uint8; ``size`` replaces a missing ``self.size``."""
        # torchvision's v1 kernels: bit-identical to the weights enums' eval transforms on tensors
        from torchvision.transforms import functional as F1

        mode = TF.InterpolationMode(self.interpolation)
        if self.resize is not None:
            im = F1.resize(im, [self.resize], interpolation=mode, antialias=self.antialias)
        if self.crop is not None:
            return F1.center_crop(im, list(self.crop))
        target = self.size or size
        if target is not None and tuple(im.shape[-2:]) != tuple(target):
            im = F1.resize(im, list(target), interpolation=mode, antialias=self.antialias)
        return im

    def describe(self) -> str:
        if self.crop is not None:
            head = f"resize shorter side to {self.resize}, " if self.resize else ""
            return f"{head}centre-crop {self.crop[0]}x{self.crop[1]} ({self.interpolation}, antialias={self.antialias})"
        if self.size is not None:
            return f"resize to {self.size[0]}x{self.size[1]} ({self.interpolation}, antialias={self.antialias})"
        return "none (images used at their own size)"


class FileImages:
    """Images decoded from their files when indexed, so a dataset never has to fit in memory.

    Indexing with an int, a slice, a list or an index tensor returns ``(B, C, H, W)`` uint8
    (an int: ``(C, H, W)``); :meth:`subset` is a lazy selection. Every image is converted to
    ``channels`` and resized to ``(H, W)`` exactly as the in-memory loaders do.
    """

    def __init__(
        self, paths: Sequence[Path], *, mode: str | None, shape: tuple[int, int, int], preprocess: Preprocess
    ) -> None:
        self.paths = tuple(paths)
        self.mode = mode
        self.image_shape = shape
        self.preprocess = preprocess

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.paths), *self.image_shape))

    def __len__(self) -> int:
        return len(self.paths)

    def _one(self, i: int) -> Tensor:
        c, h, w = self.image_shape
        try:
            return _conform(decode_image(self.paths[i], mode=self.mode), (h, w), c, self.preprocess)
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{self.paths[i]}: could not be read during the audit ({exc}); was it changed?") from exc

    def _indices(self, key: int | slice | Sequence[int] | Tensor) -> list[int]:
        if isinstance(key, slice):
            return list(range(len(self.paths)))[key]
        if isinstance(key, torch.Tensor):
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
        return FileImages(
            [self.paths[i] for i in self._indices(key)],
            mode=self.mode,
            shape=self.image_shape,
            preprocess=self.preprocess,
        )

    def numpy(self) -> np.ndarray:
        """Every image decoded: ``(N, C, H, W)`` uint8 (this loads the whole dataset)."""
        return self[:].numpy()


Images = Union["Tensor", FileImages]  # torch only for type checkers


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset: pixels in memory, or decoded from files batch by batch.

    ``images``: ``(N, C, H, W)`` uint8, a tensor or a :class:`FileImages` (``--stream``);
    ``labels``: ``(N,)`` int64 class indices into ``class_names``; ``metadata`` maps a column
    name to ``N`` string values; ``ids`` name each sample (relative path or index) for reports.
    ``class_source`` says where the class order came from (see :data:`CLASS_SOURCES`).
    ``masks``: ``(N, 1, H, W)`` bool foreground masks (True = object) from a manifest's ``mask``
    column or :func:`with_masks`, or ``None``; an image without a mask has an all-False one.
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
    class_source: str = "label indices"
    masks: Tensor | None = None

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
            masks=self.masks[idx] if self.masks is not None else None,
        )


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """What every loader needs besides the path (see :func:`load_dataset`)."""

    class_names: Sequence[str] | None
    class_source: str
    num_classes: int | None
    preprocess: Preprocess
    channels: int | None
    limit: int | None
    sample: int | None
    seed: int
    max_bad_fraction: float
    track: Tracker[tuple[Path, str, str]]
    stream: str = "auto"
    split: str | None = None

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


_HIGH_DEPTH_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_GREY_MODES = ("1", "L", "LA", "La", *_HIGH_DEPTH_GREY_MODES)


def _declares_16_bit(img: Image.Image) -> bool:
    """Whether a mode ``I`` image comes from a file that declares unsigned samples of at most 16 bits."""
    if img.format in ("PNG", "PPM"):
        # Pillow opens a PNG as mode I only for 16-bit greyscale, and a PGM only when maxval > 255
        # (which it rescales to 0..65535)
        return True
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", {})
        bits, sample_format = tags.get(258, ()), tags.get(339, 1)
        bits = tuple(bits) if isinstance(bits, (tuple, list)) else (bits,)
        sample_format = tuple(sample_format) if isinstance(sample_format, (tuple, list)) else (sample_format,)
        return bits == (16,) and all(s == 1 for s in sample_format)
    return False


def _to_8_bit_grey(img: Image.Image, path: Path | str) -> Image.Image:
    """A 16-bit (``I;16*``, ``I``) or float (``F``) grey image as an 8-bit ``L`` image, or ``DataError``."""
    a = np.asarray(img)
    if img.mode == "F":
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            finite = a[np.isfinite(a)]
            span = f"[{finite.min():g}, {finite.max():g}]" if finite.size else "no finite values"
            nan = "" if finite.size == a.size else " and NaN/inf"
            raise DataError(
                f"{path}: mode F (32-bit float) pixels span {span}{nan}, not [0, 1]; their 8-bit scale is "
                "ambiguous, so the image is refused (save it as 8- or 16-bit PNG, or as float in [0, 1])"
            )
        # as scikit-image's img_as_ubyte: multiply by 255 in float32 and round half to even
        return Image.fromarray(np.rint(np.multiply(a, 255, dtype=np.float32)).astype(np.uint8))
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if img.mode == "I" and (lo < 0 or hi > 65535 or not _declares_16_bit(img)):
        raise DataError(
            f"{path}: mode I (32-bit integer) pixels span [{lo}, {hi}] in a {img.format or 'unknown-format'} file "
            "that does not declare unsigned 16-bit samples; their 8-bit scale is ambiguous, so the image is "
            "refused (save it as 8- or 16-bit PNG)"
        )
    # 16 bit -> 8 bit keeps the high byte (v >> 8 == v // 256), as scikit-image's img_as_ubyte does for
    # uint16, libpng's png_set_strip_16, and Pillow itself for 16-bit RGB(A) PNGs
    return Image.fromarray((a.astype(np.uint32) >> 8).astype(np.uint8))


def decode_image(path: Path, *, mode: str | None) -> Tensor:
    """Decode one image file to ``(C, H, W)`` uint8; ``mode`` is ``"L"``, ``"RGB"`` or ``None``.

    ``mode`` forces the output; ``None`` keeps grey images grey (``C=1``: Pillow modes 1, L, LA,
    I, I;16*, F, and 16-bit grey+alpha PNGs, which Pillow opens as RGBA) and makes every other
    mode RGB (``C=3``: P, PA, RGB, RGBA, CMYK, YCbCr, LAB, HSV, via Pillow's own conversion).
    Alpha (LA, RGBA, PA, P with transparency) is dropped, not composited, as Pillow's ``convert``
    does. High-depth grey pixels are brought to 8 bits as follows, and refused (``DataError``
    naming the file, mode and value range) when that scale is ambiguous:

    * 16-bit (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, and mode ``I`` from a file that declares
      unsigned 16-bit samples: every mode-I PNG, since Pillow opens 16-bit greyscale PNGs as I;16
      or I depending on version; a 16-bit PGM; a TIFF with BitsPerSample 16, unsigned) keep the
      high byte, ``v >> 8``: scikit-image's ``img_as_ubyte`` for uint16, and what Pillow already
      does for 16-bit RGB PNGs. (Unlike ``img_as_ubyte``, an image whose values are all below 256
      is scaled too: the file's bit depth, not its content, decides.)
    * Other mode ``I`` (32-bit or signed integer TIFFs, other formats) is refused, whatever the
      values: 8-bit data in 32-bit samples cannot be told from dark 16-bit data.
    * ``F`` (32-bit float, e.g. a float TIFF) in ``[0, 1]`` becomes ``rint(255 * v)`` as
      ``img_as_ubyte`` computes it; values outside ``[0, 1]``, NaN or inf are refused.

    Pillow's decompression-bomb warning is escalated to an error.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # palette transparency given as bytes: Pillow warns that convert("RGB") drops it, as documented
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        with Image.open(path) as img:
            png = getattr(img, "png", None)  # the PNG header, gone after load()
            grey_alpha_16 = png is not None and getattr(png, "im_rawmode", None) == "LA;16B"
            img.load()
            return pil_pixels(img, mode=mode, where=path, grey_alpha_16=grey_alpha_16)


def pil_pixels(img: Image.Image, *, mode: str | None, where: Path | str, grey_alpha_16: bool = False) -> Tensor:
    """A loaded Pillow image as ``(C, H, W)`` uint8, converted as :func:`decode_image` describes
    (``where`` names it in errors; ``grey_alpha_16``: a 16-bit grey+alpha PNG that Pillow opened as RGBA)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        grey = img.mode in _GREY_MODES or grey_alpha_16
        img8 = _to_8_bit_grey(img, where) if img.mode in _HIGH_DEPTH_GREY_MODES else img
        return TF.pil_to_tensor(img8.convert(mode or ("L" if grey else "RGB")))


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


MASK_COLUMN = "mask"


def with_masks(data: ImageDataset, masks: Tensor) -> ImageDataset:
    """``data`` with foreground ``masks`` ``(N, 1, H, W)`` (or ``(N, H, W)``; non-zero = object) attached."""
    m = torch.as_tensor(masks)
    if m.ndim == 3:
        m = m[:, None]
    _, _, h, w = data.images.shape
    if m.ndim != 4 or m.shape[0] != len(data) or m.shape[1] != 1 or tuple(m.shape[-2:]) != (h, w):
        raise DataError(f"masks must have shape ({len(data)}, 1, {h}, {w}), one per image; got {tuple(m.shape)}")
    return dataclasses.replace(data, masks=(m != 0).contiguous())


def _load_masks(
    raws: Sequence[str], images: Sequence[Path], base: Path, wheres: Sequence[str], hw: tuple[int, int], o: LoadOptions
) -> Tensor:
    """The ``mask`` column's PNGs as ``(N, 1, H, W)`` bool (non-zero = foreground; empty cell = no mask).

    Paths are resolved and confined like image paths; each mask must have its image file's size and
    goes through the same resize/crop (nearest neighbour)."""
    conform = dataclasses.replace(o.preprocess, interpolation="nearest", antialias=False)
    out = torch.zeros((len(raws), 1, *hw), dtype=torch.bool)
    for i, (raw, image, where) in enumerate(zip(raws, images, wheres, strict=True)):
        if not raw:
            continue
        path = _resolve_in(base, raw, where)
        if not path.is_file():
            raise DataError(f"{where}: mask file {raw!r} not found")
        try:
            m = decode_image(path, mode="L")
            with Image.open(image) as img:
                size = (img.height, img.width)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{where}: cannot read mask {raw!r}: {' '.join(str(exc).split())[:160]}") from exc
        if tuple(m.shape[-2:]) != size:
            raise DataError(
                f"{where}: mask {raw!r} is {m.shape[-1]}x{m.shape[-2]} px but its image is {size[1]}x{size[0]}; "
                "a mask must have its image's size"
            )
        out[i] = conform.apply((m != 0).to(torch.uint8) * 255, hw) > 127
    return out


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


def _is_int(label: str) -> bool:
    return label.lstrip("-").isdigit()


def _map_labels(
    raw: Sequence[str],
    o: LoadOptions,
    where: Sequence[str],
    *,
    fallback: tuple[Sequence[str], str] | None = None,
) -> tuple[np.ndarray, tuple[str, ...], str]:
    """Turn every label string of the *whole* dataset into a class index (the class contract).

    The class order comes from one source: the names ``o.class_names`` (``--class-names``, the
    model spec or a weights preset; ``o.class_source`` says which), else ``fallback`` (folder
    names, a dataset's declared classes), else integer labels as indices, else the sorted string
    labels, which is allowed only when they are exactly as many as the model's outputs.
    Returns the indices, the class names and where their order came from.
    """
    if o.class_names:
        return _map_by_names(raw, tuple(o.class_names), o.class_source, o.num_classes, where)
    if fallback is not None:
        names, source = tuple(fallback[0]), fallback[1]
        _check_count(names, o.num_classes, source)
        return _map_by_names(raw, names, source, o.num_classes, where)
    if raw and all(_is_int(s) for s in raw):
        ints = np.array([int(s) for s in raw], dtype=np.int64)
        k = o.num_classes if o.num_classes is not None else int(ints.max()) + 1
        bad = np.flatnonzero((ints < 0) | (ints >= k))
        if bad.size:
            raise DataError(f"{where[bad[0]]}: label {ints[bad[0]]} is not a class index in [0, {k})")
        return ints, tuple(str(i) for i in range(k)), "label indices"
    names = tuple(sorted(set(raw)))
    source = INFERRED_SOURCE
    _check_count(names, o.num_classes, source)
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup[s] for s in raw], dtype=np.int64), names, source


INFERRED_SOURCE = "inferred: the data's label names, sorted"


def _check_count(names: Sequence[str], num_classes: int | None, source: str) -> None:
    """Class names taken from the data must be exactly as many as the model's outputs."""
    if num_classes is None or len(names) == num_classes:
        return
    shown = list(names)[:12]
    if len(names) < num_classes:
        raise ConfigError(
            f"the data has {len(names)} classes {shown} ({source}) but the model has {num_classes} outputs, so their "
            "order cannot be known; pass --class-names (a comma list or a file, one name per line, in output order)"
        )
    raise DataError(f"the data has {len(names)} classes {shown} ({source}) but the model has {num_classes} outputs")


def _map_by_names(
    raw: Sequence[str], names: tuple[str, ...], source: str, num_classes: int | None, where: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...], str]:
    """Labels that are class names map by name; integer labels that are not names are indices."""
    if num_classes is not None and len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names ({source}) but the model has {num_classes} outputs")
    lookup = {name: i for i, name in enumerate(names)}
    if all(s in lookup for s in raw):
        ints_disagree = [s for s in dict.fromkeys(raw) if _is_int(s) and lookup[s] != int(s)]
        if ints_disagree:
            s0 = ints_disagree[0]
            raise ConfigError(
                f"label {s0!r} is both the class name at index {lookup[s0]} and the index {s0} ({source}); "
                "write labels as class names or as indices that agree with the names"
            )
        return np.array([lookup[s] for s in raw], dtype=np.int64), names, source
    if raw and all(_is_int(s) for s in raw):
        ints = np.array([int(s) for s in raw], dtype=np.int64)
        bad = np.flatnonzero((ints < 0) | (ints >= len(names)))
        if bad.size:
            raise DataError(f"{where[bad[0]]}: label {ints[bad[0]]} is not a class index in [0, {len(names)})")
        return ints, names, source
    i = next(i for i, s in enumerate(raw) if s not in lookup)
    raise DataError(f"{where[i]}: label {raw[i]!r} is not among the classes {list(names)[:20]} ({source})")


def _conform(im: Tensor, size: tuple[int, int] | None, c: int, preprocess: Preprocess) -> Tensor:
    """One ``(C, H, W)`` uint8 image converted to ``c`` channels and brought to ``size`` by ``preprocess``."""
    if im.shape[0] != c:
        im = im.expand(3, -1, -1) if im.shape[0] == 1 else TF.rgb_to_grayscale(im)
    return preprocess.apply(im, size)


def _target_shape(
    chans: set[int], sizes: set[tuple[int, int]], preprocess: Preprocess, channels: int | None
) -> tuple[int, tuple[int, int]]:
    """The channels and ``(H, W)`` every image is brought to; several sizes need a target size."""
    size = preprocess.output_size
    if size is None and len(sizes) > 1:
        raise DataError(
            f"images have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}); pass --input-size H W to resize "
            "them, or --resize S --crop H W for the standard resize-then-centre-crop"
        )
    c = channels or (3 if 3 in chans else 1)
    return c, (tuple(size) if size is not None else next(iter(sizes)))  # type: ignore[return-value]


def _stack(images: list[Tensor], preprocess: Preprocess, channels: int | None) -> Tensor:
    sizes = {(int(im.shape[-2]), int(im.shape[-1])) for im in images}
    c, hw = _target_shape({int(im.shape[0]) for im in images}, sizes, preprocess, channels)
    return torch.stack([_conform(im, hw, c, preprocess) for im in images]).contiguous()


def _dataset_hash(images: Tensor | hashlib._Hash, labels: Tensor, metadata: Mapping[str, Sequence[str]]) -> str:
    """SHA-256 of the pixels (or a digest already fed with them), labels and metadata."""
    if isinstance(images, torch.Tensor):
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
    class_source: str = "label indices",
) -> ImageDataset:
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    meta = {k: tuple(str(v) for v in vals) for k, vals in metadata.items()}
    if digest is None and not isinstance(images, torch.Tensor):
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
        class_source=class_source,
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
        except DataError as exc:  # an ambiguous pixel scale (see decode_image): refused, listed as skipped
            skipped.append((shown, str(exc).removeprefix(f"{path}: ")))
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
    c, hw = _target_shape(chans, sizes, o.preprocess, o.channels)
    # the plain resize hashes as before this setting existed, so older baselines stay comparable
    plain = o.preprocess.crop is None and o.preprocess.interpolation == "bilinear" and o.preprocess.antialias
    digest.update(f"channels={c};size={hw}{'' if plain else f';preprocess={o.preprocess!r}'}".encode())
    out: Images = (
        torch.stack([_conform(im, hw, c, o.preprocess) for im in images]).contiguous()
        if images is not None
        else FileImages([rows[i][0] for i in kept], mode=o.mode, shape=(c, *hw), preprocess=o.preprocess)
    )
    return _Decoded(out, kept, skipped, digest)


def load_dataset(
    source: str | Path | InMemoryData,
    *,
    class_names: Sequence[str] | None = None,
    class_source: str = "--class-names",
    num_classes: int | None = None,
    image_size: tuple[int, int] | None = None,
    preprocess: Preprocess | None = None,
    channels: int | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    max_bad_fraction: float = 0.05,
    track: Tracker[tuple[Path, str, str]] = _no_track,
    stream: str = "auto",
    split: str | None = None,
) -> ImageDataset:
    """Load ``source``: a folder (ImageFolder, or MNIST-style IDX files), a ``.csv`` manifest,
    an ``.npz``, ``torchvision:<Dataset>:<root>`` or ``digits``; or data held in memory
    (:data:`InMemoryData`, the Python API), held to the same options as an ``.npz``.

    ``class_names`` (from ``class_source``) and ``num_classes`` come from the model, so labels are
    checked against it; labels are mapped over the whole dataset before ``limit``/``sample``.
    ``preprocess`` (or a plain resize to ``image_size`` ``(H, W)``) and ``channels`` bring
    images to the model's input on load. ``stream`` (``auto|on|off``) decides whether image
    files stay on disk and are decoded batch by batch (``auto``: when the decoded pixels pass
    ``STREAM_BYTES``); arrays are always in memory. ``split`` picks an IDX or torchvision split.
    """
    if channels not in (None, 1, 3):
        raise ConfigError(f"--channels must be 1 or 3, got {channels}")
    if stream not in STREAM_MODES:
        raise ConfigError(f"--stream must be one of {', '.join(STREAM_MODES)}, got {stream!r}")
    options = LoadOptions(
        class_names=tuple(class_names) if class_names else None,
        class_source=class_source,
        num_classes=num_classes,
        preprocess=preprocess if preprocess is not None else Preprocess(size=image_size),
        channels=channels,
        limit=limit,
        sample=sample,
        seed=seed,
        max_bad_fraction=max_bad_fraction,
        track=track,
        stream=stream,
        split=split,
    )
    if not isinstance(source, (str, Path)):
        return load_in_memory(source, options)
    src = str(source)
    if src in ("digits", "digits:test", "digits:train"):
        split_arrays = digits_split(seed=0)["train" if src.endswith("train") else "test"]
        return _from_arrays(
            split_arrays["x"],
            split_arrays["y"],
            {"site": split_arrays["site"]},
            options,
            source=src,
            fmt="builtin",
            ids=[f"digits/{i}" for i in range(len(split_arrays["y"]))],
            notes=(DIGITS_SITE_NOTE,),
        )
    if src.startswith("torchvision:"):
        return _load_torchvision(src, options)
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"dataset not found: {path} (give a folder, a .csv manifest, an .npz, torchvision:<Dataset>:<root> "
            "or 'digits')"
        )
    if path.is_dir():
        if idx_splits(path):
            return _load_idx(path, options)
        return _load_image_folder(path, options)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_manifest(path, options)
    if suffix == ".npz":
        return _load_npz(path, options)
    raise DataError(f"cannot tell the format of {path}: expected a folder, a .csv manifest or an .npz")


def _from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    o: LoadOptions,
    *,
    source: str,
    fmt: str,
    ids: Sequence[str],
    notes: Sequence[str] = (),
    names: Sequence[str] | None = None,
    fallback: tuple[Sequence[str], str] | None = None,
) -> ImageDataset:
    """An in-memory dataset from ``x`` ``(N, C, H, W)`` uint8 and labels ``y`` ``(N,)``.

    Labels are mapped over all ``N`` samples first (integer labels become names from ``names``
    when given); ``limit``/``sample`` pick the samples after that.
    """
    if len(y) == 0:
        raise DataError(f"{source} holds no samples (x and y are empty)")
    if names is not None and np.issubdtype(y.dtype, np.integer):
        raw = [names[int(v)] if 0 <= int(v) < len(names) else str(v) for v in y]
    else:
        raw = [str(v) for v in y]
    labels, class_names, class_source = _map_labels(raw, o, ids, fallback=fallback)
    idx = _subset(len(labels), o.limit, o.sample, o.seed)
    images = torch.from_numpy(np.ascontiguousarray(x[idx]))
    fixed = o.preprocess.output_size
    if o.channels not in (None, images.shape[1]) or (fixed is not None and tuple(images.shape[-2:]) != fixed):
        images = _stack(list(images), o.preprocess, o.channels)
    picked = idx.tolist()
    metadata = {k: [str(v) for v in arr[idx]] for k, arr in arrays.items() if arr.ndim == 1 and len(arr) == len(y)}
    return _finish(
        images=images,
        labels=labels[idx],
        class_names=class_names,
        metadata=metadata,
        ids=[ids[i] for i in picked],
        source=source,
        fmt=fmt,
        notes=notes,
        class_source=class_source,
    )


def idx_splits(folder: Path) -> dict[str, tuple[Path, Path]]:
    """The MNIST-style IDX splits in ``folder``: ``{"train": (images, labels), "test": ...}``.

    Files are ``<split>-images-idx3-ubyte[.gz]`` and ``<split>-labels-idx1-ubyte[.gz]``
    (``t10k`` is called ``test``); a split needs both.
    """
    found: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.iterdir()):
        m = IDX_PATTERN.match(f.name)
        if m and f.is_file():
            split = "test" if m["split"] == "t10k" else m["split"]
            found.setdefault(split, {})[m["kind"]] = f
    return {k: (v["images"], v["labels"]) for k, v in found.items() if set(v) == {"images", "labels"}}


IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array of its declared shape and type."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header declares shape {dims} ({expected} bytes) but the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _pick_split(available: Sequence[str], split: str | None, where: str) -> str:
    if split is None:
        if len(available) == 1:
            return available[0]
        raise ConfigError(f"{where} holds the splits {', '.join(available)}; choose one with --split")
    if split not in available:
        raise ConfigError(f"--split {split!r} is not in {where}; it holds {', '.join(available)}")
    return split


def _load_idx(folder: Path, o: LoadOptions) -> ImageDataset:
    splits = idx_splits(folder)
    split = _pick_split(sorted(splits), o.split, str(folder))
    images_file, labels_file = splits[split]
    x, y = read_idx(images_file), read_idx(labels_file)
    if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"{folder}: expected uint8 images (N, H, W) and labels (N,); got {x.shape} {x.dtype} and {y.shape}"
        )
    return _from_arrays(
        x[:, None],
        y.astype(np.int64),
        {},
        o,
        source=f"{folder.resolve()} (split {split})",
        fmt="idx",
        ids=[f"{split}[{i}]" for i in range(len(y))],
    )


def _load_torchvision(src: str, o: LoadOptions) -> ImageDataset:
    """``torchvision:<Dataset>:<root>``: a torchvision dataset class read from ``root``, never downloaded."""
    _, _, rest = src.partition(":")
    name, sep, root = rest.partition(":")
    if name in PICKLED_DATASETS:
        raise DataError(
            f"torchvision's {name} layout is a Python pickle, which can run code when read; auditkit does not read "
            "it. Convert it to an ImageFolder or an .npz (x, y) in a process you trust"
        )
    if name not in TORCHVISION_DATASETS or not sep or not root:
        raise ConfigError(
            f"give a torchvision dataset as torchvision:<Dataset>:<root> with Dataset one of "
            f"{', '.join(TORCHVISION_DATASETS)}, got {src!r}"
        )
    import torchvision.datasets

    split = _pick_split(["test", "train"], o.split, src)
    cls = getattr(torchvision.datasets, name)
    try:
        ds = cls(root, train=split == "train", download=False)
    except RuntimeError as exc:
        raise DataError(f"cannot read {name} under {root} (download is off): {exc}") from exc
    x = ds.data.numpy()[:, None]
    y = ds.targets.numpy().astype(np.int64)
    return _from_arrays(
        x,
        y,
        {},
        o,
        source=f"{src} (split {split})",
        fmt="torchvision",
        ids=[f"{split}[{i}]" for i in range(len(y))],
        fallback=None if o.class_names else (tuple(ds.classes), f"torchvision {name}.classes"),
    )


def _looks_like_splits(folders: Sequence[str]) -> bool:
    return bool(folders) and all(f.lower() in SPLIT_FOLDER_NAMES for f in folders)


def _load_image_folder(root: Path, o: LoadOptions) -> ImageDataset:
    from torchvision.datasets.folder import find_classes, make_dataset

    root = root.resolve()
    try:
        folders, folder_index = find_classes(str(root))
        entries = make_dataset(str(root), folder_index, extensions=IMAGE_EXTENSIONS, allow_empty=True)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"{root} is not an ImageFolder (one sub-folder per class): {exc}") from exc
    if _looks_like_splits(folders):
        pick = next((f for f in folders if f.lower() in ("test", "testing", "val", "valid", "validation")), folders[0])
        raise ConfigError(
            f"{root} holds split folders ({', '.join(folders)}), not class folders; give one split, e.g. {root / pick}"
        )
    if not entries:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under the class folders of {root}")
    labels_all, names, source = _map_labels(
        [folders[c] for _, c in entries],
        o,
        [str(Path(f).relative_to(root)) for f, _ in entries],
        fallback=None if o.class_names else (folders, "folder names, sorted (torchvision ImageFolder)"),
    )
    picked = _subset(len(entries), o.limit, o.sample, o.seed)
    entries = [entries[i] for i in picked]
    rows = []
    for file, _ in entries:
        full = Path(file).resolve()
        shown = str(Path(file).relative_to(root))
        if not full.is_relative_to(root):
            raise DataError(f"{shown}: a symlink that points outside {root}; rejected")
        rows.append((full, shown, shown))
    found = _decode_files(rows, o)
    kept = found.kept
    return _finish(
        images=found.images,
        labels=labels_all[picked][kept],
        class_names=names,
        metadata={},
        ids=[rows[i][1] for i in kept],
        source=str(root),
        fmt="imagefolder",
        skipped=found.skipped,
        digest=found.digest,
        class_source=source,
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
    if not fields:
        raise DataError(f"manifest {path} is empty; it needs a header line path,label[,...] and one row per image")
    missing = [c for c in ("path", "label") if c not in fields]
    if missing:
        raise DataError(f"manifest {path} lacks column(s) {missing}; it has {fields}. Required: path,label")
    if not records:
        raise DataError(f"manifest {path} has no rows")
    for n, rec in enumerate(records):
        if any(v is None for v in rec.values()):
            given = sum(v is not None for v in rec.values())
            raise DataError(
                f"{path.name} row {n + 2} has {given} of the header's {len(fields)} columns; is the file truncated?"
            )
        if not (rec.get("label") or "").strip():
            raise DataError(f"{path.name} row {n + 2} has an empty label; every image needs one")
    labels_all, names, source = _map_labels(
        [(r.get("label") or "").strip() for r in records],
        o,
        [f"{path.name} row {n + 2}" for n in range(len(records))],
    )
    picked = _subset(len(records), o.limit, o.sample, o.seed)
    records = [records[i] for i in picked]
    rows = []
    for n, rec in zip(picked.tolist(), records, strict=True):
        where = f"{path.name} row {n + 2}"
        raw = (rec.get("path") or "").strip()
        rows.append((_resolve_in(base, raw, where), raw, where))
    found = _decode_files(rows, o)
    kept = found.kept
    meta_cols = [c for c in fields if c not in ("path", "label")]
    notes = _read_card(path)
    metadata = {c: [(records[i].get(c) or "").strip() for i in kept] for c in meta_cols}
    masks = None
    if MASK_COLUMN in fields:
        hw = (int(found.images.shape[-2]), int(found.images.shape[-1]))
        masks = _load_masks(metadata[MASK_COLUMN], [rows[i][0] for i in kept], base, [rows[i][2] for i in kept], hw, o)
        found.digest.update(b"masks" + masks.numpy().tobytes())
    dataset = _finish(
        images=found.images,
        labels=labels_all[picked][kept],
        class_names=names,
        metadata=metadata,
        ids=[rows[i][1] for i in kept],
        source=str(path),
        fmt="manifest",
        skipped=found.skipped,
        notes=notes,
        digest=found.digest,
        class_source=source,
    )
    return dataclasses.replace(dataset, masks=masks) if masks is not None else dataset


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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (a zip of ``.npy`` files), never unpickling anything."""
    what = "expected an .npz archive (numpy.savez) with arrays x (images) and y (labels)"
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not head:
        raise DataError(f"{path} is empty; {what}")
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(f"{path} is not an .npz (zip) archive; {what}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{path} holds pickled object arrays, which can run code when read; auditkit does not read them: "
                "save x and y as plain numeric arrays"
            ) from exc
        raise DataError(f"cannot read {path} as .npz (damaged or truncated?): {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # a damaged archive: BadZipFile, EOFError, zlib.error, a garbled .npy header, ...
        raise DataError(f"cannot read {path} as .npz (damaged or truncated?): {type(exc).__name__}: {exc}") from exc


def _load_npz(path: Path, o: LoadOptions) -> ImageDataset:
    arrays = _read_npz(path)
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} must hold arrays 'x' (images) and 'y' (labels); it has {sorted(arrays)}")
    x, y = arrays.pop("x"), arrays.pop("y")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: x must be numbers (uint8, or float in [0, 1]); it holds dtype {x.dtype}")
    if x.ndim not in (3, 4):
        raise DataError(f"{path}: x has shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if y.ndim != 1:
        raise DataError(f"{path}: y must be one label per image, shape (N,); it has shape {y.shape}")
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
    names = tuple(str(v) for v in stored_names) if stored_names is not None else None
    return _from_arrays(
        x,
        y,
        arrays,
        o,
        source=str(path),
        fmt="npz",
        ids=[f"{path.name}[{i}]" for i in range(len(y))],
        names=None if o.class_names else names,
        fallback=None if o.class_names or names is None else (names, f"the class_names array in {path.name}"),
    )


#: data the Python API takes besides a path: ``(x, y)`` or ``(x, y, metadata)`` arrays, a torch
#: ``Dataset`` of ``(image, label)`` items, or a ``DataLoader`` of ``(images, labels)`` batches
InMemoryData = Union[tuple[Any, ...], "torch.utils.data.Dataset[Any]", "torch.utils.data.DataLoader[Any]"]
IN_MEMORY_FORMS = (
    "a dataset path or 'digits', an (x, y) or (x, y, metadata) tuple of tensors, a torch Dataset of "
    "(image, label) items or a DataLoader of (images, labels) batches"
)


def describe_in_memory(source: object) -> str:
    """What the run manifest calls in-memory ``source``; a :class:`ConfigError` for anything else."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(source, tuple) and len(source) in (2, 3):
        return "in-memory (x, y, metadata)" if len(source) == 3 else "in-memory (x, y)"
    if isinstance(source, DataLoader):
        return f"in-memory DataLoader over {type(source.dataset).__name__}"
    if isinstance(source, Dataset):
        return f"in-memory {type(source).__name__}"
    shape = f" of {len(source)} items" if isinstance(source, (tuple, list)) else ""
    raise ConfigError(f"data must be {IN_MEMORY_FORMS}; got a {type(source).__name__}{shape}")


def load_in_memory(source: InMemoryData, o: LoadOptions) -> ImageDataset:
    """Data held in memory as an :class:`ImageDataset`, through the ``.npz`` loader's path: images in
    ``[0, 1]`` (float) or ``0..255`` (uint8) are stored as 8-bit pixels like every other source, labels are
    class indices (or names), metadata columns hold one value per image."""
    from torch.utils.data import DataLoader

    name = describe_in_memory(source)
    if isinstance(source, tuple):
        x = _pixels(source[0], "x")
        y = _labels(source[1], len(x), "y")
        meta = _columns(source[2], len(x)) if len(source) == 3 else {}
        ids = [f"x[{i}]" for i in range(len(x))]
        fmt = "tensors"
    else:
        fmt = "dataloader" if isinstance(source, DataLoader) else "dataset"
        images, y, meta = _collect(source, fmt, o.mode)
        x = _stack(images, o.preprocess, o.channels) if images else torch.empty((0, 1, 1, 1), dtype=torch.uint8)
        ids = [f"{fmt}[{i}]" for i in range(len(y))]
    return _from_arrays(x.numpy(), y, meta, o, source=name, fmt=fmt, ids=ids)


def _pixels(x: object, what: str) -> Tensor:
    """``(N, C, H, W)`` images, float in ``[0, 1]`` or uint8, as uint8 (``round(255 x)``, as an .npz's)."""
    if isinstance(x, np.ndarray) and x.dtype.kind not in "biuf":
        raise DataError(f"{what} must be float pixels in [0, 1] (or uint8 0-255); got dtype {x.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise DataError(f"{what} must be a tensor of images (N, C, H, W); got a {type(x).__name__}")
    t = t.detach().cpu()
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        last = t.ndim == 4 and t.shape[-1] in (1, 3)
        hint = " (channels last? use x.permute(0, 3, 1, 2))" if last else ""
        raise DataError(f"{what} must be images (N, C, H, W) with C 1 or 3; got shape {tuple(t.shape)}{hint}")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if not t.is_floating_point():
        raise DataError(f"{what} must be float pixels in [0, 1] (or uint8 0-255); got dtype {t.dtype}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{what} holds NaN or infinite values; images must be float pixels in [0, 1]")
    lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
    if lo < 0 or hi > 1:
        raise DataError(
            f"{what} holds values in [{lo:.4g}, {hi:.4g}], not [0, 1]: pass un-normalised pixels in [0, 1] and "
            "give the model's normalisation as mean=/std="
        )
    return t.mul(255).round().to(torch.uint8)


def _labels(y: object, n: int, what: str) -> np.ndarray:
    """``(N,)`` integer class indices (or class-name strings) as a numpy array."""
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"{what} must be one label per image, shape (N,); got shape {arr.shape}")
    if len(arr) != n:
        raise DataError(f"there are {n} images but {len(arr)} labels")
    if arr.dtype.kind not in "iuU":
        hint = " (convert with y.long() if they are whole numbers)" if arr.dtype.kind == "f" else ""
        raise DataError(f"{what} must be integer class indices (or class names); got dtype {arr.dtype}{hint}")
    return arr


def _columns(metadata: object, n: int) -> dict[str, np.ndarray]:
    """Per-image metadata columns (``{"site": [...]}``), one value per image each, as strings."""
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"metadata must be a dict of columns (one value per image); got {type(metadata).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, column in metadata.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"metadata column names must be non-empty strings; got {key!r}")
        if isinstance(column, (str, bytes)) or not hasattr(column, "__len__"):
            raise DataError(f"metadata column {key!r} must hold one value per image; got a {type(column).__name__}")
        values = column.tolist() if isinstance(column, (torch.Tensor, np.ndarray)) else list(column)
        if len(values) != n or any(isinstance(v, list) for v in values):
            raise DataError(f"metadata column {key!r} must hold one value per image: {n} values; got {len(values)}")
        out[key] = np.array([str(v) for v in values], dtype=str)
    return out


def _collect(
    source: torch.utils.data.Dataset[Any] | torch.utils.data.DataLoader[Any], fmt: str, mode: str | None
) -> tuple[list[Tensor], np.ndarray, dict[str, np.ndarray]]:
    """Every ``(image, label[, metadata])`` item of a Dataset, or ``(images, labels[, metadata])`` batch of
    a DataLoader: the ``(C, H, W)`` uint8 images, the labels and the metadata columns."""
    from torch.utils.data import DataLoader

    batches = isinstance(source, DataLoader)
    images: list[Tensor] = []
    labels: list[Any] = []
    rows: list[Mapping[str, Any]] = []
    for k, item in enumerate(_items(source)):
        where = f"the {fmt}'s {'batch' if batches else 'item'} {k}"
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            form = "(images, labels[, metadata])" if batches else "(image, label[, metadata])"
            raise DataError(f"{where} must be {form}; got a {type(item).__name__}")
        if batches:
            x = _pixels(item[0], f"{where}'s images")
            images.extend(x)
            labels.extend(_labels(item[1], len(x), f"{where}'s labels").tolist())
            if len(item) == 3:
                cols = _columns(item[2], len(x))
                rows.extend({c: str(cols[c][j]) for c in cols} for j in range(len(x)))
        else:
            images.append(_pixels(_as_image(item[0], where, mode), f"{where}'s image")[0])
            labels.append(_scalar_label(item[1], where))
            if len(item) == 3:
                if not isinstance(item[2], Mapping):
                    raise DataError(f"{where}: a third element must be a metadata dict; got {type(item[2]).__name__}")
                rows.append(item[2])
    if rows and len(rows) != len(images):
        raise DataError(f"the {fmt} gives metadata for only some images; give it for all or none")
    keys = sorted(rows[0]) if rows else []
    for j, row in enumerate(rows):
        if sorted(row) != keys:
            raise DataError(f"the {fmt}'s image {j} has metadata keys {sorted(row)}, the first had {keys}")
    y = _labels(np.asarray(labels) if labels else np.zeros(0, dtype=np.int64), len(images), "labels")
    return images, y, _columns({c: [row[c] for row in rows] for c in keys}, len(images))


def _items(source: torch.utils.data.Dataset[Any] | torch.utils.data.DataLoader[Any]) -> Iterator[Any]:
    """A DataLoader's batches, a map-style Dataset's items by index, an iterable Dataset's items."""
    from torch.utils.data import DataLoader

    if isinstance(source, DataLoader) or not hasattr(source, "__len__"):
        yield from source  # type: ignore[misc]
        return
    for i in range(len(source)):
        yield source[i]


def _as_image(image: object, where: str, mode: str | None) -> Tensor:
    """One ``(C, H, W)`` image (a tensor, an array or a Pillow image, converted to ``mode`` as an image
    file is) as a ``(1, C, H, W)`` batch."""
    if isinstance(image, Image.Image):
        return pil_pixels(image, mode=mode, where=where)[None]
    t = torch.from_numpy(np.asarray(image)) if isinstance(image, np.ndarray) else image
    if not isinstance(t, torch.Tensor):
        raise DataError(f"{where}'s image must be a (C, H, W) tensor or a PIL image; got a {type(image).__name__}")
    if t.ndim != 3:
        raise DataError(f"{where}'s image must be one image (C, H, W); got shape {tuple(t.shape)}")
    return t[None]


def _scalar_label(label: object, where: str) -> object:
    """One item's label: an integer class index or a class name."""
    if isinstance(label, (torch.Tensor, np.ndarray)):
        if (label.numel() if isinstance(label, torch.Tensor) else label.size) != 1:
            raise DataError(f"{where}'s label must be one class index; got shape {tuple(label.shape)}")
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, (int, np.integer, str)):
        hint = " (convert with int() if it is a whole number)" if isinstance(label, float) else ""
        raise DataError(f"{where}'s label must be an integer class index (or a class name); got {label!r}{hint}")
    return label
