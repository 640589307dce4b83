"""Rotation robustness: accuracy vs angle (overall and per class) and a worst-of-k spatial attack.

Both are one :meth:`Engine.sweep` over :class:`auditkit.ops.perturb.Affine` parameters; the
spatial attack is brute force over a grid of rotations x translations (Engstrom et al. 2019),
so gradient masking cannot fool it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ValidationInfo, field_validator, model_validator

from auditkit.checks.base import Check
from auditkit.engine.loop import Engine, Outcome
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import ImageDataset
from auditkit.inputs.images import to_data_uri
from auditkit.ops.calibration import DEFAULT_BINS, ece
from auditkit.ops.metrics import mean_interval, wilson_interval
from auditkit.ops.perturb import FILLS, INTERPOLATIONS, Affine, Fill, Interpolation, rotations, spatial_grid
from auditkit.results import CheckResult, Conditions, Finding, Interval, Metric, fmt, pct, points
from auditkit.settings import Settings, join_list, setting

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn
else:
    from auditkit._lazy import lazy

    np = lazy("numpy")
    torch = lazy("torch")

DEFAULT_ANGLES: tuple[float, ...] = tuple(float(a) for a in range(-180, 181, 10))
MAX_CLASS_METRICS = 100  # per-class-per-angle metrics only for up to this many classes
DEFAULT_SPATIAL_ANGLES: tuple[float, ...] = tuple(float(a) for a in range(-30, 31, 6))
STRIP_ANGLES: tuple[float, ...] = (-90.0, -45.0, 0.0, 45.0, 90.0, 180.0)


MAX_GRID_POINTS = 10_000


def parse_angles(text: str, flag: str = "--angles") -> tuple[float, ...]:
    """``"-180:180:10"`` (inclusive) or ``"0,90,180"`` -> sorted unique values (at most
    ``MAX_GRID_POINTS``; every value finite)."""
    try:
        if ":" in text:
            parts = [float(v) for v in text.split(":")]
            if len(parts) != 3 or not all(map(math.isfinite, parts)) or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            start, stop, step = parts
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > MAX_GRID_POINTS:
                raise ConfigError(f"{flag} {text!r} makes {count:.3g} grid points; at most {MAX_GRID_POINTS}")
            values = [start + i * step for i in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
            if not all(map(math.isfinite, values)) or len(values) > MAX_GRID_POINTS:
                raise ValueError
    except ValueError:
        raise ConfigError(
            f"{flag} takes 'start:stop:step' (e.g. -180:180:10) or a list (e.g. 0,90,180) of finite numbers, "
            f"got {text!r}"
        ) from None
    if not values:
        raise ConfigError(f"{flag} is empty")
    return tuple(sorted({round(v, 6) for v in values}))


@dataclass(frozen=True)
class AnglePoint:
    """Accuracy at one angle, overall and per class (indexed like ``class_names``), and calibration
    there: the mean top-label probability and the ECE (``DEFAULT_BINS`` equal-width bins; ``None`` in
    results.json files written before they were measured, and with no images)."""

    angle: float
    accuracy: Interval
    per_class: tuple[Interval, ...]
    confidence: float | None = None
    ece: float | None = None


@dataclass(frozen=True)
class Recovery:
    """A class whose accuracy comes back at a large angle (it looks alike rotated)."""

    class_name: str
    angle: float
    accuracy: float
    overall: float


@dataclass(frozen=True)
class SpatialAttack:
    """Spatial robust accuracy: natural, random-of-1, worst-of-k and the exhaustive grid."""

    angles: tuple[float, ...]
    shifts: tuple[float, ...]
    k: int
    natural: Interval
    random: Interval
    worst_of_k: Interval
    grid: Interval


@dataclass(frozen=True)
class Frame:
    """One rotated image with the model's prediction."""

    angle: float
    image: str
    pred: str
    correct: bool


@dataclass(frozen=True)
class RotationStrip:
    """One sample shown at several angles."""

    id: str
    label: str
    frames: tuple[Frame, ...]


