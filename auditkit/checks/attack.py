"""Adversarial robustness: robust-accuracy curves over epsilons, with soundness checks.

The native path is :class:`auditkit.attacks.PGD` (FGSM is PGD with one step) run through
:meth:`Engine.map` with gradients on. Along the curve a sample broken at a smaller epsilon stays
broken (its perturbation is inside every larger ball) and is not attacked again.
``foolbox:<Name>`` runs any foolbox attack through the same curve and report.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from auditkit.attacks import NORMS, PGD, Norm
from auditkit.checks.base import Check
from auditkit.data import ImageDataset
from auditkit.engine import Batch, Engine, Outcome
from auditkit.exceptions import ConfigError
from auditkit.images import to_data_uri
from auditkit.metrics import wilson_interval
from auditkit.results import CheckResult, Interval, fmt

DEFAULT_EPSILONS: dict[str, tuple[float, ...]] = {
    "linf": (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),
    "l2": (0.0, 0.25, 0.5, 1.0, 2.0),
}


def parse_epsilons(text: str | None, norm: str) -> tuple[float, ...]:
    """``"0,0.01,0.03"``, ``"0:0.1:0.02"`` or ``None`` (the norm's default) -> sorted, with 0 first."""
    if text is None or not text.strip():
        return DEFAULT_EPSILONS[norm]
    from auditkit.checks.rotation import parse_angles

    try:
        values = parse_angles(text)
    except ConfigError:
        raise ConfigError(f"--epsilons takes a list (0,0.01,0.03) or start:stop:step, got {text!r}") from None
    if min(values) < 0:
        raise ConfigError(f"epsilons must be non-negative, got {min(values)}")
    return tuple(sorted({0.0, *values}))


@dataclass(frozen=True)
class CurvePoint:
    """Robust accuracy at one epsilon, with its 95% Wilson interval."""

    eps: float
    robust: Interval


@dataclass(frozen=True)
class Soundness:
    """One automatic check that the evaluation itself can be trusted."""

    name: str
    passed: bool
    value: float
    explanation: str


@dataclass(frozen=True)
class AdversarialExample:
    """A sample before and after the attack, and its perturbation amplified to be visible."""

    id: str
    label: str
    eps: float
    clean_pred: str
    clean_confidence: float
    adv_pred: str
    adv_confidence: float
    clean_image: str
    adv_image: str
    perturbation_image: str


@dataclass(frozen=True)
class AttackResult(CheckResult):
    """A robust-accuracy curve, the settings that produced it and its soundness checks."""

    kind = "attack"

    attack: str
    norm: str
    steps: int
    rel_step: float
    restarts: int
    random_start: bool
    targeted: bool
    clean_accuracy: float
    curve: tuple[CurvePoint, ...]
    soundness: tuple[Soundness, ...]
    examples: tuple[AdversarialExample, ...]
    class_names: tuple[str, ...]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.curve:
            key = f"attack.robust_accuracy[norm={self.norm},eps={fmt(p.eps)}]"
            out[key] = p.robust.value
            out[key + ".ci_low"] = p.robust.low
            out[key + ".ci_high"] = p.robust.high
        for s in self.soundness:
            out[f"attack.soundness[check={s.name}]"] = 1.0 if s.passed else 0.0
        out["attack.soundness_warnings"] = float(sum(not s.passed for s in self.soundness))
        return out


class AdversarialAttack(Check):
    """FGSM/PGD (or a foolbox attack) over a list of epsilons, plus soundness checks."""

    name = "attack"

    def __init__(
        self,
        *,
        attack: str = "pgd",
        norm: Norm = "linf",
        epsilons: tuple[float, ...] | None = None,
        steps: int = 20,
        rel_step: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        targeted: bool = False,
        sanity_samples: int = 100,
        examples: int = 6,
    ) -> None:
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if attack not in ("pgd", "fgsm") and not attack.startswith("foolbox:"):
            raise ConfigError(f"attack must be pgd, fgsm or foolbox:<AttackName>, got {attack!r}")
        self.attack = attack
        self.norm = norm
        self.epsilons = epsilons if epsilons is not None else DEFAULT_EPSILONS[norm]
        self.pgd = (
            PGD.fgsm(norm=norm, targeted=targeted)
            if attack == "fgsm"
            else PGD(
                norm=norm,
                steps=steps,
                rel_step=rel_step,
                restarts=restarts,
                random_start=random_start,
                targeted=targeted,
            )
        )
        self.sanity_samples = sanity_samples
        self.examples = examples

    # ------------------------------------------------------------------ curve
    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> AttackResult:
        clean = engine.predict(model, data)
        k = data.num_classes
        target = (clean.label + 1) % k  # targeted: each sample towards the next class
        if self.attack.startswith("foolbox:"):
            broken_at = self._foolbox_curve(model, data, engine, clean.correct)
        else:
            broken_at = self._native_curve(model, data, engine, clean.correct, target)
        n = len(data)
        curve = []
        for i, eps in enumerate(self.epsilons):
            robust = clean.correct & ~(broken_at <= i)
            curve.append(CurvePoint(eps=eps, robust=wilson_interval(int(robust.sum()), n)))
            metric = f"attack.robust_accuracy[norm={self.norm},eps={fmt(eps)}]"
            engine.publish(data, Outcome(key=metric, label="", values=robust.float(), metric=metric, per_group=False))
        last = len(self.epsilons) - 1
        engine.publish(
            data,
            Outcome(
                key=f"attack[eps={fmt(self.epsilons[last])}]",
                label=f"{self.pgd.name if not self.attack.startswith('foolbox:') else self.attack} "
                f"at eps {fmt(self.epsilons[last])}",
                values=(clean.correct & ~(broken_at <= last)).float(),
            ),
        )
        return AttackResult(
            attack=self.attack if self.attack.startswith("foolbox:") else self.pgd.name,
            norm=self.norm,
            steps=self.pgd.steps,
            rel_step=self.pgd.step_size(1.0),
            restarts=self.pgd.restarts,
            random_start=self.pgd.random_start,
            targeted=self.pgd.targeted,
            clean_accuracy=float(clean.correct.float().mean()),
            curve=tuple(curve),
            soundness=self._soundness(model, data, engine, curve),
            examples=self._gallery(model, data, engine, broken_at),
            class_names=data.class_names,
        )

    def _native_curve(
        self, model: nn.Module, data: ImageDataset, engine: Engine, correct: Tensor, target: Tensor
    ) -> Tensor:
        """Index of the first epsilon at which each sample breaks (``len(eps)`` if never)."""
        broken_at = torch.full((len(data),), len(self.epsilons), dtype=torch.long)
        for i, eps in enumerate(self.epsilons):
            if eps == 0:
                continue
            todo = torch.nonzero(correct & (broken_at == len(self.epsilons))).flatten()
            if len(todo) == 0:
                break
            sub = data.take(todo)
            sub_target = target[todo]

            def attack(b: Batch, eps: float = eps, sub_target: Tensor = sub_target) -> tuple[int, int, Tensor]:
                tgt = sub_target[b.start : b.stop].to(b.x.device)
                _, success = self.pgd(model, b.x, b.y, eps, target=tgt, generator=b.generator())
                return b.start, b.stop, success.cpu()

            for start, stop, success in engine.map(
                attack, sub, description=f"{self.pgd.name} eps={eps:.4g}", grad=True
            ):
                hit = todo[start:stop][success]
                broken_at[hit] = i
        return broken_at

    def _foolbox_curve(self, model: nn.Module, data: ImageDataset, engine: Engine, correct: Tensor) -> Tensor:
        import foolbox as fb

        name = self.attack.split(":", 1)[1]
        attack_cls = getattr(fb.attacks, name, None)
        if attack_cls is None:
            raise ConfigError(
                f"foolbox has no attack {name!r}; see foolbox.attacks (e.g. LinfPGD, L2CarliniWagnerAttack)"
            )
        fattack = attack_cls()
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=engine.device)
        eps = [e for e in self.epsilons if e > 0]
        broken_at = torch.full((len(data),), len(self.epsilons), dtype=torch.long)
        if not eps:
            return broken_at
        offset = len(self.epsilons) - len(eps)

        def attack(b: Batch) -> tuple[int, int, Tensor]:
            _, _, success = fattack(fmodel, b.x, b.y, epsilons=eps)
            return b.start, b.stop, torch.stack([s.cpu() for s in success], dim=1)

        for start, stop, success in engine.map(attack, data, description=f"foolbox {name}", grad=True):
            hit = success & correct[start:stop, None]
            hit = torch.cummax(hit.int(), dim=1).values.bool()  # broken at eps_i stays broken above
            first = torch.where(hit.any(dim=1), hit.int().argmax(dim=1) + offset, len(self.epsilons))
            broken_at[start:stop] = first
        return broken_at

    # -------------------------------------------------------------- soundness
    def _soundness(
        self, model: nn.Module, data: ImageDataset, engine: Engine, curve: list[CurvePoint]
    ) -> tuple[Soundness, ...]:
        clean = engine.predict(model, data)
        idx = torch.nonzero(clean.correct).flatten()[: self.sanity_samples]
        sub = data.take(idx)
        x = engine.batch(sub, 0, len(sub)).x
        y = sub.labels.to(engine.device)
        checks: list[Soundness] = []
        eps = max(self.epsilons)
        accs = [p.robust.value for p in curve]

        with torch.no_grad():
            first, second = model(x), model(x)
        same = torch.equal(first.argmax(1).cpu(), clean.pred[idx])
        checks.append(
            Soundness(
                "eps0_matches_clean",
                same,
                1.0 if same else 0.0,
                "Epsilon 0 must reproduce the clean predictions exactly; if not, the forward pass is not "
                "repeatable and every robust accuracy below is suspect.",
            )
        )
        mono = all(b <= a + 1e-12 for a, b in itertools.pairwise(accs))
        checks.append(
            Soundness(
                "monotone_in_eps",
                mono,
                1.0 if mono else 0.0,
                "Robust accuracy can only fall as epsilon grows (a larger ball contains the smaller one).",
            )
        )
        drift = float((first - second).abs().max()) if len(x) else 0.0
        checks.append(
            Soundness(
                "deterministic_forward",
                drift <= 1e-5,
                drift,
                "Two forward passes on the same images must agree. A difference means dropout left on or "
                "a randomised defence, which makes gradients noisy and robustness look better than it is.",
            )
        )
        rows = first.float().sum(dim=1)
        probs = bool(((first >= 0) & (first <= 1)).all()) and bool(
            torch.allclose(rows, torch.ones_like(rows), atol=1e-3)
        )
        checks.append(
            Soundness(
                "outputs_are_logits",
                not probs,
                1.0 if probs else 0.0,
                "Attacks need logits; outputs that already are probabilities (a final softmax) flatten the "
                "loss and weaken gradient attacks.",
            )
        )
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xg), y, reduction="none")
            finite = bool(torch.isfinite(loss).all())
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        zero = float((grad.flatten(1).abs().amax(dim=1) == 0).float().mean()) if len(x) else 0.0
        checks.append(
            Soundness(
                "finite_loss",
                finite,
                1.0 if finite else 0.0,
                "The loss must be finite on clean images; NaN/inf losses make gradient steps meaningless.",
            )
        )
        checks.append(
            Soundness(
                "nonzero_gradients",
                zero <= 0.01,
                zero,
                "Share of images whose input gradient is exactly zero (saturated softmax, quantised input, "
                "non-differentiable layers). Zero gradients hide adversarial examples: gradient masking.",
            )
        )
        if len(x) and eps > 0:
            gen = torch.Generator().manual_seed(engine.seed + 7)
            with torch.enable_grad():
                _, s_pgd = self.pgd(model, x, y, eps, target=(y + 1) % data.num_classes, generator=gen)
                _, s_fgsm = PGD.fgsm(norm=self.pgd.norm, targeted=self.pgd.targeted)(
                    model, x, y, eps, target=(y + 1) % data.num_classes
                )
                stronger = PGD(
                    norm=self.pgd.norm,
                    steps=2 * self.pgd.steps,
                    rel_step=self.pgd.rel_step,
                    restarts=self.pgd.restarts + 1,
                    targeted=self.pgd.targeted,
                )
                _, s_strong = stronger(model, x, y, eps, target=(y + 1) % data.num_classes, generator=gen)
                large = 0.5 if self.pgd.norm == "linf" else 0.5 * math.sqrt(x[0].numel())
                _, s_large = PGD(norm=self.pgd.norm, steps=max(20, self.pgd.steps))(model, x, y, large, generator=gen)
            weaker = int((s_fgsm & ~s_pgd).sum())
            checks.append(
                Soundness(
                    "pgd_beats_fgsm",
                    weaker == 0,
                    float(weaker),
                    f"Samples FGSM breaks but PGD does not at eps {eps:.4g}. PGD takes many steps and should "
                    "find everything FGSM finds; if not, the loss surface is being masked.",
                )
            )
            base, strong = 1 - float(s_pgd.float().mean()), 1 - float(s_strong.float().mean())
            tol = max(0.02, 1.0 / len(x))
            checks.append(
                Soundness(
                    "converged",
                    strong >= base - tol,
                    base - strong,
                    f"Doubling the steps and adding a restart lowered robust accuracy by {100 * (base - strong):.1f} "
                    "points on a subsample; more than 2 points means the attack had not converged and the "
                    "curve overstates robustness.",
                )
            )
            chance = 1.0 / data.num_classes
            left = 1 - float(s_large.float().mean())
            checks.append(
                Soundness(
                    "large_eps_reaches_chance",
                    left <= chance + 0.05,
                    left,
                    f"At a huge epsilon ({'Linf' if self.pgd.norm == 'linf' else 'L2'} {large:.3g}) any image can be "
                    f"turned into any other, so accuracy must fall to chance ({100 * chance:.0f}%) or below. "
                    "If it does not, gradient masking is suspected.",
                )
            )
        return tuple(checks)

    # ---------------------------------------------------------------- gallery
    def _gallery(
        self, model: nn.Module, data: ImageDataset, engine: Engine, broken_at: Tensor
    ) -> tuple[AdversarialExample, ...]:
        last = len(self.epsilons) - 1
        eps = self.epsilons[last]
        idx = torch.nonzero(broken_at <= last).flatten()[: self.examples]
        if len(idx) == 0 or eps == 0 or self.attack.startswith("foolbox:"):
            return ()
        sub = data.take(idx)
        x = engine.batch(sub, 0, len(sub)).x
        y = sub.labels.to(engine.device)
        with torch.enable_grad():
            adv, success = self.pgd(
                model,
                x,
                y,
                eps,
                target=(y + 1) % data.num_classes,
                generator=torch.Generator().manual_seed(engine.seed),
            )
        with torch.no_grad():
            p_clean = torch.softmax(model(x).float(), 1)
            p_adv = torch.softmax(model(adv).float(), 1)
        names = data.class_names
        out = []
        for j in range(len(sub)):
            if not bool(success[j]):
                continue
            delta = (adv[j] - x[j]).cpu()
            scale = float(delta.abs().max()) or 1.0
            amplified = (delta / (2 * scale) + 0.5).clamp(0, 1)
            out.append(
                AdversarialExample(
                    id=sub.ids[j],
                    label=names[int(y[j])],
                    eps=eps,
                    clean_pred=names[int(p_clean[j].argmax())],
                    clean_confidence=float(p_clean[j].max()),
                    adv_pred=names[int(p_adv[j].argmax())],
                    adv_confidence=float(p_adv[j].max()),
                    clean_image=to_data_uri(_u8(x[j])),
                    adv_image=to_data_uri(_u8(adv[j])),
                    perturbation_image=to_data_uri(_u8(amplified)),
                )
            )
        return tuple(out)


def _u8(x: Tensor) -> Tensor:
    return (x.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8)


__all__ = ["AdversarialAttack", "AttackResult", "parse_epsilons"]
