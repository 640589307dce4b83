"""Train the extra models the attack benchmark compares against AutoAttack, on the demo digits data.

resnet18   torchvision's ``resnet18(num_classes=10)``, unchanged (3-channel stem, the grey 28x28
           digits repeated over 3 channels by the model wrapper), standard training
adv-cnn    the demo's ``auditkit.zoo:digits_cnn`` model fine-tuned adversarially, as ``auditkit harden``
           does: PGD-7 (Madry et al. 2018), Linf eps 0.1, 10 epochs, through ``auditkit.training.train.fit``

Each lands in ``<out>/<name>/model/model.safetensors`` with its spec, next to a ``data`` folder
that links to the demo's, so ``benchmarks/attack.py --model-dir <out>/<name>`` runs on it.

Usage: python benchmarks/models.py [--demo-dir reports/demo] [--out reports/bench] [--only resnet18|adv-cnn]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torchvision.models import resnet18

from auditkit.config import AuditConfig
from auditkit.demo import run_demo
from auditkit.inputs.data import load_dataset
from auditkit.inputs.models import AuditModel, ModelSpec, load_model, save_model
from auditkit.pipeline import make_engine
from auditkit.training.train import TrainConfig, fit


def build(name: str, demo: Path, out: Path, seed: int) -> None:
    root = out / name
    (root / "model").mkdir(parents=True, exist_ok=True)
    link = root / "data"
    if not link.exists():
        os.symlink((demo / "data").resolve(), link)
    manifest = demo / "data" / "train.csv"
    engine = make_engine(
        AuditConfig(model=str(root / "model"), data=str(manifest), seed=seed, batch_size=64, progress=False)
    )
    engine.seed_everything()
    data = load_dataset(manifest, channels=1, image_size=(28, 28), track=engine.track)
    pixels = data.images[:].float() / 255
    mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
    torch.manual_seed(seed)
    if name == "resnet18":
        spec = ModelSpec(
            arch="torchvision:resnet18",
            num_classes=data.num_classes,
            input_size=(28, 28),
            channels=3,
            mean=(mean,) * 3,
            std=(std,) * 3,
            class_names=data.class_names,
        )
        net: torch.nn.Module = resnet18(num_classes=data.num_classes)
        config = TrainConfig(epochs=10)
    else:
        spec = ModelSpec(
            arch="auditkit.zoo:digits_cnn",
            num_classes=data.num_classes,
            input_size=(28, 28),
            channels=1,
            mean=(mean,),
            std=(std,),
            class_names=data.class_names,
        )
        net = load_model(demo / "model" / "model.safetensors").model.net  # fine-tuned, as auditkit harden does
        config = TrainConfig(method="pgd", eps=0.1, norm="linf", attack_steps=7, epochs=10, lr=1e-3)
    start = time.perf_counter()
    result = fit(AuditModel(net, spec), data, engine=engine, config=config)
    save_model(net, spec, root / "model" / "model.safetensors")
    last = result.logs[-1]
    print(f"{name}: {config.label}, {config.epochs} epochs in {time.perf_counter() - start:.0f} s; {last.describe()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-dir", default="reports/demo")
    ap.add_argument("--out", default="reports/bench")
    ap.add_argument("--only", choices=("resnet18", "adv-cnn"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    demo = Path(args.demo_dir)
    if not (demo / "data" / "train.csv").is_file():
        run_demo(demo, progress=False)
    for name in (args.only,) if args.only else ("resnet18", "adv-cnn"):
        build(name, demo, Path(args.out), args.seed)


if __name__ == "__main__":
    main()
