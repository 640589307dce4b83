"""PGD cost, side by side in one run, on the demo digits model and data.

bound        = K forward+backward passes over the data (K = steps), nothing else
bound-noisy  = the same passes over the data with uniform noise in the epsilon ball: the inputs PGD
               actually sees (on a CPU, max-pooling a noisy image costs more than a clean one)
auditkit-1   = auditkit PGD at one epsilon, early stopping off (must be <= 1.10x bound)
The one-epsilon contenders run round-robin --repeats times; each one's best time and the median
of the per-round ratios are printed (the median of paired ratios is robust to a noisy machine).
curve        = robust accuracy over 5 epsilons: auditkit (early stopping, nested epsilons) vs
               foolbox LinfPGD (one multi-epsilon call), torchattacks and ART when installed

Usage: python benchmarks/attack.py [--model-dir reports/demo] [--n 540] [--steps 20] [--repeats 3]
The demo model is trained first when --model-dir has none (``auditkit demo`` writes one).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from auditkit.checks.attack import AdversarialAttack
from auditkit.engine.loop import Batch, Engine, eval_mode
from auditkit.inputs.data import load_dataset
from auditkit.inputs.models import load_model
from auditkit.ops.attacks import PGD

EPSILONS = (0.0, 0.01, 0.02, 0.05, 0.1)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default="reports/demo")
    ap.add_argument("--n", type=int, default=540)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    root = Path(args.model_dir)
    if not (root / "model" / "model.safetensors").is_file():
        from auditkit.demo import run_demo

        run_demo(root, progress=False)
    loaded = load_model(root / "model" / "model.safetensors")
    data = load_dataset(root / "data" / "test.csv", class_names=loaded.spec.class_names, limit=args.n)
    engine = Engine(device=args.device, batch_size=args.batch_size, progress=False)
    model = engine.to_device(loaded.model).eval()
    engine.predict(model, data)
    eps = 0.05

    noise = torch.Generator().manual_seed(1)

    def bound(noisy: bool = False) -> None:
        with eval_mode(model):
            batches = [engine.batch(data, s, s + args.batch_size) for s in range(0, len(data), args.batch_size)]
            if noisy:
                batches = [
                    Batch(
                        b.start, b.stop, (b.x + (torch.rand(b.x.shape, generator=noise) * 2 - 1) * eps).clamp(0, 1), b.y
                    )
                    for b in batches
                ]
            for _ in range(args.steps):
                for b in batches:
                    x = b.x.detach().requires_grad_(True)
                    loss = F.cross_entropy(model(x), b.y, reduction="sum")
                    torch.autograd.grad(loss, x)

    pgd = PGD(steps=args.steps, early_stop=False)

    def ours_one() -> None:
        gen = torch.Generator().manual_seed(0)

        def fn(b: Batch) -> None:
            pgd(model, b.x, b.y, eps, generator=gen)

        with eval_mode(model):
            for _ in engine.map(fn, data, description="pgd", grad=True):
                pass

    contenders: dict[str, Callable[[], object]] = {
        "bound": bound,
        "bound-noisy": lambda: bound(noisy=True),
        "auditkit-1": ours_one,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn)[0])
    best = {name: min(ts) for name, ts in times.items()}

    print(
        f"device={engine.device} n={len(data)} steps={args.steps} batch={args.batch_size} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"one epsilon ({eps}), early stopping off:")
    for name, t in best.items():
        paired = statistics.median(a / b for a, b in zip(times[name], times["bound"], strict=True))
        noisy = statistics.median(a / b for a, b in zip(times[name], times["bound-noisy"], strict=True))
        print(
            f"  {name:12s}{t:8.3f} s{t / best['bound']:8.2f}x bound (best)"
            f"{paired:8.2f}x bound, {noisy:5.2f}x bound-noisy (median of {args.repeats} paired)"
        )

    x_all = data.images[:].float() / 255
    y_all = data.labels
    rows: list[tuple[str, float, list[float]]] = []
    check = AdversarialAttack(epsilons=EPSILONS, steps=args.steps, sanity_samples=0, examples=0)
    from auditkit.checks.base import Check

    def ours_curve() -> list[float]:
        fresh = Engine(device=args.device, batch_size=args.batch_size, progress=False)
        fresh.predict(model, data)
        result = Check.run(check, model, data, engine=fresh)
        return [p.robust.value for p in result.curve]  # type: ignore[attr-defined]

    t, accs = timed(ours_curve)
    rows.append(("auditkit", t, accs))  # type: ignore[arg-type]

    import foolbox as fb

    def foolbox_curve(rel_stepsize: float = 0.01 / 0.3) -> list[float]:
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        attack = fb.attacks.LinfPGD(steps=args.steps, rel_stepsize=rel_stepsize)
        robust = []
        with torch.no_grad():
            clean_ok = model(x_all).argmax(1) == y_all
        _, _, success = attack(fmodel, x_all, y_all, epsilons=[e for e in EPSILONS if e > 0])
        robust.append(float(clean_ok.float().mean()))
        robust += [float((clean_ok & ~s).float().mean()) for s in success]
        return robust

    t, accs = timed(foolbox_curve)
    rows.append(("foolbox (default step)", t, accs))  # type: ignore[arg-type]
    t, accs = timed(lambda: foolbox_curve(2.5 / args.steps))
    rows.append(("foolbox (auditkit's step)", t, accs))  # type: ignore[arg-type]
    for peer in ("torchattacks", "art"):
        if importlib.util.find_spec(peer) is None:
            rows.append((f"{peer} (not installed)", float("nan"), []))
    print(f"curve over epsilons {EPSILONS} (PGD-{args.steps} Linf):")
    ours_t = rows[0][1]
    for name, t, accs in rows:
        ratio = f"{t / ours_t:6.2f}x auditkit" if t == t else ""
        curve = " ".join(f"{a:.3f}" for a in accs)
        print(f"  {name:26s}{t:8.2f} s  {ratio}  robust acc: {curve}")


if __name__ == "__main__":
    main()
