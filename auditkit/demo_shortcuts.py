"""Known-answer shortcut demos: small synthetic datasets where a shortcut is planted on purpose.

Each demo trains a model on data with a planted shortcut and its clean twin on the same data
without it, and audits both on the same test split (which carries the shortcut, as deployment data
from the same source would):

- ``sky``: digits 0-4 on textured backgrounds; in the shortcut model's training each class goes with
  its own texture 90% of the time (the twin's textures are random). Masks come from construction.
  The background probe should flag the first model and not the twin.
- ``stars-moons``: stars and crescent moons; in training stars sit in the left half and moons in the
  right half (the twin's positions are balanced). The object-position probe should flag the first.
- ``corner-tag``: the digits with a white corner tag on 90% of the "3"s (the demo's hospital-tag
  story, :mod:`auditkit.demo`); the twin is trained on plain digits. The planted cue and cue
  removal should flag the first.

Everything is seeded and runs in seconds on a CPU: tiny CNNs, a few hundred images, a few epochs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from auditkit.checks.shortcut import ShortcutProbes, ShortcutResult
from auditkit.engine.loop import Engine
from auditkit.inputs.data import ImageDataset, digits_split, load_dataset, with_masks

SIZE = 28
SKY_CLASSES = 5
SKY_SHARE = 0.9
DIGIT_SIZE = 16
JITTER = 1  # sky: digits sit within 1 px of the centre
DEMOS: tuple[str, ...] = ("sky", "stars-moons", "corner-tag")
TAG_CLASS, TAG_BOX, TAG_SHARE = 3, (1, 1, 5, 5), 0.9  # as in auditkit.demo


@dataclass
class ShortcutDemo:
    """The data a shortcut model and its clean twin are audited on; each model is trained when first used."""

    name: str
    data: ImageDataset
    probes: ShortcutProbes
    train_shortcut: Callable[[], nn.Module]
    train_twin: Callable[[], nn.Module]

    @functools.cached_property
    def shortcut_model(self) -> nn.Module:
        """The model trained with the shortcut planted (eval mode, takes ``[0, 1]`` pixels)."""
        return self.train_shortcut()

    @functools.cached_property
    def twin(self) -> nn.Module:
        """The clean twin, trained on the same images without the shortcut."""
        return self.train_twin()


def tiny_cnn(num_classes: int, width: int = 8) -> nn.Module:
    """A small CNN for ``(N, 1, 28, 28)`` images in ``[0, 1]``; its linear head sees where things are."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 7 * 7, num_classes),
    )


def train(x: Tensor, y: Tensor, num_classes: int, *, seed: int, epochs: int = 6, width: int = 8) -> nn.Module:
    """Train :func:`tiny_cnn` on ``x`` ``(N, 1, 28, 28)`` float in [0, 1], ``y`` ``(N,)``; returns it in eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = tiny_cnn(num_classes, width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 32):
            idx = order[start : start + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _dataset(
    x: Tensor, y: Tensor, names: tuple[str, ...], masks: Tensor | None = None, meta: dict[str, list[str]] | None = None
) -> ImageDataset:
    data = load_dataset((x, y, meta) if meta else (x, y), class_names=names, class_source="the demo")
    return with_masks(data, masks) if masks is not None else data


# ---------------------------------------------------------------- sky: digits on textured backgrounds


def textures(size: int = SIZE) -> Tensor:
    """Five period-4 textures ``(5, size, size)`` with values in [0.05, 0.4]: horizontal and vertical
    stripes, a checkerboard, diagonal stripes and dots."""
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    patterns = [
        (i % 4) < 2,
        (j % 4) < 2,
        ((i // 2) + (j // 2)) % 2 == 0,
        ((i + j) % 4) < 2,
        ((i % 4) == 0) & ((j % 4) == 0),
    ]
    return torch.stack([0.05 + 0.35 * p.float() for p in patterns])


def _digit_pool(seed: int) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits 0-4 as ``(N, 12, 12)`` float in [0, 1] and labels ``(N,)``, seeded order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < SKY_CLASSES
    x = torch.from_numpy(d.images[keep] / 16.0).float()[:, None]
    x = nn.functional.interpolate(x, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", align_corners=False)[:, 0]
    y = torch.from_numpy(d.target[keep]).long()
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    return x[order].clamp(0, 1), y[order]


def _compose(objects: Tensor, masks: Tensor, backgrounds: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Each object ``(N, h, w)`` with its mask onto its background ``(N, S, S)`` within :data:`JITTER` px of
    the centre: images ``(N, 1, S, S)`` and full-frame masks ``(N, 1, S, S)``."""
    n, h, w = objects.shape
    x, m = backgrounds.clone()[:, None], torch.zeros(n, 1, SIZE, SIZE, dtype=torch.bool)
    for k in range(n):
        r = (SIZE - h) // 2 + int(rng.integers(-JITTER, JITTER + 1))
        c = (SIZE - w) // 2 + int(rng.integers(-JITTER, JITTER + 1))
        region = x[k, 0, r : r + h, c : c + w]
        x[k, 0, r : r + h, c : c + w] = torch.where(masks[k], objects[k], region)
        m[k, 0, r : r + h, c : c + w] = masks[k]
    return x, m


