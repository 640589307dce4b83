"""Shortcut probes: does the model's decision depend on a cue that should not matter?

Counterfactual probes on the model itself. Every probe that can flag compares against a control:

- **planted cue**: stamp a cue (a patch, a border, or a user image) on every image and measure how
  strongly answers are pulled toward one class, against the same cue stamped at a seeded random
  place elsewhere (a border: against the same ring filled with the image's mean);
- **cue removal**: where the data gives the cue's box per image (columns ``x0,y0,x1,y1``),
  occlude it and compare with occluding a same-size box elsewhere (the control);
- **background** (Xiao et al. 2020): with foreground masks (a ``mask`` column, or object boxes),
  put each object on no background, a blurred one, another image's of the same class (Mixed-Same),
  of a random other class (Mixed-Rand) and of the next class (Mixed-Next); the verdict rests on
  BG-Gap = Mixed-Same - Mixed-Rand, whose control is Mixed-Same;
- **object position**: paste each object at a grid of positions inside the frame on its own
  background and measure how much better (position, class) predicts the answer than class alone;
- **frame shift**: shift the whole frame (informational: it also pushes content out of the frame);
- **saliency mass**: the share of gradient attribution inside the cue's box; supporting evidence
  shown beside the planted cue, never a verdict on its own.
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
from auditkit.inputs.data import ImageDataset, decode_image, with_masks
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
BOX_ROLES: tuple[str, ...] = ("cue", "object")
ATTRACTION_FLAG = 0.10  # planted cue: lower 95% bound of (pull with the cue - pull with it elsewhere)
RELIANCE_FLAG = 0.05  # cue removal: lower 95% bound of (cue flips - control flips)
BG_GAP_FLAG = 0.05  # background: lower 95% bound of Mixed-Same - Mixed-Rand accuracy
POSITION_FLAG = 0.10  # object position: lower 95% bound of the answer-prediction gain from position
PASTE_CONTROL_DROP = 0.20  # object position: inconclusive when pasting back in place costs more accuracy
SPREAD_FLAG = 0.30  # frame shift: accuracy range across shifts (informational)
CONCENTRATION_FLAG = 3.0  # saliency: attribution share / area share (supporting evidence only)
MAX_EXAMPLES = 6
NO_INTERVAL = Interval(math.nan, math.nan, math.nan, 0)
BG_VARIANTS: tuple[str, ...] = ("only_fg_black", "only_fg_blur", "mixed_same", "mixed_rand", "mixed_next")
BG_VARIANT_NAMES: dict[str, str] = {
    "original": "Original",
    "only_fg_black": "Only-FG (black)",
    "only_fg_blur": "Only-FG (blurred)",
    "mixed_same": "Mixed-Same",
    "mixed_rand": "Mixed-Rand",
    "mixed_next": "Mixed-Next",
}


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
class Shot:
    """One image as the model saw it: a PNG data URI, what it shows, and the model's answer."""

    image: str
    caption: str
    pred: str
    correct: bool


@dataclass(frozen=True)
class Strip:
    """One source image under several variants of a probe (``shots`` in the probe's order)."""

    id: str
    label: str
    shots: tuple[Shot, ...]


@dataclass(frozen=True)
class PlantedCue:
    """Stamping ``cue`` on every image: how often predictions change and toward which class, against
    the same cue stamped elsewhere (``control``): ``reliance`` is the paired difference of the pulls."""

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
    control: str = ""
    control_attraction: Interval = NO_INTERVAL  # defaults: results.json written before the control existed
    reliance: Interval = NO_INTERVAL


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
    """Share of |gradient| attribution inside the cue box on cued images, vs the box's area share.
    Supporting evidence only: ``concentrated`` never flags a shortcut by itself."""

    mass: Interval
    area_share: float
    concentration: float
    concentrated: bool
    explanation: str


@dataclass(frozen=True)
class Background:
    """Xiao et al.'s background probe on the ``n`` images with a foreground: accuracy per variant
    (``accuracy``: ``(variant, interval)`` in :data:`BG_VARIANT_NAMES` order), BG-Gap (Mixed-Same -
    Mixed-Rand, paired, Newcombe's hybrid score interval) and the share of Mixed-Next answers that
    name the background's class."""

    n: int
    foreground: str
    accuracy: tuple[tuple[str, Interval], ...]
    gap: Interval
    follows_next: Interval
    flagged: bool
    explanation: str
    strips: tuple[Strip, ...]

    def accuracy_of(self, variant: str) -> Interval:
        return dict(self.accuracy)[variant]


@dataclass(frozen=True)
class ObjectPosition:
    """Each of ``n`` objects pasted at a ``grid`` x ``grid`` of positions inside the frame on its own
    (or blurred) background. ``accuracy[i][j]``: row ``i`` (top to bottom), column ``j``; ``per_class``
    the same per class. ``score``: how much better (position, class) predicts the model's answer than
    class alone (cross-fitted over two halves of the images, t interval over images)."""

    n: int
    grid: int
    background: str
    accuracy: tuple[tuple[float, ...], ...]
    per_class: tuple[tuple[str, tuple[tuple[float, ...], ...]], ...]
    clean_accuracy: float
    control_accuracy: float
    score: Interval
    flagged: bool
    inconclusive: bool
    explanation: str
    strips: tuple[Strip, ...]


