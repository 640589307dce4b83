"""Robust-accuracy curves and their cost, side by side in one run, on the same images of the demo digits model.

For each norm (linf: eps 0, 0.01, 0.02, 0.05, 0.1; l2: eps 0, 0.25, 0.5, 1, 2), on the same N test
images, it computes the robust-accuracy curve and the wall time of the whole curve of:

auditkit fast          AdversarialAttack(strength="fast"): PGD-20, early stopping, nested epsilons
auditkit standard      AdversarialAttack(strength="standard"): APGD-CE then APGD-T (3 targets, ranked at
                       APGD-CE's strongest point), 100 steps each
AutoAttack standard    Croce & Hein's version='standard', built from torchattacks' ports: per epsilon,
                       APGD-CE (100 steps, 1 restart), APGD-T (9 targets, 100 steps), FAB-T (9 targets,
                       100 steps) and Square (5000 queries, p_init 0.8), each on the points still robust
                       (no nesting over epsilons, as AutoAttack is run once per epsilon)
AutoAttack APGD only   the same run, counting only what APGD-CE and APGD-T broke (what auditkit standard
                       reproduces), timed as the APGD-CE + APGD-T part of it
torchattacks / foolbox / ART PGD-20
                       random start, step 2.5 * eps / 20 (auditkit fast's), every image at every epsilon;
                       these and auditkit fast are cheap and run round-robin --repeats times (best time)

auditkit runs through ``AdversarialAttack(...).run`` with ``sanity_samples=0, examples=0``, so its time
is the curve and the clean pass, nothing else. Robust accuracy: correct on the clean image and not
broken. It prints per method the curve, the time and the time ratio to auditkit standard (and auditkit
fast to foolbox), and the per-epsilon gap auditkit standard - AutoAttack standard with its mean and max,
plus the images on which the two disagree.

--bound-repeats R adds the old one-epsilon measurement (Linf 0.05, early stopping off): auditkit PGD-20
against K = 20 bare forward+backward passes over the same images, round-robin R times.

Usage: python benchmarks/attack.py [--norm linf|l2|both] [--n 100] [--no-fab] [--skip-autoattack]
The demo model is trained first when --model-dir has none (``auditkit demo`` writes one).
Runs on --threads 1 by default: on a shared 2-core machine two intra-op threads thrash as soon as
another process holds a core (a forward pass then costs ~5x more), and the comparison is what counts.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from auditkit.checks.attack import AdversarialAttack
from auditkit.engine.loop import Batch, Engine, eval_mode
from auditkit.inputs.data import ImageDataset, load_dataset
from auditkit.inputs.models import load_model
from auditkit.ops.attacks import PGD

EPSILONS: dict[str, tuple[float, ...]] = {
    "linf": (0.0, 0.01, 0.02, 0.05, 0.1),
    "l2": (0.0, 0.25, 0.5, 1.0, 2.0),
}
PGD_STEPS = 20
REL_STEP = 2.5 / PGD_STEPS  # auditkit fast's PGD step, relative to eps
AA_STEPS = 100
AA_ATTACKS = ("APGD-CE", "APGD-T", "FAB-T", "Square")


@dataclass
class Row:
    """One method's curve: robust accuracy per epsilon, wall time, and per-sample robust flags."""

    name: str
    accs: list[float]
    seconds: float
    robust: list[Tensor] = field(default_factory=list)  # (N,) bool per epsilon, when known
    note: str = ""


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def batched(fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, bs: int) -> Tensor:
    """``fn(x, y) -> x_adv`` over batches of ``bs``; returns ``(N, C, H, W)``."""
    if len(x) == 0:
        return x.clone()
    return torch.cat([fn(x[s : s + bs], y[s : s + bs]) for s in range(0, len(x), bs)])


def still_right(model: nn.Module, adv: Tensor, y: Tensor, bs: int) -> Tensor:
    """``(N,)`` bool: ``model`` still classifies ``adv`` as ``y``."""
    if len(adv) == 0:
        return torch.zeros(0, dtype=torch.bool)
    with torch.no_grad():
        return torch.cat([model(adv[s : s + bs]).argmax(1) == y[s : s + bs] for s in range(0, len(adv), bs)]).cpu()


