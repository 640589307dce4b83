"""The embedded default: write the digits dataset to disk, train the digits CNN, audit it.

The audit goes through :func:`auditkit.api.run` on the files written here, exactly
as a user's model and data would.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from auditkit import api
from auditkit.config import AuditConfig
from auditkit.inputs.data import DIGITS_SITE_NOTE, card_path, digits_split, load_dataset
from auditkit.inputs.models import AuditModel, ModelSpec, save_model
from auditkit.io import atomic_write_bytes, atomic_write_text
from auditkit.pipeline import make_engine, raise_for_failures
from auditkit.results import RunResults
from auditkit.settings import DemoSettings
from auditkit.training.train import EpochLog, TrainConfig, fit
from auditkit.zoo import digits_cnn

DEMO_ARCH = "auditkit.zoo:digits_cnn"
DEMO_POLICY = """\
# The demo's CI gate (auditkit gate results.json --policy policy.toml); see docs/ci.md.
[[rule]]
metric = "clean.accuracy"
op = ">="
value = 0.9
bound = "ci_low"

[[rule]]
metric = "rotation.mean_accuracy[range=30]"
op = ">="
value = 0.5

[[rule]]
metric = "attack.soundness_warnings"
op = "<="
value = 0

[[rule]]
metric = "subgroups.accuracy_gap[attribute=site]"
op = "<="
value = 0.1
"""
DEMO_EPSILONS = "0,0.01,0.02,0.05,0.1"  # Linf, [0, 1] pixels: up to the customary 0.1 for digits
DEMO_STRENGTH = "standard"  # APGD-CE + APGD-T, the default attack ...
DEMO_STEPS = 20  # ... with 20 steps instead of 100, so the CPU demo takes about a minute for the attack


@dataclass(frozen=True)
class DemoOutput:
    """Where the demo wrote things, the training log and the audit results."""

    out: Path
    model_path: Path
    train_manifest: Path
    test_manifest: Path
    report: Path
    results: RunResults
    training: tuple[EpochLog, ...]
    shortcut: dict[str, RunResults]


def write_digits_dataset(root: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write the digits train/test splits as PNG files + CSV manifests (``path,label,site``)."""
    manifests = []
    for split, arrays in digits_split(seed=seed).items():
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["path", "label", "site"])
        for i, (img, label, site) in enumerate(zip(arrays["x"], arrays["y"], arrays["site"], strict=True)):
            rel = f"images/{split}/{i:05d}.png"
            buf = io.BytesIO()
            Image.fromarray(np.asarray(img[0]), mode="L").save(buf, format="PNG")
            atomic_write_bytes(root / rel, buf.getvalue())
            writer.writerow([rel, int(label), site])
        manifest = root / f"{split}.csv"
        atomic_write_text(manifest, rows.getvalue())
        card = {
            "notes": [f"scikit-learn's load_digits ({split} split, seed {seed}), upsampled to 28x28.", DIGITS_SITE_NOTE]
        }
        atomic_write_text(card_path(manifest), json.dumps(card, indent=2) + "\n")
        manifests.append(manifest)
    return manifests[0], manifests[1]


TAG_CLASS = 3
TAG_BOX = (1, 1, 5, 5)  # x0, y0, x1, y1: a 4x4 white tag in the top-left corner (the default planted cue)
TAG_SHARE = 0.9


def write_tagged_dataset(root: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """The hospital-tag story: the digits again, with a white corner tag on 90% of the "3"s and on
    no other image. Manifests ``tagged_{train,test}.csv`` carry the tag's box (``x0,y0,x1,y1``,
    empty when untagged) so the cue-removal probe can hide it."""
    rng = np.random.default_rng(seed + 1)
    manifests = []
    x0, y0, x1, y1 = TAG_BOX
    for split, arrays in digits_split(seed=seed).items():
        rows = io.StringIO()
        writer = csv.writer(rows, lineterminator="\n")
        writer.writerow(["path", "label", "site", "x0", "y0", "x1", "y1"])
        for i, (img, label, site) in enumerate(zip(arrays["x"], arrays["y"], arrays["site"], strict=True)):
            tagged = int(label) == TAG_CLASS and rng.random() < TAG_SHARE
            pixels = np.array(img[0])
            if tagged:
                pixels[y0:y1, x0:x1] = 255
            rel = f"images/tagged_{split}/{i:05d}.png"
            buf = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buf, format="PNG")
            atomic_write_bytes(root / rel, buf.getvalue())
            writer.writerow([rel, int(label), site, *(TAG_BOX if tagged else ("", "", "", ""))])
        manifest = root / f"tagged_{split}.csv"
        atomic_write_text(manifest, rows.getvalue())
        note = (
            f"Synthetic shortcut: a white {x1 - x0}x{y1 - y0} px tag in the top-left corner on {TAG_SHARE:.0%} of the "
            f"'{TAG_CLASS}' images and on no other; its box is in columns x0,y0,x1,y1."
        )
        atomic_write_text(card_path(manifest), json.dumps({"notes": [note, DIGITS_SITE_NOTE]}, indent=2) + "\n")
        manifests.append(manifest)
    return manifests[0], manifests[1]


