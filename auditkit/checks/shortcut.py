"""Shortcut probes: does the model's decision depend on a cue that should not matter?

Counterfactual probes on the model itself, each ending in a reliance score with an interval and a
verdict:

- **planted cue**: stamp a cue (a patch, a border, or a user image) on every image and measure
  how many predictions change and how strongly they are pulled toward one class;
- **cue removal**: where the data gives the cue's box per image (columns ``x0,y0,x1,y1``),
  occlude it and compare with occluding a same-size box elsewhere (the control);
- **location**: shift the content across the frame and map accuracy by position (informational:
  a shift also pushes content out of the frame, so it does not enter the overall verdict);
- **saliency mass**: the share of gradient attribution inside the cue's box (captum Saliency)
  compared with the box's share of the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from auditkit.checks.base import Check
from auditkit.checks.saliency import relevance_mass
from auditkit.engine.loop import Batch, Engine, Outcome
from auditkit.exceptions import ConfigError, DataError
from auditkit.inputs.data import ImageDataset, decode_image
from auditkit.inputs.images import to_data_uri
from auditkit.ops.metrics import mean_interval, wilson_interval
from auditkit.ops.perturb import Affine, spatial_grid
from auditkit.results import CheckResult, Conditions, Finding, Interval, Metric, pct
from auditkit.settings import Settings, setting

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn
else:
    from auditkit._lazy import lazy

    np = lazy("numpy")
    torch = lazy("torch")
    nn = lazy("torch.nn")

POSITIONS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right", "center")
OCCLUSIONS: tuple[str, ...] = ("mean", "blur", "noise")
BOX_COLUMNS: tuple[str, ...] = ("x0", "y0", "x1", "y1")
ATTRACTION_FLAG = 0.10  # planted cue: lower 95% bound of the pull toward one class
RELIANCE_FLAG = 0.05  # cue removal: lower 95% bound of (cue flips - control flips)
SPREAD_FLAG = 0.30  # location: accuracy range across positions
CONCENTRATION_FLAG = 3.0  # saliency: attribution share / area share
MAX_EXAMPLES = 6


@dataclass(frozen=True)
class Example:
    """One image before and after a probe, with the model's answers."""

    id: str
    label: str
    before_image: str
    after_image: str
    before_pred: str
    after_pred: str


@dataclass(frozen=True)
class PlantedCue:
    """Stamping ``cue`` on every image: how often predictions change and toward which class."""

    cue: str
    box: tuple[int, int, int, int]
    accuracy_before: float
    accuracy_after: Interval
    flip_rate: Interval
    top_class: str
    attraction: Interval
    pulled: tuple[tuple[str, float], ...]
    flagged: bool
    explanation: str
    examples: tuple[Example, ...]


@dataclass(frozen=True)
class CueRemoval:
    """Occluding the given cue box vs a same-size control box elsewhere (paired, same images)."""

    n: int
    occlusion: str
    accuracy_clean: float
    accuracy_cue: Interval
    accuracy_control: Interval
    flips_cue: Interval
    flips_control: Interval
    reliance: Interval
    confidence_drop_cue: float
    confidence_drop_control: float
    flagged: bool
    explanation: str
    examples: tuple[Example, ...]


@dataclass(frozen=True)
class Location:
    """Accuracy with the content shifted by ``(dx, dy)`` pixels: ``accuracy[i][j]`` is row
    ``dy = shifts[i]``, column ``dx = shifts[j]``."""

    shifts: tuple[float, ...]
    accuracy: tuple[tuple[float, ...], ...]
    best: float
    worst: float
    spread: float
    flagged: bool
    explanation: str


@dataclass(frozen=True)
class SaliencyMass:
    """Share of |gradient| attribution inside the cue box on cued images, vs the box's area share."""

    mass: Interval
    area_share: float
    concentration: float
    flagged: bool
    explanation: str


