"""Load any trained CNN into one wrapper that takes ``[0, 1]`` pixel tensors.

Formats are detected from the file's bytes, not its extension:

=================  ===================================================  =============
format             what it is                                            needs trust
=================  ===================================================  =============
safetensors        tensors only + an architecture                        no
state_dict         ``torch.save(model.state_dict())`` + an architecture  no
torchscript        ``torch.jit.save``                                    yes
exported_program   ``torch.export.save`` (``.pt2``)                      yes
pickled_module     ``torch.save(model)`` (a full ``nn.Module``)          yes
=================  ===================================================  =============

Formats that can run code when loaded are refused (:class:`UntrustedModelError`, exit 4)
unless ``trust=True``. State dicts are only ever read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from auditkit.exceptions import ConfigError, ModelError, NonFiniteOutputError, UntrustedModelError
from auditkit.io import atomic_write_bytes, atomic_write_text

ModelFormat = Literal["safetensors", "state_dict", "torchscript", "exported_program", "pickled_module"]
NEEDS_TRUST: frozenset[str] = frozenset({"torchscript", "exported_program", "pickled_module"})


@dataclass(frozen=True)
class ModelSpec:
    """How to build and feed a model: architecture, preprocessing and class names.

    Saved as JSON beside the weights (``model.safetensors`` -> ``model.json``).
    ``input_size`` is ``(H, W)``; ``mean``/``std`` are per channel in ``[0, 1]`` pixel units.
    """

    arch: str | None = None
    num_classes: int | None = None
    arch_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    input_size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    output: str | None = None
    weights: str | None = None
    resize: int | None = None
    crop: tuple[int, int] | None = None
    resize_interpolation: str | None = None
    antialias: bool | None = None

    def merged(self, **overrides: Any) -> ModelSpec:
        """A copy with every override that is not ``None`` applied."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> ModelSpec:
        """Read a ``model.json``: a JSON object of the spec's fields, each of its type; anything else
        is a :class:`ConfigError` (exit 2) naming the file and the field."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read model spec {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError:
            raise ConfigError(
                f"model spec {path} is not UTF-8 text; it must be a JSON object (see docs/formats.md)"
            ) from None
        if not text.strip():
            raise ConfigError(f"model spec {path} is empty; write the JSON object save_model writes, or remove it")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"cannot read model spec {path}: not valid JSON (truncated?): {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"model spec {path} must be a JSON object, got a JSON {type(doc).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"model spec {path} has unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**{key: _spec_field(path, key, value) for key, value in doc.items()})


SPEC_TEXT_FIELDS = ("arch", "weights", "resize_interpolation", "output")
SPEC_SIZE_FIELDS = ("input_size", "crop")


def _spec_field(path: Path, key: str, value: Any) -> Any:
    """One ``model.json`` field checked against its type (``None``: not given)."""

    def wrong(what: str) -> ConfigError:
        return ConfigError(f"model spec {path}: {key} must be {what}, got {value!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if key == "arch_kwargs":
        if not isinstance(value, dict):
            raise ConfigError(f"model spec {path}: arch_kwargs must be an object, got {value!r}")
        return value
    if value is None:
        return None
    if key == "output" and is_int(value):
        return str(value)
    if key in SPEC_TEXT_FIELDS:
        if not isinstance(value, str) or not value:
            raise wrong("a non-empty string")
        return value
    if key in ("num_classes", "resize"):
        if not is_int(value) or value < 1:
            raise wrong("a positive integer")
        return value
    if key == "channels":
        if not is_int(value) or value not in (1, 3):
            raise wrong("1 or 3")
        return value
    if key == "antialias":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if key in SPEC_SIZE_FIELDS:
        if not isinstance(value, list) or len(value) != 2 or not all(is_int(v) and v >= 1 for v in value):
            raise wrong("a list of two positive integers [H, W]")
        return tuple(value)
    if key in ("mean", "std"):
        if not isinstance(value, list) or len(value) not in (1, 3) or not all(is_number(v) for v in value):
            raise wrong("a list of 1 or 3 finite numbers (one per channel)")
        if key == "std" and min(value) <= 0:
            raise wrong("positive")
        return tuple(float(v) for v in value)
    if key == "class_names":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise wrong("a list of non-empty strings, in output order")
        return tuple(value)
    return value


class AuditModel(nn.Module):
    """Wraps a network so it takes ``(N, C, H, W)`` images in ``[0, 1]`` and returns logits.

    Channel conversion, resizing and mean/std normalisation happen inside, so epsilons and
    rotations mean the same thing for every model.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, net: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        channels = spec.channels
        self.channels = channels
        self.input_size = spec.input_size
        mean = torch.tensor(spec.mean if spec.mean is not None else (0.0,), dtype=torch.float32)
        std = torch.tensor(spec.std if spec.std is not None else (1.0,), dtype=torch.float32)
        if bool((std <= 0).any()):
            raise ConfigError(f"std must be positive, got {tuple(std.tolist())}")
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, C, H, W)`` in ``[0, 1]`` -> logits ``(N, K)``."""
        if self.channels is not None and x.shape[1] != self.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.channels, -1, -1)
            elif self.channels == 1:
                x = x.mean(dim=1, keepdim=True)
        if self.input_size is not None and tuple(x.shape[-2:]) != tuple(self.input_size):
            x = nn.functional.interpolate(
                x, size=tuple(self.input_size), mode="bilinear", align_corners=False, antialias=True
            )
        x = (x - self.mean) / self.std
        return select_output(self.net(x), self.spec.output)


def _shape(v: Any) -> str:
    return str(tuple(v.shape)) if isinstance(v, Tensor) else type(v).__name__


def select_output(out: Any, output: str | None) -> Tensor:
    """The logits among a model's outputs (the output contract).

    A model must return one ``(N, K)`` tensor. When it returns a tuple, list or dict, ``output``
    (``--output``: an index or a key) names the logits; nothing is ever picked silently.
    """
    if isinstance(out, Tensor):
        if output is not None:
            raise ModelError(f"--output {output} was given but the model returns one tensor {_shape(out)}; drop it")
        return out
    if isinstance(out, Mapping):
        shown = ", ".join(f"{k!r}: {_shape(v)}" for k, v in list(out.items())[:8])
        if output is None or output not in out:
            what = "no --output" if output is None else f"--output {output!r} is not a key"
            raise ModelError(
                f"model returned a dict ({shown}) and {what}; name the logits with --output KEY (e.g. --output logits)"
            )
        chosen = out[output]
    elif isinstance(out, (tuple, list)):
        shown = "; ".join(f"{i}: {_shape(v)}" for i, v in enumerate(out[:8]))
        n = len(out)
        if output is None or not output.isdigit() or int(output) >= n:
            what = "no --output" if output is None else f"--output {output!r} is not an index in [0, {n})"
            raise ModelError(
                f"model returned a {type(out).__name__} of {n} outputs ({shown}) and {what}; "
                f"name the logits with --output INDEX (e.g. --output {n - 1})"
            )
        chosen = out[int(output)]
    else:
        raise ModelError(f"model returned {type(out).__name__}; expected one (N, K) tensor of logits")
    if not isinstance(chosen, Tensor):
        raise ModelError(f"--output {output} selects a {type(chosen).__name__}, not a tensor of logits")
    return chosen


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to audit: the wrapper, its spec, format and content hash.

    ``path`` is the model file, or ``None`` for an ``nn.Module`` handed over in memory
    (:func:`wrap_module`, the Python API).
    """

    model: AuditModel
    spec: ModelSpec
    format: str
    sha256: str
    path: Path | None
    class_source: str | None = None

    def describe(self) -> tuple[str, str]:
        """Where the model came from and its architecture, as the run manifest records them."""
        if self.path is not None:
            return str(self.path), self.spec.arch or "(stored in the file)"
        return module_label(self.model.net), self.spec.arch or class_path(self.model.net)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detect_format(path: Path) -> ModelFormat:
    """Tell a model file's format from its content (magic bytes and archive layout)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < size and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as exc:
            raise ModelError(f"{path} looks like a zip archive but is damaged: {exc}") from exc
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any("serialized_exported_program" in n or n.endswith("archive_format") for n in names):
            return "exported_program"
        if any(n.endswith("data.pkl") for n in names):
            return "state_dict"
        raise ModelError(f"{path} is a zip archive but not a PyTorch model file")
    if head[:1] == b"\x80":
        return "state_dict"  # legacy torch.save; a pickled module is told apart on load
    raise ModelError(
        f"{path} is not a recognised model file (safetensors, torch.save state_dict, "
        "TorchScript, torch.export .pt2 or a pickled nn.Module)"
    )


def build_architecture(spec: ModelSpec) -> nn.Module:
    """Instantiate ``spec.arch``: ``torchvision:<name>``, ``auditkit.zoo:<name>`` or ``pkg.mod:factory``."""
    arch = spec.arch
    if not arch:
        raise ConfigError(
            "this model file holds only weights; name its architecture with --arch "
            "(e.g. auditkit.zoo:digits_cnn, torchvision:resnet18, mypkg.models:make_net)"
        )
    kwargs = dict(spec.arch_kwargs)
    if spec.num_classes is not None:
        kwargs.setdefault("num_classes", spec.num_classes)
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--arch must look like 'package.module:factory' or 'torchvision:<name>', got {arch!r}")
    try:
        if module_name == "torchvision":
            import torchvision.models

            net = torchvision.models.get_model(attr, weights=None, **kwargs)
        elif module_name == "timm":
            timm = _import_timm()
            net = timm.create_model(attr, pretrained=False, **kwargs)
        else:
            module = importlib.import_module(module_name)
            factory = getattr(module, attr)
            if module_name == "auditkit.zoo" and getattr(factory, "__module__", None) != "auditkit.zoo":
                raise AttributeError(f"auditkit.zoo has no architecture {attr!r}")
            net = factory(**kwargs)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot build architecture {arch!r}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"cannot build architecture {arch!r} with {kwargs}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ConfigError(f"architecture {arch!r} returned {type(net).__name__}, not an nn.Module")
    return net


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise ConfigError("timm: architectures need timm; install auditkit[timm] (pip install timm)") from exc
    return timm


@dataclass(frozen=True)
class Preset:
    """What a weights enum or a pretrained config says about a model: its spec and class order."""

    spec: ModelSpec
    class_source: str | None


def torchvision_preset(name: str) -> Preset:
    """``ResNet18_Weights.IMAGENET1K_V1`` -> architecture, classes and eval transform, from the enum.

    Nothing is downloaded: the enum carries the metadata; the weights file is the user's.
    """
    import torchvision.models
    from torchvision.transforms._presets import ImageClassification

    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"--weights torchvision:{name}: not a torchvision weights enum (e.g. ResNet18_Weights.IMAGENET1K_V1)"
        ) from exc
    transform = weights.transforms()
    if not isinstance(transform, ImageClassification):
        raise ConfigError(f"--weights torchvision:{name} is not an image-classification preset")
    arch = next(
        (m for m in torchvision.models.list_models() if torchvision.models.get_model_weights(m) is type(weights)),
        None,
    )
    categories = tuple(weights.meta.get("categories") or ()) or None
    spec = ModelSpec(
        arch=f"torchvision:{arch}" if arch else None,
        num_classes=len(categories) if categories else None,
        channels=3,
        mean=tuple(transform.mean),
        std=tuple(transform.std),
        class_names=categories,
        resize=int(transform.resize_size[0]),
        crop=(int(transform.crop_size[0]), int(transform.crop_size[-1])),
        resize_interpolation=transform.interpolation.value,
        antialias=bool(transform.antialias) if transform.antialias is not None else True,
    )
    return Preset(spec, f"weights preset torchvision:{name} (meta['categories'])" if categories else None)


def timm_preset(name: str) -> Preset:
    """``timm:<name>``: mean/std, input size, crop fraction and interpolation from timm's pretrained config."""
    import math

    timm = _import_timm()
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ConfigError(f"--arch timm:{name}: timm has no architecture or pretrained config by that name")
    c, h, w = cfg.input_size
    crop_pct = cfg.crop_pct or 0.875
    if cfg.crop_mode not in (None, "center"):
        raise ConfigError(f"timm:{name} uses crop_mode {cfg.crop_mode!r}; only 'center' is supported")
    interpolation = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
    spec = ModelSpec(
        num_classes=cfg.num_classes or None,
        channels=c,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        resize=math.floor(h / crop_pct) if h == w else None,
        crop=(h, w) if h == w else None,
        input_size=None if h == w else (h, w),
        resize_interpolation=interpolation,
        antialias=True,
    )
    return Preset(spec, None)


