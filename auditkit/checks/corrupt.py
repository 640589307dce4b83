"""Natural corruption robustness: accuracy under ImageNet-C corruptions x severities, overall and per class.

Every corruption is a batched op of :mod:`auditkit.ops.corrupt` run on the engine's device inside one
:meth:`Engine.map`; each (batch, corruption, severity) draws its random numbers from its own generator,
seeded from the batch's seed and the pair's name, so a number does not depend on which other
corruptions were run, nor on whether the batch was restored by ``--resume``.

Metrics (docs/metrics.md): accuracy per corruption x severity (Wilson interval), per class; mean accuracy
per corruption and over all of them (mCA); the worst corruption. mCE against a baseline run (ImageNet-C's
corruption error normalised by another model's) is the pure function :func:`corruption_errors`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import field_validator

from auditkit.checks.base import Check
from auditkit.engine.loop import Batch, Engine, Outcome
from auditkit.exceptions import ConfigError, NonFiniteOutputError
from auditkit.inputs.data import ImageDataset
from auditkit.inputs.images import to_data_uri
from auditkit.ops.corrupt import CORRUPTIONS, SEVERITIES, check_names, check_severities, corrupt, names_for
from auditkit.ops.metrics import mean_interval, wilson_interval
from auditkit.results import CheckResult, Conditions, Finding, Interval, Metric, pct, points
from auditkit.settings import Settings, join_list, setting

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")

MAX_CLASS_METRICS = 20  # per-class metrics per corruption x severity only up to this many classes
MAX_CLASS_MEAN_METRICS = 100  # per-class mean accuracies up to this many classes
MIN_CLASS_SUPPORT = 5  # a class needs this many images to be named in a finding


@dataclass(frozen=True)
class SeverityPoint:
    """Accuracy under one corruption at one severity, overall and per class (indexed like ``class_names``)."""

    severity: int
    accuracy: Interval
    per_class: tuple[Interval, ...]
    #: expected calibration error of the answers on the corrupted images (15 equal-width bins)
    ece: float = math.nan


@dataclass(frozen=True)
class CorruptionCurve:
    """One corruption: accuracy at each severity and its mean over the severities (per-image t interval)."""

    name: str
    family: str
    points: tuple[SeverityPoint, ...]
    mean_accuracy: Interval
    per_class_mean: tuple[float, ...]


@dataclass(frozen=True)
class ClassDrop:
    """One class: clean accuracy and mean accuracy over every corruption x severity."""

    name: str
    support: int
    clean: float
    corrupted: float

    @property
    def drop(self) -> float:
        return self.clean - self.corrupted


@dataclass(frozen=True)
class StripFrame:
    """One image at one severity (0: unaltered) with the model's answer."""

    severity: int
    image: str
    pred: str
    correct: bool


@dataclass(frozen=True)
class CorruptionStrip:
    """One sample shown under one corruption at every severity."""

    corruption: str
    id: str
    label: str
    frames: tuple[StripFrame, ...]