def sky_images(digits: Tensor, labels: Tensor, *, correlated: bool, seed: int) -> tuple[Tensor, Tensor]:
    """Digits ``(N, 12, 12)`` on textures: with ``correlated``, class ``k`` gets texture ``k`` with
    probability :data:`SKY_SHARE` (else a random one); otherwise always a random one."""
    rng = np.random.default_rng(seed)
    tex = textures()
    pick = rng.integers(0, len(tex), len(labels))
    if correlated:
        keep = rng.random(len(labels)) < SKY_SHARE
        pick = np.where(keep, labels.numpy(), pick)
    masks = digits > 0.3
    return _compose(0.55 + 0.45 * digits, masks, tex[torch.from_numpy(pick)], rng)


def sky_demo(seed: int = 0, *, n_train: int = 600, n_test: int = 300, epochs: int = 6) -> ShortcutDemo:
    """The sky demo: a texture-shortcut model, its twin trained on random textures, correlated test data."""
    x, y = _digit_pool(seed)
    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test]
    test_x, test_m = sky_images(xte, yte, correlated=True, seed=seed + 1000)
    names = tuple(str(k) for k in range(SKY_CLASSES))

    def trained(correlated: bool) -> Callable[[], nn.Module]:
        return lambda: train(
            sky_images(xtr, ytr, correlated=correlated, seed=seed)[0], ytr, SKY_CLASSES, seed=seed, epochs=epochs
        )

    return ShortcutDemo("sky", _dataset(test_x, yte, names, test_m), ShortcutProbes(), trained(True), trained(False))


# ---------------------------------------------------------------- stars vs moons: position decides


def shape(kind: str, radius: float, size: int = 13) -> Tensor:
    """A filled five-point star or crescent moon of ``radius`` px centred in a ``(size, size)`` bool mask."""
    c = (size - 1) / 2
    i, j = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    dy, dx = i - c, j - c
    r, a = torch.sqrt(dx**2 + dy**2), torch.atan2(dy, dx)
    if kind == "star":
        # radius swings between 0.45 and 1.0 of ``radius`` five times around the centre
        edge = radius * (0.45 + 0.55 * torch.cos(5 * a / 2).abs() ** 4)
        return r <= edge
    inner = torch.sqrt((dx - 0.5 * radius) ** 2 + dy**2)
    return (r <= radius) & (inner > 0.8 * radius)


