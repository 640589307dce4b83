from __future__ import annotations

import itertools
import json
from pathlib import Path

import foolbox as fb
import pytest
import torch
from typer.testing import CliRunner

from auditkit.checks.attack import AdversarialAttack, AttackResult, parse_epsilons
from auditkit.cli import app
from auditkit.engine.loop import Engine
from auditkit.engine.resume import RESUME_DIR, BatchStore
from auditkit.exceptions import ConfigError
from auditkit.inputs.data import ImageDataset, load_dataset
from auditkit.inputs.models import LoadedModel, load_model
from auditkit.ops.attacks import PGD
from auditkit.results import RunResults


@pytest.fixture(scope="module")
def demo_model(demo_run: Path) -> LoadedModel:
    loaded = load_model(demo_run / "model" / "model.safetensors")
    loaded.model.eval()
    return loaded


@pytest.fixture(scope="module")
def sample(demo_run: Path, demo_model: LoadedModel) -> ImageDataset:
    return load_dataset(demo_run / "data" / "test.csv", class_names=demo_model.spec.class_names, sample=160, seed=5)


def engine() -> Engine:
    return Engine(device="cpu", batch_size=64, progress=False)


@pytest.mark.parametrize(
    ("norm", "eps", "fb_attack"), [("linf", 0.05, fb.attacks.LinfPGD), ("l2", 1.0, fb.attacks.L2PGD)]
)
def test_at_least_as_strong_as_foolbox(
    demo_model: LoadedModel, sample: ImageDataset, norm: str, eps: float, fb_attack: type
) -> None:
    x, y = sample.images.float() / 255, sample.labels
    model = demo_model.model
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    _, _, success = fb_attack(steps=20)(fmodel, x, y, epsilons=eps)
    theirs = 1 - float(success.float().mean())
    _, ours_success = PGD(norm=norm, steps=20)(model, x, y, eps, generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    ours = 1 - float(ours_success.float().mean())
    assert ours <= theirs + 0.01, (ours, theirs)


def test_curve_is_nested_and_starts_at_clean(demo_model: LoadedModel, sample: ImageDataset) -> None:
    check = AdversarialAttack(strength="fast", epsilons=(0.0, 0.02, 0.05, 0.1), steps=10, sanity_samples=40)
    result = check.run(demo_model.model, sample, engine=engine())
    assert isinstance(result, AttackResult)
    accs = [p.robust.value for p in result.curve]
    assert accs[0] == result.clean_accuracy
    assert all(b <= a for a, b in itertools.pairwise(accs))
    assert accs[-1] < accs[0]
    m = result.metrics()
    assert m["attack.robust_accuracy[norm=linf,eps=0.1]"] == accs[-1]
    assert m["attack.soundness_warnings"] == 0.0, [s for s in result.soundness if not s.passed]


def test_demo_report_has_attack_and_all_checks_pass(demo_run: Path) -> None:
    result = RunResults.read(demo_run / "results.json").check(AttackResult)
    assert result is not None
    assert [p.eps for p in result.curve] == [0.0, 0.01, 0.02, 0.05, 0.1]
    assert result.strength == "standard" and result.attack == "APGD-CE + APGD-T Linf (20 steps, 3 targets)"
    assert all(s.passed for s in result.soundness)
    assert result.curve[-1].robust.value < 0.3
    assert result.examples and all(e.adv_pred != e.label for e in result.examples)
    assert "Adversarial robustness" in (demo_run / "index.html").read_text()


class _Saturated(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.inner(x), dim=1) * 1e4


class _Quantised(_Saturated):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 8) / 8)


class _Noisy(_Saturated):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


@pytest.mark.parametrize(
    ("wrapper", "flag"),
    # a quantised model gives no gradient at all (not even the logit margin): no curve
    [(_Saturated, "nonzero_gradients"), (_Quantised, "gradient_signal"), (_Noisy, "deterministic_forward")],
)
def test_gradient_masking_models_raise_the_matching_flag(
    demo_model: LoadedModel, sample: ImageDataset, wrapper: type, flag: str
) -> None:
    masked = wrapper(demo_model.model).eval()
    data = sample.take(torch.arange(60))
    check = AdversarialAttack(strength="fast", epsilons=(0.0, 0.05), steps=10, sanity_samples=40)
    result = check.run(masked, data, engine=engine())
    assert isinstance(result, AttackResult)
    failed = {s.name for s in result.soundness if not s.passed}
    assert flag in failed