# --------------------------------------------------------------------------------------------- auditkit
def auditkit_curve(
    strength: str, norm: str, eps: tuple[float, ...], model: nn.Module, data: ImageDataset, args: argparse.Namespace
) -> Row:
    check = AdversarialAttack(strength=strength, norm=norm, epsilons=eps, sanity_samples=0, examples=0)  # type: ignore[arg-type]
    engine = Engine(device=args.device, batch_size=args.batch_size, seed=args.seed, progress=False)
    seconds, result = timed(lambda: check.run(model, data, engine=engine))
    accs = [p.robust.value for p in result.curve]  # type: ignore[attr-defined]
    robust = [o.values.bool() for o in engine.outcomes(data) if o.key.startswith("attack.robust_accuracy[")]
    what = "PGD-20" if strength == "fast" else "APGD-CE + APGD-T"
    return Row(f"auditkit {strength} ({what})", accs, seconds, robust)


# ------------------------------------------------------------------------------------------- AutoAttack
def autoattack_curves(
    norm: str, eps: tuple[float, ...], model: nn.Module, x: Tensor, y: Tensor, clean: Tensor, args: argparse.Namespace
) -> tuple[Row, Row, dict[str, float]]:
    """AutoAttack ``version='standard'`` at each epsilon (not nested), from torchattacks' ports, with the
    settings of fra31/auto-attack's ``set_version('standard')``. Returns the full row, the APGD-CE+APGD-T
    row of the same run, and the seconds spent in each attack over the curve."""
    import torchattacks as ta

    k = int(model(x[:1]).shape[1])
    tnorm = "Linf" if norm == "linf" else "L2"
    seed = args.seed

    def attacks(e: float) -> dict[str, object]:
        out: dict[str, object] = {
            "APGD-CE": ta.APGD(model, norm=tnorm, eps=e, steps=AA_STEPS, n_restarts=1, seed=seed, loss="ce", rho=0.75),
            "APGD-T": ta.APGDT(model, norm=tnorm, eps=e, steps=AA_STEPS, n_restarts=1, seed=seed, n_classes=k),
        }
        if args.fab:
            out["FAB-T"] = ta.FAB(
                model, norm=tnorm, eps=e, steps=AA_STEPS, n_restarts=1, seed=seed, multi_targeted=True, n_classes=k
            )
        out["Square"] = ta.Square(
            model,
            norm=tnorm,
            eps=e,
            n_queries=5000,
            n_restarts=1,
            p_init=0.8,
            loss="margin",
            resc_schedule=False,
            seed=seed,
        )
        return out

    per_attack = dict.fromkeys(AA_ATTACKS, 0.0)
    full_acc, apgd_acc, full_robust, apgd_robust = [], [], [], []
    seconds = apgd_seconds = 0.0
    n = len(x)
    for e in eps:
        robust = clean.clone()
        broken_by: list[str | None] = [None] * n
        if e > 0:
            for name, atk in attacks(e).items():
                idx = torch.nonzero(robust).flatten()
                if len(idx) == 0:
                    break
                t0 = time.perf_counter()
                adv = batched(atk, x[idx], y[idx], args.batch_size)  # type: ignore[arg-type]
                ok = still_right(model, adv, y[idx], args.batch_size)
                dt = time.perf_counter() - t0
                per_attack[name] += dt
                seconds += dt
                apgd_seconds += dt if name.startswith("APGD") else 0.0
                for j in idx[~ok].tolist():
                    broken_by[j] = name
                robust[idx[~ok]] = False
        only_apgd = robust | torch.tensor([b in ("FAB-T", "Square") for b in broken_by])
        full_robust.append(robust)
        apgd_robust.append(only_apgd & clean)
        full_acc.append(float(robust.float().mean()))
        apgd_acc.append(float((only_apgd & clean).float().mean()))
    what = "APGD-CE, APGD-T, FAB-T, Square" if args.fab else "APGD-CE, APGD-T, Square; no FAB-T"
    full = Row(f"AutoAttack standard ({what})", full_acc, seconds, full_robust)
    apgd = Row("AutoAttack APGD-CE + APGD-T only", apgd_acc, apgd_seconds, apgd_robust, "same run")
    return full, apgd, per_attack