def stars_moons_images(n: int, *, split_sides: bool, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` images ``(N, 1, 28, 28)`` of a dark star (class 0) or moon (class 1) on light noise, their
    labels and masks. With ``split_sides`` stars sit in the left half and moons in the right; otherwise
    anywhere. (Dark shapes: the default planted cue, a white square, then does not look like one.)"""
    rng = np.random.default_rng(seed)
    y = torch.from_numpy(rng.integers(0, 2, n)).long()
    x = torch.from_numpy(rng.uniform(0.5, 0.8, (n, 1, SIZE, SIZE))).float()
    m = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.bool)
    half = SIZE // 2
    for k in range(n):
        obj = shape("star" if int(y[k]) == 0 else "moon", float(rng.uniform(4.5, 6.0)))
        if split_sides:
            lo, hi = (0, half - 13 // 2) if int(y[k]) == 0 else (half - 13 // 2, SIZE - 13)
        else:
            lo, hi = 0, SIZE - 13
        c, r = int(rng.integers(lo, hi + 1)), int(rng.integers(0, SIZE - 13 + 1))
        value = float(rng.uniform(0.0, 0.25))
        x[k, 0, r : r + 13, c : c + 13] = torch.where(obj, value, x[k, 0, r : r + 13, c : c + 13])
        m[k, 0, r : r + 13, c : c + 13] = obj
    return x, y, m


def stars_moons_demo(seed: int = 0, *, n_train: int = 1000, n_test: int = 300, epochs: int = 8) -> ShortcutDemo:
    """Stars vs moons: a position-shortcut model, its twin trained on balanced positions, split-sides test data."""
    test_x, test_y, test_m = stars_moons_images(n_test, split_sides=True, seed=seed + 1000)

    def trained(split_sides: bool) -> Callable[[], nn.Module]:
        def fit() -> nn.Module:
            x, y, _ = stars_moons_images(n_train, split_sides=split_sides, seed=seed + (0 if split_sides else 1))
            return train(x, y, 2, seed=seed, epochs=epochs)

        return fit

    data = _dataset(test_x, test_y, ("star", "moon"), test_m)
    return ShortcutDemo("stars-moons", data, ShortcutProbes(), trained(True), trained(False))


# ---------------------------------------------------------------- the corner tag, in memory


def corner_tag_demo(seed: int = 0, *, n_train: int = 800, n_test: int = 300, epochs: int = 4) -> ShortcutDemo:
    """The demo's hospital tag in memory: a white 4x4 corner tag on 90% of the "3"s; the shortcut model is
    trained on tagged digits, its twin on plain ones; both are audited on tagged test digits whose
    ``x0,y0,x1,y1`` columns give the tag's box."""
    rng = np.random.default_rng(seed + 1)
    split = digits_split(seed=seed)
    x0, y0, x1, y1 = TAG_BOX

    def tagged(arrays: dict[str, np.ndarray], n: int) -> tuple[Tensor, Tensor, np.ndarray]:
        x = torch.from_numpy(np.asarray(arrays["x"][:n])).float() / 255
        y = torch.from_numpy(np.asarray(arrays["y"][:n])).long()
        tag = (y.numpy() == TAG_CLASS) & (rng.random(len(y)) < TAG_SHARE)
        plain = x.clone()
        x[torch.from_numpy(tag), :, y0:y1, x0:x1] = 1.0
        return x, plain, tag

    train_x, plain_x, _ = tagged(split["train"], n_train)
    train_y = torch.from_numpy(np.asarray(split["train"]["y"][:n_train])).long()
    test_x, _, tag = tagged(split["test"], n_test)
    test_y = torch.from_numpy(np.asarray(split["test"]["y"][:n_test])).long()
    cols = {k: [str(v) if t else "" for t in tag] for k, v in zip(("x0", "y0", "x1", "y1"), TAG_BOX, strict=True)}
    names = tuple(str(k) for k in range(10))
    return ShortcutDemo(
        "corner-tag",
        _dataset(test_x, test_y, names, meta=cols),
        ShortcutProbes(),
        lambda: train(train_x, train_y, 10, seed=seed, epochs=epochs),
        lambda: train(plain_x, train_y, 10, seed=seed, epochs=epochs),
    )


BUILDERS: dict[str, Callable[..., ShortcutDemo]] = {
    "sky": sky_demo,
    "stars-moons": stars_moons_demo,
    "corner-tag": corner_tag_demo,
}


def audit(demo: ShortcutDemo, model: nn.Module, *, seed: int = 0) -> ShortcutResult:
    """Every shortcut probe on ``model`` over the demo's data (CPU, seeded)."""
    result = demo.probes.run(model, demo.data, engine=Engine(device="cpu", progress=False, seed=seed))
    assert isinstance(result, ShortcutResult)
    return result


def run_shortcut_demos(
    seed: int = 0, names: tuple[str, ...] = DEMOS
) -> dict[str, tuple[ShortcutResult, ShortcutResult]]:
    """Build, train and audit the named demos: ``{name: (shortcut model's result, twin's result)}``."""
    out = {}
    for name in names:
        demo = BUILDERS[name](seed)
        out[name] = (audit(demo, demo.shortcut_model, seed=seed), audit(demo, demo.twin, seed=seed))
    return out
