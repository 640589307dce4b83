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

    def merged(self, **overrides: Any) -> ModelSpec:
        """A copy with every override that is not ``None`` applied."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> ModelSpec:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read model spec {path}: {exc}") from exc
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ConfigError(f"model spec {path} has unknown keys {unknown}; allowed: {sorted(known)}")
        for key in ("input_size", "mean", "std", "class_names"):
            if doc.get(key) is not None:
                doc[key] = tuple(doc[key])
        return cls(**doc)


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
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor):
            raise ModelError(f"model returned {type(out).__name__}; expected a tensor of logits")
        return out


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to audit: the wrapper, its spec, format and content hash."""

    model: AuditModel
    spec: ModelSpec
    format: str
    sha256: str
    path: Path


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
        else:
            factory = getattr(importlib.import_module(module_name), attr)
            net = factory(**kwargs)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot build architecture {arch!r}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"cannot build architecture {arch!r} with {kwargs}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ConfigError(f"architecture {arch!r} returned {type(net).__name__}, not an nn.Module")
    return net


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
    p = Path(path)
    if p.is_dir():
        candidates = [p / "model.safetensors", p / "model.pt", p / "model.pt2"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ModelError(f"model folder {p} holds no model.safetensors, model.pt or model.pt2")
        p = found
    if not p.is_file():
        raise ModelError(f"model file not found: {p}")
    spec_file = find_spec_file(p)
    base = ModelSpec.from_file(spec_file) if spec_file else ModelSpec()
    if spec is not None:
        base = base.merged(
            **{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "arch_kwargs"}
        )
        if spec.arch_kwargs:
            base = dataclasses.replace(base, arch_kwargs=dict(spec.arch_kwargs))
    fmt: str = detect_format(p)
    net: nn.Module
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise ModelError(f"cannot read safetensors file {p}: {exc}") from exc
        net = build_architecture(base)
        _load_weights(net, state, p, base.arch)
    elif fmt == "state_dict":
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            fmt = "pickled_module"
            if not trust:
                raise _refuse(p, fmt) from exc
            obj = _trusted_torch_load(p)
        except Exception as exc:
            raise ModelError(f"cannot read {p} with torch.load: {' '.join(str(exc).split())[:300]}") from exc
        if isinstance(obj, nn.Module):
            fmt = "pickled_module"
            net = obj
        else:
            net = build_architecture(base)
            _load_weights(net, _unwrap_state_dict(obj, p), p, base.arch)
    elif not trust:
        raise _refuse(p, fmt)
    elif fmt == "torchscript":
        try:
            net = torch.jit.load(str(p), map_location="cpu")
        except Exception as exc:
            raise ModelError(f"cannot load TorchScript archive {p}: {exc}") from exc
    else:
        try:
            net = torch.export.load(str(p)).module()
        except Exception as exc:
            raise ModelError(f"cannot load torch.export program {p}: {exc}") from exc
    wrapped = AuditModel(net, base)
    return LoadedModel(model=wrapped, spec=base, format=fmt, sha256=file_sha256(p), path=p)


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
    except Exception as exc:
        msg = " ".join(str(exc).split())[:240]
        raise ModelError(
            f"model failed on input of shape {tuple(x.shape)} (N, C, H, W); set --input-size/--channels to "
            f"what it expects (a torch.export program needs a dynamic batch dimension): {type(exc).__name__}: {msg}"
        ) from exc
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ModelError(f"model returned shape {tuple(out.shape)}; expected (N, num_classes) logits")
    if out.shape[1] < num_classes:
        raise ModelError(f"model has {out.shape[1]} outputs but the data has {num_classes} classes")
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
