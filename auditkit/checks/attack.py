"""Adversarial robustness: robust-accuracy curves over epsilons, with soundness checks.

The attack at each epsilon is set by ``--strength``:

- ``fast``: PGD-20 on the cross-entropy (:class:`auditkit.ops.attacks.PGD`), for smoke runs. Its
  robust accuracy is a loose upper bound.
- ``standard`` (the default): APGD-CE, then targeted APGD-DLR on the survivors against the 3 classes
  the model scores highest where APGD-CE left each image (:mod:`auditkit.ops.apgd`; Croce & Hein 2020):
  AutoAttack's standard gradient attacks, with 3 targets chosen there instead of 9 chosen on the clean image.
- ``thorough``: APGD-CE with 5 restarts, APGD-T against 9 targets (AutoAttack's number), then the
  gradient-free Square attack (5,000 queries; Andriushchenko et al. 2020, :mod:`auditkit.ops.square`) on
  the images still standing. It also runs, alone, on a model that gives gradient attacks no gradient signal.

``--loss ce|dlr|margin`` and ``--target next|random|least-likely|top-k`` replace the strength's attacks
by one custom APGD run (strength ``custom``).

Every attack runs through :meth:`Engine.map` with gradients on. Along the curve a sample broken at
a smaller epsilon stays broken (its perturbation is inside every larger ball) and is not attacked
again. ``fgsm`` and ``foolbox:<Name>`` run a single attack through the same curve and report.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import field_validator, model_validator

from auditkit.checks.base import Check
from auditkit.engine.loop import Batch, Engine, Outcome, Predictions
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import ImageDataset
from auditkit.inputs.images import to_data_uri
from auditkit.ops.apgd import APGD, AUTOATTACK_TARGETS, LOSSES, STANDARD_TARGETS, Loss, standard_attack
from auditkit.ops.attacks import NORMS, PGD, Norm, Progress, part
from auditkit.ops.calibration import DEFAULT_BINS, ece
from auditkit.ops.metrics import wilson_interval
from auditkit.ops.square import Square
from auditkit.results import CheckResult, Conditions, Finding, Interval, Metric, eps_label, fmt, pct, points
from auditkit.settings import Settings, join_list, setting

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn
    from torch.nn import functional as F
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")
    F = lazy("torch.nn.functional")

Strength = Literal["fast", "standard", "thorough"]
STRENGTHS: tuple[str, ...] = ("fast", "standard", "thorough")
Target = Literal["next", "random", "least-likely", "top-k"]
TARGETS: tuple[str, ...] = ("next", "random", "least-likely", "top-k")
DEFAULT_STEPS = {"fast": 20, "standard": 100, "thorough": 100}
THOROUGH_RESTARTS = 5
SQUARE_QUERIES = 5000  # AutoAttack's standard budget
#: the convergence check re-attacks where robust accuracy lies in this range
CONVERGENCE_RANGE = (0.05, 0.95)
#: ... and fails when the 95% lower bound of the share it breaks on top is above this
CONVERGENCE_TOLERANCE = 0.01

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
    """Robust accuracy at one epsilon, with its 95% Wilson interval, and calibration there: the mean
    top-label probability and the ECE (``DEFAULT_BINS`` equal-width bins) of the model's answers on
    the main attack's images (``None`` for foolbox attacks, with no images and in older results.json files)."""

    eps: float
    robust: Interval
    confidence: float | None = None
    ece: float | None = None


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
    strength: str = "custom"

    title = "Adversarial robustness"
    template = "attack.html.j2"

    def headline(self) -> str:
        warns = sum(not s.passed for s in self.soundness)
        sound = "all soundness checks pass" if not warns else f"{warns} soundness warning(s)"
        if not self.curve:
            return f"no robust accuracy: the model gives gradient attacks no gradient signal; {sound}"
        last = self.curve[-1]
        loose = "; fast strength: a loose upper bound (use --strength standard)" if self.strength == "fast" else ""
        return f"{pct(last.robust.value)} robust accuracy under {self.attack} at eps {last.eps:.4g}; {sound}{loose}"

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        bad = [s.name for s in self.soundness if not s.passed]
        norm = "Linf" if self.norm == "linf" else "L2"
        out = []
        if self.curve and "gradient_signal" in bad:  # thorough: Square alone drew the curve
            bad = [b for b in bad if b not in ("gradient_signal", "nonzero_gradients")]
            out.append(
                Finding(
                    "warn",
                    "The model gives gradient attacks no gradient signal, so the curve comes from the gradient-free "
                    "Square attack alone: an upper bound that no gradient attack could check.",
                    "Square only",
                    "attack.soundness[check=gradient_signal]",
                )
            )
        if not self.curve:
            return (
                Finding(
                    "fail",
                    "Gradient attacks cannot evaluate this model (no gradient signal), so no robust accuracy is "
                    "reported.",
                    "no curve",
                    "attack.soundness[check=gradient_signal]",
                ),
            )
        if bad:
            out.append(
                Finding(
                    "fail",
                    f"The robust-accuracy figures may be wrong: {len(bad)} soundness check(s) failed "
                    f"({', '.join(bad)}).",
                    str(len(bad)),
                    "attack.soundness_warnings",
                )
            )
        attacked = [p for p in self.curve if p.eps > 0]
        clean = self.clean_accuracy
        if attacked:
            small, large = attacked[0], attacked[-1]
            drop = clean - small.robust.value
            out.append(
                Finding(
                    conditions.drop(drop),
                    f"A barely visible perturbation ({norm} eps {eps_label(small.eps, self.norm)}) already drops "
                    f"accuracy from {pct(clean)} to {pct(small.robust.value)} ({points(drop)}).",
                    points(drop),
                    f"attack.robust_accuracy[norm={self.norm},eps={fmt(small.eps)}]",
                )
            )
            if large is not small:
                out.append(
                    Finding(
                        "info",
                        f"At {norm} eps {eps_label(large.eps, self.norm)}, {pct(large.robust.value)} of images "
                        f"survive {self.attack}.",
                        pct(large.robust.value),
                        f"attack.robust_accuracy[norm={self.norm},eps={fmt(large.eps)}]",
                    )
                )
        calibrated = [(p, p.confidence, p.ece) for p in attacked if p.confidence is not None and p.ece is not None]
        if calibrated:
            p, confidence, ece_value = calibrated[-1]
            out.append(
                Finding(
                    "info",
                    f"On the attacked images at {norm} eps {eps_label(p.eps, self.norm)} the model's mean confidence "
                    f"is {pct(confidence)} while {pct(p.robust.value)} of its answers are right (ECE {ece_value:.3f}).",
                    f"{ece_value:.3f}",
                    f"attack.ece[norm={self.norm},eps={fmt(p.eps)}]",
                )
            )
        if self.strength == "fast":
            out.append(
                Finding(
                    "warn",
                    "These robust accuracies come from the fast attack (PGD-20): a loose upper bound; "
                    "use --strength standard for figures to rely on.",
                    "fast",
                )
            )
        return tuple(out)

    def report_context(self) -> dict[str, Any]:
        from auditkit.report import plots

        return {"curve_svg": plots.svg(plots.attack_curve(self)) if self.curve else ""}

    def metric_records(self) -> tuple[Metric, ...]:
        out = [Metric.of(f"attack.robust_accuracy[norm={self.norm},eps={fmt(p.eps)}]", p.robust) for p in self.curve]
        out += [
            Metric(f"attack.ece[norm={self.norm},eps={fmt(p.eps)}]", p.ece, "lower")
            for p in self.curve
            if p.ece is not None
        ]
        out += [Metric(f"attack.soundness[check={s.name}]", float(s.passed), unit="flag") for s in self.soundness]
        warnings = float(sum(not s.passed for s in self.soundness))
        out.append(Metric("attack.soundness_warnings", warnings, "lower", "checks"))
        return tuple(out)