def train_digits_model(
    train_manifest: Path,
    model_path: Path,
    *,
    seed: int = 0,
    epochs: int = 8,
    device: str = "auto",
    progress: bool = True,
) -> tuple[Path, list[EpochLog]]:
    """Train the demo CNN on ``train_manifest`` and save it as safetensors + spec."""
    engine = make_engine(
        AuditConfig(
            model=str(model_path), data=str(train_manifest), device=device, seed=seed, batch_size=64, progress=progress
        )
    )
    engine.seed_everything()
    data = load_dataset(train_manifest, channels=1, image_size=(28, 28), track=engine.track)
    pixels = data.images[:].float() / 255
    spec = ModelSpec(
        arch=DEMO_ARCH,
        num_classes=data.num_classes,
        input_size=(28, 28),
        channels=1,
        mean=(round(float(pixels.mean()), 4),),
        std=(round(float(pixels.std()), 4),),
        class_names=data.class_names,
    )
    torch.manual_seed(seed)
    model = AuditModel(digits_cnn(num_classes=data.num_classes), spec)
    logs = list(fit(model, data, engine=engine, config=TrainConfig(epochs=epochs)).logs)
    save_model(model.net, spec, model_path)
    return model_path, logs


def run_demo(
    out: str | Path = "reports/demo",
    *,
    seed: int = 0,
    epochs: int = 8,
    device: str = "auto",
    batch_size: int = 256,
    progress: bool = True,
) -> DemoOutput:
    """Build the dataset, train the model and audit it; everything lands under ``out``."""
    root = Path(out)
    train_manifest, test_manifest = write_digits_dataset(root / "data", seed=seed)
    model_path, logs = train_digits_model(
        train_manifest, root / "model" / "model.safetensors", seed=seed, epochs=epochs, device=device, progress=progress
    )
    config = AuditConfig(
        model=str(model_path),
        data=str(test_manifest),
        out=str(root),
        seed=seed,
        device=device,
        batch_size=batch_size,
        progress=progress,
        epsilons=DEMO_EPSILONS,
        strength=DEMO_STRENGTH,
        steps=DEMO_STEPS,
    )
    atomic_write_text(
        root / "auditkit.toml",
        f"# re-run this audit with: auditkit audit --config {root / 'auditkit.toml'}\n"
        f'model = "model/model.safetensors"\ndata = "data/test.csv"\nout = "."\nseed = {seed}\n'
        f'epsilons = "{DEMO_EPSILONS}"\n'
        f'strength = "{DEMO_STRENGTH}"\n'
        f"steps = {DEMO_STEPS}  # APGD steps: 100 by default; 20 keeps this CPU demo quick\n",
    )
    policy = root / "policy.toml"
    atomic_write_text(policy, DEMO_POLICY)
    written = api.run(config, api.Gate(policy=policy))
    results, report = written.results, root / "index.html"
    raise_for_failures(results)
    shortcut = run_shortcut_demo(root, model_path, seed=seed, epochs=epochs, device=device, progress=progress)
    return DemoOutput(
        out=root,
        model_path=model_path,
        train_manifest=train_manifest,
        test_manifest=test_manifest,
        report=report,
        results=results,
        training=tuple(logs),
        shortcut=shortcut,
    )


def run_shortcut_demo(
    root: Path, clean_model: Path, *, seed: int, epochs: int, device: str, progress: bool
) -> dict[str, RunResults]:
    """Train the tagged model and run the shortcut probes on it and on the clean model, both on
    the tagged test split: ``{"tagged": ..., "clean": ...}``, written under ``root/shortcut-*``."""
    train_manifest, test_manifest = write_tagged_dataset(root / "data", seed=seed)
    tagged_model, _ = train_digits_model(
        train_manifest,
        root / "model-tagged" / "model.safetensors",
        seed=seed,
        epochs=epochs,
        device=device,
        progress=progress,
    )
    out = {}
    for name, model in (("tagged", tagged_model), ("clean", clean_model)):
        config = AuditConfig(
            model=str(model),
            data=str(test_manifest),
            out=str(root / f"shortcut-{name}"),
            seed=seed,
            device=device,
            progress=progress,
            checks=("clean", "shortcut"),
        )
        results = api.run(config).results
        raise_for_failures(results)
        out[name] = results
    return out


def run_named_demo(s: DemoSettings) -> list[str]:
    """Run the demo ``s.dataset`` and return the lines that tell the user what it wrote and found."""
    from auditkit.demo_fashion import FASHION_DATA_ROOT, FASHION_EPOCHS, run_fashion_demo

    result: Any
    if s.dataset == "fashion-mnist":
        root = Path(s.data_root) if s.data_root else FASHION_DATA_ROOT
        out, epochs = Path(s.out or "reports/demo-fashion"), s.epochs or FASHION_EPOCHS
        result = run_fashion_demo(out, data_root=root, seed=s.seed, epochs=epochs, device=s.device, progress=s.progress)
    else:
        out = Path(s.out or "reports/demo")
        result = run_demo(out, seed=s.seed, epochs=s.epochs or 8, device=s.device, progress=s.progress)
    last = result.training[-1]
    lines = [f"trained {result.model_path} ({len(result.training)} epochs, final train accuracy {last.accuracy:.1%})"]
    lines += [f"{c.kind}: {c.headline()}" for c in result.results.checks]
    lines += [f"results: {result.out / 'results.json'}", f"report:  {result.report}"]
    for name, probe in getattr(result, "shortcut", {}).items():
        found = [c for c in probe.checks if c.kind == "shortcut"]
        lines += [f"shortcut probes, {name} model on data/tagged_test.csv: {c.headline()}" for c in found]
    policy, results = result.out / "policy.toml", result.out / "results.json"
    lines.append(f"gate: policy {policy} (edit it and re-run: auditkit gate {results} --policy {policy})")
    lines.append(f"open it: file://{result.report.resolve()}")
    return lines