@dataclass(frozen=True)
class ShortcutResult(CheckResult):
    """All probes that ran, and whether any of them flags a shortcut; ``skipped``: why a probe did not run."""

    kind = "shortcut"

    class_names: tuple[str, ...]
    planted: PlantedCue
    removal: CueRemoval | None
    location: Location
    saliency: SaliencyMass
    flagged: bool
    background: Background | None = None
    position: ObjectPosition | None = None
    skipped: tuple[str, ...] = ()

    title = "Shortcut probes"
    template = "shortcut.html.j2"

    def hits(self) -> tuple[str, ...]:
        """The probes that flag a shortcut."""
        probes = (
            ("planted cue", self.planted.flagged),
            ("cue removal", self.removal is not None and self.removal.flagged),
            ("background", self.background is not None and self.background.flagged),
            ("object position", self.position is not None and self.position.flagged),
        )
        return tuple(name for name, hit in probes if hit)

    def headline(self) -> str:
        found = self.hits()
        if not found:
            return f"no shortcut found (planted cue pulls {pct(self.planted.attraction.value)} to one class)"
        parts = []
        if self.planted.flagged:
            parts.append(
                f"the planted cue pulls {pct(self.planted.attraction.value)} of answers to '{self.planted.top_class}'"
            )
        if self.background is not None and self.background.flagged:
            parts.append(f"BG-Gap {_pt(self.background.gap.value)}")
        if self.position is not None and self.position.flagged:
            parts.append(f"position adds {_pt(self.position.score.value)} to predicting the answer")
        detail = f"; {', '.join(parts)}" if parts else ""
        return f"SHORTCUT flagged by {', '.join(found)}{detail}"

    def report_context(self) -> dict[str, Any]:
        from auditkit.report import plots

        out = {"location_svg": plots.svg(plots.location_heatmap(self))}
        if self.position is not None:
            from auditkit.report.shortcut_plots import position_heatmaps

            out["position_svg"] = plots.svg(position_heatmaps(self.position))
        return out

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        p, out = self.planted, []
        if p.flagged:
            out.append(
                Finding(
                    "fail",
                    f"Stamping {p.cue} pulls {pct(p.attraction.value)} of answers to '{p.top_class}', "
                    f"{_pt(p.reliance.value)} more than the same cue elsewhere: a planted-cue shortcut.",
                    pct(p.attraction.value),
                    "shortcut.planted.reliance",
                )
            )
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
        if self.background is not None and self.background.flagged:
            b = self.background
            out.append(
                Finding(
                    "fail",
                    f"The model relies on backgrounds: accuracy is {pct(b.accuracy_of('mixed_same').value)} on a "
                    f"background of the same class but {pct(b.accuracy_of('mixed_rand').value)} on another class's "
                    f"(BG-Gap {_pt(b.gap.value)}, 95% CI {_pt(b.gap.low)} to {_pt(b.gap.high)}).",
                    _pt(b.gap.value),
                    "shortcut.background.gap",
                )
            )
        if self.position is not None and self.position.flagged:
            q = self.position
            out.append(
                Finding(
                    "fail",
                    f"Where the object sits decides the answer: position predicts the model's answer "
                    f"{_pt(q.score.value)} better than the object's class alone (95% CI {_pt(q.score.low)} to "
                    f"{_pt(q.score.high)}).",
                    _pt(q.score.value),
                    "shortcut.position.score",
                )
            )
        if not out:
            ran = ["planted cue"] + [
                n
                for n, r in (
                    ("cue removal", self.removal),
                    ("background", self.background),
                    ("object position", self.position),
                )
                if r is not None
            ]
            out.append(
                Finding(
                    "pass",
                    f"No shortcut found by {', '.join(ran)}: stamping a {p.cue} changes {pct(p.flip_rate.value)} "
                    "of answers.",
                    pct(p.flip_rate.value),
                    "shortcut.planted.flip_rate",
                )
            )
        return tuple(out)

    def metric_records(self) -> tuple[Metric, ...]:
        p, loc, s = self.planted, self.location, self.saliency
        out = [
            Metric("shortcut.flagged", 1.0 if self.flagged else 0.0, "lower", "flag"),
            Metric("shortcut.planted.flip_rate", p.flip_rate.value, "lower"),
            Metric.of("shortcut.planted.attraction", p.attraction, "lower"),
            Metric.of("shortcut.planted.control_attraction", p.control_attraction, "none"),
            Metric.of("shortcut.planted.reliance", p.reliance, "lower"),
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
        if self.background is not None:
            b = self.background
            out += [Metric.of(f"shortcut.background.accuracy[variant={v}]", ci) for v, ci in b.accuracy]
            out.append(Metric.of("shortcut.background.gap", b.gap, "lower"))
            out.append(Metric.of("shortcut.background.follows_next", b.follows_next, "lower"))
        if self.position is not None:
            q = self.position
            out.append(Metric.of("shortcut.position.score", q.score, "lower"))
            flat = [v for row in q.accuracy for v in row]
            out.append(Metric("shortcut.position.worst_accuracy", min(flat) if flat else math.nan))
            out.append(Metric("shortcut.position.control_accuracy", q.control_accuracy))
        return tuple(out)


def _pt(fraction: float) -> str:
    """A signed difference in points: ``0.123`` -> ``+12.3 pt``."""
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:+.1f} pt"


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