def apply_preset(spec: ModelSpec) -> Preset:
    """Fill the gaps in ``spec`` from its ``weights`` enum or its ``timm:`` pretrained config."""
    if spec.weights:
        family, sep, name = spec.weights.partition(":")
        if family != "torchvision" or not sep:
            raise ConfigError(f"--weights must be torchvision:<WeightsEnum>.<NAME>, got {spec.weights!r}")
        preset = torchvision_preset(name)
    elif spec.arch and spec.arch.startswith("timm:"):
        preset = timm_preset(spec.arch.partition(":")[2])
    else:
        return Preset(spec, None)
    given = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "arch_kwargs"}
    merged = dataclasses.replace(preset.spec.merged(**given), arch_kwargs=dict(spec.arch_kwargs))
    return Preset(merged, preset.class_source)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _load_weights(net: nn.Module, state: Mapping[str, Tensor], path: Path, arch: str | None) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "shape or key mismatch"
        detail = " ".join(str(exc).split())[:300]
        raise ModelError(f"weights in {path} do not fit architecture {arch!r}: {first} {detail}") from exc


def _refuse(path: Path, fmt: str) -> UntrustedModelError:
    what = {
        "torchscript": "a TorchScript archive",
        "exported_program": "a torch.export program (.pt2)",
        "pickled_module": "a pickled Python object (e.g. a full nn.Module)",
    }[fmt]
    return UntrustedModelError(
        f"refused to load {path}: it is {what}, which can run code when loaded; "
        "pass --trust-model only if you trust its source, or save a state_dict/safetensors instead"
    )