class _Recorder(torch.nn.Module):
    """Passes through to ``inner`` and records the batch size of every forward pass."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        return self.inner(x)


def test_soundness_runs_in_engine_batches_with_the_same_verdicts(demo_model: LoadedModel, sample: ImageDataset) -> None:
    data = sample.take(torch.arange(60))
    check = AdversarialAttack(strength="fast", epsilons=(0.0, 0.1), steps=5, sanity_samples=40, examples=4)
    recorder = _Recorder(demo_model.model).eval()
    small = check.run(recorder, data, engine=Engine(device="cpu", batch_size=16, progress=False))
    large = check.run(demo_model.model, data, engine=Engine(device="cpu", batch_size=256, progress=False))
    assert isinstance(small, AttackResult) and isinstance(large, AttackResult)
    # the 40 soundness images were once one tensor; now no pass sees more than a batch
    assert max(recorder.sizes) <= 16
    assert [(s.name, s.passed) for s in small.soundness] == [(s.name, s.passed) for s in large.soundness]
    assert len(small.soundness) == 10 and all(s.passed for s in small.soundness)
    # the six checks without an attack reduce per-sample values: the same figures whatever the batching
    for a, b in zip(small.soundness[:7], large.soundness[:7], strict=True):
        assert a.value == pytest.approx(b.value, abs=1e-6), a.name


def test_soundness_batches_are_saved_and_restored_on_resume(
    demo_model: LoadedModel, sample: ImageDataset, tmp_path: Path
) -> None:
    data = sample.take(torch.arange(60))
    check = AdversarialAttack(strength="fast", epsilons=(0.0, 0.1), steps=5, sanity_samples=40, examples=0)

    def run(resume: bool) -> tuple[AttackResult, Engine]:
        eng = Engine(device="cpu", batch_size=16, progress=False)
        eng.store = BatchStore.open(tmp_path, "k", resume=resume, describe={"k": "1"})
        result = check.run(demo_model.model, data, engine=eng)
        assert isinstance(result, AttackResult)
        return result, eng

    first, eng = run(resume=False)
    saved: dict[str, list[str]] = {}
    for path in sorted((tmp_path / RESUME_DIR / "k").glob("*/*.pt")):
        saved.setdefault(path.parent.name.split("-", 1)[1], []).append(path.stem)
    grid = ["0000000000-0000000016", "0000000016-0000000032", "0000000032-0000000040"]
    assert saved["soundness-probes"] == grid  # 40 soundness images in batches of 16
    assert saved["soundness-attacks"] == grid
    resumed, again = run(resume=True)
    assert (again.computed, again.restored) == (0, eng.computed)  # nothing recomputed, soundness included
    assert resumed.soundness == first.soundness


def test_foolbox_bridge_through_cli(demo_run: Path, tmp_path: Path) -> None:
    model = str(demo_run / "model" / "model.safetensors")
    data = str(demo_run / "data" / "test.csv")
    out = CliRunner().invoke(
        app,
        [
            "attack",
            model,
            data,
            "--attack",
            "foolbox:LinfFastGradientAttack",
            "--epsilons",
            "0,0.05,0.1",
            "--sample",
            "60",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
    )
    assert out.exit_code == 0, out.output
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    m = doc["metrics"]
    assert m["attack.robust_accuracy[norm=linf,eps=0]"] == m["clean.accuracy"]
    assert m["attack.robust_accuracy[norm=linf,eps=0.1]"] <= m["attack.robust_accuracy[norm=linf,eps=0.05]"]
    bad = CliRunner().invoke(
        app, ["attack", model, data, "--attack", "foolbox:NoSuchAttack", "--sample", "10", "--out", str(tmp_path / "p")]
    )
    assert bad.exit_code == 2 and "foolbox has no attack 'NoSuchAttack'" in bad.output


def test_parse_epsilons() -> None:
    assert parse_epsilons(None, "linf")[0] == 0.0 and len(parse_epsilons(None, "linf")) == 6
    assert parse_epsilons("0.1,0.05", "linf") == (0.0, 0.05, 0.1)
    with pytest.raises(ConfigError, match="--epsilons"):
        parse_epsilons("big", "linf")


class _Confident(torch.nn.Module):
    """The demo CNN with its logits scaled up: the same predictions, but a softmax saturated enough that
    the cross-entropy gives PGD almost no gradient (the DLR loss is scale-invariant)."""

    def __init__(self, inner: torch.nn.Module, scale: float = 30.0) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale


def _soundness(result: AttackResult) -> dict[str, bool]:
    return {s.name: s.passed for s in result.soundness}


def test_convergence_check_fires_on_fast_and_stays_quiet_on_standard(
    demo_model: LoadedModel, sample: ImageDataset
) -> None:
    model = _Confident(demo_model.model).eval()
    data = sample.take(torch.arange(100))
    eps = (0.0, 0.05)
    fast = AdversarialAttack(strength="fast", epsilons=eps, sanity_samples=100, examples=0).run(
        model, data, engine=engine()
    )
    standard = AdversarialAttack(strength="standard", steps=50, epsilons=eps, sanity_samples=100, examples=0).run(
        model, data, engine=engine()
    )
    assert isinstance(fast, AttackResult) and isinstance(standard, AttackResult)
    assert fast.strength == "fast" and standard.strength == "standard"
    assert fast.attack == "PGD-20 Linf" and standard.attack.startswith("APGD-CE + APGD-T Linf (50 steps, 3 targets")
    assert not _soundness(fast)["converged"], fast.soundness[-1].explanation
    assert _soundness(standard)["converged"], standard.soundness[-1].explanation
    # the second attack broke more of what fast left standing than of what standard did (what it breaks
    # then counts in the curve)
    converged = {r.strength: next(s for s in r.soundness if s.name == "converged") for r in (fast, standard)}
    assert converged["fast"].value > converged["standard"].value
    assert "loose upper bound" in fast.headline() and "loose" not in standard.headline()


class _HardThreshold(torch.nn.Module):
    """Binarises its input: no autograd path from the pixels to the logits."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x > 0.5).float())