class AttackSettings(Settings):
    """Settings of the adversarial attack check (``[attack]`` in auditkit.toml)."""

    section: ClassVar[str] = "attack"

    attack: str = setting("pgd", "pgd (the attacks of --strength), fgsm or foolbox:<Name> (e.g. foolbox:LinfPGD).")
    attack_args: str | None = setting(
        None, "foolbox only: constructor arguments, key=value,... (e.g. steps=100).", advanced=True
    )
    strength: Strength = setting(
        "standard",
        "fast: PGD-20, a loose bound; standard: APGD-CE + APGD-T on 3 targets (AutoAttack's gradient attacks); "
        "thorough: 5 restarts, 9 targets, then Square.",
    )
    norm: Norm = setting("linf", "linf or l2.")
    epsilons: str | None = setting(None, "In [0,1] pixel units: a list or start:stop:step. [default: 0,1/255..16/255]")
    steps: int | None = setting(None, "Attack steps. [default: fast 20, else 100]", ge=1)
    rel_step: float | None = setting(
        None, "fast only: PGD step size as a multiple of epsilon. [default: 2.5/steps]", gt=0, advanced=True
    )
    restarts: int | None = setting(None, "Random restarts. [default: 1, thorough 5]", ge=1)
    random_start: bool = setting(True, "fast only: start PGD at a random point in the ball.", advanced=True)
    targeted: bool = setting(
        False,
        "fast only: targeted PGD (each image towards the next class).",
        flag="--targeted/--untargeted",
        advanced=True,
    )
    loss: Loss | None = setting(None, "Custom run: one APGD on ce, dlr or margin instead of the strength's attacks.")
    target: Target | None = setting(None, "Custom targeted APGD: next, random, least-likely or top-k (9) classes.")

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
        custom = [f"--{k}" for k in ("loss", "target") if getattr(self, k) is not None]
        if custom and self.attack != "pgd":
            raise ValueError(f"{' and '.join(custom)} set a custom APGD run; drop them or --attack {self.attack}")
        if custom and self.strength != "standard":
            raise ValueError(
                f"{' and '.join(custom)} replace the attacks of --strength {self.strength} by one custom APGD run; "
                "drop --strength or them"
            )
        if self.strength != "fast" and self.attack == "pgd":
            fast_only = [f"--{k.replace('_', '-')}" for k in ("rel_step",) if getattr(self, k) is not None]
            fast_only += ["--targeted"] if self.targeted else []
            fast_only += ["--no-random-start"] if not self.random_start else []
            if fast_only:
                raise ValueError(
                    f"{', '.join(fast_only)} set the PGD of --strength fast; --strength {self.strength} runs "
                    "APGD (adaptive step, targeted APGD-DLR included): add --strength fast or drop them"
                )
        return self


