"""Gradient saliency through captum, with the model-parameter randomisation sanity check.

Maps come from captum (Saliency, InputXGradient, IntegratedGradients, NoiseTunnel/SmoothGrad,
LayerGradCam). The sanity check (Adebayo et al. 2018) re-initialises the network's layers from
the top down, cumulatively, and measures how much the maps change (Spearman rank correlation of
the absolute maps, trained vs randomised): a method whose maps barely change does not explain
this model and is flagged.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pydantic import field_validator

from auditkit.checks.base import Check
from auditkit.engine.loop import Batch, Engine
from auditkit.engine.progress import Task
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import ImageDataset
from auditkit.inputs.images import to_data_uri
from auditkit.results import CheckResult, Conditions, Finding, Metric
from auditkit.settings import Settings, join_list, setting

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn
else:
    from auditkit._lazy import lazy

    np = lazy("numpy")
    torch = lazy("torch")
    nn = lazy("torch.nn")

#: method name -> ``(model, x (B,C,H,W), target (B,), layer) -> attributions (B, H, W)``
Method = Callable[["nn.Module", "Tensor", "Tensor", "nn.Module | None"], "Tensor"]
SANITY_THRESHOLD = 0.5


def find_last_conv(model: nn.Module) -> tuple[str, nn.Module]:
    """The last ``nn.Conv2d`` in ``model`` (Grad-CAM's default layer)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not found:
        raise ConfigError("Grad-CAM needs a convolutional layer and the model has none; leave gradcam out of --methods")
    return found[-1]


def _channels(attr: Tensor) -> Tensor:
    return attr.detach().abs().sum(dim=1)


MIN_CAM_SIZE = 4  # Grad-CAM layers below 4x4 give maps too coarse to read


def _module(model: nn.Module, name: str) -> nn.Module | None:
    return dict(model.named_modules()).get(name)


def _output_size(model: nn.Module, layer: nn.Module | None, x: Tensor) -> tuple[int, int] | None:
    """The spatial size ``(H', W')`` of ``layer``'s output on ``x`` ``(1, C, H, W)`` (``None``: not 4-D)."""
    if layer is None:
        return None
    shapes: list[tuple[int, ...]] = []
    hook = layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return (int(shapes[0][-2]), int(shapes[0][-1])) if shapes and len(shapes[0]) == 4 else None


def _saliency(model: nn.Module, x: Tensor, t: Tensor, layer: nn.Module | None) -> Tensor:
    from captum.attr import Saliency

    return _channels(Saliency(model).attribute(x, target=t, abs=True))


def _input_x_gradient(model: nn.Module, x: Tensor, t: Tensor, layer: nn.Module | None) -> Tensor:
    from captum.attr import InputXGradient

    return _channels(InputXGradient(model).attribute(x, target=t))


def _integrated_gradients(model: nn.Module, x: Tensor, t: Tensor, layer: nn.Module | None) -> Tensor:
    from captum.attr import IntegratedGradients

    return _channels(IntegratedGradients(model).attribute(x, target=t, n_steps=32, internal_batch_size=256))


def _smoothgrad(model: nn.Module, x: Tensor, t: Tensor, layer: nn.Module | None) -> Tensor:
    from captum.attr import NoiseTunnel, Saliency

    nt = NoiseTunnel(Saliency(model))
    return _channels(nt.attribute(x, nt_type="smoothgrad", nt_samples=16, stdevs=0.1, target=t, abs=True))


def _gradcam(model: nn.Module, x: Tensor, t: Tensor, layer: nn.Module | None) -> Tensor:
    from captum.attr import LayerAttribution, LayerGradCam

    if layer is None:
        layer = find_last_conv(model)[1]
    cam = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].detach()


METHODS: dict[str, Method] = {
    "saliency": _saliency,
    "input_x_gradient": _input_x_gradient,
    "integrated_gradients": _integrated_gradients,
    "smoothgrad": _smoothgrad,
    "gradcam": _gradcam,
}


