"""The corruption sweep and its cost, side by side in one run, on the same model and images.

Part 1, the demo digits model (28 x 28 grey) on the first N test images:

auditkit sweep         CorruptionSweep(strips=0).run: every corruption that applies (14 for grey images)
                       x 5 severities, batched on the device, clean pass included
bound                  the same number of plain forward passes (corruption x severity pairs + the clean
                       pass) over the same images: what the sweep would cost if corrupting were free
auditkit, common set   the sweep over the corruptions imagecorruptions also has (all but ``scale``)
imagecorruptions       the same corruptions and severities, image by image (uint8 HWC, grey images
                       stacked to RGB as ``imagecorruptions.corrupt`` does, the first channel kept), then
                       the same forward passes; corrupting and predicting are timed separately
corrupting only        both, without the model (auditkit: the ops in engine-sized batches)

It prints the times, the ratios, and each corruption's mean accuracy under both (they differ where the
random draws differ, and for the blurs, whose radii auditkit scales to the image size: 28/224).

Part 2, 3-channel images (``--rgb-size``, 224 by default): a torchvision ResNet-18 with random weights
(10 outputs) on ``--rgb-n`` crops of scikit-learn's two sample photos, the same comparison (15
corruptions for auditkit, 14 for the common set).

Each part runs its four measurements round-robin (``--repeats``, ``--rgb-repeats``) and keeps the best
time of each: the machine may be shared.

Usage: python benchmarks/corrupt.py [--n 200] [--rgb-n 24] [--rgb-size 224] [--repeats 3] [--threads 1]
       [--device cpu|cuda]
The demo model is trained first when --model-dir has none (``auditkit demo`` writes one).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from auditkit.checks.corrupt import CorruptionResult, CorruptionSweep
from auditkit.engine.loop import Engine
from auditkit.inputs.data import ImageDataset, load_dataset
from auditkit.inputs.models import load_model
from auditkit.ops.corrupt import CORRUPTIONS, SEVERITIES, corrupt, names_for


def reference_module() -> Any:
    """``imagecorruptions.corruptions`` with its numpy 2 / scikit-image rough edges shimmed."""
    import imagecorruptions.corruptions as icc
    from skimage.filters import gaussian

    def shimmed(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> Any:
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(image, *args, **kwargs)

    np.float_ = np.float64  # type: ignore[attr-defined]
    icc.gaussian = shimmed
    return icc


#: where the model runs and auditkit corrupts (--device); imagecorruptions always corrupts on the CPU
DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def forward_all(model: nn.Module, x: Tensor, batch: int) -> Tensor:
    """Predictions ``(N,)`` of ``x`` ``(N, C, H, W)`` (on any device) in batches, on the CPU."""
    with torch.inference_mode():
        return torch.cat([model(x[i : i + batch].to(DEVICE)).argmax(1).cpu() for i in range(0, len(x), batch)])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def sweep(model: nn.Module, data: ImageDataset, names: tuple[str, ...], batch: int) -> tuple[float, CorruptionResult]:
    engine = Engine(device=str(DEVICE), batch_size=batch, progress=False)
    check = CorruptionSweep(corruptions=names, strips=0)
    seconds, result = timed(lambda: check.run(model, data, engine=engine))
    return seconds, result


def corrupt_only(data: ImageDataset, names: tuple[str, ...], batch: int) -> float:
    """Seconds to corrupt every image with every corruption x severity in ``batch``-sized batches, no model."""
    x = data.images.to(DEVICE).float() / 255
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            for name in names:
                for severity in SEVERITIES:
                    corrupt(x[i : i + batch], name, severity, torch.Generator().manual_seed(i))
    sync()
    return time.perf_counter() - start


def reference_sweep(
    model: nn.Module | None, data: ImageDataset, names: tuple[str, ...], batch: int
) -> tuple[float, float, dict[str, float]]:
    """imagecorruptions image by image, then the forward passes: (corrupt seconds, forward seconds, mean
    accuracy per corruption)."""
    from PIL import Image

    icc = reference_module()
    np.random.seed(0)
    pixels = data.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8
    grey = pixels.shape[-1] == 1
    labels = data.labels
    corrupt_s = forward_s = 0.0
    accuracy: dict[str, float] = {}
    for name in names:
        fn = getattr(icc, name)
        accs = []
        for severity in SEVERITIES:
            start = time.perf_counter()
            out = []
            for p in pixels:
                rgb = np.repeat(p, 3, axis=-1) if grey else p
                img = np.uint8(fn(Image.fromarray(rgb), severity))
                out.append(img[..., :1] if grey else img)
            x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255
            corrupt_s += time.perf_counter() - start
            if model is None:
                continue
            seconds, pred = timed(lambda x=x: forward_all(model, x, batch))
            forward_s += seconds
            accs.append(float((pred == labels).float().mean()))
        accuracy[name] = float(np.mean(accs)) if accs else float("nan")
    return corrupt_s, forward_s, accuracy


def compare(
    title: str,
    model: nn.Module | None,
    data: ImageDataset,
    batch: int,
    *,
    repeats: int,
    accuracies: bool,
) -> None:
    """The measurements, round-robin ``repeats`` times (the best time of each is kept); without a model,
    only the corrupting."""
    channels = int(data.images.shape[1])
    every = names_for(channels)
    common = tuple(n for n in every if n != "scale")
    passes = len(every) * len(SEVERITIES) + 1
    print(f"\n## {title}: {len(data)} images {tuple(data.images.shape[1:])}, best of {repeats}")
    if model is not None:
        model = model.to(DEVICE)
    warm = data.images[:2].to(DEVICE).float() / 255  # first calls load libjpeg etc.: not part of any figure
    for name in every:
        corrupt(warm, name, 1, torch.Generator())
    x = data.images.to(DEVICE).float() / 255
    net = model if model is not None else nn.Identity()
    best: dict[str, float] = {}
    ref_parts = (0.0, 0.0)

    def keep(key: str, value: float) -> None:
        best[key] = min(best.get(key, float("inf")), value)

    for _ in range(repeats):
        keep("ops", corrupt_only(data, common, batch))
        if model is None:
            keep("ref_ops", reference_sweep(None, data, common, batch)[0])
            continue
        forward_all(model, x[:batch], batch)
        full_s, full = sweep(model, data, every, batch)
        keep("full", full_s)
        keep("bound", timed(lambda: [forward_all(model, x, batch) for _ in range(passes)])[0])
        common_s, ours = sweep(model, data, common, batch)
        keep("common", common_s)
        ref_corrupt, ref_forward, ref_acc = reference_sweep(net, data, common, batch)
        keep("ref_ops", ref_corrupt)
        if ref_corrupt + ref_forward < best.get("ref", float("inf")):
            best["ref"], ref_parts = ref_corrupt + ref_forward, (ref_corrupt, ref_forward)
    print(
        f"corrupting only, common set ({len(common)} x 5): auditkit {best['ops']:.2f} s, imagecorruptions "
        f"{best['ref_ops']:.2f} s   imagecorruptions / auditkit = {best['ref_ops'] / best['ops']:.1f}x"
    )
    if model is None:
        return
    print(f"auditkit sweep ({len(every)} corruptions x 5): {best['full']:8.2f} s")
    print(
        f"bound ({passes} forward passes):            {best['bound']:8.2f} s   "
        f"sweep / bound = {best['full'] / best['bound']:.2f}"
    )
    print(f"auditkit, common set ({len(common)} x 5):        {best['common']:8.2f} s")
    print(
        f"imagecorruptions, common set:         {best['ref']:8.2f} s   (corrupting {ref_parts[0]:.2f} s + "
        f"forward {ref_parts[1]:.2f} s)   imagecorruptions / auditkit = {best['ref'] / best['common']:.1f}x"
    )
    if accuracies:
        print(f"mean accuracy per corruption (clean {ours.clean_accuracy:.3f}):")
        print(f"{'corruption':20s} {'auditkit':>9s} {'imagecorr.':>10s}")
        for c in ours.curves:
            print(f"{c.name:20s} {c.mean_accuracy.value:9.3f} {ref_acc[c.name]:10.3f}")
        print(f"{'scale':20s} {full.curve('scale').mean_accuracy.value:9.3f} {'-':>10s}")
        print(f"mCA auditkit {ours.mean_accuracy.value:.3f} (common set), {full.mean_accuracy.value:.3f} (all)")


def rgb_data(n: int, size: int) -> ImageDataset:
    """``n`` random ``size`` x ``size`` crops of scikit-learn's sample photos (seeded), random labels."""
    from sklearn.datasets import load_sample_images
    from torch.nn import functional as F

    photos = [torch.from_numpy(p).permute(2, 0, 1) for p in load_sample_images().images]
    gen = torch.Generator().manual_seed(0)
    crops = []
    for i in range(n):
        p = photos[i % len(photos)]
        side = int(torch.randint(size, min(p.shape[1:]) + 1, (1,), generator=gen))
        top = int(torch.randint(0, p.shape[1] - side + 1, (1,), generator=gen))
        left = int(torch.randint(0, p.shape[2] - side + 1, (1,), generator=gen))
        crop = p[:, top : top + side, left : left + side].float()[None]
        crops.append(F.interpolate(crop, size=(size, size), mode="area")[0].round().clamp(0, 255).to(torch.uint8))
    return ImageDataset(
        images=torch.stack(crops),
        labels=torch.randint(0, 10, (n,), generator=gen),
        class_names=tuple(str(i) for i in range(10)),
        metadata={},
        ids=tuple(str(i) for i in range(n)),
        source="sklearn sample photos",
        format="npz",
        sha256="0",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model-dir", default="reports/demo")
    ap.add_argument("--n", type=int, default=200, help="digits test images (the first N)")
    ap.add_argument("--rgb-n", type=int, default=24, help="3-channel images (0: skip part 2)")
    ap.add_argument("--rgb-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="round-robin runs of part 1 (best time kept)")
    ap.add_argument("--rgb-repeats", type=int, default=1, help="round-robin runs of part 2")
    ap.add_argument("--rgb-ops-only", action="store_true", help="part 2: time the corrupting only (no model)")
    ap.add_argument("--skip-digits", action="store_true", help="part 2 only")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="where the model runs and auditkit corrupts (cpu, cuda)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        import cv2

        cv2.setNumThreads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    root = Path(args.model_dir)
    if not (root / "model" / "model.safetensors").is_file():
        from auditkit.demo import run_demo

        run_demo(root, progress=False)
    loaded = load_model(root / "model" / "model.safetensors")
    data = load_dataset(root / "data" / "test.csv", class_names=loaded.spec.class_names, limit=args.n)
    start = time.perf_counter()
    print(f"corruptions: {', '.join(CORRUPTIONS)}; device {DEVICE}; threads {torch.get_num_threads()}")
    if not args.skip_digits:
        compare("demo digits CNN", loaded.model.eval(), data, args.batch_size, repeats=args.repeats, accuracies=True)
    if args.rgb_n > 0:
        import torchvision

        torch.manual_seed(0)
        net = None if args.rgb_ops_only else torchvision.models.resnet18(num_classes=10).eval()
        title = f"{'no model' if net is None else 'ResNet-18 (random weights)'}, {args.rgb_size} px RGB"
        compare(
            title, net, rgb_data(args.rgb_n, args.rgb_size), args.batch_size, repeats=args.rgb_repeats, accuracies=False
        )
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