class AdversarialAttack(Check):
    """APGD-CE + APGD-T, PGD, FGSM or a foolbox attack over a list of epsilons, plus soundness checks."""

    name = "attack"
    settings_type = AttackSettings
    result_type = AttackResult
    command = "attack"
    help = (
        "Robust-accuracy curve over epsilons (Linf, L2) under APGD-CE + APGD-T (--strength standard, the default), "
        "PGD-20 (fast), FGSM or any foolbox attack, with soundness checks that flag gradient masking and an attack "
        "that had not converged; writes results.json and index.html."
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> AdversarialAttack:
        s = AttackSettings.model_validate(settings)
        return cls(
            attack=s.attack,
            attack_args=s.attack_args,
            strength=s.strength,
            norm=s.norm,
            epsilons=parse_epsilons(s.epsilons, s.norm),
            steps=s.steps,
            rel_step=s.rel_step,
            restarts=s.restarts,
            random_start=s.random_start,
            targeted=s.targeted,
            loss=s.loss,
            target=s.target,
        )

    def __init__(
        self,
        *,
        attack: str = "pgd",
        attack_args: str | None = None,
        strength: Strength = "standard",
        norm: Norm = "linf",
        epsilons: tuple[float, ...] | None = None,
        steps: int | None = None,
        rel_step: float | None = None,
        restarts: int | None = None,
        random_start: bool = True,
        targeted: bool = False,
        loss: Loss | None = None,
        target: Target | None = None,
        sanity_samples: int = 100,
        examples: int = 6,
        square_queries: int = SQUARE_QUERIES,
    ) -> None:
        if norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if attack not in ("pgd", "fgsm") and not attack.startswith("foolbox:"):
            raise ConfigError(f"attack must be pgd, fgsm or foolbox:<AttackName>, got {attack!r}")
        if strength not in STRENGTHS:
            raise ConfigError(f"strength must be one of {', '.join(STRENGTHS)}, got {strength!r}")
        if loss is not None and loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if target is not None and target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.attack = attack
        self.custom: APGD | None = None
        self.target = target
        if loss is not None or target is not None:
            if attack != "pgd" or strength != "standard":
                raise ConfigError("loss and target set a custom APGD run: use them with attack pgd, strength standard")
            chosen: Loss = loss if loss is not None else ("dlr" if target == "top-k" else "ce")
            self.custom = APGD(
                norm=norm, loss=chosen, steps=steps or 100, restarts=restarts or 1, targeted=target is not None
            )
        self.strength: str = strength if attack == "pgd" and self.custom is None else "custom"
        self.norm = norm
        self.epsilons = epsilons if epsilons is not None else DEFAULT_EPSILONS[norm]
        self.steps = steps or DEFAULT_STEPS[strength]
        self.restarts = restarts or (THOROUGH_RESTARTS if strength == "thorough" else 1)
        self.n_targets = AUTOATTACK_TARGETS if strength == "thorough" else STANDARD_TARGETS
        self.pgd = (
            PGD.fgsm(norm=norm, targeted=targeted)
            if attack == "fgsm"
            else PGD(
                norm=norm,
                steps=self.steps,
                rel_step=rel_step,
                restarts=self.restarts,
                random_start=random_start,
                targeted=targeted,
            )
        )
        self.square_only = False  # True only on a run's copy: thorough on a model without gradient signal
        self.square = Square(norm=norm, queries=square_queries)
        self.sanity_samples = sanity_samples
        self.examples = examples
        self.foolbox_kwargs: dict[str, Any] = {}
        if attack.startswith("foolbox:"):
            self.foolbox_kwargs = _check_foolbox(attack, attack_args, norm)
        elif attack_args:
            raise ConfigError("--attack-args passes arguments to a foolbox:<Name> attack; --attack pgd/fgsm take flags")

    @property
    def uses_apgd(self) -> bool:
        return self.strength in ("standard", "thorough") or self.custom is not None

    def attack_name(self, num_classes: int) -> str:
        """What runs at each epsilon, e.g. ``APGD-CE + APGD-T Linf (100 steps, 3 targets)``."""
        if self.attack.startswith("foolbox:"):
            args = ", ".join(f"{k}={v!r}" for k, v in self.foolbox_kwargs.items())
            return f"{self.attack}({args})" if args else self.attack
        if not self.uses_apgd:
            return self.pgd.name
        if self.custom is not None:
            aim = {"top-k": f"top {min(9, num_classes - 1)}", None: ""}.get(self.target, self.target)
            extra = f", {self.restarts} restarts" if self.restarts > 1 else ""
            return f"{self.custom.name.split(' (')[0]}{f' {aim}' if aim else ''} ({self.steps} steps{extra})"
        norm = "Linf" if self.norm == "linf" else "L2"
        extra = f", {self.restarts} restarts" if self.restarts > 1 else ""
        if self.square_only:
            return f"Square {norm} ({self.square.queries} queries; no gradient signal for APGD)"
        targets = min(self.n_targets, num_classes - 1)
        if self.strength == "thorough":
            extra += f"; Square, {self.square.queries} queries"
            if num_classes < 4:
                return f"APGD-CE + Square {norm} ({self.steps} steps{extra}; APGD-T needs 4 classes)"
            return f"APGD-CE + APGD-T + Square {norm} ({self.steps} steps, {targets} targets{extra})"
        if num_classes < 4:
            return f"APGD-CE {norm} ({self.steps} steps{extra}; APGD-T needs 4 classes)"
        return f"APGD-CE + APGD-T {norm} ({self.steps} steps, {targets} targets{extra})"

    def _attack(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        eps: float,
        target: Tensor,
        generator: torch.Generator,
        num_classes: int,
        progress: Progress | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The configured attack on one batch ``x`` ``(B, C, H, W)``, labels ``y`` ``(B,)``: returns the
        adversarial images ``(B, C, H, W)`` and ``(B,)`` success (``target`` ``(B,)`` is for targeted PGD).
        ``progress`` (e.g. ``Batch.report``) is told the share of the work done."""
        if not self.uses_apgd:
            return self.pgd(model, x, y, eps, target=target, generator=generator)
        if self.custom is not None:
            goal = self._custom_target(model, x, y, generator, num_classes)
            return self.custom(model, x, y, eps, generator=generator, target=goal, progress=progress)
        square = self.square
        if self.square_only:
            return square(model, x, y, eps, generator=generator, progress=progress)
        gradient_share = 0.5 if self.strength == "thorough" else 1.0
        best, success = standard_attack(
            model,
            x,
            y,
            eps,
            norm=self.norm,
            generator=generator,
            steps=self.steps,
            restarts=self.restarts,
            n_targets=self.n_targets,
            num_classes=num_classes,
            progress=part(progress, 0.0, gradient_share),
        )
        idx = torch.nonzero(~success).flatten()
        if self.strength == "thorough" and len(idx) and eps > 0:
            later = part(progress, gradient_share, 1 - gradient_share)
            adv, hit = square(model, x[idx], y[idx], eps, generator=generator, progress=later)
            best[idx[hit]] = adv[hit]
            success[idx[hit]] = True
        return best, success

    def _custom_target(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator, num_classes: int
    ) -> Tensor | None:
        """One target class per image of ``x`` ``(B, C, H, W)`` for ``--target`` next, random (seeded, never
        the label) or least-likely; ``None`` for top-k (APGD attacks each of the top classes) or untargeted."""
        if self.target in (None, "top-k"):
            return None
        if self.target == "next":
            return (y + 1) % num_classes
        if self.target == "random":
            shift = torch.randint(1, num_classes, (len(y),), generator=generator).to(y.device)
            return (y + shift) % num_classes
        with torch.no_grad():
            return model(x).float().argmin(dim=1)

    def _second_opinion(self, num_classes: int) -> APGD:
        """The convergence check's attack: APGD on another loss (DLR, or CE after a custom DLR run;
        CE below 3 classes), twice the steps (at least 100) and 2 restarts."""
        first = self.custom.loss if self.custom is not None else "ce"
        loss: Loss = "dlr" if num_classes >= 3 and first != "dlr" else "ce"
        return APGD(norm=self.norm, loss=loss, steps=max(2 * self.steps, 100), restarts=2)

    # ------------------------------------------------------------------ curve
    def _run(self, model: nn.Module, data: ImageDataset, engine: Engine) -> AttackResult:
        clean = engine.predict(model, data)
        k = data.num_classes
        target = (clean.label + 1) % k  # targeted PGD: each sample towards the next class
        idx = torch.nonzero(clean.correct).flatten()[: self.sanity_samples]
        sanity = data.take(idx)
        probes = _concat(engine.map(lambda b: _probe(model, b), sanity, description="soundness probes", grad=True), 6)
        signal = _gradient_signal(probes[5])
        if not signal.passed and self.strength == "thorough" and not self.square_only:
            blind = copy.copy(self)  # this run's attack is Square alone; the check itself stays as configured
            blind.square_only = True
            return blind._run(model, data, engine)
        if not signal.passed and not self.attack.startswith("foolbox:") and not self.square_only:
            return self._result(clean, data, (), (signal,), ())
        foolbox = self.attack.startswith("foolbox:")
        calibration: list[tuple[float, float] | None] = [None] * len(self.epsilons)
        if foolbox:
            broken_at = self._foolbox_curve(model, data, engine, clean.correct)
        else:
            broken_at, calibration = self._native_curve(model, data, engine, clean, target)
        attack_checks: list[Soundness] = []
        if len(sanity) and max(self.epsilons) > 0 and not self.square_only:  # those checks need gradients
            attack_checks += self._attack_checks(model, sanity, engine, broken_at[idx], k)
            if not foolbox:
                robust = [float((clean.correct & (broken_at > i)).float().mean()) for i in range(len(self.epsilons))]
                converged, found = self._convergence(model, sanity, engine, broken_at[idx], robust, k)
                attack_checks.append(converged)
                broken_at[idx] = torch.minimum(broken_at[idx], found)  # what the second attack broke is broken
        n = len(data)
        curve = []
        for i, eps in enumerate(self.epsilons):
            robust_i = clean.correct & ~(broken_at <= i)
            cal = calibration[i]
            curve.append(
                CurvePoint(
                    eps=eps,
                    robust=wilson_interval(int(robust_i.sum()), n),
                    confidence=cal[0] if cal else None,
                    ece=cal[1] if cal else None,
                )
            )
            metric = f"attack.robust_accuracy[norm={self.norm},eps={fmt(eps)}]"
            engine.publish(data, Outcome(key=metric, label="", values=robust_i.float(), metric=metric, per_group=False))
        last = len(self.epsilons) - 1
        engine.publish(
            data,
            Outcome(
                key=f"attack[eps={fmt(self.epsilons[last])}]",
                label=f"{self.attack_name(k)} at eps {fmt(self.epsilons[last])}",
                values=(clean.correct & ~(broken_at <= last)).float(),
            ),
        )
        mono = all(b <= a + 1e-12 for a, b in itertools.pairwise(p.robust.value for p in curve))
        checks = [signal, *_model_checks(clean.pred[idx], mono, *probes[:5]), *attack_checks]
        return self._result(clean, data, tuple(curve), tuple(checks), self._gallery(model, data, engine, broken_at))

    def _result(
        self,
        clean: Any,
        data: ImageDataset,
        curve: tuple[CurvePoint, ...],
        soundness: tuple[Soundness, ...],
        examples: tuple[AdversarialExample, ...],
    ) -> AttackResult:
        apgd = self.uses_apgd and not self.attack.startswith("foolbox:")
        return AttackResult(
            attack=self.attack_name(data.num_classes),
            norm=self.norm,
            steps=self.steps if self.attack != "fgsm" else 1,
            rel_step=2.0 if apgd else self.pgd.step_size(1.0),
            restarts=self.restarts if self.attack != "fgsm" else 1,
            random_start=True if apgd else self.pgd.random_start,
            targeted=self.custom.targeted if self.custom is not None else self.pgd.targeted and not apgd,
            clean_accuracy=float(clean.correct.float().mean()),
            curve=curve,
            soundness=soundness,
            examples=examples,
            class_names=data.class_names,
            strength=self.strength,
        )

    def _native_curve(
        self, model: nn.Module, data: ImageDataset, engine: Engine, clean: Predictions, target: Tensor
    ) -> tuple[Tensor, list[tuple[float, float] | None]]:
        """Index of the first epsilon at which each sample breaks (``len(eps)`` if never), and per
        epsilon the mean confidence and ECE of the model's answers on what the attack left there: a
        sample broken at a smaller epsilon keeps that adversarial image, one the attack did not break
        is scored on the image the attack returned, a sample wrong on clean data stays clean."""
        correct = clean.correct
        broken_at = torch.full((len(data),), len(self.epsilons), dtype=torch.long)
        conf_now = clean.confidence.double().clone()
        right_now = correct.clone()
        name = self.attack_name(data.num_classes).split(" (")[0]
        calibration: list[tuple[float, float] | None] = []
        for i, eps in enumerate(self.epsilons):
            todo = torch.nonzero(correct & (broken_at == len(self.epsilons))).flatten()
            if eps > 0 and len(todo):
                sub = data.take(todo)
                sub_target = target[todo]

                def attack(
                    b: Batch, eps: float = eps, sub_target: Tensor = sub_target
                ) -> tuple[int, int, Tensor, Tensor, Tensor]:
                    tgt = sub_target[b.start : b.stop].to(b.x.device)
                    adv, success = self._attack(model, b.x, b.y, eps, tgt, b.generator(), data.num_classes, b.report)
                    with torch.no_grad():
                        probs = torch.softmax(model(adv).float(), dim=1)
                    top = probs.max(dim=1)
                    return b.start, b.stop, success.cpu(), top.values.cpu(), (top.indices == b.y).cpu()

                batches = engine.map(attack, sub, description=f"{name} eps={eps:.4g}", grad=True)
                for start, stop, success, conf, right in batches:
                    rows = todo[start:stop]
                    broken_at[rows[success]] = i
                    conf_now[rows] = conf.double()
                    right_now[rows] = right
            scores = conf_now.numpy()
            calibration.append(
                (float(scores.mean()), ece(scores, right_now.numpy(), bins=DEFAULT_BINS)) if len(scores) else None
            )
        return broken_at, calibration

    def _foolbox_curve(self, model: nn.Module, data: ImageDataset, engine: Engine, correct: Tensor) -> Tensor:
        import foolbox as fb

        name = self.attack.split(":", 1)[1]
        fattack = getattr(fb.attacks, name)(**self.foolbox_kwargs)
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
    def _attack_checks(
        self, model: nn.Module, sanity: ImageDataset, engine: Engine, broken_at: Tensor, num_classes: int
    ) -> list[Soundness]:
        """``attack_beats_fgsm`` and ``large_eps_reaches_chance`` on the sanity images (correctly
        classified, ``broken_at`` ``(M,)`` their curve indices), both at the largest epsilon."""
        last = len(self.epsilons) - 1
        eps = self.epsilons[last]
        large = 0.5 if self.norm == "linf" else 0.5 * math.sqrt(math.prod(sanity.images.shape[1:]))

        def probe(b: Batch) -> tuple[Tensor, Tensor]:
            gen = b.generator()
            target = (b.y + 1) % num_classes
            _, s_fgsm = PGD.fgsm(norm=self.norm, targeted=self.pgd.targeted)(model, b.x, b.y, eps, target=target)
            _, s_large = PGD(norm=self.norm, steps=max(20, min(self.steps, 100)))(model, b.x, b.y, large, generator=gen)
            return s_fgsm.cpu(), s_large.cpu()

        s_fgsm, s_large = _concat(engine.map(probe, sanity, description="soundness attacks", grad=True), 2)
        s_main = broken_at <= last
        weaker = int((s_fgsm.bool() & ~s_main).sum())
        chance = 1.0 / num_classes
        left = 1 - float(s_large.float().mean())
        name = "the attack" if self.attack.startswith("foolbox:") else self.attack_name(num_classes).split(" (")[0]
        return [
            Soundness(
                "attack_beats_fgsm",
                weaker == 0,
                float(weaker),
                f"Samples FGSM breaks but {name} does not at eps {eps:.4g}. An iterative attack should find "
                "everything one FGSM step finds; if not, the loss surface is being masked.",
            ),
            Soundness(
                "large_eps_reaches_chance",
                left <= chance + 0.05,
                left,
                f"At a huge epsilon ({'Linf' if self.norm == 'linf' else 'L2'} {large:.3g}) any image can be "
                f"turned into any other, so accuracy must fall to chance ({100 * chance:.0f}%) or below. "
                "If it does not, gradient masking is suspected.",
            ),
        ]

    def _convergence(
        self,
        model: nn.Module,
        sanity: ImageDataset,
        engine: Engine,
        broken_at: Tensor,
        robust: list[float],
        num_classes: int,
    ) -> tuple[Soundness, Tensor]:
        """Re-attack, with a different attack (:meth:`_second_opinion`), the M sanity images the main attack
        left standing (``broken_at`` ``(M,)``: their curve indices) at every epsilon whose robust accuracy
        (``robust``, one per epsilon) is within ``CONVERGENCE_RANGE``, and at the largest epsilon unless its
        robust accuracy is below the range. Fails when the 95% Wilson lower bound of the share of the M
        images it breaks on top exceeds ``CONVERGENCE_TOLERANCE``: the main attack had not converged.

        Returns the check and ``(M,)`` the first epsilon index at which the second attack broke each image
        (``len(epsilons)`` if never), which the caller counts as broken in the curve.
        """
        second = self._second_opinion(num_classes)
        m, last = len(sanity), len(self.epsilons) - 1
        lo_r, hi_r = CONVERGENCE_RANGE
        found = torch.full((m,), len(self.epsilons), dtype=torch.long)
        worst: tuple[float, float, int] | None = None  # (lower bound, eps, extra broken)
        checked = []
        for i, eps in enumerate(self.epsilons):
            if eps == 0 or robust[i] < lo_r or (robust[i] > hi_r and i != last):
                continue
            standing = torch.nonzero((broken_at > i) & (found > i)).flatten()
            checked.append(f"{eps:.4g}")
            extra = 0
            if len(standing):
                sub = sanity.take(standing)

                def attack(b: Batch, eps: float = eps) -> Tensor:
                    return second(model, b.x, b.y, eps, generator=b.generator(), progress=b.report)[1].cpu()

                hit = torch.cat(list(engine.map(attack, sub, description=f"convergence eps={eps:.4g}", grad=True)))
                found[standing[hit]] = i
                extra = int(hit.sum())
            bound = wilson_interval(extra, m).low
            if worst is None or bound > worst[0]:
                worst = (bound, eps, extra)
        if worst is None:
            return (
                Soundness(
                    "converged",
                    True,
                    0.0,
                    f"No epsilon has a robust accuracy between {lo_r:.0%} and {hi_r:.0%} (or above it at the "
                    "largest epsilon), where a weak attack would show; nothing to re-check.",
                ),
                found,
            )
        bound, eps, extra = worst
        stronger = "use a stronger --strength" if self.strength != "thorough" else "the model may mask gradients"
        return (
            Soundness(
                "converged",
                bound <= CONVERGENCE_TOLERANCE,
                extra / m,
                f"A second, different attack ({second.name}, {second.steps} steps) re-attacked those of the "
                f"{m} sanity images that the main attack left standing at eps {', '.join(checked)}. "
                f"It broke at most {extra} more ({100 * extra / m:.1f} points of the sanity images, "
                f"at eps {eps:.4g}); those count as broken in the curve above, but the rest of the data "
                f"was not re-attacked. A 95% lower bound above {100 * CONVERGENCE_TOLERANCE:.0f} point "
                f"means the main attack had not converged and the curve overstates robustness: {stronger}.",
            ),
            found,
        )

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
            adv, success = self._attack(
                model,
                x,
                y,
                eps,
                (y + 1) % data.num_classes,
                torch.Generator().manual_seed(engine.seed),
                data.num_classes,
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


def _probe(model: nn.Module, b: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-sample probes of one batch ``x`` ``(B, C, H, W)``, each ``(B,)`` on the CPU: the predicted
    class, the largest logit drift between two identical forward passes, whether the outputs look
    like probabilities (all in ``[0, 1]``, summing to 1), whether the loss is finite, whether the
    input gradient of the cross-entropy is exactly zero, and whether the input gradient of the logit
    margin (which never saturates) is zero or NaN too: no gradient signal at all. Needs grad enabled.
    """
    with torch.no_grad():
        first, second = model(b.x), model(b.x)
    drift = (first - second).abs().flatten(1).amax(dim=1).float()
    rows = first.float().sum(dim=1)
    in_range = ((first >= 0) & (first <= 1)).flatten(1).all(dim=1)
    looks_prob = in_range & torch.isclose(rows, torch.ones_like(rows), atol=1e-3)
    xg = b.x.clone().requires_grad_(True)
    logits = model(xg).float()
    loss = F.cross_entropy(logits, b.y, reduction="none")
    none = torch.ones(b.x.shape[0], dtype=torch.bool)
    if not loss.requires_grad:  # no autograd path from the input (a hard threshold, a detached layer)
        return first.argmax(1).cpu(), drift.cpu(), looks_prob.cpu(), torch.isfinite(loss).cpu(), none, none
    true = logits.gather(1, b.y[:, None]).squeeze(1)
    rival = logits.scatter(1, b.y[:, None], float("-inf")).amax(dim=1)
    ce_grad, margin_grad = (
        torch.autograd.grad(value.sum(), xg, retain_graph=True, allow_unused=True)[0] for value in (loss, rival - true)
    )

    def flat_or_bad(grad: Tensor | None) -> Tensor:  # all-zero or NaN per sample
        if grad is None:
            return none.to(b.x.device)
        return ~(grad.flatten(1).abs().amax(dim=1) > 0)

    zero, no_signal = flat_or_bad(ce_grad), flat_or_bad(margin_grad)
    return first.argmax(1).cpu(), drift.cpu(), looks_prob.cpu(), torch.isfinite(loss).cpu(), zero.cpu(), no_signal.cpu()


_KINDS: dict[type | None, str] = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}