def relevance_mass(maps: Tensor, mask: Tensor) -> Tensor:
    """Share of absolute attribution inside ``mask``: maps ``(N, H, W)``, mask ``(N|1, H, W)`` bool -> ``(N,)``."""
    a = maps.abs().flatten(1)
    inside = (a * mask.expand_as(maps).flatten(1).float()).sum(dim=1)
    return inside / a.sum(dim=1).clamp_min(1e-12)


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Mean over samples of Spearman's rank correlation between two ``(N, H, W)`` maps."""
    from scipy.stats import spearmanr

    values = []
    for x, y in zip(a.flatten(1).cpu().numpy(), b.flatten(1).cpu().numpy(), strict=True):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            values.append(1.0 if np.array_equal(x, y) else 0.0)
        else:
            values.append(float(spearmanr(x, y).statistic))
    return float(np.mean(values)) if values else math.nan


def randomisation_stages(model: nn.Module, max_stages: int = 6) -> list[tuple[str, nn.Module]]:
    """Cumulatively randomised copies of ``model``, from the top layer down: ``(last layer reset, copy)``."""
    layers = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    order = list(reversed(layers))
    cut = sorted(
        {max(1, round(len(order) * (i + 1) / min(max_stages, len(order)))) for i in range(min(max_stages, len(order)))}
    )
    stages = []
    gen = torch.Generator().manual_seed(1234)
    for k in cut:
        clone = copy.deepcopy(model)
        modules = dict(clone.named_modules())
        for name in order[:k]:
            for p in modules[name].parameters(recurse=False):
                with torch.no_grad():
                    fan = max(1, p[0].numel()) if p.ndim > 1 else max(1, p.numel())
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan))
        stages.append((order[k - 1], clone))
    return stages


@dataclass(frozen=True)
class SanityResult:
    """One method's randomisation test: correlation after each cumulative stage, and the verdict."""

    method: str
    stages: tuple[str, ...]
    correlations: tuple[float, ...]
    final: float
    passed: bool


@dataclass(frozen=True)
class MapImages:
    method: str
    heatmap: str
    overlay: str


@dataclass(frozen=True)
class SaliencyExample:
    """One explained image: why it was chosen, labels, and a heat map + overlay per method."""

    id: str
    reason: str
    label: str
    pred: str
    confidence: float
    target: str
    image: str
    maps: tuple[MapImages, ...]


@dataclass(frozen=True)
class SaliencyResult(CheckResult):
    """Saliency galleries and the sanity check of each method."""

    kind = "saliency"

    methods: tuple[str, ...]
    layer: str
    target: str
    threshold: float
    sanity: tuple[SanityResult, ...]
    examples: tuple[SaliencyExample, ...]
    #: Grad-CAM's layer output ``(H', W')``: its maps are that coarse before upsampling (``None``: no Grad-CAM)
    layer_size: tuple[int, int] | None = None

    title = "Saliency"
    template = "saliency.html.j2"

    def headline(self) -> str:
        ok = [s.method for s in self.sanity if s.passed]
        bad = [s.method for s in self.sanity if not s.passed]
        return f"sanity check passed: {', '.join(ok) or 'none'}" + (
            f"; not trustworthy here: {', '.join(bad)}" if bad else ""
        )

    def coarse_layer(self) -> str:
        """A warning when Grad-CAM's layer is smaller than 4x4 (its maps are a few upsampled blocks), else ``""``."""
        if self.layer_size is None or min(self.layer_size) >= MIN_CAM_SIZE:
            return ""
        h, w = self.layer_size
        return (
            f"Grad-CAM's layer '{self.layer}' is only {h}×{w}, so its maps are {h}×{w} blocks scaled up to the "
            "image; choose an earlier convolutional layer with --layer."
        )

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        coarse = self.coarse_layer()
        extra = (Finding("warn", coarse, "×".join(map(str, self.layer_size or ()))),) if coarse else ()
        return extra + tuple(
            Finding(
                "pass" if s.passed else "warn",
                f"{s.method} maps change when the model's weights are randomised (correlation {s.final:.3f}): "
                "they reflect what the model learned."
                if s.passed
                else f"{s.method} maps barely change when the model's weights are randomised (correlation "
                f"{s.final:.3f}, threshold {self.threshold:g}): do not read them as explanations.",
                f"{s.final:.3f}",
                f"saliency.randomization_spearman[method={s.method}]",
            )
            for s in self.sanity
        )

    def metric_records(self) -> tuple[Metric, ...]:
        out: list[Metric] = []
        for s in self.sanity:
            out.append(Metric(f"saliency.sanity[method={s.method}]", 1.0 if s.passed else 0.0, unit="flag"))
            out.append(Metric(f"saliency.randomization_spearman[method={s.method}]", s.final, "lower", "correlation"))
        return tuple(out)