@dataclass(frozen=True)
class CorruptionResult(CheckResult):
    """Accuracy under corruptions x severities, with summaries for gates."""

    kind = "corrupt"

    class_names: tuple[str, ...]
    severities: tuple[int, ...]
    image_size: tuple[int, int]
    channels: int
    size_scale: float
    clean_accuracy: float
    curves: tuple[CorruptionCurve, ...]
    mean_accuracy: Interval
    worst_corruption: str
    worst_accuracy: float
    class_drops: tuple[ClassDrop, ...]
    skipped: tuple[str, ...]
    examples: tuple[CorruptionStrip, ...]

    title = "Natural corruptions"
    template = "corrupt.html.j2"

    def curve(self, name: str) -> CorruptionCurve:
        """The curve of corruption ``name``."""
        for c in self.curves:
            if c.name == name:
                return c
        raise KeyError(name)

    def headline(self) -> str:
        return (
            f"{pct(self.mean_accuracy.value)} mean accuracy under {len(self.curves)} corruptions x "
            f"{len(self.severities)} severities (clean {pct(self.clean_accuracy)}); worst {self.worst_corruption} "
            f"{pct(self.worst_accuracy)}"
        )

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        clean, mean = self.clean_accuracy, self.mean_accuracy.value
        drop = clean - mean
        sev = _severity_text(self.severities)
        out = [
            Finding(
                conditions.drop(drop),
                f"Under {len(self.curves)} natural corruptions (noise, blur, fog, JPEG, ...) at {sev}, accuracy "
                f"drops from {pct(clean)} to {pct(mean)} on average ({points(drop)}).",
                points(drop),
                "corrupt.mean_accuracy",
            )
        ]
        if self.curves:
            worst = self.curve(self.worst_corruption)
            hardest = worst.points[-1]
            out.append(
                Finding(
                    conditions.drop(clean - worst.mean_accuracy.value),
                    f"The worst corruption is {worst.name.replace('_', ' ')}: {pct(worst.mean_accuracy.value)} of "
                    f"images are recognised on average over {sev}, {pct(hardest.accuracy.value)} at severity "
                    f"{hardest.severity}.",
                    pct(worst.mean_accuracy.value),
                    f"corrupt.mean_accuracy[corruption={worst.name}]",
                )
            )
        hurt = [c for c in self.class_drops if c.support >= MIN_CLASS_SUPPORT and c.drop - drop >= conditions.warn_gap]
        for c in sorted(hurt, key=lambda c: -c.drop)[:2]:
            out.append(
                Finding(
                    conditions.gap(c.drop - drop, significant=False),
                    f"Class '{c.name}' is hurt most by corruptions: from {pct(c.clean)} to {pct(c.corrupted)} "
                    f"({points(c.drop)}, {points(c.drop - drop)} more than all classes).",
                    points(c.drop),
                    f"corrupt.mean_accuracy[class={c.name}]",
                )
            )
        return tuple(out)

    def report_context(self) -> dict[str, Any]:
        from auditkit.report import corrupt_plots, plots

        return {
            "heatmap_svg": plots.svg(corrupt_plots.severity_heatmap(self)),
            "per_class_svg": plots.svg(corrupt_plots.worst_per_class(self)) if self.curves else "",
        }

    def metric_records(self) -> tuple[Metric, ...]:
        out: list[Metric] = []
        per_class = len(self.class_names) <= MAX_CLASS_METRICS
        for c in self.curves:
            for p in c.points:
                key = f"corruption={c.name},severity={p.severity}"
                out.append(Metric.of(f"corrupt.accuracy[{key}]", p.accuracy))
                out.append(Metric(f"corrupt.ece[{key}]", p.ece, "lower"))
                if per_class:
                    for name, ci in zip(self.class_names, p.per_class, strict=True):
                        if ci.n:
                            out.append(Metric(f"corrupt.accuracy[{key},class={name}]", ci.value))
            out.append(Metric.of(f"corrupt.mean_accuracy[corruption={c.name}]", c.mean_accuracy))
        out.append(Metric.of("corrupt.mean_accuracy", self.mean_accuracy))
        out.append(Metric("corrupt.mean_drop", self.clean_accuracy - self.mean_accuracy.value, "lower"))
        out.append(Metric("corrupt.worst_accuracy", self.worst_accuracy))
        if len(self.class_names) <= MAX_CLASS_MEAN_METRICS:
            out += [
                Metric(f"corrupt.mean_accuracy[class={c.name}]", c.corrupted) for c in self.class_drops if c.support
            ]
        return tuple(out)


def _severity_text(severities: tuple[int, ...]) -> str:
    if len(severities) == 1:
        return f"severity {severities[0]}"
    if list(severities) == list(range(severities[0], severities[-1] + 1)):
        return f"severities {severities[0]}-{severities[-1]}"
    return "severities " + ", ".join(map(str, severities))


# ---------------------------------------------------------------------------------------------- mCE