def _check_foolbox(attack: str, args: str | None, norm: str) -> dict[str, Any]:
    """Validate ``foolbox:<Name>`` and ``--attack-args`` (``key=value,...``, values read as Python literals,
    else as strings) against the attack's constructor, and ``norm`` against the distance the attack
    measures. Returns the constructor keyword arguments."""
    import ast
    import inspect

    import foolbox as fb

    name = attack.split(":", 1)[1]
    attack_cls = getattr(fb.attacks, name, None)
    if not isinstance(attack_cls, type):
        raise ConfigError(f"foolbox has no attack {name!r}; see foolbox.attacks (e.g. LinfPGD, L2CarliniWagnerAttack)")
    params = inspect.signature(attack_cls).parameters
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    allowed = [p for p in params if params[p].kind in named]
    kwargs: dict[str, Any] = {}
    for item in (args or "").split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            what = f"unknown argument {key!r}" if sep else f"{item.strip()!r} is not key=value"
            raise ConfigError(f"--attack-args: {what} for foolbox {name}; it takes {', '.join(allowed) or 'none'}")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        default = params[key].default
        want = type(default) if isinstance(default, (bool, int, float, str)) else None
        ok = want is None or isinstance(value, want) or (want is float and type(value) is int)
        if not ok or (want is int and isinstance(value, bool)):
            raise ConfigError(
                f"--attack-args: {key} of foolbox {name} takes {_KINDS.get(want, 'a value')} "
                f"(default {default!r}), got {raw.strip()!r}"
            )
        kwargs[key] = value
    try:
        instance = attack_cls(**kwargs)
    except Exception as exc:  # the attack's own validation of its arguments
        reason = " ".join(str(exc).split())[:200]
        raise ConfigError(f"--attack-args: foolbox {name} refused {kwargs}: {reason}") from exc
    p = getattr(getattr(instance, "distance", None), "p", None)
    measured = {float("inf"): "linf", 2: "l2"}.get(p) if p is not None else None
    if measured is None:
        distance = getattr(instance, "distance", "no distance")
        raise ConfigError(f"foolbox {name} measures {distance}; auditkit's curve is Linf or L2")
    if measured != norm:
        raise ConfigError(
            f"foolbox {name} is an {measured.upper().replace('LINF', 'Linf')} attack but --norm is {norm}: "
            f"add --norm {measured} (its --epsilons are then {measured} radii)"
        )
    return kwargs


def _gradient_signal(no_signal: Tensor) -> Soundness:
    """``gradient_signal`` from the ``(M,)`` no-signal flags of :func:`_probe`: fails when no sanity
    image has a usable input gradient, and then no gradient attack is run (it would report nothing real)."""
    if len(no_signal) == 0:
        return Soundness(
            "gradient_signal", True, 1.0, "No correctly classified image to probe, so nothing to attack either."
        )
    none = bool(no_signal.all())
    return Soundness(
        "gradient_signal",
        not none,
        0.0 if none else 1.0,
        "No gradient signal: neither the cross-entropy nor the logit margin has a usable gradient with respect to "
        "the input (no autograd path, or gradients all zero or NaN), so gradient attacks cannot evaluate this "
        "model and no robust accuracy is reported. --strength thorough runs the gradient-free Square attack on it."
        if none
        else "The logit margin has a usable input gradient on at least one sanity image, so gradient attacks can run.",
    )


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