def parse_methods(text: str) -> tuple[str, ...]:
    """``"saliency, gradcam"`` -> ``("saliency", "gradcam")``."""
    return tuple(m.strip() for m in text.split(",") if m.strip())


class SaliencySettings(Settings):
    """Settings of the saliency check (``[saliency]`` in auditkit.toml)."""

    section: ClassVar[str] = "saliency"

    methods: str = setting(
        "saliency,input_x_gradient,integrated_gradients,smoothgrad,gradcam",
        "Comma list of saliency, input_x_gradient, integrated_gradients, smoothgrad, gradcam. [default: all]",
    )
    saliency_target: str = setting("pred", "Class to explain: pred, true or a class name.")
    layer: str | None = setting(None, "Grad-CAM layer (module name). [default: the last Conv2d]")

    _lists = field_validator("methods", mode="before")(join_list)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: str) -> str:
        bad = [m for m in parse_methods(value) if m not in METHODS]
        if bad or not parse_methods(value):
            raise ValueError(f"must be among {', '.join(METHODS)}, got {bad or value!r}")
        return value


class SaliencyMaps(Check):
    """Saliency maps for a deterministic selection of images, and their sanity check."""

    name = "saliency"
    settings_type = SaliencySettings
    result_type = SaliencyResult
    command = "saliency"
    help = (
        "Saliency maps through captum (gradient, input x gradient, integrated gradients, SmoothGrad, Grad-CAM) "
        "for a deterministic selection of images, with the model-parameter randomisation sanity check."
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> SaliencyMaps:
        s = SaliencySettings.model_validate(settings)
        return cls(methods=parse_methods(s.methods), target=s.saliency_target, layer=s.layer)

    def __init__(
        self,
        *,
        methods: tuple[str, ...] = tuple(METHODS),
        target: str = "pred",
        layer: str | None = None,
        per_kind: int = 3,
        sanity_samples: int = 16,
        extra_methods: dict[str, Method] | None = None,
    ) -> None:
        registry = METHODS | (extra_methods or {})
        unknown = [m for m in methods if m not in registry]
        if unknown:
            raise ConfigError(f"--methods must be among {', '.join(registry)}, got {unknown}")
        self.registry = registry
        self.methods = methods
        self.target = target
        self.layer = layer
        self.per_kind = per_kind
        self.sanity_samples = sanity_samples

    def _layer(self, model: nn.Module) -> tuple[str, nn.Module | None]:
        if "gradcam" not in self.methods:
            return "", None
        if self.layer is None:
            return find_last_conv(model)
        modules = dict(model.named_modules())
        if self.layer not in modules:
            convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
            raise ConfigError(f"--layer {self.layer!r} is not a layer of the model; conv layers: {convs[-5:]}")
        return self.layer, modules[self.layer]

    def _targets(self, data: ImageDataset, pred: Tensor) -> Tensor:
        if self.target == "pred":
            return pred
        if self.target == "true":
            return data.labels
        if self.target not in data.class_names:
            raise ConfigError(
                f"--saliency-target must be pred, true or a class name {list(data.class_names)[:10]}, "
                f"got {self.target!r}"
            )
        return torch.full_like(data.labels, data.class_names.index(self.target))

    def maps(
        self,
        model: nn.Module,
        data: ImageDataset,
        targets: Tensor,
        engine: Engine,
        layer: nn.Module | None,
        method: str,
        *,
        task: Task | None = None,
    ) -> Tensor:
        """``(N, H, W)`` maps of ``method`` for every sample of ``data``, batched on the engine (advancing
        ``task`` by one per image, or a bar of its own)."""
        fn = self.registry[method]

        def run(b: Batch) -> Tensor:
            x = b.x.detach().clone().requires_grad_(True)  # captum would warn and set it itself
            return fn(model, x, targets[b.start : b.stop].to(b.x.device), layer).detach().float().cpu()

        return torch.cat(list(engine.map(run, data, description=f"saliency {method}", grad=True, task=task)))

    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> SaliencyResult:
        layer_name, layer = self._layer(model)
        clean = engine.predict(model, data)
        targets = self._targets(data, clean.pred)
        chosen, reasons = self._select(clean.logits, clean.pred, clean.label)
        sub = data.take(chosen)
        sub_targets = targets[chosen]
        with engine.task("saliency maps", len(sub) * len(self.methods)) as task:
            maps = {m: self.maps(model, sub, sub_targets, engine, layer, m, task=task) for m in self.methods}
        sanity = self._sanity(model, data, targets, engine, layer_name)
        probs = torch.softmax(clean.logits, dim=1)
        names = data.class_names
        examples = []
        for j, i in enumerate(chosen.tolist()):
            img = data.images[i]
            examples.append(
                SaliencyExample(
                    id=data.ids[i],
                    reason=reasons[j],
                    label=names[int(clean.label[i])],
                    pred=names[int(clean.pred[i])],
                    confidence=float(probs[i].max()),
                    target=names[int(targets[i])],
                    image=to_data_uri(img),
                    maps=tuple(MapImages(m, *_heat_images(maps[m][j], img)) for m in self.methods),
                )
            )
        return SaliencyResult(
            methods=self.methods,
            layer=layer_name,
            target=self.target,
            threshold=SANITY_THRESHOLD,
            sanity=tuple(sanity),
            examples=tuple(examples),
            layer_size=_output_size(model, layer or _module(model, layer_name), engine.batch(data, 0, 1).x)
            if layer_name and len(data)
            else None,
        )

    def _select(self, logits: Tensor, pred: Tensor, label: Tensor) -> tuple[Tensor, list[str]]:
        """Most confident correct, most confident wrong, lowest margin: ``per_kind`` each, deterministic."""
        probs = torch.softmax(logits, dim=1)
        conf = probs.max(dim=1).values
        top2 = probs.topk(min(2, probs.shape[1]), dim=1).values
        margin = top2[:, 0] - top2[:, -1]
        correct = pred == label
        picked: list[int] = []
        reasons: list[str] = []
        for reason, mask, score in (
            ("most confident correct", correct, -conf),
            ("most confident wrong", ~correct, -conf),
            ("lowest margin", torch.ones_like(correct), margin),
        ):
            idx = torch.nonzero(mask).flatten()
            order = idx[torch.argsort(score[idx], stable=True)]
            for i in order.tolist():
                if len([r for r in reasons if r == reason]) >= self.per_kind:
                    break
                if i not in picked:
                    picked.append(i)
                    reasons.append(reason)
        return torch.tensor(picked, dtype=torch.long), reasons

    def _sanity(
        self, model: nn.Module, data: ImageDataset, targets: Tensor, engine: Engine, layer_name: str
    ) -> list[SanityResult]:
        idx = torch.arange(min(self.sanity_samples, len(data)))
        sub, sub_t = data.take(idx), targets[idx]
        stages = randomisation_stages(model)
        results = []
        total = len(sub) * len(self.methods) * (len(stages) + 1)
        with engine.task("saliency sanity check (randomised layers)", total) as task:
            for method in self.methods:
                layer_t = dict(model.named_modules()).get(layer_name)
                trained = self.maps(model, sub, sub_t, engine, layer_t, method, task=task)
                corr = []
                for _, clone in stages:
                    clone = clone.to(engine.device).eval()
                    layer = dict(clone.named_modules()).get(layer_name) if layer_name else None
                    randomised = self.maps(clone, sub, sub_t, engine, layer, method, task=task)
                    corr.append(rank_correlation(trained, randomised))
                final = corr[-1] if corr else math.nan
                results.append(
                    SanityResult(
                        method=method,
                        stages=tuple(s for s, _ in stages),
                        correlations=tuple(corr),
                        final=final,
                        passed=bool(final < SANITY_THRESHOLD),
                    )
                )
        return results


def _heat_images(m: Tensor, image: Tensor) -> tuple[str, str]:
    """A heat map and an overlay on the (grey) image, both as PNG data URIs."""
    from matplotlib import colormaps

    a = m.abs()
    a = a / a.max().clamp_min(1e-12)
    rgb = torch.from_numpy(colormaps["inferno"](a.numpy())[..., :3]).permute(2, 0, 1).float()
    base = image.float().div(255)
    base = base.expand(3, -1, -1) if base.shape[0] == 1 else base
    if base.shape[-2:] != rgb.shape[-2:]:
        base = nn.functional.interpolate(base[None], size=rgb.shape[-2:], mode="bilinear")[0]
    overlay = 0.55 * base + 0.45 * rgb
    to_u8 = lambda t: (t.clamp(0, 1) * 255).round().to(torch.uint8)  # noqa: E731
    return to_data_uri(to_u8(rgb)), to_data_uri(to_u8(overlay))