# ---------------------------------------------------------------------------------------------- PGD-20s
def peer_curve(
    name: str,
    attack_at: Callable[[float], Callable[[Tensor, Tensor], Tensor]],
    eps: tuple[float, ...],
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    clean: Tensor,
    args: argparse.Namespace,
) -> Row:
    """A PGD-20 of another library on every image at every epsilon (``attack_at(eps)`` -> ``fn(x, y) -> adv``)."""
    accs, robust, seconds = [], [], 0.0
    for e in eps:
        if e == 0:
            ok = clean
        else:
            torch.manual_seed(args.seed)
            np.random.seed(args.seed)
            t0 = time.perf_counter()
            adv = batched(attack_at(e), x, y, args.batch_size)
            ok = clean & still_right(model, adv, y, args.batch_size)
            seconds += time.perf_counter() - t0
        robust.append(ok)
        accs.append(float(ok.float().mean()))
    return Row(name, accs, seconds, robust)


def torchattacks_pgd(model: nn.Module, norm: str) -> Callable[[float], Callable[[Tensor, Tensor], Tensor]]:
    import torchattacks as ta

    def at(e: float) -> Callable[[Tensor, Tensor], Tensor]:
        cls = ta.PGD if norm == "linf" else ta.PGDL2
        return cls(model, eps=e, alpha=REL_STEP * e, steps=PGD_STEPS, random_start=True)  # type: ignore[no-any-return]

    return at


def foolbox_pgd(model: nn.Module, norm: str) -> Callable[[float], Callable[[Tensor, Tensor], Tensor]]:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
    attack = cls(steps=PGD_STEPS, rel_stepsize=REL_STEP, random_start=True)

    def at(e: float) -> Callable[[Tensor, Tensor], Tensor]:
        def fn(xb: Tensor, yb: Tensor) -> Tensor:
            _, clipped, _ = attack(fmodel, xb, yb, epsilons=e)
            return clipped  # type: ignore[no-any-return]

        return fn

    return at


def art_pgd(
    model: nn.Module, norm: str, x: Tensor, k: int, bs: int
) -> Callable[[float], Callable[[Tensor, Tensor], Tensor]]:
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=k,
        clip_values=(0.0, 1.0),
        device_type="gpu" if x.device.type == "cuda" else "cpu",
    )

    def at(e: float) -> Callable[[Tensor, Tensor], Tensor]:
        attack = ProjectedGradientDescentPyTorch(
            classifier,
            norm=np.inf if norm == "linf" else 2,
            eps=e,
            eps_step=REL_STEP * e,
            max_iter=PGD_STEPS,
            num_random_init=1,
            batch_size=bs,
            verbose=False,
        )

        def fn(xb: Tensor, yb: Tensor) -> Tensor:
            adv = attack.generate(xb.cpu().numpy(), y=yb.cpu().numpy())
            return torch.from_numpy(adv).to(xb.device)

        return fn

    return at