def paired_newcombe(a: Tensor, b: Tensor, confidence: float = 0.95) -> Interval:
    """``mean(a) - mean(b)`` for paired 0/1 outcomes ``(N,)`` with Newcombe's (1998) square-and-add
    interval for a difference of paired proportions (his method 10: Wilson limits for each margin,
    combined with the continuity-corrected phi correlation of the pairs)."""
    n = int(a.numel())
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    a, b = a.bool(), b.bool()
    both, only_a = float((a & b).sum()), float((a & ~b).sum())
    only_b, neither = float((~a & b).sum()), float((~a & ~b).sum())
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    ci1 = wilson_interval(int(both + only_a), n, confidence)
    ci2 = wilson_interval(int(both + only_b), n, confidence)
    denom = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    # phi with Newcombe's continuity correction: 0 for 0 <= cross <= n / 2, shrunk by n / 2 above it
    phi = ((cross - n / 2) if cross > n / 2 else min(cross, 0.0)) / math.sqrt(denom) if denom > 0 else 0.0
    d1l, d1u, d2l, d2u = p1 - ci1.low, ci1.high - p1, p2 - ci2.low, ci2.high - p2
    delta = math.sqrt(max(d1l**2 - 2 * phi * d1l * d2u + d2u**2, 0.0))
    eps = math.sqrt(max(d1u**2 - 2 * phi * d1u * d2l + d2l**2, 0.0))
    d = p1 - p2
    return Interval(d, max(-1.0, d - delta), min(1.0, d + eps), n, confidence)


def t_interval(values: Tensor, confidence: float = 0.95) -> Interval:
    """Mean of per-sample scores ``(N,)`` (any sign) with a t interval."""
    return mean_interval(values, confidence, clip=False)


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

    def neutral(self, x: Tensor) -> Tensor:
        """Images ``x`` ``(B, C, H, W)`` with the cue's place filled with each image's mean (the border's control)."""
        return torch.where(self.ring(x.shape[-2], x.shape[-1]).to(x.device), x.mean((2, 3), keepdim=True), x)

    def ring(self, h: int, w: int) -> Tensor:
        """Where the cue lies: ``(1, H, W)`` bool."""
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        x0, y0, x1, y1 = self.box
        if self.cue == "border":
            mask[:] = True
            mask[:, y1 - y0 : h - (y1 - y0), x1 - x0 : w - (x1 - x0)] = False
        else:
            mask[:, y0:y1, x0:x1] = True
        return mask

    @property
    def control_label(self) -> str:
        if self.cue == "border":
            return "the same border filled with each image's mean"
        return "the same cue at the other standard places (the strongest pull among them)"

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
    shift: float = setting(2.0, "Frame-shift probe: largest shift in pixels.", ge=0)
    shift_steps: int = setting(5, "Frame-shift probe: shifts per axis (at most 100).", ge=1, le=100)
    boxes: Literal["cue", "object"] = setting(
        "cue", "What the x0,y0,x1,y1 columns mark: the cue (cue removal) or the object (background, position)."
    )
    positions: int = setting(3, "Object-position probe: positions per axis (2 to 7).", ge=2, le=7)
    position_background: Literal["own", "blur"] = setting(
        "own", "Object-position probe: paste on the image's own background or a blurred one."
    )