@dataclass(frozen=True)
class CorruptionErrors:
    """ImageNet-C's corruption errors of a run against a baseline run (Hendrycks & Dietterich 2019, sec. 3):

    ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}`` and ``relative CE_c = sum_s (E_{s,c} - E_clean) /
    sum_s (E^base_{s,c} - E^base_clean)``, with ``E`` top-1 error; mCE and relative mCE are their means
    over the corruptions both runs measured. Below 1 is better than the baseline.
    """

    corruptions: tuple[str, ...]
    ce: tuple[float, ...]
    relative_ce: tuple[float, ...]
    mce: float
    relative_mce: float

    def metric_records(self) -> tuple[Metric, ...]:
        out = [
            Metric(f"corrupt.ce[corruption={n}]", v, "lower", "ratio")
            for n, v in zip(self.corruptions, self.ce, strict=True)
        ]
        out += [
            Metric(f"corrupt.relative_ce[corruption={n}]", v, "lower", "ratio")
            for n, v in zip(self.corruptions, self.relative_ce, strict=True)
        ]
        out.append(Metric("corrupt.mce", self.mce, "lower", "ratio"))
        out.append(Metric("corrupt.relative_mce", self.relative_mce, "lower", "ratio"))
        return tuple(out)


def corruption_errors(result: CorruptionResult, baseline: CorruptionResult) -> CorruptionErrors:
    """mCE and relative mCE of ``result`` normalised by ``baseline`` (same corruptions and severities:
    :class:`ConfigError` naming what differs otherwise). A ratio whose denominator is 0 is ``nan``."""
    if tuple(result.severities) != tuple(baseline.severities):
        raise ConfigError(
            f"mCE needs the same severities in both runs: {list(result.severities)} here, "
            f"{list(baseline.severities)} in the baseline"
        )
    missing = [c.name for c in result.curves if c.name not in {b.name for b in baseline.curves}]
    if missing:
        raise ConfigError(f"mCE: the baseline run did not measure {', '.join(missing)}")

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else math.nan

    names, ce, rel = [], [], []
    for c in result.curves:
        b = baseline.curve(c.name)
        err = [1 - p.accuracy.value for p in c.points]
        base = [1 - p.accuracy.value for p in b.points]
        names.append(c.name)
        ce.append(ratio(sum(err), sum(base)))
        e0, b0 = 1 - result.clean_accuracy, 1 - baseline.clean_accuracy
        rel.append(ratio(sum(e - e0 for e in err), sum(e - b0 for e in base)))

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    return CorruptionErrors(tuple(names), tuple(ce), tuple(rel), mean(ce), mean(rel))


# ---------------------------------------------------------------------------------------------- the check


def parse_corruptions(text: str | None) -> tuple[str, ...] | None:
    """``"fog,pixelate"`` -> the names (checked against the catalogue); ``None``/empty: all that apply."""
    if text is None or not text.strip():
        return None
    names = check_names([t.strip() for t in text.split(",") if t.strip()])
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--corruptions names {', '.join(twice)} more than once; list each corruption once")
    return names


def parse_severities(text: str) -> tuple[int, ...]:
    """``"1,3,5"`` or ``"1:5"`` (inclusive) -> sorted unique severities, each 1 to 5."""
    try:
        if ":" in text:
            lo, hi = (int(v) for v in text.split(":"))
            values = list(range(lo, hi + 1))
        else:
            values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"severities take integers from 1 to 5 as a list (1,3,5) or a range (1:5), got {text!r}"
        ) from None
    return tuple(sorted(set(check_severities(values))))