@dataclass(frozen=True)
class ShortcutResult(CheckResult):
    """All probes that ran, and whether any of them flags a shortcut."""

    kind = "shortcut"

    class_names: tuple[str, ...]
    planted: PlantedCue
    removal: CueRemoval | None
    location: Location
    saliency: SaliencyMass
    flagged: bool

    title = "Shortcut probes"
    template = "shortcut.html.j2"

    def headline(self) -> str:
        removal = self.removal is not None and self.removal.flagged
        hits = (
            ("planted cue", self.planted.flagged),
            ("cue removal", removal),
            ("saliency mass", self.saliency.flagged),
        )
        found = [name for name, hit in hits if hit]
        if not found:
            return f"no shortcut found (planted cue pulls {pct(self.planted.attraction.value)} to one class)"
        pull = f"{pct(self.planted.attraction.value)} of answers to '{self.planted.top_class}'"
        return f"SHORTCUT flagged by {', '.join(found)}; the planted cue pulls {pull}"

    def report_context(self) -> dict[str, Any]:
        from auditkit.report import plots

        return {"location_svg": plots.svg(plots.location_heatmap(self))}

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        p = self.planted
        out = [
            Finding(
                "fail" if self.flagged else "pass",
                f"Possible shortcut: {self.headline().removeprefix('SHORTCUT flagged by ')}."
                if self.flagged
                else f"No shortcut found: stamping a {p.cue} changes {pct(p.flip_rate.value)} of answers.",
                pct(p.attraction.value) if self.flagged else pct(p.flip_rate.value),
                "shortcut.planted.attraction" if self.flagged else "shortcut.planted.flip_rate",
            )
        ]
        if self.removal is not None and self.removal.flagged:
            r = self.removal
            out.append(
                Finding(
                    "fail",
                    f"Removing the data's cue drops accuracy from {pct(r.accuracy_clean)} to "
                    f"{pct(r.accuracy_cue.value)}: the model relies on it.",
                    pct(r.reliance.value),
                    "shortcut.removal.reliance",
                )
            )
        return tuple(out)

    def metric_records(self) -> tuple[Metric, ...]:
        p, loc, s = self.planted, self.location, self.saliency
        out = [
            Metric("shortcut.flagged", 1.0 if self.flagged else 0.0, "lower", "flag"),
            Metric("shortcut.planted.flip_rate", p.flip_rate.value, "lower"),
            Metric.of("shortcut.planted.attraction", p.attraction, "lower"),
            Metric("shortcut.planted.accuracy", p.accuracy_after.value),
            Metric("shortcut.location.spread", loc.spread, "lower"),
            Metric("shortcut.location.worst_accuracy", loc.worst),
            Metric("shortcut.saliency.mass", s.mass.value, "lower"),
            Metric("shortcut.saliency.concentration", s.concentration, "lower", "ratio"),
        ]
        if self.removal is not None:
            r = self.removal
            out.append(Metric.of("shortcut.removal.reliance", r.reliance, "lower"))
            out.append(Metric("shortcut.removal.accuracy_drop", r.accuracy_clean - r.accuracy_cue.value, "none"))
        return tuple(out)


