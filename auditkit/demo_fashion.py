"""The Fashion-MNIST demo: train a small CNN on the real Fashion-MNIST and audit it.

The data is Debian's ``dataset-fashion-mnist`` package (MNIST-style IDX files under
``/usr/share/datasets/fashion-mnist``); nothing is downloaded. As in :mod:`auditkit.demo`, the
audit goes through :func:`auditkit.api.run` on the files written here, exactly as a
user's model and data would, so every finding in the report (which classes are confused, which
come back when turned upside down, how fast the adversarial curve falls) comes from the checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from auditkit import api
from auditkit.config import AuditConfig
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import idx_splits, load_dataset
from auditkit.inputs.models import AuditModel, ModelSpec, build_architecture, save_model
from auditkit.io import atomic_write_text
from auditkit.pipeline import make_engine, raise_for_failures
from auditkit.results import RunResults
from auditkit.training.train import EpochLog, TrainConfig, fit

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DATA_ROOT = Path("/usr/share/datasets/fashion-mnist")
#: Fashion-MNIST's label order (Xiao et al. 2017): label i is FASHION_CLASSES[i]
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_ARCH = "auditkit.zoo:digits_cnn"
# the digits CNN as is: measured on 1 CPU thread, width 16 x 4 epochs took 128 s for 90.9% test accuracy,
# width 32 x 3 epochs 223 s for 91.2%
FASHION_WIDTH = 16
FASHION_EPOCHS = 4
FASHION_TRAIN_BATCH = 64
# a seeded sample of the 10,000 test images (about 100 per class): the audit takes about two minutes on a
# 2-core CPU, most of it the rotation check's spatial grid (275 transformations per image)
FASHION_AUDIT_SAMPLE = 1000
FASHION_EPSILONS = "0,0.01,0.02,0.05,0.1"  # Linf, [0, 1] pixels
FASHION_STEPS = 20  # APGD steps (standard strength): 100 by default; 20 keeps the CPU demo to minutes
#: subgroups is left out: IDX files carry no metadata column to group by
FASHION_CHECKS: tuple[str, ...] = ("clean", "rotation", "attack", "corrupt", "saliency")
FASHION_POLICY = """\
# The Fashion-MNIST demo's CI gate (auditkit gate results.json --policy policy.toml); see docs/ci.md.
[[rule]]
metric = "clean.accuracy"
op = ">="
value = 0.85
bound = "ci_low"

# a per-class floor: an average can hide one class the model fails
[[rule]]
metric = "clean.accuracy[class=Shirt]"
op = ">="
value = 0.5

[[rule]]
metric = "attack.soundness_warnings"
op = "<="
value = 0
"""


@dataclass(frozen=True)
class FashionDemoOutput:
    """Where the demo wrote things, the training log and the audit results."""

    out: Path
    model_path: Path
    data_root: Path
    report: Path
    results: RunResults
    training: tuple[EpochLog, ...]


def require_fashion_mnist(data_root: str | Path) -> Path:
    """``data_root`` if it holds Fashion-MNIST's train and test IDX files, else a one-line :class:`ConfigError`."""
    root = Path(data_root)
    found = idx_splits(root) if root.is_dir() else {}
    missing = [s for s in ("train", "test") if s not in found]
    if missing:
        raise ConfigError(
            f"Fashion-MNIST not found in {root} (no {' or '.join(missing)} split of IDX files): install Debian's "
            f"{FASHION_PACKAGE} package (apt-get install {FASHION_PACKAGE}) or pass --data-root FOLDER holding its "
            "IDX files (train-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, ...)"
        )
    return root