# ------------------------------------------------------------------------------------------------ bound
def bound_measurement(model: nn.Module, data: ImageDataset, engine: Engine, repeats: int) -> None:
    """auditkit PGD-20 Linf at eps 0.05, early stopping off, against K = 20 bare forward+backward passes."""
    eps, steps, bs = 0.05, PGD_STEPS, engine.batch_size
    noise = torch.Generator().manual_seed(1)
    batches = [engine.batch(data, s, s + bs) for s in range(0, len(data), bs)]
    noisy = [
        Batch(b.start, b.stop, (b.x + (torch.rand(b.x.shape, generator=noise) * 2 - 1) * eps).clamp(0, 1), b.y)
        for b in batches
    ]

    def bound(bb: list[Batch]) -> None:
        with eval_mode(model):
            for _ in range(steps):
                for b in bb:
                    xg = b.x.detach().requires_grad_(True)
                    torch.autograd.grad(F.cross_entropy(model(xg), b.y, reduction="sum"), xg)

    pgd = PGD(steps=steps, early_stop=False)

    def ours() -> None:
        gen = torch.Generator().manual_seed(0)
        with eval_mode(model):
            for _ in engine.map(lambda b: pgd(model, b.x, b.y, eps, generator=gen), data, description="pgd", grad=True):
                pass

    contenders: dict[str, Callable[[], object]] = {
        "bound": lambda: bound(batches),
        "bound-noisy": lambda: bound(noisy),
        "auditkit-1": ours,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn)[0])
    best = {name: min(ts) for name, ts in times.items()}
    print(f"\none epsilon (Linf {eps}), PGD-{steps}, early stopping off, {repeats} round-robin repeats:")
    for name, t in best.items():
        paired = statistics.median(a / b for a, b in zip(times[name], times["bound"], strict=True))
        noisy_r = statistics.median(a / b for a, b in zip(times[name], times["bound-noisy"], strict=True))
        print(
            f"  {name:12s}{t:8.3f} s{t / best['bound']:8.2f}x bound (best)"
            f"{paired:8.2f}x bound, {noisy_r:5.2f}x bound-noisy (median of paired)"
        )