def cue_box(position: str, size: int, h: int, w: int) -> tuple[int, int, int, int]:
    """The ``(x0, y0, x1, y1)`` box (exclusive ends) of a ``size`` px cue at ``position``, 1 px from the edge."""
    if position not in POSITIONS:
        raise ConfigError(f"--cue-position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if not 1 <= size <= min(h, w) - 2:
        raise ConfigError(f"--cue-size must be between 1 and {min(h, w) - 2} pixels for {h}x{w} images, got {size}")
    x0 = {"left": 1, "right": w - 1 - size}.get(position.split("-")[-1], (w - size) // 2)
    y0 = {"top": 1, "bottom": h - 1 - size}.get(position.split("-")[0], (h - size) // 2)
    return (x0, y0, x0 + size, y0 + size)


def paired_difference(a: Tensor, b: Tensor, confidence: float = 0.95) -> Interval:
    """Mean of ``a - b`` for paired 0/1 outcomes ``(N,)`` with a Wald interval for paired
    proportions (Newcombe's method 8 without continuity correction)."""
    from scipy.stats import norm

    n = int(a.numel())
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    only_a = float((a & ~b).sum())
    only_b = float((~a & b).sum())
    diff = (only_a - only_b) / n
    se = math.sqrt(max(only_a + only_b - (only_a - only_b) ** 2 / n, 0.0)) / n
    z = float(norm.ppf(0.5 + confidence / 2))
    return Interval(diff, max(-1.0, diff - z * se), min(1.0, diff + z * se), n, confidence)


class Stamp:
    """Puts a cue on images ``(B, C, H, W)`` in ``[0, 1]``: a filled square (``patch``), a frame
    of ``size`` px (``border``), or an image file resized into the box."""

    def __init__(self, cue: str, box: tuple[int, int, int, int], value: float, channels: int) -> None:
        self.cue, self.box, self.value = cue, box, value
        self.picture: Tensor | None = None
        if cue not in ("patch", "border"):
            path = Path(cue)
            if not path.is_file():
                raise ConfigError(f"--cue must be patch, border or an image file; {cue!r} is neither")
            try:
                img = decode_image(path, mode="L" if channels == 1 else "RGB").float() / 255
            except Exception as exc:
                raise DataError(f"cannot read the cue image {path}: {exc}") from exc
            size = (box[3] - box[1], box[2] - box[0])
            self.picture = nn.functional.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
        if not 0 <= value <= 1:
            raise ConfigError(f"--cue-value must be in [0, 1], got {value}")

    def __call__(self, x: Tensor, params: Tensor | None = None) -> Tensor:
        out = x.clone()
        x0, y0, x1, y1 = self.box
        if self.cue == "border":
            s = x1 - x0
            out[..., :s, :] = self.value
            out[..., -s:, :] = self.value
            out[..., :, :s] = self.value
            out[..., :, -s:] = self.value
        elif self.picture is not None:
            out[..., y0:y1, x0:x1] = self.picture.to(out.device, out.dtype)
        else:
            out[..., y0:y1, x0:x1] = self.value
        return out

    @property
    def label(self) -> str:
        x0, y0, x1, y1 = self.box
        if self.cue == "border":
            return f"a {x1 - x0} px border of value {self.value:g}"
        what = f"the image {Path(self.cue).name}" if self.picture is not None else f"a patch of value {self.value:g}"
        return f"{what} at x {x0}–{x1 - 1}, y {y0}–{y1 - 1} ({x1 - x0}×{y1 - y0} px)"


class ShortcutSettings(Settings):
    """Settings of the shortcut probes (``[shortcut]`` in auditkit.toml)."""

    section: ClassVar[str] = "shortcut"

    cue: str = setting("patch", "Planted cue: patch, border or an image file.")
    cue_position: Literal["top-left", "top-right", "bottom-left", "bottom-right", "center"] = setting(
        "top-left", "Cue place: top-left, top-right, bottom-left, bottom-right, center."
    )
    cue_size: int = setting(4, "Cue size in pixels of the model input (border width).", ge=1)
    cue_value: float = setting(1.0, "Cue pixel value in [0, 1] for patch and border.", ge=0, le=1)
    occlusion: Literal["mean", "blur", "noise"] = setting("mean", "Hide the data's cue boxes by: mean, blur or noise.")
    shift: float = setting(2.0, "Location probe: largest shift in pixels.", ge=0)
    shift_steps: int = setting(5, "Location probe: shifts per axis (at most 100).", ge=1, le=100)


class ShortcutProbes(Check):
    """Planted cue, cue removal (when boxes are given), location and saliency mass."""

    name = "shortcut"
    settings_type = ShortcutSettings
    result_type = ShortcutResult
    command = "shortcut"
    help = (
        "Shortcut probes: stamp a cue (--cue) and see whether answers flip toward one class; hide the cue boxes the "
        "data gives (columns x0,y0,x1,y1) against a same-size control box; accuracy by position; saliency mass on "
        "the cue."
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> ShortcutProbes:
        s = ShortcutSettings.model_validate(settings)
        return cls(
            cue=s.cue,
            position=s.cue_position,
            size=s.cue_size,
            value=s.cue_value,
            occlusion=s.occlusion,
            shift=s.shift,
            shift_steps=s.shift_steps,
        )

    def __init__(
        self,
        *,
        cue: str = "patch",
        position: str = "top-left",
        size: int = 4,
        value: float = 1.0,
        occlusion: str = "mean",
        shift: float = 2.0,
        shift_steps: int = 5,
    ) -> None:
        if occlusion not in OCCLUSIONS:
            raise ConfigError(f"--occlusion must be one of {', '.join(OCCLUSIONS)}, got {occlusion!r}")
        if shift < 0 or shift_steps < 1:
            raise ConfigError(f"--shift must be >= 0 and --shift-steps >= 1, got {shift}, {shift_steps}")
        self.cue, self.position, self.size, self.value = cue, position, size, value
        self.occlusion, self.shift, self.shift_steps = occlusion, shift, shift_steps

    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> ShortcutResult:
        _, c, h, w = data.images.shape
        stamp = Stamp(self.cue, cue_box(self.position, self.size, h, w), self.value, c)
        clean = engine.predict(model, data)
        planted, unchanged = self._planted(model, data, engine, stamp, clean.pred)
        removal = self._removal(model, data, engine, clean.pred, clean.confidence) if _has_boxes(data) else None
        location = self._location(model, data, engine)
        saliency = self._saliency(model, data, engine, stamp)
        # location is reported but not part of the verdict: a shift also pushes content out of the frame
        flagged = planted.flagged or (removal is not None and removal.flagged) or saliency.flagged
        engine.publish(data, Outcome("planted_cue", "answer unchanged by the planted cue", unchanged.float()))
        return ShortcutResult(
            class_names=data.class_names,
            planted=planted,
            removal=removal,
            location=location,
            saliency=saliency,
            flagged=flagged,
        )

    def _predict(
        self, model: nn.Module, data: ImageDataset, engine: Engine, fn: Callable[[Batch], Tensor], what: str
    ) -> Tensor:
        """Softmax outputs ``(N, K)`` of ``model`` on the images ``fn(batch)``."""
        chunks = list(engine.map(lambda b: torch.softmax(model(fn(b)), 1).float().cpu(), data, description=what))
        return torch.cat(chunks) if chunks else torch.empty(0, data.num_classes)

    def _planted(
        self, model: nn.Module, data: ImageDataset, engine: Engine, stamp: Stamp, pred: Tensor
    ) -> tuple[PlantedCue, Tensor]:
        """The planted-cue probe and, per image ``(N,)``, whether its answer stayed the same."""
        probs = self._predict(model, data, engine, lambda b: stamp(b.x), "shortcut: planted cue")
        after = probs.argmax(1)
        n = len(data)
        changed = after != pred
        counts = torch.bincount(after[changed], minlength=data.num_classes) if n else torch.zeros(1)
        top = int(torch.argmax(torch.bincount(after, minlength=data.num_classes))) if n else 0
        # attraction: among images the model did not already call `top`, the share now called `top`
        eligible = pred != top
        attraction = wilson_interval(int((after[eligible] == top).sum()), int(eligible.sum()))
        flip = wilson_interval(int(changed.sum()), n)
        acc_after = wilson_interval(int((after == data.labels).sum()), n)
        pulled = tuple(
            (data.class_names[k], float(counts[k]) / max(1, int(changed.sum())))
            for k in torch.argsort(counts, descending=True).tolist()[:3]
            if counts[k] > 0
        )
        flagged = bool(attraction.low > ATTRACTION_FLAG)
        name = data.class_names[top]
        explanation = (
            f"Stamping {stamp.label} makes the model answer '{name}' for {attraction.value:.0%} of the images it "
            f"did not call '{name}' before: a learned shortcut."
            if flagged
            else f"Stamping {stamp.label} changes {flip.value:.0%} of the answers and pulls no class above "
            f"{ATTRACTION_FLAG:.0%} (lower 95% bound): no sign that the model uses this cue."
        )
        idx = torch.nonzero(changed).flatten()[:MAX_EXAMPLES].tolist() or list(range(min(n, 3)))
        examples = tuple(
            _example(data, i, stamp(data.images[i : i + 1].float() / 255)[0], int(pred[i]), int(after[i])) for i in idx
        )
        planted = PlantedCue(
            cue=self.cue,
            box=stamp.box,
            accuracy_before=float((pred == data.labels).float().mean()) if n else math.nan,
            accuracy_after=acc_after,
            flip_rate=flip,
            top_class=name,
            attraction=attraction,
            pulled=pulled,
            flagged=flagged,
            explanation=explanation,
            examples=examples,
        )
        return planted, ~changed

    def _removal(
        self, model: nn.Module, data: ImageDataset, engine: Engine, pred: Tensor, confidence: Tensor
    ) -> CueRemoval:
        boxes = _boxes(data)
        has = torch.from_numpy(~np.isnan(boxes).any(axis=1))
        subset = data.take(torch.nonzero(has).flatten())
        cue_boxes = torch.from_numpy(boxes[has.numpy()]).long()
        _, _, h, w = data.images.shape
        control = _control_boxes(cue_boxes, h, w, seed=engine.seed)
        gen = torch.Generator().manual_seed(engine.seed)

        def occlude(b: Batch, which: Tensor) -> Tensor:
            return _occlude(b.x, which[b.start : b.stop], self.occlusion, b.generator())

        p_cue = self._predict(model, subset, engine, lambda b: occlude(b, cue_boxes), "shortcut: cue removed")
        p_ctl = self._predict(model, subset, engine, lambda b: occlude(b, control), "shortcut: control removed")
        sub_pred, sub_conf, y = pred[has], confidence[has], subset.labels
        flips_cue, flips_ctl = p_cue.argmax(1) != sub_pred, p_ctl.argmax(1) != sub_pred
        n = len(subset)
        reliance = paired_difference(flips_cue, flips_ctl)
        flagged = bool(reliance.low > RELIANCE_FLAG)
        explanation = (
            f"Hiding the cue changes {flips_cue.float().mean():.0%} of the answers, hiding a box of the same size "
            f"elsewhere {flips_ctl.float().mean():.0%}: the model's decisions rest on the cue."
            if flagged
            else f"Hiding the cue changes {flips_cue.float().mean():.0%} of the answers, about as many as hiding a box "
            f"of the same size elsewhere ({flips_ctl.float().mean():.0%}): no sign of reliance on the cue."
        )
        idx = torch.nonzero(flips_cue).flatten()[:MAX_EXAMPLES].tolist() or list(range(min(n, 3)))
        examples = tuple(
            _example(
                subset,
                i,
                _occlude(subset.images[i : i + 1].float() / 255, cue_boxes[i : i + 1], self.occlusion, gen)[0],
                int(sub_pred[i]),
                int(p_cue[i].argmax()),
            )
            for i in idx
        )
        top_cue = p_cue.gather(1, sub_pred[:, None])[:, 0]
        top_ctl = p_ctl.gather(1, sub_pred[:, None])[:, 0]
        return CueRemoval(
            n=n,
            occlusion=self.occlusion,
            accuracy_clean=float((sub_pred == y).float().mean()) if n else math.nan,
            accuracy_cue=wilson_interval(int((p_cue.argmax(1) == y).sum()), n),
            accuracy_control=wilson_interval(int((p_ctl.argmax(1) == y).sum()), n),
            flips_cue=wilson_interval(int(flips_cue.sum()), n),
            flips_control=wilson_interval(int(flips_ctl.sum()), n),
            reliance=reliance,
            confidence_drop_cue=float((sub_conf - top_cue).mean()) if n else math.nan,
            confidence_drop_control=float((sub_conf - top_ctl).mean()) if n else math.nan,
            flagged=flagged,
            explanation=explanation,
            examples=examples,
        )

    def _location(self, model: nn.Module, data: ImageDataset, engine: Engine) -> Location:
        shifts = torch.linspace(-self.shift, self.shift, self.shift_steps)
        params = spatial_grid(torch.zeros(1), shifts)  # rows (0, dx, dy), dx-major
        preds = engine.sweep(
            model, data, Affine(), params, description="shortcut: location", identity=Affine.is_identity(params)
        )
        acc = (preds == data.labels[:, None]).float().mean(0) if len(data) else torch.full((len(params),), math.nan)
        k = len(shifts)
        grid = acc.view(k, k).t()  # [dy, dx]
        best, worst = float(grid.max()), float(grid.min())
        spread = best - worst
        flagged = bool(spread > SPREAD_FLAG)
        explanation = (
            f"Accuracy ranges from {worst:.0%} to {best:.0%} as the content moves by up to {self.shift:g} px: "
            "the model depends on where things sit in the frame (or the shift cuts content off)."
            if flagged
            else f"Accuracy stays between {worst:.0%} and {best:.0%} as the content moves by up to {self.shift:g} px."
        )
        return Location(
            shifts=tuple(float(s) for s in shifts),
            accuracy=tuple(tuple(float(v) for v in row) for row in grid),
            best=best,
            worst=worst,
            spread=spread,
            flagged=flagged,
            explanation=explanation,
        )

    def _saliency(self, model: nn.Module, data: ImageDataset, engine: Engine, stamp: Stamp) -> SaliencyMass:
        from captum.attr import Saliency

        sal = Saliency(model)
        _, _, h, w = data.images.shape
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        x0, y0, x1, y1 = stamp.box
        if stamp.cue == "border":
            mask[:] = True
            mask[:, y1 - y0 : h - (y1 - y0), x1 - x0 : w - (x1 - x0)] = False
        else:
            mask[:, y0:y1, x0:x1] = True
        sample = data.take(torch.arange(min(len(data), 128)))

        def attribute(b: Batch) -> Tensor:
            x = stamp(b.x).detach().requires_grad_(True)
            target = model(x).argmax(1)
            maps = sal.attribute(x, target=target, abs=True).sum(dim=1)
            return relevance_mass(maps.detach().cpu(), mask)

        masses = torch.cat(list(engine.map(attribute, sample, description="shortcut: saliency mass", grad=True)))
        mass = mean_interval(masses)
        area = float(mask.float().mean())
        concentration = mass.value / area if area > 0 else math.nan
        flagged = bool(concentration >= CONCENTRATION_FLAG)
        explanation = (
            f"{mass.value:.0%} of the gradient attribution falls inside the cue, which covers {area:.1%} of the image "
            f"({concentration:.1f}× its share): the cue draws the model's attention."
            if flagged
            else f"{mass.value:.0%} of the gradient attribution falls inside the cue, which covers {area:.1%} of the "
            f"image ({concentration:.1f}× its share)."
        )
        return SaliencyMass(
            mass=mass, area_share=area, concentration=concentration, flagged=flagged, explanation=explanation
        )


def _has_boxes(data: ImageDataset) -> bool:
    return all(c in data.metadata for c in BOX_COLUMNS)


def _boxes(data: ImageDataset) -> np.ndarray:
    """``(N, 4)`` float boxes from the metadata columns; ``nan`` rows where a value is empty."""
    _, _, h, w = data.images.shape
    out = np.full((len(data), 4), np.nan)
    for j, col in enumerate(BOX_COLUMNS):
        for i, raw in enumerate(data.metadata[col]):
            if raw.strip() == "":
                continue
            try:
                out[i, j] = float(raw)
            except ValueError:
                raise DataError(f"box column {col} of {data.ids[i]} is {raw!r}, not a number") from None
    ok = ~np.isnan(out).any(axis=1)
    b = out[ok]
    bad = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bad.any():
        raise DataError(f"cue boxes must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} (model-input pixels)")
    return out


def _control_boxes(boxes: Tensor, h: int, w: int, *, seed: int) -> Tensor:
    """For each box ``(N, 4)``, a same-size box at a seeded random position that does not overlap it."""
    rng = np.random.default_rng(seed)
    out = boxes.clone()
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        bw, bh = x1 - x0, y1 - y0
        for _ in range(100):
            cx, cy = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            if cx >= x1 or cx + bw <= x0 or cy >= y1 or cy + bh <= y0:
                out[i] = torch.tensor([cx, cy, cx + bw, cy + bh])
                break
    return out


def _occlude(x: Tensor, boxes: Tensor, how: str, gen: torch.Generator) -> Tensor:
    """Fill each image's box ``(B, 4)`` in ``x`` ``(B, C, H, W)`` with its mean, a blur or noise."""
    out = x.clone()
    blurred = None
    if how == "blur":
        from torchvision.transforms.functional import gaussian_blur

        blurred = gaussian_blur(x, kernel_size=[7, 7], sigma=[3.0, 3.0])
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        region = out[i, :, y0:y1, x0:x1]
        if how == "mean":
            region[:] = x[i].mean(dim=(1, 2), keepdim=True)
        elif how == "blur" and blurred is not None:
            region[:] = blurred[i, :, y0:y1, x0:x1]
        else:
            region[:] = torch.rand(region.shape, generator=gen).to(x.device)
    return out


def _example(data: ImageDataset, i: int, after: Tensor, before_pred: int, after_pred: int) -> Example:
    return Example(
        id=data.ids[i],
        label=data.class_names[int(data.labels[i])],
        before_image=to_data_uri(data.images[i]),
        after_image=to_data_uri((after.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)),
        before_pred=data.class_names[before_pred],
        after_pred=data.class_names[after_pred],
    )