def train_fashion_model(
    data_root: Path,
    model_path: Path,
    *,
    seed: int = 0,
    epochs: int = FASHION_EPOCHS,
    device: str = "auto",
    progress: bool = True,
    train_limit: int | None = None,
    width: int = FASHION_WIDTH,
) -> tuple[Path, list[EpochLog]]:
    """Train the CNN (inputs ``(N, 1, 28, 28)`` in ``[0, 1]``) on the training split and save it as
    safetensors + spec. ``train_limit``: a seeded random sample of that many training images."""
    engine = make_engine(
        AuditConfig(
            model=str(model_path),
            data=str(data_root),
            split="train",
            device=device,
            seed=seed,
            batch_size=FASHION_TRAIN_BATCH,
            progress=progress,
        )
    )
    engine.seed_everything()
    data = load_dataset(
        data_root,
        split="train",
        class_names=FASHION_CLASSES,
        class_source="Fashion-MNIST's label order",
        sample=train_limit,
        seed=seed,
        track=engine.track,
    )
    pixels = data.images[:].float() / 255  # (N, 1, 28, 28)
    spec = ModelSpec(
        arch=FASHION_ARCH,
        num_classes=len(FASHION_CLASSES),
        arch_kwargs={"width": width},
        input_size=(28, 28),
        channels=1,
        mean=(round(float(pixels.mean()), 4),),
        std=(round(float(pixels.std()), 4),),
        class_names=FASHION_CLASSES,
    )
    torch.manual_seed(seed)
    model = AuditModel(build_architecture(spec), spec)
    logs = list(fit(model, data, engine=engine, config=TrainConfig(epochs=epochs)).logs)
    save_model(model.net, spec, model_path)
    return model_path, logs


def audit_config_toml(*, root: Path, data_root: Path, seed: int, sample: int) -> str:
    """``OUT/auditkit.toml``: the demo's audit again (model and output relative to ``root`` = OUT, data absolute)."""
    return (
        f"# re-run this audit with: auditkit audit --config {root / 'auditkit.toml'}\n"
        f'model = "model/model.safetensors"\ndata = {json.dumps(str(data_root.resolve()))}\nsplit = "test"\n'
        f'out = "."\nseed = {seed}\nsample = {sample}\nepsilons = "{FASHION_EPSILONS}"\nsteps = {FASHION_STEPS}\n'
        f'strength = "standard"  # APGD-CE + APGD-T, with the steps above\n'
        f"checks = {json.dumps(list(FASHION_CHECKS))}\n"
    )


def run_fashion_demo(
    out: str | Path = "reports/demo-fashion",
    *,
    data_root: str | Path = FASHION_DATA_ROOT,
    seed: int = 0,
    epochs: int = FASHION_EPOCHS,
    device: str = "auto",
    progress: bool = True,
    train_limit: int | None = None,
    audit_sample: int = FASHION_AUDIT_SAMPLE,
    batch_size: int = 256,
) -> FashionDemoOutput:
    """Train on Fashion-MNIST's training split and audit on a seeded sample of its test split.

    Writes ``OUT/model/model.{safetensors,json}``, ``OUT/results.json``, ``OUT/index.html``,
    ``OUT/auditkit.toml`` (the same audit again) and ``OUT/policy.toml`` (the gate applied).
    Raises :class:`ConfigError` (exit 2) when ``data_root`` does not hold the data.
    """
    if epochs < 1 or audit_sample < 1 or (train_limit is not None and train_limit < 1):
        raise ConfigError(
            f"epochs, audit_sample and train_limit must be positive, got {epochs}, {audit_sample}, {train_limit}"
        )
    data = require_fashion_mnist(data_root)
    root = Path(out)
    model_path = root / "model" / "model.safetensors"
    config = AuditConfig(  # built before the minutes of training, so a bad setting fails first
        model=str(model_path),
        data=str(data),
        split="test",
        sample=audit_sample,
        out=str(root),
        seed=seed,
        device=device,
        batch_size=batch_size,
        progress=progress,
        epsilons=FASHION_EPSILONS,
        steps=FASHION_STEPS,
        strength="standard",
        checks=FASHION_CHECKS,
    )
    atomic_write_text(
        root / "auditkit.toml", audit_config_toml(root=root, data_root=data, seed=seed, sample=audit_sample)
    )
    policy = root / "policy.toml"
    atomic_write_text(policy, FASHION_POLICY)
    _, logs = train_fashion_model(
        data, model_path, seed=seed, epochs=epochs, device=device, progress=progress, train_limit=train_limit
    )
    written = api.run(config, api.Gate(policy=policy))
    results, report = written.results, root / "index.html"
    raise_for_failures(results)
    return FashionDemoOutput(
        out=root, model_path=model_path, data_root=data, report=report, results=results, training=tuple(logs)
    )