@dataclass(frozen=True)
class RotationResult(CheckResult):
    """Accuracy against rotation angle, with summaries for gates."""

    kind = "rotation"

    class_names: tuple[str, ...]
    interpolation: str
    fill: str
    clean_accuracy: float
    points: tuple[AnglePoint, ...]
    mean_range: float
    mean_accuracy: Interval
    worst_angle: float
    worst_accuracy: float
    fraction_of_clean: float
    first_below_angle: float
    recoveries: tuple[Recovery, ...]
    default_class: str | None
    default_share: float
    spatial: SpatialAttack | None
    examples: tuple[RotationStrip, ...]

    title = "Rotation robustness"
    template = "rotation.html.j2"

    def headline(self) -> str:
        text = (
            f"{pct(self.mean_accuracy.value)} mean accuracy within ±{self.mean_range:g}°; "
            f"worst {pct(self.worst_accuracy)} at {self.worst_angle:g}°"
        )
        if self.spatial is not None:
            text += f"; spatial attack (grid) leaves {pct(self.spatial.grid.value)}"
        return text

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        clean, mean = self.clean_accuracy, self.mean_accuracy.value
        drop = clean - mean
        out = [
            Finding(
                conditions.drop(drop),
                f"Turning images by up to {self.mean_range:g}° either way drops accuracy from {pct(clean)} to "
                f"{pct(mean)} on average ({points(drop)}).",
                points(drop),
                f"rotation.mean_accuracy[range={fmt(self.mean_range)}]",
            ),
            Finding(
                "info",
                f"The worst angle is {self.worst_angle:g}°: {pct(self.worst_accuracy)} of images are still "
                "recognised there.",
                pct(self.worst_accuracy),
                "rotation.worst_accuracy",
            ),
        ]
        if self.spatial is not None:
            left = self.spatial.grid.value
            severity = conditions.drop(clean - left)
            out.append(
                Finding(
                    "warn" if severity == "fail" else severity,
                    f"Choosing the worst small rotation and shift for each image leaves {pct(left)} correct "
                    f"(from {pct(clean)}).",
                    pct(left),
                    "spatial.accuracy[attack=grid]",
                )
            )
        worst = next((p for p in self.points if p.angle == self.worst_angle), None)
        if worst is not None and worst.confidence is not None and worst.ece is not None:
            gap = worst.confidence - worst.accuracy.value
            out.append(
                Finding(
                    "warn" if gap > 0.2 else "info",
                    f"At {worst.angle:g}° the model's mean confidence is {pct(worst.confidence)} while "
                    f"{pct(worst.accuracy.value)} of its answers are right (ECE {worst.ece:.3f})"
                    + (": it does not know that it fails there." if gap > 0.2 else "."),
                    f"{worst.ece:.3f}",
                    f"rotation.ece[angle={fmt(worst.angle)}]",
                )
            )
        for r in self.recoveries[:2]:
            out.append(
                Finding(
                    "info",
                    f"Class '{r.class_name}' comes back at {r.angle:g}° ({pct(r.accuracy)} against {pct(r.overall)} "
                    "overall there): it looks alike rotated.",
                    pct(r.accuracy),
                )
            )
        return tuple(out)

    def report_context(self) -> dict[str, Any]:
        from auditkit.report import calibration_plots, plots

        calibrated = [
            (p.angle, p.accuracy.value, p.confidence, p.ece)
            for p in self.points
            if p.confidence is not None and p.ece is not None
        ]
        confidence = ""
        if calibrated:
            angles, accuracy, conf, ece_values = zip(*calibrated, strict=True)
            confidence = plots.svg(
                calibration_plots.confidence_curve(
                    angles, accuracy, conf, ece_values, xlabel="rotation angle (degrees, positive = counter-clockwise)"
                )
            )
        return {
            "curve_svg": plots.svg(plots.rotation_curve(self)),
            "per_class_svg": plots.svg(plots.rotation_per_class(self)),
            "confidence_svg": confidence,
        }

    def metric_records(self) -> tuple[Metric, ...]:
        out: list[Metric] = []
        for p in self.points:
            a = fmt(p.angle)
            out.append(Metric.of(f"rotation.accuracy[angle={a}]", p.accuracy))
            if p.ece is not None:
                out.append(Metric(f"rotation.ece[angle={a}]", p.ece, "lower"))
            for name, ci in zip(self.class_names, p.per_class, strict=True):
                if ci.n and len(self.class_names) <= MAX_CLASS_METRICS:
                    out.append(Metric(f"rotation.accuracy[angle={a},class={name}]", ci.value))
        out.append(Metric.of(f"rotation.mean_accuracy[range={fmt(self.mean_range)}]", self.mean_accuracy))
        out.append(Metric("rotation.worst_accuracy", self.worst_accuracy))
        out.append(Metric("rotation.worst_angle", self.worst_angle, "none", "degrees"))
        below = f"rotation.first_angle_below[fraction={fmt(self.fraction_of_clean)}]"
        out.append(Metric(below, abs(self.first_below_angle), "higher", "degrees"))
        if self.spatial is not None:
            s = self.spatial
            out.append(Metric("spatial.accuracy[attack=natural]", s.natural.value))
            out.append(Metric("spatial.accuracy[attack=random]", s.random.value))
            out.append(Metric(f"spatial.accuracy[attack=worst_of_{s.k}]", s.worst_of_k.value))
            out.append(Metric.of("spatial.accuracy[attack=grid]", s.grid))
        return tuple(out)