def find_spec_file(path: Path) -> Path | None:
    """The spec saved beside a model: ``model.safetensors`` -> ``model.json``."""
    candidate = path.with_suffix(".json")
    return candidate if candidate.is_file() and candidate != path else None


def load_model(
    path: str | Path,
    *,
    spec: ModelSpec | None = None,
    trust: bool = False,
) -> LoadedModel:
    """Load a model file into an :class:`AuditModel`.

    ``path`` may be a file or a folder holding ``model.safetensors`` + ``model.json``. The spec
    beside the file is read first; fields of ``spec`` that are not ``None`` override it.
    """
    p = _model_file(Path(path))
    base, class_source = _resolve_spec(p, spec, trust)
    net, fmt = _build_net(p, base, trust)
    return LoadedModel(
        model=AuditModel(net, base),
        spec=base,
        format=fmt,
        sha256=file_sha256(p),
        path=p,
        class_source=class_source,
    )


IN_MEMORY_FORMAT = "in_memory"


def wrap_module(net: nn.Module, spec: ModelSpec | None = None) -> LoadedModel:
    """An ``nn.Module`` held in memory (the Python API) as a :class:`LoadedModel`.

    ``spec`` carries the same settings as for a model file (``mean``/``std``, ``input_size``,
    ``channels``, ``class_names``, ``output``, ``num_classes``, a ``weights`` preset); only ``arch``,
    which builds the network of a weights-only file, does not apply. An :class:`AuditModel` (e.g.
    ``load_model(...).model``) is unwrapped and keeps its spec, with ``spec``'s fields overriding it.
    """
    given = spec or ModelSpec()
    if not isinstance(net, nn.Module):
        raise ConfigError(f"model must be an nn.Module or a model file path, got {type(net).__name__}")
    if given.arch is not None or given.arch_kwargs:
        raise ConfigError(
            "arch builds the network of a weights-only model file; an nn.Module passed in memory is already built: "
            "drop arch"
        )
    base = ModelSpec()
    if isinstance(net, AuditModel):
        base, net = net.spec, net.net
    overrides = {f.name: getattr(given, f.name) for f in dataclasses.fields(given) if f.name != "arch_kwargs"}
    preset = apply_preset(base.merged(**overrides))
    final = preset.spec
    if not final.class_names:
        class_source = None
    elif given.class_names:
        class_source = "--class-names"
    else:
        class_source = preset.class_source or "model spec (of the AuditModel passed in)"
    return LoadedModel(
        model=AuditModel(net, final),
        spec=final,
        format=IN_MEMORY_FORMAT,
        sha256=module_sha256(net),
        path=None,
        class_source=class_source,
    )


