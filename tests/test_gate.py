from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from auditkit.cli import app
from auditkit.gate import GateResult, Policy, Rule, evaluate, markdown_summary
from auditkit.results import CheckResult, Metric, RunResults, SampleOutcomes

runner = CliRunner()


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def results(demo_run: Path) -> Path:
    return demo_run / "results.json"


def test_passing_policy_exits_0_and_writes_junit(results: Path, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "p.toml",
        """
[[rule]]
metric = "clean.accuracy"
op = ">="
value = 0.9
bound = "ci_low"

[[rule]]
metric = "subgroups.accuracy_gap[attribute=site]"
op = "<="
value = 0.2
""",
    )
    out = runner.invoke(
        app,
        [
            "gate",
            str(results),
            "--policy",
            str(policy),
            "--junit",
            str(tmp_path / "j.xml"),
            "--summary",
            str(tmp_path / "s.md"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "gate: passed" in out.output
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "2" and suite.get("failures") == "0"
    assert "✅" in (tmp_path / "s.md").read_text()
    updated = RunResults.read(tmp_path / "o" / "results.json")
    assert updated.samples == RunResults.read(results).samples  # gating keeps the per-sample outcomes
    gate = updated.check(GateResult)
    assert gate is not None and gate.passed and updated.metrics["gate.passed"] == 1.0
    assert "CI gate" in (tmp_path / "o" / "index.html").read_text()


def test_violated_rule_exits_1_and_is_named(results: Path, tmp_path: Path) -> None:
    policy = write_policy(
        tmp_path / "p.toml",
        """
[[rule]]
metric = "attack.robust_accuracy[norm=linf,eps=0.1]"
op = ">="
value = 0.6
""",
    )
    out = runner.invoke(app, ["gate", str(results), "--policy", str(policy), "--junit", str(tmp_path / "j.xml")])
    assert out.exit_code == 1
    assert "FAIL" in out.output and "attack.robust_accuracy[norm=linf,eps=0.1] >= 0.6" in out.output
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("failures") == "1"
    assert suite.find("testcase/failure") is not None


def test_missing_metric_is_an_error_verdict(results: Path, tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p.toml", '[[rule]]\nmetric = "saliency.sanity"\nop = ">="\nvalue = 1\n')
    out = runner.invoke(app, ["gate", str(results), "--policy", str(policy), "--junit", str(tmp_path / "j.xml")])
    assert out.exit_code == 1 and "ERROR" in out.output
    assert ET.parse(tmp_path / "j.xml").getroot().find("testcase/error") is not None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[rule]]\nmetric = "clean.accuracy"\nop = ">"\nvalue = 1\n', "op must be one of >=, <="),
        ('[[rule]]\nmetric = "clean.accuracy"\n', "needs metric, op and value"),
        ("rules = 3\n", "unknown key(s) ['rules']"),
    ],
)
def test_bad_policy_is_a_usage_error(results: Path, tmp_path: Path, text: str, needle: str) -> None:
    policy = write_policy(tmp_path / "p.toml", text)
    out = runner.invoke(app, ["gate", str(results), "--policy", str(policy)])
    assert out.exit_code == 2 and needle in out.output


def test_inconclusive_follows_the_policy(results: Path) -> None:
    loaded = RunResults.read(results)
    nulled = _overriding(loaded, "subgroups.accuracy[site=B]", float("nan"))
    rule = Rule(metric="subgroups.accuracy[site=B]", op=">=", value=0.9)
    lenient = evaluate(nulled, Policy(rules=(rule,)))
    strict = evaluate(nulled, Policy(rules=(rule,), inconclusive_fails=True))
    assert lenient.verdicts[0].status == "inconclusive" and lenient.passed
    assert not strict.passed


def test_summary_escapes_workflow_commands(results: Path) -> None:
    loaded = RunResults.read(results)
    gate = GateResult(verdicts=(), passed=True, baseline="")
    from auditkit.gate import Verdict

    gate = GateResult(
        verdicts=(Verdict("::error::x % y", "fail", 0.1, "line\nbreak | pipe"),), passed=False, baseline=""
    )
    text = markdown_summary(gate, loaded)
    assert "::error::" not in text and "%25" in text and "%0A" in text and "\\|" in text
    assert len(text.encode()) < 1 << 20
    top = [f.text for f in loaded.findings() if f.severity in ("fail", "warn") and f.check != "gate"][:5]
    from auditkit.gate import _md

    assert top and all(_md(t) in text for t in top)


def _audit_clean_only(model: Path, data: Path, out: Path, cfg_dir: Path, *extra: str) -> int:
    cfg = cfg_dir / "auditkit.toml"
    cfg.write_text('checks = ["clean"]\nseed = 0\n')
    result = runner.invoke(
        app, ["audit", str(model), str(data), "--config", str(cfg), "--out", str(out), "--no-progress", *extra]
    )
    return result.exit_code


def test_baseline_catches_a_worse_model_not_a_rerun(demo_run: Path, tmp_path: Path) -> None:
    from auditkit.demo import train_digits_model

    data = demo_run / "data" / "test.csv"
    good = demo_run / "model" / "model.safetensors"
    worse, _ = train_digits_model(
        demo_run / "data" / "train.csv",
        tmp_path / "worse" / "model.safetensors",
        epochs=1,
        device="cpu",
        progress=False,
    )
    assert _audit_clean_only(good, data, tmp_path / "base", tmp_path) == 0
    policy = write_policy(tmp_path / "p.toml", '[baseline]\nmetrics = ["clean.accuracy"]\ntolerance = 0.01\n')
    rerun = _audit_clean_only(
        good,
        data,
        tmp_path / "rerun",
        tmp_path,
        "--policy",
        str(policy),
        "--baseline",
        str(tmp_path / "base" / "results.json"),
    )
    assert rerun == 0
    worse_code = _audit_clean_only(
        worse,
        data,
        tmp_path / "worse_out",
        tmp_path,
        "--policy",
        str(policy),
        "--baseline",
        str(tmp_path / "base" / "results.json"),
    )
    assert worse_code == 1


def test_baseline_on_other_data_is_refused(results: Path, tmp_path: Path) -> None:
    doc = json.loads(results.read_text())
    doc["manifest"]["data_sha256"] = "0" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    policy = write_policy(tmp_path / "p.toml", '[baseline]\nmetrics = ["clean.accuracy"]\n')
    out = runner.invoke(app, ["gate", str(results), "--policy", str(policy), "--baseline", str(other)])
    assert out.exit_code == 3 and "different data" in out.output
    shutil.rmtree(tmp_path, ignore_errors=True)


@dataclass(frozen=True)
class Fixed(CheckResult):
    """A result with given metric values (the gate reads typed metric records, not the flat map)."""

    kind = "fixed"
    values: tuple[tuple[str, float], ...]

    def metric_records(self) -> tuple[Metric, ...]:
        return tuple(Metric(name, value) for name, value in self.values)


def _overriding(results: RunResults, name: str, value: float, samples: SampleOutcomes | None = None) -> RunResults:
    checks = (*results.checks, Fixed(((name, value),)))
    metrics = dict(results.metrics) | {name: value}
    return RunResults(manifest=results.manifest, checks=checks, metrics=metrics, samples=samples)


def _with_bits(results: RunResults, metric: str, bits: np.ndarray) -> RunResults:
    samples = SampleOutcomes.pack(tuple(str(i) for i in range(len(bits))), {metric: bits})
    return _overriding(results, metric, float(bits.mean()), samples)


def test_paired_mcnemar_separates_noise_from_regression(results: Path) -> None:
    loaded = RunResults.read(results)
    rng = np.random.default_rng(0)
    old = rng.random(400) < 0.8
    noisy = old.copy()
    flip_lost = np.flatnonzero(old)[:4]
    flip_gained = np.flatnonzero(~old)[:2]
    noisy[flip_lost], noisy[flip_gained] = False, True  # -0.5 points: 4 lost, 2 gained
    worse = old.copy()
    worse[np.flatnonzero(old)[:30]] = False  # -7.5 points: 30 lost
    metric = "attack.robust_accuracy[norm=linf,eps=0.05]"
    policy = Policy(rules=(), baseline_metrics=(metric,), tolerance=0.0)
    base = _with_bits(loaded, metric, old)
    noise_gate = evaluate(_with_bits(loaded, metric, noisy), policy, base)
    worse_gate = evaluate(_with_bits(loaded, metric, worse), policy, base)
    assert noise_gate.passed, noise_gate.verdicts
    assert "4 samples lost, 2 gained" in noise_gate.verdicts[0].message
    assert not worse_gate.passed and "30 samples lost" in worse_gate.verdicts[0].message


def test_rerun_with_another_attack_seed_is_not_flagged(demo_run: Path, tmp_path: Path) -> None:
    model, data = demo_run / "model" / "model.safetensors", demo_run / "data" / "test.csv"
    cfg = tmp_path / "auditkit.toml"
    cfg.write_text('checks = ["clean", "attack"]\nepsilons = "0,0.05"\nstrength = "fast"\nsteps = 5\nlimit = 200\n')
    base = runner.invoke(
        app,
        [
            "audit",
            str(model),
            str(data),
            "--config",
            str(cfg),
            "--seed",
            "0",
            "--out",
            str(tmp_path / "base"),
            "--no-progress",
        ],
    )
    assert base.exit_code == 0, base.output
    policy = write_policy(
        tmp_path / "p.toml",
        '[baseline]\nmetrics = ["clean.accuracy", "attack.robust_accuracy[norm=linf,eps=0.05]"]\ntolerance = 0.0\n',
    )
    rerun = runner.invoke(
        app,
        [
            "audit",
            str(model),
            str(data),
            "--config",
            str(cfg),
            "--seed",
            "1",
            "--out",
            str(tmp_path / "rerun"),
            "--no-progress",
            "--policy",
            str(policy),
            "--baseline",
            str(tmp_path / "base" / "results.json"),
        ],
    )
    assert rerun.exit_code == 0, rerun.output
    assert "paired McNemar" in rerun.output


@pytest.mark.parametrize(
    ("key", "value"), [("cue_size", "8"), ("methods", "'saliency'"), ("amp", "'bf16'"), ("layer", "'features.0'")]
)
def test_baseline_with_other_shortcut_saliency_or_amp_settings_is_refused(results: Path, key: str, value: str) -> None:
    import dataclasses

    from auditkit.exceptions import DataError

    loaded = RunResults.read(results)
    config = tuple((k, value if k == key else v) for k, v in loaded.manifest.config)
    other = dataclasses.replace(loaded, manifest=dataclasses.replace(loaded.manifest, config=config))
    policy = Policy(rules=(), baseline_metrics=("clean.accuracy",))
    with pytest.raises(DataError, match=f"different configuration \\({key}:"):
        evaluate(loaded, policy, other)


def test_mismatched_baseline_is_refused_before_the_audit_runs(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import auditkit.api

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the audit ran although the baseline cannot be compared")

    monkeypatch.setattr(auditkit.api, "run_audit", never)
    policy = tmp_path / "p.toml"
    policy.write_text('[baseline]\nmetrics = ["clean.accuracy"]\n')
    model = results.parent / "model" / "model.safetensors"
    args = ["audit", str(model), str(results.parent / "data" / "test.csv"), "--cue-size", "8"]
    args += ["--epsilons", "0,0.01,0.02,0.05,0.1", "--steps", "20"]  # as the demo ran, but for cue_size
    out = CliRunner().invoke(app, [*args, "--policy", str(policy), "--baseline", str(results), "--out", str(tmp_path)])
    assert out.exit_code == 3, out.output
    assert "cue_size: 4 vs 8 now" in out.output


def test_mce_against_a_baseline_is_gateable() -> None:
    """With a baseline run, the gate also sees corrupt.mce and corrupt.relative_mce (Hendrycks &
    Dietterich 2019, the baseline model in AlexNet's place), recomputed here from both runs' accuracies."""
    import copy

    import torch

    import auditkit
    from tests.conftest import small_digits_cnn

    net, x, y = small_digits_cnn(120)
    weaker = copy.deepcopy(net)
    with torch.no_grad():
        for p in weaker.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    settings = {"checks": ["corrupt"], "corruptions": "gaussian_noise,contrast", "severities": "1,5", "device": "cpu"}
    spec = {"mean": "0", "std": "1", "progress": False}
    new = auditkit.audit(net, (x, y), **settings, **spec)
    base = auditkit.audit(weaker, (x, y), **settings, **spec)

    def errors(run: RunResults, corruption: str) -> list[float]:
        return [1 - run.metrics[f"corrupt.accuracy[corruption={corruption},severity={s}]"] for s in (1, 5)]

    def clean_error(run: RunResults) -> float:
        return 1 - run.metrics["clean.accuracy"]

    ce = [sum(errors(new, c)) / sum(errors(base, c)) for c in ("gaussian_noise", "contrast")]
    rel = [
        sum(e - clean_error(new) for e in errors(new, c)) / sum(e - clean_error(base) for e in errors(base, c))
        for c in ("gaussian_noise", "contrast")
    ]
    policy = Policy(rules=(Rule("corrupt.mce", "<=", 10.0), Rule("corrupt.relative_mce", "<=", 10.0)))
    verdict = evaluate(new, policy, baseline=base)
    observed = {v.rule.split()[0]: v.observed for v in verdict.verdicts}
    assert observed["corrupt.mce"] == pytest.approx(sum(ce) / 2)
    assert observed["corrupt.relative_mce"] == pytest.approx(sum(rel) / 2)
    assert observed["corrupt.mce"] < 1  # the trained model beats its noised copy
    alone = evaluate(new, policy)  # without a baseline there is no mCE: the rule is an error, not a guess
    assert {v.status for v in alone.verdicts} == {"error"}
