"""Rotation sweep cost, side by side in one run: bound vs auditkit vs a naive loop.

bound    = n_angles x one clean forward pass over the data (no rotation at all)
auditkit = Engine.sweep with the batched affine perturbation (several angles per forward)
naive    = torchvision's rotate per angle per batch, a separate forward pass each

Usage: python benchmarks/rotate.py [--model digits|resnet18] [--n 540] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchvision
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from auditkit.checks.rotation import DEFAULT_ANGLES
from auditkit.engine.loop import Engine, eval_mode
from auditkit.inputs.data import ImageDataset, load_dataset
from auditkit.inputs.models import AuditModel, ModelSpec
from auditkit.ops.perturb import Affine, rotations
from auditkit.zoo import digits_cnn


def interleaved_best(repeats: int, fns: dict[str, Callable[[], object]], device: torch.device) -> dict[str, float]:
    """Run the contenders round-robin ``repeats`` times; keep each one's best time (noise is one-sided)."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["digits", "resnet18"], default="digits")
    ap.add_argument("--n", type=int, default=540)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("digits", limit=args.n)
    if args.model == "digits":
        spec = ModelSpec(input_size=(28, 28), channels=1, mean=(0.1,), std=(0.3,))
        model = AuditModel(digits_cnn(), spec)
    else:
        spec = ModelSpec(input_size=(64, 64), channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        model = AuditModel(torchvision.models.resnet18(num_classes=10), spec)
        data = ImageDataset(
            images=TF.resize(data.images, [64, 64], antialias=True).expand(-1, 3, -1, -1).contiguous(),
            labels=data.labels,
            class_names=data.class_names,
            metadata={},
            ids=data.ids,
            source=data.source,
            format=data.format,
            sha256=data.sha256,
        )
    angles = torch.tensor(DEFAULT_ANGLES, dtype=torch.float64)
    params = rotations(angles)
    engine = Engine(device=args.device, batch_size=args.batch_size, progress=False)
    model = engine.to_device(model)  # type: ignore[assignment]
    engine.predict(model, data)  # the clean pass every check shares (computed once per run)
    n_angles = len(angles)

    def bound() -> None:
        with eval_mode(model), torch.inference_mode():
            for _ in range(n_angles):
                for start in range(0, len(data), args.batch_size):
                    model(engine.batch(data, start, start + args.batch_size).x)

    def ours() -> None:
        engine.sweep(model, data, Affine(), params, description="sweep", identity=Affine.is_identity(params))

    def naive() -> None:
        with eval_mode(model), torch.inference_mode():
            for a in DEFAULT_ANGLES:
                for start in range(0, len(data), args.batch_size):
                    x = engine.batch(data, start, start + args.batch_size).x
                    model(TF.rotate(x, a, interpolation=InterpolationMode.BILINEAR))

    ours()  # warm-up
    times = interleaved_best(args.repeats, {"bound": bound, "auditkit": ours, "naive": naive}, engine.device)
    images = n_angles * len(data)
    print(
        f"model={args.model} device={engine.device} n={len(data)} angles={n_angles} batch={args.batch_size} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"{'':10s}{'seconds':>10s}{'img/s':>12s}{'x bound':>10s}")
    for name, t in times.items():
        print(f"{name:10s}{t:10.3f}{images / t:12.0f}{t / times['bound']:10.2f}")


if __name__ == "__main__":
    main()