# ------------------------------------------------------------------------------------------------- main
def run_norm(norm: str, model: nn.Module, data: ImageDataset, args: argparse.Namespace) -> None:
    eps = EPSILONS[norm]
    engine = Engine(device=args.device, batch_size=args.batch_size, seed=args.seed, progress=False)
    whole = engine.batch(data, 0, len(data))
    x, y = whole.x, whole.y
    k = data.num_classes
    with torch.no_grad():
        clean = still_right(model, x, y, args.batch_size)
    load0 = os.getloadavg()[0]
    t_norm = time.perf_counter()
    rows: list[Row] = []

    def add(row: Row) -> None:
        rows.append(row)
        curve = " ".join(f"{100 * a:5.1f}" for a in row.accs)
        print(f"  [{time.perf_counter() - t_norm:7.1f} s] {row.name}: {row.seconds:.1f} s, {curve}", flush=True)

    print(
        f"\n=== {norm}: eps {', '.join(f'{e:g}' for e in eps)}; n={len(data)}, clean {100 * clean.float().mean():.1f}%"
    )
    std = auditkit_curve("standard", norm, eps, model, data, args)
    add(std)
    aa = aa_apgd = None
    per_attack: dict[str, float] = {}
    if not args.skip_autoattack:
        aa, aa_apgd, per_attack = autoattack_curves(norm, eps, model, x, y, clean, args)
        add(aa)
        add(aa_apgd)
    # the PGD-20s are cheap: round-robin --repeats times, best time kept (the curves are seeded, identical)
    pgd20: dict[str, Callable[[], Row]] = {
        "fast": lambda: auditkit_curve("fast", norm, eps, model, data, args),
        "foolbox": lambda: peer_curve(
            f"foolbox {'LinfPGD' if norm == 'linf' else 'L2PGD'}-20",
            foolbox_pgd(model, norm),
            eps,
            model,
            x,
            y,
            clean,
            args,
        ),
    }
    if importlib.util.find_spec("torchattacks") is not None:
        pgd20["torchattacks"] = lambda: peer_curve(
            "torchattacks PGD-20", torchattacks_pgd(model, norm), eps, model, x, y, clean, args
        )
    if importlib.util.find_spec("art") is not None:
        pgd20["art"] = lambda: peer_curve(
            "ART PGD-20", art_pgd(model, norm, x, k, args.batch_size), eps, model, x, y, clean, args
        )
    best: dict[str, Row] = {}
    for _ in range(max(1, args.repeats)):
        for key, fn in pgd20.items():
            row = fn()
            if key not in best or row.seconds < best[key].seconds:
                best[key] = row
    for key in ("fast", "torchattacks", "foolbox", "art"):
        if key in best:
            add(best[key])
        else:
            rows.append(Row(f"{key} PGD-20 (not installed)", [], float("nan")))
    fast, foolbox_row, torchattacks_row = best["fast"], best["foolbox"], best.get("torchattacks")
    rows.sort(key=lambda r: r is not fast)  # auditkit fast first in the table
    total = time.perf_counter() - t_norm

    print(
        f"\n{norm}: n={len(data)} device={engine.device} threads={torch.get_num_threads()} "
        f"batch={args.batch_size} seed={args.seed}; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
        f"{total:.0f} s for this norm"
    )
    head = " ".join(f"{e:>6g}" for e in eps)
    print(f"  {'method':54s}{head}  {'time s':>8s}  {'/ standard':>10s}")
    for row in rows:
        curve = " ".join(f"{100 * a:6.1f}" for a in row.accs) if row.accs else " " * (7 * len(eps) - 1)
        ratio = f"{row.seconds / std.seconds:9.2f}x" if row.seconds == row.seconds else ""
        print(f"  {row.name:54s}{curve}  {row.seconds:8.1f}  {ratio:>10s}")
    if per_attack:
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in per_attack.items() if s > 0 or name != "FAB-T")
        print(f"  AutoAttack time by attack over the curve: {parts}")
    other = f"; torchattacks {torchattacks_row.seconds / fast.seconds:.2f}x" if torchattacks_row else ""
    print(f"  fast vs PGD-20: foolbox takes {foolbox_row.seconds / fast.seconds:.2f}x auditkit fast's time{other}")
    for ref in (aa, aa_apgd):
        if ref is None:
            continue
        gap = [100 * (a - b) for a, b in zip(std.accs, ref.accs, strict=True)]
        print(
            f"  standard - {ref.name.split(' (')[0]} (points): {' '.join(f'{g:+.1f}' for g in gap)}; "
            f"mean {statistics.mean(gap):+.2f}, max {max(gap):+.1f}"
        )
        for e, mine, theirs in zip(eps, std.robust, ref.robust, strict=True):
            above, below = torch.nonzero(mine & ~theirs).flatten(), torch.nonzero(~mine & theirs).flatten()
            if len(above) or len(below):
                ids = ", ".join(data.ids[int(i)] for i in above[:8])
                print(
                    f"    eps {e:g}: {len(above)} image(s) robust for auditkit standard but broken by it"
                    f"{f' ({ids})' if len(above) else ''}; {len(below)} the other way"
                )
    if aa is not None:
        print(f"  AutoAttack standard takes {aa.seconds / std.seconds:.2f}x auditkit standard's time (target >= 5x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default="reports/demo")
    ap.add_argument("--n", type=int, default=100, help="test images (the first N)")
    ap.add_argument("--norm", choices=("linf", "l2", "both"), default="both")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="round-robin runs of the PGD-20s (best time kept)")
    ap.add_argument("--skip-autoattack", action="store_true")
    ap.add_argument("--fab", action=argparse.BooleanOptionalAction, default=True, help="FAB-T in AutoAttack")
    ap.add_argument("--bound-repeats", type=int, default=0, help="also time PGD-20 against its fwd+bwd bound")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    root = Path(args.model_dir)
    if not (root / "model" / "model.safetensors").is_file():
        from auditkit.demo import run_demo

        run_demo(root, progress=False)
    loaded = load_model(root / "model" / "model.safetensors")
    data = load_dataset(root / "data" / "test.csv", class_names=loaded.spec.class_names, limit=args.n)
    engine = Engine(device=args.device, batch_size=args.batch_size, seed=args.seed, progress=False)
    model = engine.to_device(loaded.model).eval()
    start = time.perf_counter()
    for norm in ("linf", "l2") if args.norm == "both" else (args.norm,):
        run_norm(norm, model, data, args)
    if args.bound_repeats > 0:
        bound_measurement(model, data, engine, args.bound_repeats)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