def _wrap(angle: float) -> float:
    """An angle in degrees mapped into (-180, 180]."""
    wrapped = ((angle + 180.0) % 360.0) - 180.0
    return 180.0 if wrapped == -180.0 else wrapped


def _same_angle(a: float, b: float) -> bool:
    return abs(((a - b + 180.0) % 360.0) - 180.0) < 1e-6


class RotationSettings(Settings):
    """Settings of the rotation check (``[rotation]`` in auditkit.toml)."""

    section: ClassVar[str] = "rotation"

    angles: str = setting("-180:180:10", "Angles (degrees): a list or start:stop:step.")
    mean_range: float = setting(30.0, "Summarise mean accuracy over +/- this many degrees.", ge=0)
    fraction_of_clean: float = setting(0.5, "First angle where accuracy < this share of clean.", gt=0, le=1)
    interpolation: Interpolation = setting("bilinear", "Interpolation: bilinear or nearest.")
    fill: Fill = setting("zeros", "Corner fill: zeros, border or reflection.")
    spatial: bool = setting(True, "Run the spatial attack (rotations x translations grid).")
    spatial_angles: str = setting("-30:30:6", "Angles of the spatial attack grid.")
    translate: float = setting(3.0, "Largest shift in pixels of the spatial attack grid.", ge=0)
    translate_steps: int = setting(5, "Shift values per axis, from -translate to +translate.", ge=1)
    worst_of_k: int = setting(10, "k random grid points for the worst-of-k attack.", flag="--k", ge=1)

    _lists = field_validator("angles", "spatial_angles", mode="before")(join_list)

    @field_validator("angles", "spatial_angles")
    @classmethod
    def _angles(cls, value: str, info: ValidationInfo) -> str:
        parse_angles(value, f"--{(info.field_name or 'angles').replace('_', '-')}")
        return value

    @model_validator(mode="after")
    def _spatial_grid(self) -> RotationSettings:
        points = len(parse_angles(self.spatial_angles)) * self.translate_steps**2
        if self.spatial and points > MAX_GRID_POINTS:
            raise ValueError(
                f"the spatial grid (--spatial-angles x --translate-steps squared) has {points} points; "
                f"at most {MAX_GRID_POINTS}: use fewer angles or shift steps"
            )
        return self