def class_path(net: nn.Module) -> str:
    """``auditkit.zoo.DigitsCNN``: the network's class, with its module."""
    return f"{type(net).__module__}.{type(net).__qualname__}"


def module_label(net: nn.Module) -> str:
    """What the run manifest calls an ``nn.Module`` handed over in memory (its ``model_path``)."""
    return f"in-memory nn.Module {class_path(net.net if isinstance(net, AuditModel) else net)}"


def module_sha256(net: nn.Module) -> str:
    """SHA-256 of a network's class and its state (every parameter and buffer, by name), so runs of
    the same in-memory weights are recognised (resume, the run manifest)."""
    digest = hashlib.sha256(class_path(net).encode())
    for name, value in sorted(net.state_dict().items()):
        if not isinstance(value, Tensor):  # a module's extra state
            digest.update(f"\x1f{name}={value!r}".encode())
            continue
        digest.update(f"\x1f{name}:{value.dtype}:{tuple(value.shape)}\x1f".encode())
        raw = value.detach().cpu().contiguous().reshape(-1)
        digest.update(raw.view(torch.uint8).numpy().tobytes() if raw.numel() else b"")
    return digest.hexdigest()


def _model_file(p: Path) -> Path:
    if p.is_dir():
        candidates = [p / "model.safetensors", p / "model.pt", p / "model.pt2"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ModelError(f"model folder {p} holds no model.safetensors, model.pt or model.pt2")
        p = found
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    return p


def _resolve_spec(p: Path, spec: ModelSpec | None, trust: bool) -> tuple[ModelSpec, str | None]:
    """The spec file beside ``p`` (checked under the trust rule), overridden by ``spec``, gaps filled
    from a preset; and where the class order comes from."""
    spec_file = find_spec_file(p)
    base = ModelSpec.from_file(spec_file) if spec_file else ModelSpec()
    if spec_file is not None and not trust:
        check_spec_file_trust(base, spec_file, overridden=spec is not None and spec.arch is not None)
    class_source = f"model spec ({spec_file.name})" if spec_file and base.class_names else None
    if spec is not None:
        if spec.class_names:
            class_source = "--class-names"
        base = base.merged(
            **{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "arch_kwargs"}
        )
        if spec.arch_kwargs:
            base = dataclasses.replace(base, arch_kwargs=dict(spec.arch_kwargs))
    preset = apply_preset(base)
    base = preset.spec
    require_normalisation(base)
    return base, class_source or (preset.class_source if base.class_names else None)


def _build_net(p: Path, base: ModelSpec, trust: bool) -> tuple[nn.Module, str]:
    """The network in ``p`` and its format, refusing code-carrying formats without ``trust``."""
    fmt: str = detect_format(p)
    if p.suffix.lower() == ".safetensors" and fmt != "safetensors":
        raise UntrustedModelError(
            f"refused to load {p}: it is named .safetensors but holds a pickle or zip archive, which can run code "
            "when loaded; pass --trust-model only if you trust its source, or save real safetensors"
        )
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"cannot read safetensors file {p}: {exc}") from exc
        net = build_architecture(base)
        _load_weights(net, state, p, base.arch)
        return net, fmt
    if fmt == "state_dict":
        return _load_torch_save(p, base, trust)
    if not trust:
        raise _refuse(p, fmt)
    try:
        loaded = (
            torch.jit.load(str(p), map_location="cpu") if fmt == "torchscript" else torch.export.load(str(p)).module()
        )
    except Exception as exc:
        what = "TorchScript archive" if fmt == "torchscript" else "torch.export program"
        raise ModelError(f"cannot load {what} {p}: {exc}") from exc
    return loaded, fmt