def test_a_model_without_gradient_gets_a_flag_and_no_curve(demo_model: LoadedModel, sample: ImageDataset) -> None:
    model = _HardThreshold(demo_model.model).eval()
    data = sample.take(torch.arange(40))
    for strength in ("fast", "standard"):
        result = AdversarialAttack(strength=strength, epsilons=(0.0, 0.05), sanity_samples=20).run(  # type: ignore[arg-type]
            model, data, engine=engine()
        )
        assert isinstance(result, AttackResult)
        assert result.curve == () and not _soundness(result)["gradient_signal"]
        assert not any(k.startswith("attack.robust_accuracy") for k in result.metrics())
        assert result.metrics()["attack.soundness_warnings"] == 1.0
        assert "no gradient signal" in result.headline()


def test_fast_only_settings_are_refused_with_standard() -> None:
    from auditkit.checks.attack import AttackSettings

    AttackSettings(strength="fast", targeted=True, rel_step=0.1)
    with pytest.raises(ValueError, match="--rel-step, --targeted set the PGD of --strength fast"):
        AttackSettings(targeted=True, rel_step=0.1)


def test_foolbox_bridge_records_the_attacks_own_norm_and_takes_validated_arguments(
    demo_model: LoadedModel, sample: ImageDataset
) -> None:
    with pytest.raises(ConfigError, match=r"foolbox L2PGD is an L2 attack but --norm is linf: add --norm l2"):
        AdversarialAttack(attack="foolbox:L2PGD")
    with pytest.raises(ConfigError, match=r"unknown argument 'stepz' for foolbox L2PGD; it takes .*steps"):
        AdversarialAttack(attack="foolbox:L2PGD", norm="l2", attack_args="stepz=3")
    with pytest.raises(ConfigError, match=r"steps of foolbox L2PGD takes an integer \(default 50\), got 'abc'"):
        AdversarialAttack(attack="foolbox:L2PGD", norm="l2", attack_args="steps=abc")
    with pytest.raises(ConfigError, match="--attack-args passes arguments to a foolbox"):
        AdversarialAttack(attack_args="steps=3")
    data = sample.take(torch.arange(40))
    check = AdversarialAttack(
        attack="foolbox:L2PGD", norm="l2", attack_args="steps=1, rel_stepsize=0.01", epsilons=(0.0, 1.0), examples=0
    )
    result = check.run(demo_model.model, data, engine=engine())
    assert isinstance(result, AttackResult)
    assert result.norm == "l2" and result.attack == "foolbox:L2PGD(steps=1, rel_stepsize=0.01)"
    # the arguments reach the attack: one step of 1% of eps breaks fewer images than fifty default steps
    strong = AdversarialAttack(attack="foolbox:L2PGD", norm="l2", epsilons=(0.0, 1.0), examples=0, sanity_samples=0)
    assert strong.run(demo_model.model, data, engine=engine()).curve[-1].robust.value < result.curve[-1].robust.value  # type: ignore[attr-defined]


def test_loss_and_target_make_a_custom_run_and_are_refused_with_other_strengths() -> None:
    from auditkit.checks.attack import AttackSettings

    assert AttackSettings(loss="margin", target="random").loss == "margin"
    for bad in ({"strength": "fast"}, {"strength": "thorough"}, {"attack": "fgsm"}):
        with pytest.raises(ValueError, match="--loss"):
            AttackSettings(loss="dlr", **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="loss must be one of ce, dlr, margin, got 'hinge'"):
        AdversarialAttack(loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="target must be one of next, random, least-likely, top-k"):
        AdversarialAttack(target="worst")  # type: ignore[arg-type]
    assert AdversarialAttack(target="top-k").attack_name(10) == "APGD-T Linf top 9 (100 steps)"
    assert AdversarialAttack(loss="margin").attack_name(10) == "APGD-MARGIN Linf (100 steps)"


