"""Audit cost as the data grows: time per image and peak memory at 1x, 4x and 16x the data.

Each size runs in a fresh process (so peak RSS is that run's own) on a CSV manifest of PNG files:
the 540 digits test images (or, with --image-size/--channels, the same digits as larger RGB
images for an untrained size-agnostic CNN), repeated with a little pixel noise so every file is
distinct. The audit is clean + rotation + PGD + subgroups, with the images streamed from disk
(--stream on) or held in memory (--stream off). The time is the audit's own (load, checks,
results.json and report), without Python and torch start-up.

With --nproc 1,2 it instead times the whole `auditkit audit` command at the first scale, run by
torchrun with 1 and 2 processes (gloo on the CPU, nccl on GPUs), against one plain process.

Usage: python benchmarks/scale.py [--scales 2,8,32] [--stream on|off|both] [--image-size 28] [--channels 1]
       python benchmarks/scale.py --nproc 1,2 [--scales 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CHECKS = ("clean", "rotation", "attack", "subgroups")


def write_manifest(folder: Path, scale: int, size: int, channels: int) -> Path:
    """The digits test split ``scale`` times over as PNGs (copies get +-2 grey levels of noise)."""
    from auditkit.inputs.data import digits_split

    split = digits_split(seed=0)["test"]
    x = torch.from_numpy(split["x"]).float()
    if size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, channels, 1, 1)
    base = x.round().clamp(0, 255).to(torch.uint8).numpy()
    rng = np.random.default_rng(0)
    rows = ["path,label,site"]
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for copy in range(scale):
        noisy = base if copy == 0 else np.clip(base.astype(np.int16) + rng.integers(-2, 3, base.shape), 0, 255)
        for i, img in enumerate(noisy.astype(np.uint8)):
            name = f"img/{copy}_{i}.png"
            arr = img[0] if channels == 1 else np.transpose(img, (1, 2, 0))
            Image.fromarray(arr).save(folder / name)
            rows.append(f"{name},{split['y'][i]},{split['site'][i]}")
    (folder / "test.csv").write_text("\n".join(rows) + "\n")
    return folder / "test.csv"


def write_model(folder: Path, size: int, channels: int) -> Path:
    """The digits CNN trained by ``auditkit demo`` (28x28 grey), else an untrained small CNN."""
    from auditkit.inputs.models import ModelSpec, save_model
    from auditkit.zoo import small_cnn

    torch.manual_seed(0)
    spec = ModelSpec(
        arch="auditkit.zoo:small_cnn",
        num_classes=10,
        input_size=(size, size),
        channels=channels,
        mean=(0.1,) * channels,
        std=(0.3,) * channels,
        class_names=tuple(str(i) for i in range(10)),
    )
    return save_model(small_cnn(num_classes=10, in_channels=channels), spec, folder / "model.safetensors")


def child(model: str, data: str, out: str, stream: str, batch_size: int, device: str) -> None:
    """One audit in this process; prints a JSON line with its time and peak RSS."""
    from auditkit.config import AuditConfig
    from auditkit.pipeline import run_audit, write_outputs

    torch.set_num_threads(torch.get_num_threads())
    config = AuditConfig(
        model=model,
        data=data,
        out=out,
        device=device,
        batch_size=batch_size,
        checks=CHECKS,
        angles="-30:30:15",
        spatial=False,
        epsilons="0,0.05",
        steps=5,
        stream=stream,
        progress=False,
    )
    t = time.perf_counter()
    results = run_audit(config)
    write_outputs(results, out)
    seconds = time.perf_counter() - t
    audit = sum(v for k, v in results.manifest.timings)  # decoding/hashing, the clean pass and the checks
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": results.manifest.num_samples, "seconds": seconds, "audit": audit, "rss_mib": rss_mib}))


def distributed(model: Path, data: Path, out: Path, nprocs: list[int], args: argparse.Namespace) -> None:
    """Wall time of the whole ``auditkit audit`` command: one process, then torchrun with N."""
    import os

    audit = ["-m", "auditkit", "audit", str(model), str(data), "--out", str(out), "--no-progress"]
    audit += ["--angles", "-30:30:15", "--no-spatial", "--epsilons", "0,0.05", "--steps", "5"]
    audit += ["--methods", "saliency", "--batch-size", str(args.batch_size), "--device", args.device]
    n = sum(1 for _ in data.open()) - 1
    print(f"{n} images, every check; {os.cpu_count()} CPU cores")
    print(f"{'launch':>22} {'seconds':>8} {'images/s':>9} {'speed-up':>9}")
    runs: list[tuple[str, list[str], dict[str, str]]] = [("one process", [sys.executable, *audit], {})]
    for p in nprocs:
        threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // p))}
        runs.append(
            (
                f"torchrun x{p}",
                [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(p), *audit],
                threads,
            )
        )
    first = None
    for name, cmd, env in runs:
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **env})
        seconds = time.perf_counter() - t
        first = first or seconds
        print(f"{name:>22} {seconds:>8.1f} {n / seconds:>9.1f} {first / seconds:>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="2,8,32", help="copies of the 540 test images; the first is '1x'")
    ap.add_argument("--stream", choices=["on", "off", "both"], default="both")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model-dir", default="reports/demo", help="where `auditkit demo` wrote its model")
    ap.add_argument("--nproc", default="", help="compare torchrun with these process counts instead")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=4, metavar=("MODEL", "DATA", "OUT", "STREAM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model, data, out, stream = args.child
        child(model, data, out, stream, batch_size=args.batch_size, device=args.device)
        return
    scales = [int(s) for s in args.scales.split(",")]
    streams = ["on", "off"] if args.stream == "both" else [args.stream]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = Path(args.model_dir) / "model" / "model.safetensors"
        if args.image_size == 28 and args.channels == 1:
            if not demo.is_file():
                sys.exit(f"no demo model at {demo}: run `auditkit demo` first or pass --model-dir")
            model = demo
        else:
            model = write_model(root, args.image_size, args.channels)
        if args.nproc:
            data = write_manifest(root / "data", scales[0], args.image_size, args.channels)
            distributed(model, data, root / "out", [int(p) for p in args.nproc.split(",")], args)
            return
        print(f"model {model}; images {args.channels}x{args.image_size}x{args.image_size}; checks {', '.join(CHECKS)}")
        header = (
            *("stream", "scale", "images", "total s", "ms/image", "vs 1x"),
            *("checks s", "ms/image", "vs 1x", "peak RSS", "vs 1x"),
        )
        print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 5, 7, 8, 9, 6, 9, 9, 6, 9, 6), strict=True)))
        for stream in streams:
            first: dict[str, float] | None = None
            for scale in scales:
                data = write_manifest(root / f"data{scale}", scale, args.image_size, args.channels)
                cmd = [sys.executable, __file__, "--batch-size", str(args.batch_size), "--device", args.device]
                cmd += ["--child", str(model), str(data), str(root / "out"), stream]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                per, per_audit = 1000 * row["seconds"] / row["n"], 1000 * row["audit"] / row["n"]
                first = first or {"per": per, "audit": per_audit, "rss": row["rss_mib"], "scale": scale}
                print(
                    f"{stream:>6} {scale // first['scale']:>4}x {row['n']:>7} {row['seconds']:>8.1f} {per:>9.2f} "
                    f"{per / first['per']:>6.2f} {row['audit']:>9.1f} {per_audit:>9.2f} "
                    f"{per_audit / first['audit']:>6.2f} {row['rss_mib']:>7.0f}Mi {row['rss_mib'] / first['rss']:>6.2f}"
                )


if __name__ == "__main__":
    main()