def _load_torch_save(p: Path, base: ModelSpec, trust: bool) -> tuple[nn.Module, str]:
    """A ``torch.save`` file: a state dict (read with ``weights_only``), or with ``trust`` a pickled module."""
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise _refuse(p, "pickled_module") from exc
        obj = _trusted_torch_load(p)
    except Exception as exc:
        raise ModelError(f"cannot read {p} with torch.load: {' '.join(str(exc).split())[:300]}") from exc
    if isinstance(obj, nn.Module):
        return obj, "pickled_module"
    net = build_architecture(base)
    _load_weights(net, _unwrap_state_dict(obj, p), p, base.arch)
    return net, "state_dict"


SAFE_ARCH_NAMESPACES = ("torchvision", "timm", "auditkit.zoo")
DOWNLOADING_KWARGS = frozenset(
    {
        "pretrained",
        "weights",
        "weights_backbone",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "checkpoint_path",
        "pretrained_file",
        "cache_dir",
        "model_dir",
        "url",
    }
)


def check_spec_file_trust(spec: ModelSpec, spec_file: Path, *, overridden: bool) -> None:
    """A spec file travels with the model, so it is untrusted input: without ``--trust-model`` it may
    only name built-in architectures (``torchvision:``, ``timm:``, ``auditkit.zoo:``), with plain
    JSON scalar kwargs that download nothing. ``--arch`` typed by the user is the user's own choice."""
    arch = spec.arch
    if arch and not overridden:
        module_name, _, attr = arch.partition(":")
        if module_name not in SAFE_ARCH_NAMESPACES or attr.startswith("_") or not attr.isidentifier():
            raise UntrustedModelError(
                f"refused {spec_file}: it names the architecture {arch!r}, code outside torchvision:, timm: and "
                "auditkit.zoo: that would run on load; pass --trust-model only if you trust its source, or name the "
                "architecture yourself with --arch"
            )
    for key, value in spec.arch_kwargs.items():
        if key in DOWNLOADING_KWARGS or (isinstance(value, str) and "://" in value):
            raise UntrustedModelError(
                f"refused {spec_file}: arch_kwargs {key!r} could download or load other files; weights come only "
                "from the model file (pass --trust-model only if you trust its source)"
            )
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise UntrustedModelError(
                f"refused {spec_file}: arch_kwargs {key!r} must be a plain JSON scalar, got {type(value).__name__}"
            )


