"""Adversarial robustness: robust-accuracy curves over epsilons, with soundness checks.

The native path is :class:`auditkit.ops.attacks.PGD` (FGSM is PGD with one step) run through
:meth:`Engine.map` with gradients on. Along the curve a sample broken at a smaller epsilon stays
broken (its perturbation is inside every larger ball) and is not attacked again.
``foolbox:<Name>`` runs any foolbox attack through the same curve and report.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import field_validator, model_validator
from torch import Tensor, nn
from torch.nn import functional as F

from auditkit.checks.base import Check
from auditkit.engine.loop import Batch, Engine, Outcome
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import ImageDataset
from auditkit.inputs.images import to_data_uri
from auditkit.ops.attacks import NORMS, PGD, Norm
from auditkit.ops.metrics import wilson_interval
from auditkit.results import CheckResult, Interval, Metric, fmt, pct
from auditkit.settings import Settings, join_list, setting

DEFAULT_EPSILONS: dict[str, tuple[float, ...]] = {
    "linf": (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),
    "l2": (0.0, 0.25, 0.5, 1.0, 2.0),
}


def parse_epsilons(text: str | None, norm: str) -> tuple[float, ...]:
    """``"0,0.01,0.03"``, ``"0:0.1:0.02"`` or ``None`` (the norm's default) -> sorted, with 0 first.

    Epsilons are in ``[0, 1]`` pixel units: an Linf epsilon above 1 covers every image and is refused.
    """
    if text is None:
        return DEFAULT_EPSILONS[norm]
    if not text.strip():
        raise ConfigError("--epsilons is empty; give a list (0,0.01,0.03) or start:stop:step, or leave it out")
    from auditkit.checks.rotation import parse_angles

    try:
        values = parse_angles(text, "--epsilons")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("(e.g. -180:180:10) or a list (e.g. 0,90,180)", "or a list")) from None
    if min(values) < 0:
        raise ConfigError(f"--epsilons must be non-negative, got {min(values)}")
    if norm == "linf" and max(values) > 1:
        raise ConfigError(f"--epsilons for linf are in [0, 1] pixel units, got {max(values)}")
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

    title = "Adversarial robustness"
    template = "attack.html.j2"

    def headline(self) -> str:
        last = self.curve[-1]
        warns = sum(not s.passed for s in self.soundness)
        sound = "all soundness checks pass" if not warns else f"{warns} soundness warning(s)"
        return f"{pct(last.robust.value)} robust accuracy under {self.attack} at eps {last.eps:.4g}; {sound}"

    def report_context(self) -> dict[str, Any]:
        from auditkit.report import plots

        return {"curve_svg": plots.svg(plots.attack_curve(self))}

    def metric_records(self) -> tuple[Metric, ...]:
        out = [Metric.of(f"attack.robust_accuracy[norm={self.norm},eps={fmt(p.eps)}]", p.robust) for p in self.curve]
        out += [Metric(f"attack.soundness[check={s.name}]", float(s.passed), unit="flag") for s in self.soundness]
        warnings = float(sum(not s.passed for s in self.soundness))
        out.append(Metric("attack.soundness_warnings", warnings, "lower", "checks"))
        return tuple(out)


class AttackSettings(Settings):
    """Settings of the adversarial attack check (``[attack]`` in auditkit.toml)."""

    section: ClassVar[str] = "attack"

    attack: str = setting("pgd", "pgd, fgsm or foolbox:<AttackName> (e.g. foolbox:L2DeepFoolAttack).")
    norm: Norm = setting("linf", "linf or l2.")
    epsilons: str | None = setting(
        None, "Epsilons in [0,1] pixel units: a list or start:stop:step. [default: linf 0,1/255..16/255]"
    )
    steps: int = setting(20, "PGD steps.", ge=1)
    rel_step: float | None = setting(None, "Step size as a multiple of epsilon. [default: 2.5/steps]", gt=0)
    restarts: int = setting(1, "Random restarts; the per-sample worst case is kept.", ge=1)
    random_start: bool = setting(True, "Start PGD at a random point in the ball.")
    targeted: bool = setting(
        False, "Targeted attack (each image towards the next class).", flag="--targeted/--untargeted"
    )

    _lists = field_validator("epsilons", mode="before")(join_list)

    @field_validator("attack")
    @classmethod
    def _attack(cls, value: str) -> str:
        if value not in ("pgd", "fgsm") and not value.startswith("foolbox:"):
            raise ValueError(f"must be pgd, fgsm or foolbox:<AttackName>, got {value!r}")
        return value

    @model_validator(mode="after")
    def _epsilons(self) -> AttackSettings:
        parse_epsilons(self.epsilons, self.norm)
        return self


class AdversarialAttack(Check):
    """FGSM/PGD (or a foolbox attack) over a list of epsilons, plus soundness checks."""

    name = "attack"
    settings_type = AttackSettings
    result_type = AttackResult
    command = "attack"
    help = (
        "FGSM/PGD (Linf, L2) robust-accuracy curve over epsilons, or any foolbox attack, with soundness checks "
        "that flag gradient masking; writes results.json and index.html."
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> AdversarialAttack:
        s = AttackSettings.model_validate(settings)
        return cls(
            attack=s.attack,
            norm=s.norm,
            epsilons=parse_epsilons(s.epsilons, s.norm),
            steps=s.steps,
            rel_step=s.rel_step,
            restarts=s.restarts,
            random_start=s.random_start,
            targeted=s.targeted,
        )

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
        """The nine soundness checks on up to ``sanity_samples`` correctly classified images.

        Every pass runs through :meth:`Engine.map` (batched, resumable, sharded); the per-sample
        outputs of the batches are concatenated and reduced here.
        """
        clean = engine.predict(model, data)
        idx = torch.nonzero(clean.correct).flatten()[: self.sanity_samples]
        sub = data.take(idx)
        probes = _concat(engine.map(lambda b: _probe(model, b), sub, description="soundness probes", grad=True), 5)
        mono = all(b <= a + 1e-12 for a, b in itertools.pairwise(p.robust.value for p in curve))
        checks = _model_checks(clean.pred[idx], mono, *probes)
        eps = max(self.epsilons)
        if len(sub) and eps > 0:
            large = 0.5 if self.pgd.norm == "linf" else 0.5 * math.sqrt(math.prod(sub.images.shape[1:]))
            flags = _concat(
                engine.map(
                    lambda b: self._attack_probe(model, b, eps, large, data.num_classes),
                    sub,
                    description="soundness attacks",
                    grad=True,
                ),
                4,
            )
            checks += self._attack_checks(eps, large, data.num_classes, flags)
        return tuple(checks)

    def _attack_probe(
        self, model: nn.Module, b: Batch, eps: float, large: float, num_classes: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Success flags ``(B,)`` bool on the CPU of four attacks on one batch: the configured one
        and FGSM at ``eps``, a stronger PGD (twice the steps, one more restart) at ``eps`` and an
        untargeted PGD at the huge epsilon ``large``. Random starts draw from the batch's generator.
        """
        gen = b.generator()
        target = (b.y + 1) % num_classes
        _, s_pgd = self.pgd(model, b.x, b.y, eps, target=target, generator=gen)
        _, s_fgsm = PGD.fgsm(norm=self.pgd.norm, targeted=self.pgd.targeted)(model, b.x, b.y, eps, target=target)
        stronger = PGD(
            norm=self.pgd.norm,
            steps=2 * self.pgd.steps,
            rel_step=self.pgd.rel_step,
            restarts=self.pgd.restarts + 1,
            targeted=self.pgd.targeted,
        )
        _, s_strong = stronger(model, b.x, b.y, eps, target=target, generator=gen)
        _, s_large = PGD(norm=self.pgd.norm, steps=max(20, self.pgd.steps))(model, b.x, b.y, large, generator=gen)
        return s_pgd.cpu(), s_fgsm.cpu(), s_strong.cpu(), s_large.cpu()

    def _attack_checks(self, eps: float, large: float, num_classes: int, flags: list[Tensor]) -> list[Soundness]:
        """``pgd_beats_fgsm``, ``converged`` and ``large_eps_reaches_chance`` from the four ``(M,)``
        success flags of :meth:`_attack_probe`."""
        s_pgd, s_fgsm, s_strong, s_large = flags
        weaker = int((s_fgsm & ~s_pgd).sum())
        base, strong = 1 - float(s_pgd.float().mean()), 1 - float(s_strong.float().mean())
        tol = max(0.02, 1.0 / len(s_pgd))
        chance = 1.0 / num_classes
        left = 1 - float(s_large.float().mean())
        return [
            Soundness(
                "pgd_beats_fgsm",
                weaker == 0,
                float(weaker),
                f"Samples FGSM breaks but PGD does not at eps {eps:.4g}. PGD takes many steps and should "
                "find everything FGSM finds; if not, the loss surface is being masked.",
            ),
            Soundness(
                "converged",
                strong >= base - tol,
                base - strong,
                f"Doubling the steps and adding a restart lowered robust accuracy by {100 * (base - strong):.1f} "
                "points on a subsample; more than 2 points means the attack had not converged and the "
                "curve overstates robustness.",
            ),
            Soundness(
                "large_eps_reaches_chance",
                left <= chance + 0.05,
                left,
                f"At a huge epsilon ({'Linf' if self.pgd.norm == 'linf' else 'L2'} {large:.3g}) any image can be "
                f"turned into any other, so accuracy must fall to chance ({100 * chance:.0f}%) or below. "
                "If it does not, gradient masking is suspected.",
            ),
        ]

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


def _probe(model: nn.Module, b: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-sample probes of one batch ``x`` ``(B, C, H, W)``, each ``(B,)`` on the CPU: the predicted
    class, the largest logit drift between two identical forward passes, whether the outputs look
    like probabilities (all in ``[0, 1]``, summing to 1), whether the loss is finite and whether the
    input gradient of the loss is exactly zero. Needs grad enabled.
    """
    with torch.no_grad():
        first, second = model(b.x), model(b.x)
    drift = (first - second).abs().flatten(1).amax(dim=1).float()
    rows = first.float().sum(dim=1)
    in_range = ((first >= 0) & (first <= 1)).flatten(1).all(dim=1)
    looks_prob = in_range & torch.isclose(rows, torch.ones_like(rows), atol=1e-3)
    xg = b.x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xg), b.y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), xg)
    zero = grad.flatten(1).abs().amax(dim=1) == 0
    return first.argmax(1).cpu(), drift.cpu(), looks_prob.cpu(), torch.isfinite(loss).cpu(), zero.cpu()


def _concat(outputs: Iterable[tuple[Tensor, ...]], width: int) -> list[Tensor]:
    """Per-batch tuples of ``width`` tensors ``(B, ...)`` -> ``width`` tensors ``(M, ...)`` in batch order
    (empty float tensors when there were no batches)."""
    columns: list[list[Tensor]] = [[] for _ in range(width)]
    for out in outputs:
        for column, t in zip(columns, out, strict=True):
            column.append(t)
    return [torch.cat(c) if c else torch.empty(0) for c in columns]


def _model_checks(
    pred: Tensor, mono: bool, argmax: Tensor, drift: Tensor, looks_prob: Tensor, finite: Tensor, zero_grad: Tensor
) -> list[Soundness]:
    """The six checks that need no attack, from the clean predictions ``pred`` ``(M,)``, whether the
    curve is monotone and the ``(M,)`` probes of :func:`_probe`."""
    same = bool((argmax == pred).all())
    max_drift = float(drift.max()) if len(drift) else 0.0
    probs = bool(looks_prob.all())
    ok_loss = bool(finite.all())
    zero = float(zero_grad.float().mean()) if len(zero_grad) else 0.0
    return [
        Soundness(
            "eps0_matches_clean",
            same,
            1.0 if same else 0.0,
            "Epsilon 0 must reproduce the clean predictions exactly; if not, the forward pass is not "
            "repeatable and every robust accuracy below is suspect.",
        ),
        Soundness(
            "monotone_in_eps",
            mono,
            1.0 if mono else 0.0,
            "Robust accuracy can only fall as epsilon grows (a larger ball contains the smaller one).",
        ),
        Soundness(
            "deterministic_forward",
            max_drift <= 1e-5,
            max_drift,
            "Two forward passes on the same images must agree. A difference means dropout left on or "
            "a randomised defence, which makes gradients noisy and robustness look better than it is.",
        ),
        Soundness(
            "outputs_are_logits",
            not probs,
            1.0 if probs else 0.0,
            "Attacks need logits; outputs that already are probabilities (a final softmax) flatten the "
            "loss and weaken gradient attacks.",
        ),
        Soundness(
            "finite_loss",
            ok_loss,
            1.0 if ok_loss else 0.0,
            "The loss must be finite on clean images; NaN/inf losses make gradient steps meaningless.",
        ),
        Soundness(
            "nonzero_gradients",
            zero <= 0.01,
            zero,
            "Share of images whose input gradient is exactly zero (saturated softmax, quantised input, "
            "non-differentiable layers). Zero gradients hide adversarial examples: gradient masking.",
        ),
    ]


def _u8(x: Tensor) -> Tensor:
    return (x.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8)


__all__ = ["AdversarialAttack", "AttackResult", "parse_epsilons"]