def test_custom_runs_break_images_and_a_targeted_one_breaks_no_more_than_the_untargeted(
    demo_model: LoadedModel, sample: ImageDataset
) -> None:
    """A run aimed at each image's least likely class is a weaker attack than the untargeted run on the
    same loss; both break images, and the results say they are custom runs."""
    data = sample.take(torch.arange(60))
    results = {}
    for target in (None, "least-likely", "random"):
        check = AdversarialAttack(loss="margin", target=target, steps=10, epsilons=(0.0, 0.05), sanity_samples=20)  # type: ignore[arg-type]
        result = check.run(demo_model.model, data, engine=engine())
        assert isinstance(result, AttackResult) and result.strength == "custom"
        assert result.targeted == (target is not None)
        results[target] = result.curve[-1].robust.value
    assert results[None] < results["least-likely"] - 0.05, results
    assert results[None] <= results["random"] < 1.0 and results["least-likely"] < 1.0, results


def test_thorough_runs_square_alone_on_a_model_without_gradients(demo_model: LoadedModel, sample: ImageDataset) -> None:
    """Gradient attacks report nothing on a hard-threshold model; thorough's Square attack still draws a
    curve, and breaks images there, and the findings say the curve is Square's alone."""
    from auditkit.results import Conditions

    model = _HardThreshold(demo_model.model).eval()
    data = sample.take(torch.arange(40))
    check = AdversarialAttack(strength="thorough", epsilons=(0.0, 0.3), sanity_samples=20, square_queries=200)
    result = check.run(model, data, engine=engine())
    assert isinstance(result, AttackResult) and len(result.curve) == 2
    assert result.attack == "Square Linf (200 queries; no gradient signal for APGD)"
    assert result.curve[-1].robust.value < result.curve[0].robust.value - 0.1
    assert not _soundness(result)["gradient_signal"]
    texts = [f.text for f in result.findings(Conditions())]
    assert any("Square attack alone" in t for t in texts)
    assert not any("may be wrong" in t for t in texts)
    assert not check.square_only  # the run's fallback stays in the run: the check is reusable as configured
    again = check.run(demo_model.model.eval(), data, engine=engine())
    assert isinstance(again, AttackResult) and again.attack.startswith("APGD-CE + APGD-T + Square Linf")


def test_thorough_adds_restarts_and_square_and_breaks_at_least_what_standard_breaks(
    demo_model: LoadedModel, sample: ImageDataset
) -> None:
    data = sample.take(torch.arange(60))
    kwargs = {"epsilons": (0.0, 0.05), "steps": 10, "sanity_samples": 20, "examples": 0}
    standard = AdversarialAttack(strength="standard", **kwargs).run(demo_model.model, data, engine=engine())  # type: ignore[arg-type]
    thorough = AdversarialAttack(strength="thorough", square_queries=300, **kwargs).run(  # type: ignore[arg-type]
        demo_model.model, data, engine=engine()
    )
    assert isinstance(standard, AttackResult) and isinstance(thorough, AttackResult)
    assert thorough.strength == "thorough" and thorough.restarts == 5
    assert thorough.attack == "APGD-CE + APGD-T + Square Linf (10 steps, 9 targets, 5 restarts; Square, 300 queries)"
    assert thorough.curve[-1].robust.value <= standard.curve[-1].robust.value + 1 / 60


def test_ece_per_epsilon(demo_model: LoadedModel, sample: ImageDataset) -> None:
    from torchmetrics.functional.classification import multiclass_calibration_error

    data = sample.take(torch.arange(60))
    check = AdversarialAttack(strength="fast", epsilons=(0.0, 0.02, 0.5), steps=10, sanity_samples=0, examples=0)
    result = check.run(demo_model.model, data, engine=engine())
    clean, small, huge = result.curve
    with torch.no_grad():
        probs = torch.softmax(demo_model.model(data.images.float() / 255).double(), dim=1)
    # epsilon 0: the clean outputs
    assert clean.ece == pytest.approx(float(multiclass_calibration_error(probs, data.labels, 10, norm="l1")), abs=1e-5)
    assert clean.confidence == pytest.approx(float(probs.max(dim=1).values.mean()), abs=1e-5)
    # a huge epsilon breaks every image: all answers wrong, so ECE is the mean confidence
    assert huge.robust.value == 0.0
    assert huge.confidence is not None and huge.ece == pytest.approx(huge.confidence, abs=1e-9)
    assert small.ece is not None and 0 <= small.ece <= 1
    m = result.metrics()
    for p in result.curve:
        assert m[f"attack.ece[norm=linf,eps={p.eps:g}]"] == p.ece
    assert {r.name: r.direction for r in result.metric_records()}["attack.ece[norm=linf,eps=0.5]"] == "lower"
    from auditkit.results import Conditions

    assert any(f.metric == "attack.ece[norm=linf,eps=0.5]" for f in result.findings(Conditions()))