def image_seed(seed: int, index: int, name: str, severity: int) -> int:
    """A 63-bit seed for one corruption at one severity of image ``index`` (its position in the dataset) in
    a run seeded ``seed``: independent of the batch the image lands in (batch size, out-of-memory halving,
    ranks, resume)."""
    digest = hashlib.blake2b(f"{seed}\x1f{index}\x1f{name}\x1f{severity}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def corrupt_images(x: Tensor, indices: Sequence[int], seed: int, name: str, severity: int) -> Tensor:
    """Images ``x`` ``(B, C, H, W)`` (dataset positions ``indices``) under one corruption, as the sweep
    corrupts them: each image with its own generator (:func:`image_seed`)."""
    if not CORRUPTIONS[name].random:
        return corrupt(x, name, severity)
    gens = [torch.Generator().manual_seed(image_seed(seed, int(i), name, severity)) for i in indices]
    return corrupt(x, name, severity, gens)


def corrupt_batch(b: Batch, seed: int, name: str, severity: int) -> Tensor:
    """Batch ``b``'s images ``(B, C, H, W)`` under one corruption, as the check's sweep produces them."""
    return corrupt_images(b.x, range(b.start, b.stop), seed, name, severity)


class CorruptSettings(Settings):
    """Settings of the corruption sweep (``[corrupt]`` in auditkit.toml)."""

    section: ClassVar[str] = "corrupt"

    corruptions: str | None = setting(
        None, "Corruptions, comma-separated (see docs/corrupt.md). [default: all that apply to the images]"
    )
    severities: str = setting("1,2,3,4,5", "Severities from 1 to 5: a list (1,3,5) or a range (1:5).")

    _lists = field_validator("corruptions", "severities", mode="before")(join_list)

    @field_validator("corruptions")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        try:
            parse_corruptions(value)
        except ConfigError as exc:
            unknown = [t.strip() for t in (value or "").split(",") if t.strip() and t.strip() not in CORRUPTIONS]
            if not unknown:  # known names, refused for another reason (one named twice)
                raise ValueError(str(exc).removeprefix("--corruptions ")) from None
            raise ValueError(f"must be among {', '.join(CORRUPTIONS)}; unknown: {', '.join(unknown)}") from None
        return value

    @field_validator("severities")
    @classmethod
    def _severities(cls, value: str) -> str:
        try:
            parse_severities(value)
        except ConfigError:
            raise ValueError("must be integers from 1 to 5: a list (1,3,5) or a range (1:5)") from None
        return value


class CorruptionSweep(Check):
    """Accuracy under each corruption at each severity (overall, per class), mCA and the worst corruption."""

    name = "corrupt"
    settings_type = CorruptSettings
    result_type = CorruptionResult
    command = "corrupt"
    help = (
        "Accuracy under natural corruptions (ImageNet-C: noise, blur, fog, brightness, contrast, elastic, pixelate, "
        "JPEG, saturate, scale) at severities 1-5, overall and per class; writes results.json and index.html."
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> CorruptionSweep:
        s = CorruptSettings.model_validate(settings)
        return cls(corruptions=parse_corruptions(s.corruptions), severities=parse_severities(s.severities))

    def __init__(
        self,
        *,
        corruptions: str | Sequence[str] | None = None,
        severities: str | Sequence[int] = SEVERITIES,
        strips: int = 3,
    ) -> None:
        """``corruptions``: names, or the comma text the CLI takes (``None``: all that apply);
        ``severities``: 1 to 5, or ``"1,3,5"`` / ``"1:5"``."""
        if isinstance(corruptions, str):
            corruptions = parse_corruptions(corruptions)
        elif corruptions is not None:
            corruptions = parse_corruptions(",".join(corruptions))
        self.corruptions = corruptions
        if isinstance(severities, str):
            severities = parse_severities(severities)
        self.severities = tuple(sorted(set(check_severities(list(severities)))))
        self.strips = strips

    def names(self, channels: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The corruptions to run on ``channels``-channel images and those left out (with why)."""
        if self.corruptions is None:
            run = names_for(channels)
            return run, tuple(f"{n} (needs RGB images)" for n in CORRUPTIONS if n not in run)
        rgb = [n for n in self.corruptions if CORRUPTIONS[n].rgb_only]
        if rgb and channels != 3:
            raise ConfigError(
                f"{', '.join(rgb)} needs RGB images and these have {channels} channel(s): leave it out of --corruptions"
            )
        return self.corruptions, ()

    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> CorruptionResult:
        channels, h, w = (int(v) for v in data.images[0:1].shape[1:]) if len(data) else (1, 0, 0)
        names, skipped = self.names(channels)
        pairs = [(n, s) for n in names for s in self.severities]
        clean = engine.predict(model, data)
        n = len(data)

        def run(b: Batch) -> tuple[int, int, Tensor, Tensor]:
            out = torch.empty(b.x.shape[0], len(pairs), dtype=torch.int64)
            conf = torch.empty(b.x.shape[0], len(pairs), dtype=torch.float64)
            for j, (name, severity) in enumerate(pairs):
                logits = model(corrupt_batch(b, engine.seed, name, severity))
                pred = logits.argmax(dim=1).masked_fill(~torch.isfinite(logits).all(dim=1), -1)
                out[:, j] = pred.cpu()
                conf[:, j] = torch.softmax(logits.detach().double(), dim=1).amax(dim=1).cpu()
                b.report((j + 1) / len(pairs))
            return b.start, b.stop, out, conf

        preds = torch.empty(n, len(pairs), dtype=torch.int64)
        confidence = torch.empty(n, len(pairs), dtype=torch.float64)
        with engine.counting_nonfinite():  # non-finite logits are counted per corruption below, then refused
            loop = engine.map(run, data, description="corruption sweep", per_image=len(pairs), unit="corrupted images")
            for start, stop, part, conf_part in loop:
                preds[start:stop] = part
                confidence[start:stop] = conf_part
        bad = preds < 0
        if bool(bad.any()):  # never score a NaN logit as an answer
            where = [
                f"{name} severity {s} ({int(bad[:, j].sum())})" for j, (name, s) in enumerate(pairs) if bad[:, j].any()
            ]
            raise NonFiniteOutputError(
                f"corruption sweep: the model returned NaN or infinite logits on {int(bad.sum())} corrupted inputs "
                f"({int(bad.any(dim=1).sum())} of {n} images): {', '.join(where[:5])}"
            )
        labels = data.labels
        correct = preds == labels.unsqueeze(1)
        curves = self._curves(names, correct, labels, data.num_classes, confidence)
        self._publish(engine, data, names, pairs, correct, curves)
        everything = correct.double().mean(dim=1) if pairs else torch.zeros(0)
        means = [c.mean_accuracy.value for c in curves]
        worst = (
            min(range(len(curves)), key=lambda i: (means[i] if means[i] == means[i] else math.inf, i)) if curves else -1
        )
        class_drops = tuple(
            ClassDrop(
                name=name,
                support=int((labels == k).sum()),
                clean=float(clean.correct[labels == k].float().mean()) if bool((labels == k).any()) else math.nan,
                corrupted=float(everything[labels == k].mean()) if bool((labels == k).any()) else math.nan,
            )
            for k, name in enumerate(data.class_names)
        )
        return CorruptionResult(
            class_names=data.class_names,
            severities=self.severities,
            image_size=(h, w),
            channels=channels,
            size_scale=min(h, w) / 224,
            clean_accuracy=float(clean.correct.float().mean()) if n else math.nan,
            curves=curves,
            mean_accuracy=mean_interval(everything) if pairs else Interval(math.nan, math.nan, math.nan, 0),
            worst_corruption=curves[worst].name if curves else "",
            worst_accuracy=curves[worst].mean_accuracy.value if curves else math.nan,
            class_drops=class_drops,
            skipped=skipped,
            examples=self._strips(model, data, engine, curves, clean.correct),
        )

    def _curves(
        self, names: tuple[str, ...], correct: Tensor, labels: Tensor, k_classes: int, confidence: Tensor
    ) -> tuple[CorruptionCurve, ...]:
        """``correct`` and ``confidence``: ``(N, corruptions x severities)``, corruption-major."""
        from auditkit.ops.calibration import ece

        n_sev = len(self.severities)
        masks = [labels == c for c in range(k_classes)]
        curves = []
        for i, name in enumerate(names):
            block = correct[:, i * n_sev : (i + 1) * n_sev]
            pts = tuple(
                SeverityPoint(
                    severity=s,
                    accuracy=wilson_interval(int(block[:, j].sum()), len(block)),
                    per_class=tuple(wilson_interval(int(block[m, j].sum()), int(m.sum())) for m in masks),
                    ece=ece(confidence[:, i * n_sev + j].numpy(), block[:, j].numpy()) if len(block) else math.nan,
                )
                for j, s in enumerate(self.severities)
            )
            per_image = block.double().mean(dim=1)
            curves.append(
                CorruptionCurve(
                    name=name,
                    family=CORRUPTIONS[name].family,
                    points=pts,
                    mean_accuracy=mean_interval(per_image),
                    per_class_mean=tuple(float(per_image[m].mean()) if bool(m.any()) else math.nan for m in masks),
                )
            )
        return tuple(curves)

    def _publish(
        self,
        engine: Engine,
        data: ImageDataset,
        names: tuple[str, ...],
        pairs: list[tuple[str, int]],
        correct: Tensor,
        curves: tuple[CorruptionCurve, ...],
    ) -> None:
        """Per-image outcomes: each corruption x severity (0/1, for paired baseline comparisons), and the mean
        over all of them and over the worst corruption's severities (broken down per subgroup)."""
        for j, (name, s) in enumerate(pairs):
            metric = f"corrupt.accuracy[corruption={name},severity={s}]"
            engine.publish(
                data, Outcome(key=metric, label="", values=correct[:, j].float(), metric=metric, per_group=False)
            )
        if not pairs:
            return
        engine.publish(
            data, Outcome(key="corrupt_mean", label="corruptions, mean of all", values=correct.float().mean(dim=1))
        )
        means = [c.mean_accuracy.value for c in curves]
        i = min(range(len(curves)), key=lambda i: (means[i] if means[i] == means[i] else math.inf, i))
        n_sev = len(self.severities)
        engine.publish(
            data,
            Outcome(
                key=f"corrupt_mean[corruption={names[i]}]",
                label=f"{names[i].replace('_', ' ')} (worst corruption), mean of severities",
                values=correct[:, i * n_sev : (i + 1) * n_sev].float().mean(dim=1),
            ),
        )

    def _strips(
        self, model: nn.Module, data: ImageDataset, engine: Engine, curves: tuple[CorruptionCurve, ...], ok: Tensor
    ) -> tuple[CorruptionStrip, ...]:
        """One clean-correct image under each of the worst corruptions, at every severity, with the answers."""
        picked = torch.nonzero(ok).flatten()[:1]
        if not curves or self.strips < 1 or len(picked) == 0:
            return ()
        worst = sorted(curves, key=lambda c: (c.mean_accuracy.value, c.name))[: self.strips]
        sample = data.take(picked)

        def run(b: Batch) -> list[tuple[str, Tensor, Tensor]]:
            out = []
            where = [int(i) for i in picked[b.start : b.stop]]  # dataset positions: the sweep's own pictures
            for c in worst:
                shown = torch.cat([corrupt_images(b.x, where, engine.seed, c.name, s) for s in self.severities])
                logits = model(shown)
                if not bool(torch.isfinite(logits).all()):
                    raise NonFiniteOutputError(
                        f"corruption examples: the model returned NaN or infinite logits on {c.name}"
                    )
                out.append((c.name, (shown * 255).round().clamp(0, 255).to(torch.uint8).cpu(), logits.argmax(1).cpu()))
            return out

        (rows,) = list(engine.map(run, sample, description="corruption examples"))
        i, names = int(picked[0]), data.class_names
        y = int(data.labels[i])
        clean_frame = StripFrame(0, to_data_uri(data.images[i]), names[y], True)
        return tuple(
            CorruptionStrip(
                corruption=name,
                id=data.ids[i],
                label=names[y],
                frames=(
                    clean_frame,
                    *(
                        StripFrame(s, to_data_uri(images[j]), names[int(pred[j])], int(pred[j]) == y)
                        for j, s in enumerate(self.severities)
                    ),
                ),
            )
            for name, images, pred in rows
        )