class ShortcutProbes(Check):
    """Planted cue, cue removal (cue boxes), background and object position (foreground masks or object
    boxes), frame shift and saliency mass."""

    name = "shortcut"
    settings_type = ShortcutSettings
    result_type = ShortcutResult
    command = "shortcut"
    help = (
        "Shortcut probes, each against a control: stamp a cue (--cue) and see whether answers flip toward one class; "
        "hide the cue boxes the data gives (columns x0,y0,x1,y1); with foreground masks (a mask column, or boxes with "
        "--boxes object) swap backgrounds (BG-Gap) and paste objects at a grid of places; frame shift and saliency "
        "mass as information."
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
            boxes=s.boxes,
            positions=s.positions,
            position_background=s.position_background,
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
        boxes: str = "cue",
        positions: int = 3,
        position_background: str = "own",
    ) -> None:
        if occlusion not in OCCLUSIONS:
            raise ConfigError(f"--occlusion must be one of {', '.join(OCCLUSIONS)}, got {occlusion!r}")
        if shift < 0 or shift_steps < 1:
            raise ConfigError(f"--shift must be >= 0 and --shift-steps >= 1, got {shift}, {shift_steps}")
        if boxes not in BOX_ROLES:
            raise ConfigError(f"--boxes must be one of {', '.join(BOX_ROLES)}, got {boxes!r}")
        if not 2 <= positions <= 7:
            raise ConfigError(f"--positions must be between 2 and 7, got {positions}")
        if position_background not in ("own", "blur"):
            raise ConfigError(f"--position-background must be own or blur, got {position_background!r}")
        self.cue, self.position, self.size, self.value = cue, position, size, value
        self.occlusion, self.shift, self.shift_steps = occlusion, shift, shift_steps
        self.boxes, self.positions, self.position_background = boxes, positions, position_background

    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> ShortcutResult:
        _, c, h, w = data.images.shape
        stamp = Stamp(self.cue, cue_box(self.position, self.size, h, w), self.value, c)
        clean = engine.predict(model, data)
        planted, unchanged = self._planted(model, data, engine, stamp, clean.pred)
        cue_boxes = self.boxes == "cue" and _has_boxes(data)
        removal = self._removal(model, data, engine, clean.pred, clean.confidence) if cue_boxes else None
        location = self._location(model, data, engine)
        saliency = self._saliency(model, data, engine, stamp)
        skipped: list[str] = []
        fg, why = self._foreground(data)
        background = position = None
        if fg is None:
            skipped += [f"background: {why}", f"object position: {why}"]
        else:
            background, why_bg = _background(model, fg, engine, clean.pred[fg.has], fg.source)
            position, why_pos = _object_position(
                model, fg, engine, clean.pred[fg.has], self.positions, self.position_background
            )
            skipped += [f"background: {why_bg}"] * (background is None)
            skipped += [f"object position: {why_pos}"] * (position is None)
        # the frame shift is shown but not part of the verdict: a shift also pushes content out of the frame;
        # saliency mass is supporting evidence beside the planted cue, never a verdict of its own
        flagged = any(probe is not None and probe.flagged for probe in (planted, removal, background, position))
        engine.publish(data, Outcome("planted_cue", "answer unchanged by the planted cue", unchanged.float()))
        return ShortcutResult(
            class_names=data.class_names,
            planted=planted,
            removal=removal,
            location=location,
            saliency=saliency,
            flagged=flagged,
            background=background,
            position=position,
            skipped=tuple(skipped),
        )

    def _foreground(self, data: ImageDataset) -> tuple[_Foreground | None, str]:
        """The images with a foreground (from masks, or object boxes) and where it came from; else why not."""
        _, _, h, w = data.images.shape
        if data.masks is not None:
            masks, source = data.masks, "the mask column"
        elif self.boxes == "object" and _has_boxes(data):
            boxes = _boxes(data)
            masks = torch.zeros(len(data), 1, h, w, dtype=torch.bool)
            for i, row in enumerate(boxes):
                if not np.isnan(row).any():
                    x0, y0, x1, y1 = (int(v) for v in row)
                    masks[i, :, y0:y1, x0:x1] = True
            source = "the x0,y0,x1,y1 object boxes"
        else:
            hint = " (they mark the cue; pass --boxes object if they mark the object)" if _has_boxes(data) else ""
            return None, (
                "no foreground masks: give a mask column (a PNG per image, non-zero = object) or object boxes in "
                f"x0,y0,x1,y1 columns with --boxes object{hint}"
            )
        has = masks.flatten(1).any(1)
        if not bool(has.any()):
            return None, f"{source} marks no foreground pixel in any image"
        idx = torch.nonzero(has).flatten()
        subset = with_masks(data.take(idx), masks[idx])
        return _Foreground(subset, has, source), ""

    def _controls(self, stamp: Stamp, data: ImageDataset) -> list[Callable[[Tensor], Tensor]]:
        """The planted cue's controls: the same cue at each other place of :data:`POSITIONS` that does not
        overlap it (a border: the ring filled with the image's mean)."""
        if stamp.cue == "border":
            return [stamp.neutral]
        _, c, h, w = data.images.shape
        x0, y0, x1, y1 = stamp.box
        out: list[Callable[[Tensor], Tensor]] = []
        for place in POSITIONS:
            a0, b0, a1, b1 = cue_box(place, self.size, h, w)
            if a0 >= x1 or a1 <= x0 or b0 >= y1 or b1 <= y0:
                out.append(Stamp(self.cue, (a0, b0, a1, b1), self.value, c))
        return out

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
        controls = self._controls(stamp, data)

        def stamped(b: Batch) -> Tensor:
            outs = [model(stamp(b.x))] + [model(ctl(b.x)) for ctl in controls]
            return torch.stack([o.argmax(1) for o in outs], 1).cpu()

        chunks = list(engine.map(stamped, data, description="shortcut: planted cue"))
        answers = torch.cat(chunks) if chunks else torch.empty(0, 1 + len(controls), dtype=torch.long)
        after = answers[:, 0]
        n = len(data)
        changed = after != pred
        counts = torch.bincount(after[changed], minlength=data.num_classes) if n else torch.zeros(1)
        top = int(torch.argmax(torch.bincount(after, minlength=data.num_classes))) if n else 0
        # attraction: among images the model did not already call `top`, the share now called `top`;
        # the control is the strongest such pull of the same cue at any other place
        eligible = pred != top
        hits = answers[eligible] == top  # (M, 1 + controls)
        strongest = 1 + int(hits[:, 1:].sum(0).argmax()) if len(controls) else 0
        attraction = wilson_interval(int(hits[:, 0].sum()), int(eligible.sum()))
        control = wilson_interval(int(hits[:, strongest].sum()), int(eligible.sum()))
        reliance = paired_newcombe(hits[:, 0], hits[:, strongest])
        flip = wilson_interval(int(changed.sum()), n)
        acc_after = wilson_interval(int((after == data.labels).sum()), n)
        pulled = tuple(
            (data.class_names[k], float(counts[k]) / max(1, int(changed.sum())))
            for k in torch.argsort(counts, descending=True).tolist()[:3]
            if counts[k] > 0
        )
        flagged = bool(reliance.low > ATTRACTION_FLAG)
        name = data.class_names[top]
        explanation = (
            f"Stamping {stamp.label} makes the model answer '{name}' for {attraction.value:.0%} of the images it "
            f"did not call '{name}' before, against {control.value:.0%} with {stamp.control_label}: a learned "
            "shortcut."
            if flagged
            else f"Stamping {stamp.label} changes {flip.value:.0%} of the answers and pulls {attraction.value:.0%} to "
            f"'{name}', against {control.value:.0%} with {stamp.control_label} (the difference's lower 95% bound "
            f"is not above {ATTRACTION_FLAG:.0%}): no sign that the model uses this cue."
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
            control=stamp.control_label,
            control_attraction=control,
            reliance=reliance,
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
        mask = stamp.ring(h, w)
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
        concentrated = bool(concentration >= CONCENTRATION_FLAG)
        explanation = (
            f"{mass.value:.0%} of the gradient attribution falls inside the cue, which covers {area:.1%} of the image "
            f"({concentration:.1f}× its share): the cue draws the gradient. Supporting evidence only: it means "
            "something when stamping the cue also moves the answers."
            if concentrated
            else f"{mass.value:.0%} of the gradient attribution falls inside the cue, which covers {area:.1%} of the "
            f"image ({concentration:.1f}× its share)."
        )
        return SaliencyMass(
            mass=mass, area_share=area, concentration=concentration, concentrated=concentrated, explanation=explanation
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


# ---------------------------------------------------------------- foreground-based probes


@dataclass(frozen=True)
class _Foreground:
    """The images that have a foreground (``data.masks`` set), ``has`` ``(N,)`` over the full dataset."""

    data: ImageDataset
    has: Tensor
    source: str


def _shift_index(n: int, shift: Tensor, wrap: bool) -> tuple[Tensor, Tensor]:
    """Source indices ``(B, n)`` for moving by ``shift`` ``(B,)`` pixels, and whether each is inside."""
    src = torch.arange(n, device=shift.device)[None, :] - shift[:, None]
    if wrap:
        return src.remainder(n), torch.ones_like(src, dtype=torch.bool)
    return src.clamp(0, n - 1), (src >= 0) & (src < n)


def translate(x: Tensor, dx: Tensor, dy: Tensor, *, wrap: bool = False) -> Tensor:
    """Move each image of ``x`` ``(B, C, H, W)`` by whole pixels ``dx``, ``dy`` ``(B,)`` (right, down);
    uncovered pixels are 0 (or wrap around with ``wrap``)."""
    b, _, h, w = x.shape
    iy, vy = _shift_index(h, dy.to(x.device).long(), wrap)
    ix, vx = _shift_index(w, dx.to(x.device).long(), wrap)
    rows = torch.arange(b, device=x.device)[:, None, None]
    out = x[rows, :, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
    inside = (vy[:, :, None] & vx[:, None, :])[:, None]
    return out * inside if out.dtype != torch.bool else out & inside


def bounding_boxes(m: Tensor) -> Tensor:
    """``(B, 4)`` long ``x0, y0, x1, y1`` (exclusive ends) of each mask ``(B, 1, H, W)``; zeros when empty."""
    rows, cols = m[:, 0].any(2), m[:, 0].any(1)  # (B, H), (B, W)

    def span(v: Tensor) -> tuple[Tensor, Tensor]:
        n = v.shape[1]
        first = v.float().argmax(1)
        last = n - 1 - v.flip(1).float().argmax(1)
        some = v.any(1)
        return torch.where(some, first, 0), torch.where(some, last + 1, 0)

    y0, y1 = span(rows)
    x0, x1 = span(cols)
    return torch.stack([x0, y0, x1, y1], 1).long()


def fill_background(x: Tensor, m: Tensor) -> Tensor:
    """``x`` ``(B, C, H, W)`` with the object ``m`` ``(B, 1, H, W)`` removed: each object pixel takes the
    background pixel one (or two) object widths/heights away (tiling the image's own background, as
    Xiao et al.'s Only-BG-T does); pixels no shift reaches take the background's mean."""
    box = bounding_boxes(m)
    bw, bh = (box[:, 2] - box[:, 0]).clamp(min=1), (box[:, 3] - box[:, 1]).clamp(min=1)
    out, hole, bg = x.clone(), m.clone(), ~m
    for ky, kx in (
        (0, 1),
        (0, -1),
        (1, 0),
        (-1, 0),
        (1, 1),
        (-1, -1),
        (1, -1),
        (-1, 1),
        (0, 2),
        (0, -2),
        (2, 0),
        (-2, 0),
    ):
        if not bool(hole.any()):
            break
        dx, dy = kx * bw, ky * bh
        src_bg = translate(bg, dx, dy, wrap=True)
        take = hole & src_bg
        out = torch.where(take, translate(x, dx, dy, wrap=True), out)
        hole = hole & ~take
    if bool(hole.any()):
        w = bg.float()
        mean = (x * w).sum((2, 3), keepdim=True) / w.sum((2, 3), keepdim=True).clamp(min=1)
        out = torch.where(hole, mean, out)
    return out


def blur(x: Tensor) -> Tensor:
    """A strong Gaussian blur of ``(B, C, H, W)`` (sigma a sixth of the shorter side)."""
    from torchvision.transforms.functional import gaussian_blur

    h, w = x.shape[-2:]
    sigma = max(1.0, min(h, w) / 6)
    k = int(2 * math.ceil(2 * sigma) + 1)
    k = min(k, 2 * ((min(h, w) - 1) // 2) + 1)
    return gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def _donors(labels: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Seeded background donors per variant (``(N,)`` indices) and the class Mixed-Next borrows from.

    Mixed-Same: another image of the same class (itself when the class has one image); Mixed-Rand: an
    image of a uniformly drawn other class; Mixed-Next: an image of the next class present (cyclic)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    members = {int(c): np.flatnonzero(labels == c) for c in classes}
    same, rand, nxt, nxt_class = (np.zeros(len(labels), dtype=np.int64) for _ in range(4))
    for i, c in enumerate(labels.tolist()):
        pool = members[c][members[c] != i]
        same[i] = rng.choice(pool) if len(pool) else i
        others = classes[classes != c]
        rand[i] = rng.choice(members[int(rng.choice(others))])
        nc = int(classes[(np.searchsorted(classes, c) + 1) % len(classes)])
        nxt_class[i] = nc
        nxt[i] = rng.choice(members[nc])
    return {"mixed_same": same, "mixed_rand": rand, "mixed_next": nxt}, nxt_class


def _pixels_of(data: ImageDataset, idx: np.ndarray | Tensor | list[int], device: torch.device) -> tuple[Tensor, Tensor]:
    """Images ``(B, C, H, W)`` float in [0, 1] and masks ``(B, 1, H, W)`` of ``data`` at ``idx``."""
    index = torch.as_tensor(idx).long()
    if data.masks is None:
        raise TypeError("_pixels_of needs a dataset with masks")
    return (data.images[index].to(device).float() / 255, data.masks[index].to(device))


def _uri(x: Tensor) -> str:
    return to_data_uri((x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8))


def _background(
    model: nn.Module, fg: _Foreground, engine: Engine, pred: Tensor, source: str
) -> tuple[Background | None, str]:
    """Xiao et al.'s background probe on the images with a foreground; ``pred`` their clean answers ``(N,)``."""
    data = fg.data
    labels = data.labels.numpy()
    if len(np.unique(labels)) < 2:
        return None, "needs foreground masks in images of at least two classes"
    donors, next_class = _donors(labels, engine.seed)

    def variants(b: Batch) -> Tensor:
        x, m = b.x, data.masks[b.start : b.stop].to(b.x.device)  # type: ignore[index]
        outs = [model(torch.where(m, x, torch.zeros_like(x))), model(torch.where(m, x, blur(fill_background(x, m))))]
        for v in ("mixed_same", "mixed_rand", "mixed_next"):
            dx, dm = _pixels_of(data, donors[v][b.start : b.stop], x.device)
            outs.append(model(torch.where(m, x, fill_background(dx, dm))))
        return torch.stack([o.argmax(1) for o in outs], 1).cpu()

    chunks = list(engine.map(variants, data, description="shortcut: background", per_image=len(BG_VARIANTS)))
    answers = torch.cat(chunks) if chunks else torch.empty(0, len(BG_VARIANTS), dtype=torch.long)
    y, n = data.labels, len(data)
    right = {v: answers[:, k] == y for k, v in enumerate(BG_VARIANTS)}
    right["original"] = pred == y
    accuracy = tuple((v, wilson_interval(int(right[v].sum()), n)) for v in BG_VARIANT_NAMES)
    gap = paired_newcombe(right["mixed_same"], right["mixed_rand"])
    follows = wilson_interval(int((answers[:, 4] == torch.from_numpy(next_class)).sum()), n)
    flagged = bool(gap.low > BG_GAP_FLAG)
    same, rand = pct(float(right["mixed_same"].float().mean())), pct(float(right["mixed_rand"].float().mean()))
    explanation = (
        f"Each object keeps its place; only the background changes. Accuracy is {same} on a background from another "
        f"image of the same class and {rand} on one from another class (BG-Gap {_pt(gap.value)}, 95% CI "
        f"{_pt(gap.low)} to {_pt(gap.high)}): "
        + (
            "the background decides part of the answer."
            if flagged
            else f"no sign of reliance on backgrounds (the lower bound is not above {_pt(BG_GAP_FLAG)})."
        )
    )
    strips = _background_strips(data, answers, pred, donors)
    return Background(
        n=n,
        foreground=source,
        accuracy=accuracy,
        gap=gap,
        follows_next=follows,
        flagged=flagged,
        explanation=explanation,
        strips=strips,
    ), ""


def _background_strips(
    data: ImageDataset, answers: Tensor, pred: Tensor, donors: dict[str, np.ndarray]
) -> tuple[Strip, ...]:
    """Up to :data:`MAX_EXAMPLES` images (those Mixed-Rand changes first) under each variant, with the
    answers ``answers`` ``(N, len(BG_VARIANTS))`` and ``pred`` ``(N,)`` (the original)."""
    moved = answers[:, 3] != pred
    picked = (torch.nonzero(moved).flatten()[:MAX_EXAMPLES].tolist() + torch.nonzero(~moved).flatten().tolist())[
        :MAX_EXAMPLES
    ]
    if not picked:
        return ()
    dev = torch.device("cpu")
    x, m = _pixels_of(data, picked, dev)
    shown = [x, torch.where(m, x, torch.zeros_like(x)), torch.where(m, x, blur(fill_background(x, m)))]
    for v in ("mixed_same", "mixed_rand", "mixed_next"):
        dx, dm = _pixels_of(data, donors[v][picked], dev)
        shown.append(torch.where(m, x, fill_background(dx, dm)))
    names = data.class_names
    out = []
    for r, i in enumerate(picked):
        y = int(data.labels[i])
        preds = [int(pred[i])] + [int(a) for a in answers[i].tolist()]
        shots = tuple(
            Shot(_uri(img[r]), BG_VARIANT_NAMES[v], names[p], p == y)
            for img, v, p in zip(shown, BG_VARIANT_NAMES, preds, strict=True)
        )
        out.append(Strip(data.ids[i], names[y], shots))
    return tuple(out)


def _placements(boxes: Tensor, grid: int, h: int, w: int) -> tuple[Tensor, Tensor] | None:
    """Per image ``(N,)`` and grid cell ``(P,)``, the ``dx, dy`` ``(N, P)`` that move its object's box so its
    centre lands on the cell's point. The points are the ``(k + 1/2) / grid`` quantiles of the object
    centres in the data, per axis (places objects do take, not the frame's far corners), and every box
    stays inside the frame. ``None`` when the objects all sit within a pixel of one place."""
    b = boxes.double()
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    q = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    gx, gy = torch.quantile(cx, q), torch.quantile(cy, q)
    if float(gx[-1] - gx[0]) < 1 and float(gy[-1] - gy[0]) < 1:
        return None
    px, py = gx.repeat(grid), gy.repeat_interleave(grid)  # row-major: cell p = row * grid + col
    bw, bh = (b[:, 2] - b[:, 0])[:, None], (b[:, 3] - b[:, 1])[:, None]
    tx = torch.minimum(torch.maximum((px[None] - bw / 2).round(), torch.zeros(1, dtype=torch.float64)), w - bw)
    ty = torch.minimum(torch.maximum((py[None] - bh / 2).round(), torch.zeros(1, dtype=torch.float64)), h - bh)
    return (tx - b[:, :1]).long(), (ty - b[:, 1:2]).long()


def position_score(answers: Tensor, labels: Tensor, seed: int) -> Interval:
    """How much better (position, class) predicts the model's answer than class alone.

    ``answers`` ``(N, P)``: the answer for image ``i`` at position ``p``; ``labels`` ``(N,)``. The images
    are split in two seeded halves; each half is scored with majority-answer tables fitted on the other
    (so the score is not inflated by fitting), and the per-image gains get a t interval."""
    n, p = answers.shape
    if n < 2:
        return Interval(math.nan, math.nan, math.nan, n)
    k = int(max(int(answers.max()), int(labels.max()))) + 1
    order = np.random.default_rng(seed).permutation(n)
    fold = np.zeros(n, dtype=np.int64)
    fold[order[n // 2 :]] = 1
    gains = torch.zeros(n, dtype=torch.float64)
    a, y = answers.numpy(), labels.numpy()
    for f in (0, 1):
        fit, test = fold != f, fold == f
        by_pos = np.zeros((p, k, k))
        np.add.at(by_pos, (np.tile(np.arange(p), fit.sum()), np.repeat(y[fit], p), a[fit].ravel()), 1)
        by_class = by_pos.sum(0)
        seen = by_pos.sum(2) > 0  # (P, K): cells with data
        guess_class = by_class.argmax(1)  # (K,)
        guess_pos = np.where(seen, by_pos.argmax(2), guess_class[None, :])  # (P, K)
        yt, at = y[test], a[test]
        hit_pos = guess_pos[np.arange(p)[None, :], yt[:, None]] == at
        hit_class = guess_class[yt][:, None] == at
        gains[torch.from_numpy(np.flatnonzero(test))] = torch.from_numpy(hit_pos.mean(1) - hit_class.mean(1))
    return t_interval(gains)


def _object_position(
    model: nn.Module, fg: _Foreground, engine: Engine, pred: Tensor, grid: int, background: str
) -> tuple[ObjectPosition | None, str]:
    """Paste each object at ``grid`` x ``grid`` positions inside the frame on its own (or blurred) background."""
    data = fg.data
    if data.masks is None:
        raise TypeError("the object-position probe needs a dataset with masks")
    _, _, h, w = data.images.shape
    boxes = bounding_boxes(data.masks)
    placed = _placements(boxes, grid, h, w)
    if placed is None:
        return None, "the objects all sit within a pixel of one place in the data, so there are no positions to compare"
    dxs, dys = placed
    cells = grid * grid

    def scene(x: Tensor, m: Tensor) -> Tensor:
        bg = fill_background(x, m)
        return blur(bg) if background == "blur" else bg

    def pasted(x: Tensor, m: Tensor, bg: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
        return torch.where(translate(m, dx, dy), translate(x, dx, dy), bg)

    def run(b: Batch) -> Tensor:
        x, m = b.x, data.masks[b.start : b.stop].to(b.x.device)  # type: ignore[index]
        bg = scene(x, m)
        zero = torch.zeros(len(x), dtype=torch.long)
        outs = [model(pasted(x, m, bg, zero, zero)).argmax(1)]  # the control: pasted back in place
        for c in range(cells):
            outs.append(model(pasted(x, m, bg, dxs[b.start : b.stop, c], dys[b.start : b.stop, c])).argmax(1))
        return torch.stack(outs, 1).cpu()

    chunks = list(engine.map(run, data, description="shortcut: object position", per_image=cells + 1))
    answers = torch.cat(chunks) if chunks else torch.empty(0, cells + 1, dtype=torch.long)
    y, n = data.labels, len(data)
    control = float((answers[:, 0] == y).float().mean())
    at = answers[:, 1:]
    right = (at == y[:, None]).float()
    acc = right.mean(0).view(grid, grid)
    per_class = tuple(
        (data.class_names[c], _grid(right[y == c].mean(0).view(grid, grid))) for c in sorted(set(y.tolist()))
    )
    clean = float((pred == y).float().mean())
    score = position_score(at, y, engine.seed)
    inconclusive = clean - control > PASTE_CONTROL_DROP
    flagged = bool(score.low > POSITION_FLAG) and not inconclusive
    where = "its own background" if background == "own" else "a blurred copy of its own background"
    lead = (
        f"Each object was pasted at {cells} places inside the frame on {where}. Accuracy ranges from "
        f"{pct(float(acc.min()))} to {pct(float(acc.max()))} across places ({pct(control)} pasted back in place, "
        f"{pct(clean)} untouched); position predicts the model's answer {_pt(score.value)} better than the "
        f"object's class alone (95% CI {_pt(score.low)} to {_pt(score.high)}): "
    )
    if inconclusive:
        verdict = "inconclusive, because pasting the object back in its own place already costs accuracy."
    elif flagged:
        verdict = "where the object sits decides the answer."
    else:
        verdict = f"no sign that position decides the answer (the lower bound is not above {_pt(POSITION_FLAG)})."
    strips = _position_strips(data, at, dxs, dys, scene, pasted)
    return ObjectPosition(
        n=n,
        grid=grid,
        background=background,
        accuracy=_grid(acc),
        per_class=per_class,
        clean_accuracy=clean,
        control_accuracy=control,
        score=score,
        flagged=flagged,
        inconclusive=inconclusive,
        explanation=lead + verdict,
        strips=strips,
    ), ""


def _grid(t: Tensor) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in t)


def _position_strips(
    data: ImageDataset,
    answers: Tensor,
    dxs: Tensor,
    dys: Tensor,
    scene: Callable[[Tensor, Tensor], Tensor],
    pasted: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor],
) -> tuple[Strip, ...]:
    """One image per class (up to 3) at every grid position, with the model's answers."""
    picked: list[int] = []
    for c in sorted(set(data.labels.tolist()))[:3]:
        picked.append(int(torch.nonzero(data.labels == c).flatten()[0]))
    out = []
    for i in picked:
        x, m = _pixels_of(data, [i], torch.device("cpu"))
        bg = scene(x, m)
        y = int(data.labels[i])
        shots = []
        for c in range(answers.shape[1]):
            img = pasted(x, m, bg, dxs[i : i + 1, c], dys[i : i + 1, c])[0]
            p = int(answers[i, c])
            shots.append(Shot(_uri(img), f"place {c + 1}", data.class_names[p], p == y))
        out.append(Strip(data.ids[i], data.class_names[y], tuple(shots)))
    return tuple(out)