def require_normalisation(spec: ModelSpec) -> None:
    """A torchvision/timm architecture without any mean/std is refused: it almost always means a
    forgotten ``--mean/--std`` (or ``--weights``), and its accuracy would be a wrong number."""
    family = (spec.arch or "").partition(":")[0]
    if family in ("torchvision", "timm") and spec.mean is None and spec.std is None:
        raise ConfigError(
            f"{spec.arch} expects normalised inputs but no --mean/--std was given: pass them (or --weights); "
            "if the model was trained on raw [0, 1] pixels, pass --mean 0 --std 1"
        )


def _trusted_torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelError(f"cannot unpickle {path}: {exc}") from exc


def save_model(net: nn.Module, spec: ModelSpec, path: str | Path) -> Path:
    """Save ``net``'s weights as safetensors and ``spec`` as JSON beside them (atomically)."""
    from safetensors.torch import save

    p = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(p, save(state))
    atomic_write_text(p.with_suffix(".json"), spec.to_json())
    return p


def probe_outputs(model: nn.Module, x: Tensor, num_classes: int) -> tuple[int, list[str]]:
    """Run one batch ``x`` ``(N, C, H, W)`` and check the output convention.

    Raises on a wrong input shape, too few outputs or non-finite values; returns the number
    of outputs and warnings (e.g. outputs that look like probabilities, not logits).
    """
    try:
        with torch.no_grad():
            out = model(x)
    except ModelError:
        raise
    except Exception as exc:
        msg = " ".join(str(exc).split())[:240]
        raise ModelError(
            f"model failed on input of shape {tuple(x.shape)} (N, C, H, W); set --input-size/--channels to "
            f"what it expects (a torch.export program needs a dynamic batch dimension): {type(exc).__name__}: {msg}"
        ) from exc
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ModelError(
            f"model returned shape {tuple(out.shape)}; expected (N, num_classes) logits "
            "(if it returns several heads, choose the logits with --output)"
        )
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteOutputError("model produced NaN or infinite outputs on the first batch")
    warnings: list[str] = []
    rows = out.float().sum(dim=1)
    if bool(((out >= 0) & (out <= 1)).all()) and bool(torch.allclose(rows, torch.ones_like(rows), atol=1e-3)):
        warnings.append(
            "model outputs look like probabilities (each row sums to 1), not logits; "
            "gradient attacks need logits — remove the final softmax"
        )
    return int(out.shape[1]), warnings