class RotationSweep(Check):
    """Accuracy at each angle of a grid (overall, per class) plus a spatial attack."""

    name = "rotation"
    settings_type = RotationSettings
    result_type = RotationResult
    command = "rotate"
    help = (
        "Accuracy against rotation angle, overall and per class, and a worst-of-k spatial attack "
        "(rotations x translations); writes results.json and index.html."
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> RotationSweep:
        s = RotationSettings.model_validate(settings)
        return cls(
            angles=parse_angles(s.angles),
            mean_range=s.mean_range,
            fraction_of_clean=s.fraction_of_clean,
            interpolation=s.interpolation,
            fill=s.fill,
            spatial=s.spatial,
            spatial_angles=parse_angles(s.spatial_angles),
            translate=s.translate,
            translate_steps=s.translate_steps,
            k=s.worst_of_k,
        )

    def __init__(
        self,
        *,
        angles: tuple[float, ...] = DEFAULT_ANGLES,
        mean_range: float = 30.0,
        fraction_of_clean: float = 0.5,
        interpolation: Interpolation = "bilinear",
        fill: Fill = "zeros",
        spatial: bool = True,
        spatial_angles: tuple[float, ...] = DEFAULT_SPATIAL_ANGLES,
        translate: float = 3.0,
        translate_steps: int = 5,
        k: int = 10,
        strips: int = 4,
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
        if fill not in FILLS:
            raise ConfigError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
        if not 0 < fraction_of_clean <= 1:
            raise ConfigError(f"fraction_of_clean must be in (0, 1], got {fraction_of_clean}")
        if k < 1 or translate < 0 or translate_steps < 1:
            raise ConfigError("k and translate_steps must be at least 1 and translate non-negative")
        self.angles = angles
        self.mean_range = mean_range
        self.fraction_of_clean = fraction_of_clean
        self.interpolation = interpolation
        self.fill = fill
        self.spatial = spatial
        self.spatial_angles = spatial_angles
        self.translate = translate
        self.translate_steps = translate_steps
        self.k = k
        self.strips = strips

    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> RotationResult:
        perturb = Affine(interpolation=self.interpolation, fill=self.fill)
        angles = torch.tensor(self.angles, dtype=torch.float64)
        params = rotations(angles)
        clean = engine.predict(model, data)
        preds, confidence = engine.sweep_scored(
            model, data, perturb, params, description="rotation sweep", identity=Affine.is_identity(params)
        )
        labels = data.labels
        correct = preds == labels.unsqueeze(1)
        k_classes = data.num_classes
        points = []
        for j, angle in enumerate(self.angles):
            col = correct[:, j]
            per_class = tuple(
                wilson_interval(int(col[labels == c].sum()), int((labels == c).sum())) for c in range(k_classes)
            )
            conf = confidence[:, j].double().numpy()
            points.append(
                AnglePoint(
                    angle=angle,
                    accuracy=wilson_interval(int(col.sum()), len(col)),
                    per_class=per_class,
                    confidence=float(conf.mean()) if len(conf) else None,
                    ece=ece(conf, col.numpy(), bins=DEFAULT_BINS) if len(conf) else None,
                )
            )
        clean_acc = float(clean.correct.float().mean())
        in_range = torch.tensor([abs(a) <= self.mean_range + 1e-9 for a in self.angles])
        mean_acc = (
            mean_interval(correct[:, in_range].float().mean(dim=1))
            if bool(in_range.any())
            else Interval(math.nan, math.nan, math.nan, 0)
        )
        if bool(in_range.any()):
            engine.publish(
                data,
                Outcome(
                    key=f"rotation_mean[range={fmt(self.mean_range)}]",
                    label=f"rotation, mean over ±{fmt(self.mean_range)}°",
                    values=correct[:, in_range].float().mean(dim=1),
                ),
            )
        for j, angle in enumerate(self.angles):
            engine.publish(
                data,
                Outcome(
                    key=f"rotation[angle={fmt(angle)}]",
                    label="",
                    values=correct[:, j].float(),
                    metric=f"rotation.accuracy[angle={fmt(angle)}]",
                    per_group=False,
                ),
            )
        accs = np.array([p.accuracy.value for p in points])
        worst = int(np.argmin(accs))
        worst_preds = torch.bincount(preds[:, worst], minlength=k_classes)
        sink_share = float(worst_preds.max()) / max(1, len(data))
        sink = int(worst_preds.argmax()) if sink_share >= 0.5 else None
        first_below = math.nan
        for j in sorted(range(len(points)), key=lambda i: (abs(self.angles[i]), self.angles[i])):
            if accs[j] < self.fraction_of_clean * clean_acc:
                first_below = self.angles[j]
                break
        return RotationResult(
            class_names=data.class_names,
            interpolation=self.interpolation,
            fill=self.fill,
            clean_accuracy=clean_acc,
            points=tuple(points),
            mean_range=self.mean_range,
            mean_accuracy=mean_acc,
            worst_angle=self.angles[worst],
            worst_accuracy=float(accs[worst]),
            fraction_of_clean=self.fraction_of_clean,
            first_below_angle=first_below,
            recoveries=self._recoveries(points, preds, data.class_names, sink),
            default_class=data.class_names[sink] if sink is not None else None,
            default_share=sink_share,
            spatial=self._spatial(model, data, engine, perturb, clean.correct) if self.spatial else None,
            examples=self._strips(data, preds, correct, perturb, clean.correct),
        )

    def _recoveries(
        self, points: list[AnglePoint], preds: Tensor, names: tuple[str, ...], sink: int | None
    ) -> tuple[Recovery, ...]:
        """Classes that come back at 90/180/270 degrees after dipping on the way there.

        A class recovers at angle ``a`` when at least half of its images are right at ``a`` and
        its accuracy somewhere between 30 degrees and ``|a| - 30`` degrees (on the way from 0 to
        ``a``) is at least 25 points lower. The model's default answer at its worst angle
        (``sink``) never counts: it is right there only because it is predicted for everything.
        """
        found = []
        for target in (90.0, 180.0, -90.0):
            matches = [j for j, p in enumerate(points) if _same_angle(p.angle, target)]
            if not matches:
                continue
            j = next((m for m in matches if abs(points[m].angle - target) < 1e-6), matches[0])
            p = points[j]
            span = abs(target)
            between = [
                q for q in points if 30.0 <= abs(q.angle) <= span - 30.0 and (span >= 180.0 or q.angle * target > 0)
            ]
            if not between:
                continue
            for c, (name, ci) in enumerate(zip(names, p.per_class, strict=True)):
                if c == sink or ci.n < 5 or ci.value < 0.5:
                    continue
                valley = min(q.per_class[c].value for q in between)
                if valley <= ci.value - 0.25:
                    found.append(Recovery(class_name=name, angle=p.angle, accuracy=ci.value, overall=p.accuracy.value))
        return tuple(found)

    def _spatial(
        self, model: nn.Module, data: ImageDataset, engine: Engine, perturb: Affine, natural: Tensor
    ) -> SpatialAttack:
        angles = torch.tensor(self.spatial_angles, dtype=torch.float64)
        shifts = torch.linspace(-self.translate, self.translate, self.translate_steps, dtype=torch.float64)
        grid = spatial_grid(angles, shifts)
        preds = engine.sweep(
            model, data, perturb, grid, description="spatial attack grid", identity=Affine.is_identity(grid)
        )
        correct = preds == data.labels.unsqueeze(1)
        engine.publish(
            data,
            Outcome(
                key="spatial_grid",
                label="spatial attack (grid)",
                values=correct.all(dim=1).float(),
                metric="spatial.accuracy[attack=grid]",
            ),
        )
        gen = torch.Generator().manual_seed(engine.seed)
        picks = torch.randint(0, grid.shape[0], (len(data), self.k), generator=gen)
        n = len(data)

        def ci(mask: Tensor) -> Interval:
            return wilson_interval(int(mask.sum()), n)

        return SpatialAttack(
            angles=self.spatial_angles,
            shifts=tuple(round(float(s), 6) for s in shifts),
            k=self.k,
            natural=ci(natural),
            random=ci(correct.gather(1, picks[:, :1]).squeeze(1)),
            worst_of_k=ci(correct.gather(1, picks).all(dim=1)),
            grid=ci(correct.all(dim=1)),
        )

    def _strips(
        self, data: ImageDataset, preds: Tensor, correct: Tensor, perturb: Affine, clean_correct: Tensor
    ) -> tuple[RotationStrip, ...]:
        """A few clean-correct samples (distinct classes, in class order) at several angles."""

        def gap(a: float, b: float) -> float:
            return abs(((a - b + 180.0) % 360.0) - 180.0)

        def closest(target: float) -> int:
            return min(
                range(len(self.angles)), key=lambda j: (gap(self.angles[j], target), abs(self.angles[j] - target))
            )

        nearest = [closest(t) for t in STRIP_ANGLES]
        cols = sorted(set(nearest), key=lambda j: _wrap(self.angles[j]))
        strips: list[RotationStrip] = []
        for c in range(data.num_classes):
            if len(strips) >= self.strips or not cols:
                break
            idx = torch.nonzero((data.labels == c) & clean_correct).flatten()
            if len(idx) == 0:
                continue
            i = int(idx[0])
            x = data.images[i : i + 1].float() / 255
            params = rotations(torch.tensor([self.angles[j] for j in cols], dtype=torch.float64))
            turned = perturb(x.expand(len(cols), -1, -1, -1), params)
            frames = tuple(
                Frame(
                    angle=self.angles[j],
                    image=to_data_uri((turned[t] * 255).round().clamp(0, 255).to(torch.uint8)),
                    pred=data.class_names[int(preds[i, j])],
                    correct=bool(correct[i, j]),
                )
                for t, j in enumerate(cols)
            )
            strips.append(RotationStrip(id=data.ids[i], label=data.class_names[c], frames=frames))
        return tuple(strips)
