"""CI gating: results.json + a policy (+ a baseline run) -> verdicts, exit code, JUnit, summary.

A policy is TOML::

    inconclusive = "pass"            # or "fail": what a null (too little data) metric does

    [[rule]]
    metric = "clean.accuracy"        # any name from docs/metrics.md
    op = ">="                        # ">=" or "<="
    value = 0.95
    bound = "ci_low"                 # "value" (default), "ci_low" or "ci_high": gate on the interval

    [baseline]                       # only used with --baseline OLD.json
    metrics = ["clean.accuracy", "attack.robust_accuracy[norm=linf,eps=0.1]"]  # higher is better
    tolerance = 0.01                 # largest allowed drop
    alpha = 0.05                     # paired McNemar level when both runs stored per-sample outcomes
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET

from auditkit.exceptions import ConfigError, DataError, OutputWriteError
from auditkit.io import atomic_write_text, read_toml
from auditkit.results import CheckResult, Conditions, Finding, Metric, RunResults

Status = Literal["pass", "fail", "inconclusive", "error"]
OPS = (">=", "<=")
BOUNDS = ("value", "ci_low", "ci_high")


@dataclass(frozen=True)
class Rule:
    """``metric op value`` on the metric's point value or one end of its interval."""

    metric: str
    op: str
    value: float
    bound: str = "value"

    @property
    def name(self) -> str:
        target = self.metric if self.bound == "value" else f"{self.metric}.{self.bound}"
        return f"{target} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Policy:
    """Absolute rules, baseline rules and what an inconclusive metric does."""

    rules: tuple[Rule, ...]
    baseline_metrics: tuple[str, ...] = ()
    tolerance: float = 0.0
    alpha: float = 0.05
    inconclusive_fails: bool = False


@dataclass(frozen=True)
class Verdict:
    """The outcome of one rule."""

    rule: str
    status: str
    observed: float
    message: str


@dataclass(frozen=True)
class GateResult(CheckResult):
    """Every rule's verdict; ``passed`` decides the exit code."""

    kind = "gate"

    verdicts: tuple[Verdict, ...]
    passed: bool
    baseline: str

    title = "CI gate"
    order = 0
    template = "gate.html.j2"

    def headline(self) -> str:
        failed = sum(v.status in ("fail", "error") for v in self.verdicts)
        verdict = "PASSED" if self.passed else "FAILED"
        return f"{verdict}: {len(self.verdicts) - failed} of {len(self.verdicts)} rules hold"

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        bad = [v for v in self.verdicts if v.status in ("fail", "error")]
        if not bad:
            held = len(self.verdicts)
            return (Finding("pass", f"The CI gate passed: all {held} rule(s) of the policy hold.", "PASSED"),)
        return tuple(Finding("fail", f"Gate rule failed: {v.message}", f"{v.observed:.4g}", v.rule) for v in bad)

    def metric_records(self) -> tuple[Metric, ...]:
        failed = float(sum(v.status in ("fail", "error") for v in self.verdicts))
        return (
            Metric("gate.passed", 1.0 if self.passed else 0.0, unit="flag"),
            Metric("gate.failed_rules", failed, "lower", "rules"),
        )


def metric_index(results: RunResults, baseline: RunResults | None = None) -> dict[str, Metric]:
    """Every typed metric of a run by name (what rules and baselines refer to); with a baseline, also
    the metrics relative to it (the corruption errors mCE and relative mCE, Hendrycks & Dietterich 2019,
    normalised by the baseline model where ImageNet-C uses AlexNet)."""
    index = {m.name: m for check in results.checks for m in check.metric_records()}
    if baseline is not None:
        from auditkit.checks.corrupt import CorruptionResult, corruption_errors

        now, then = results.check(CorruptionResult), baseline.check(CorruptionResult)
        if now is not None and then is not None:
            index |= {m.name: m for m in corruption_errors(now, then).metric_records()}
    return index


RULE_KEYS = ("metric", "op", "value", "bound")
BASELINE_KEYS = ("metrics", "tolerance", "alpha")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file (errors name the rule and the allowed values)."""
    doc = read_toml(path, "policy")
    unknown = sorted(set(doc) - {"rule", "baseline", "inconclusive"})
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in policy {path}; allowed: rule, baseline, inconclusive")
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        raise ConfigError(
            f"policy {path.name}: rule must be an array of tables ([[rule]] with metric, op and value), "
            f"got {raw_rules!r}"
        )
    rules = []
    for i, raw in enumerate(raw_rules, start=1):
        where = f"policy {path.name} rule {i}"
        extra = sorted(set(raw) - set(RULE_KEYS))
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {extra}; allowed: {', '.join(RULE_KEYS)}")
        if not {"metric", "op", "value"} <= set(raw):
            raise ConfigError(f"{where} needs metric, op and value")
        if not isinstance(raw["metric"], str) or not raw["metric"]:
            raise ConfigError(f"{where}: metric must be a metric name (see docs/metrics.md), got {raw['metric']!r}")
        if raw["op"] not in OPS:
            raise ConfigError(f"{where}: op must be one of {', '.join(OPS)}, got {raw['op']!r}")
        bound = raw.get("bound", "value")
        if bound not in BOUNDS:
            raise ConfigError(f"{where}: bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
        if not _number(raw["value"]):
            raise ConfigError(f"{where}: value must be a finite number, got {raw['value']!r}")
        rules.append(Rule(metric=raw["metric"], op=raw["op"], value=float(raw["value"]), bound=bound))
    inconclusive = doc.get("inconclusive", "pass")
    if inconclusive not in ("pass", "fail"):
        raise ConfigError(f"policy inconclusive must be 'pass' or 'fail', got {inconclusive!r}")
    base = doc.get("baseline", {})
    if not isinstance(base, dict):
        raise ConfigError(f"policy {path.name}: [baseline] must be a table (metrics, tolerance, alpha), got {base!r}")
    extra = sorted(set(base) - set(BASELINE_KEYS))
    if extra:
        raise ConfigError(f"policy {path.name} [baseline]: unknown key(s) {extra}; allowed: {', '.join(BASELINE_KEYS)}")
    metrics = base.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, str) and m for m in metrics):
        raise ConfigError(
            f"policy {path.name} [baseline] metrics must be a list of metric names "
            f'(metrics = ["clean.accuracy"]), got {metrics!r}'
        )
    if not rules and not metrics:
        raise ConfigError(f"policy {path} has no [[rule]] and no [baseline] metrics: it would check nothing")
    for key in ("tolerance", "alpha"):
        value = base.get(key, 0.0)
        if not _number(value) or value < 0:
            raise ConfigError(f"policy {path.name} [baseline] {key} must be a non-negative number, got {value!r}")
    return Policy(
        rules=tuple(rules),
        baseline_metrics=tuple(metrics),
        tolerance=float(base.get("tolerance", 0.0)),
        alpha=float(base.get("alpha", 0.05)),
        inconclusive_fails=inconclusive == "fail",
    )


def _value(index: dict[str, Metric], rule: Rule) -> float | None:
    """The rule's number: the metric's value, or one end of its interval (``nan`` if it has none)."""
    metric = index.get(rule.metric)
    if metric is None:
        return None
    if rule.bound == "value":
        return metric.value
    if metric.interval is None:
        return math.nan
    return metric.interval.low if rule.bound == "ci_low" else metric.interval.high


def evaluate(results: RunResults, policy: Policy, baseline: RunResults | None = None) -> GateResult:
    """Apply every rule; a missing metric is an error, a null one is inconclusive."""
    verdicts = []
    if baseline is not None:
        check_comparable(results, baseline)
    index = metric_index(results, baseline)
    for rule in policy.rules:
        observed = _value(index, rule)
        if observed is None:
            verdicts.append(
                Verdict(
                    rule.name,
                    "error",
                    math.nan,
                    f"no metric {rule.metric!r} in the results (did its check run? see docs/metrics.md)",
                )
            )
        elif math.isnan(observed):
            verdicts.append(
                Verdict(
                    rule.name, "inconclusive", observed, "not enough data to decide (e.g. a group below min_support)"
                )
            )
        else:
            ok = observed >= rule.value if rule.op == ">=" else observed <= rule.value
            verdicts.append(
                Verdict(
                    rule.name,
                    "pass" if ok else "fail",
                    observed,
                    f"observed {observed:.4g}, required {rule.op} {rule.value:g}",
                )
            )
    label = ""
    if baseline is not None:
        label = baseline.manifest.model_sha256[:12]
        before = metric_index(baseline)
        for metric in policy.baseline_metrics:
            now, then = index.get(metric), before.get(metric)
            new, old = (now.value if now else None), (then.value if then else None)
            lower = now is not None and now.direction == "lower"
            name = f"{metric} {'<= baseline +' if lower else '>= baseline -'} {policy.tolerance:g}"
            if now is None or then is None or new is None or old is None:
                verdicts.append(Verdict(name, "error", math.nan, f"{metric!r} is missing from one of the two runs"))
            elif now.direction == "none":
                verdicts.append(
                    Verdict(name, "error", new, f"{metric!r} is informational: neither higher nor lower is better")
                )
            elif math.isnan(new) or math.isnan(old):
                verdicts.append(Verdict(name, "inconclusive", new, "not enough data in one of the two runs"))
            else:
                verdicts.append(_compare(metric, name, new, old, results, baseline, policy, lower=lower))
    bad = {"fail", "error"} | ({"inconclusive"} if policy.inconclusive_fails else set())
    passed = not any(v.status in bad for v in verdicts)
    return GateResult(verdicts=tuple(verdicts), passed=passed, baseline=label)


def _compare(
    metric: str,
    name: str,
    new: float,
    old: float,
    results: RunResults,
    baseline: RunResults,
    policy: Policy,
    *,
    lower: bool = False,
) -> Verdict:
    """A regression is a drop beyond the tolerance; when both runs stored this metric's per-sample
    outcomes on the same samples, it must also be significant by an exact one-sided McNemar test."""
    from scipy.stats import binomtest

    text = f"{new:.4g} now vs {old:.4g} in the baseline ({new - old:+.4g})"
    if lower:  # lower is better: a regression is a rise beyond the tolerance (never paired)
        return Verdict(name, "fail" if new > old + policy.tolerance else "pass", new, text)
    beyond = new < old - policy.tolerance
    a, b = results.samples, baseline.samples
    now_bits = a.get(metric) if a is not None else None
    old_bits = b.get(metric) if b is not None else None
    if a is None or b is None or a.ids_sha256 != b.ids_sha256 or now_bits is None or old_bits is None:
        return Verdict(name, "fail" if beyond else "pass", new, text + "; unpaired (tolerance only)")
    lost = int((old_bits & ~now_bits).sum())
    gained = int((~old_bits & now_bits).sum())
    p = float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue) if lost + gained else 1.0
    fail = beyond and p < policy.alpha
    detail = f"; paired McNemar: {lost} samples lost, {gained} gained, p = {p:.3g}"
    if beyond and not fail:
        detail += f" (drop not significant at {policy.alpha:g}: noise)"
    return Verdict(name, "fail" if fail else "pass", new, text + detail)


def check_comparable(results: RunResults, baseline: RunResults) -> None:
    """Refuse a baseline measured on other data or with other settings."""
    if results.manifest.data_sha256 != baseline.manifest.data_sha256:
        raise DataError(
            "the baseline was measured on different data (data SHA-256 differs); re-run it on the same data"
        )
    check_settings_comparable(results.manifest.config, baseline)


def check_settings_comparable(config: tuple[tuple[str, str], ...], baseline: RunResults) -> None:
    """Refuse a baseline made with another value of any comparable setting (naming the first); an
    audit calls this before its first batch, with its own ``config.as_pairs()``."""
    from auditkit.config import checks_run, comparable_keys, default_reprs

    # a key one run does not record (an older auditkit) counts as its default value; the settings of a
    # check only one of the runs ran cannot change a metric both have
    defaults = default_reprs()
    mine, theirs = defaults | dict(config), defaults | dict(baseline.manifest.config)
    ran = [r for r in (checks_run(config), checks_run(baseline.manifest.config)) if r is not None]
    both = frozenset.intersection(*ran) if ran else None
    differ = [k for k in comparable_keys(both) if k != "data" and mine.get(k) != theirs.get(k)]
    if differ:
        k = differ[0]
        raise DataError(
            f"the baseline used a different configuration ({k}: {theirs.get(k)} vs {mine.get(k)} now); "
            "compare runs made with the same settings"
        )


def junit_xml(gate: GateResult) -> str:
    """One test case per rule: failure = violated, error = could not be evaluated, skipped = inconclusive."""
    suite = ET.Element(
        "testsuite",
        name="auditkit.gate",
        tests=str(len(gate.verdicts)),
        failures=str(sum(v.status == "fail" for v in gate.verdicts)),
        errors=str(sum(v.status == "error" for v in gate.verdicts)),
        skipped=str(sum(v.status == "inconclusive" for v in gate.verdicts)),
    )
    for v in gate.verdicts:
        case = ET.SubElement(suite, "testcase", classname="auditkit.gate", name=v.rule)
        if v.status == "fail":
            ET.SubElement(case, "failure", message=v.message).text = v.message
        elif v.status == "error":
            ET.SubElement(case, "error", message=v.message).text = v.message
        elif v.status == "inconclusive":
            ET.SubElement(case, "skipped", message=v.message)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def _md(text: str) -> str:
    """Make a label safe for a Markdown table and for GitHub workflow-command parsing."""
    return (
        text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A").replace("::", ":\u200b:").replace("|", "\\|")
    )


def markdown_summary(gate: GateResult, results: RunResults) -> str:
    """A short Markdown verdict table for ``$GITHUB_STEP_SUMMARY`` (kept under 1 MiB)."""
    icon = {"pass": "✅", "fail": "❌", "error": "⛔", "inconclusive": "❔"}
    lines = [
        f"## auditkit gate: {'passed' if gate.passed else 'FAILED'}",
        "",
        f"Model `{_md(results.manifest.model_sha256[:12])}` on `{_md(Path(results.manifest.data_path).name)}`"
        f" ({results.manifest.num_samples} images)",
        "",
        "| | rule | observed | note |",
        "|---|---|---|---|",
    ]
    for v in gate.verdicts:
        observed = "–" if math.isnan(v.observed) else f"{v.observed:.4g}"
        lines.append(f"| {icon[v.status]} | `{_md(v.rule)}` | {observed} | {_md(v.message)} |")
    top = [f for f in results.findings() if f.severity in ("fail", "warn") and f.check != "gate"][:5]
    if top:
        judged = Conditions.of(results.manifest).describe()
        lines += ["", f"Top findings ({_md(judged)}, docs/findings.md):", ""]
        lines += [f"- {'❌' if f.severity == 'fail' else '⚠️'} {_md(f.text)}" for f in top]
    text = "\n".join(lines) + "\n"
    return text.encode("utf-8")[: 1 << 20].decode("utf-8", errors="ignore")


def with_gate(results: RunResults, gate: GateResult) -> RunResults:
    """``results`` with ``gate`` as its (only) gate result and its metrics merged in."""
    checks = (*(c for c in results.checks if not isinstance(c, GateResult)), gate)
    metrics = {k: v for k, v in results.metrics.items() if not k.startswith("gate.")} | gate.metrics()
    return dataclasses.replace(results, checks=checks, metrics=metrics)


def write_ci_outputs(gate: GateResult, results: RunResults, *, junit: Path | None, summary: Path | None) -> None:
    if junit is not None:
        atomic_write_text(junit, junit_xml(gate))
    if summary is not None:
        try:
            with summary.open("a", encoding="utf-8") as fh:  # GITHUB_STEP_SUMMARY is appended to
                fh.write(markdown_summary(gate, results))
        except OSError as exc:
            raise OutputWriteError(f"cannot write summary {summary}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class Gate:
    """What to gate a run with: a policy, an optional baseline run, and where CI outputs go."""

    policy: Path | None = None
    baseline: Path | None = None
    junit: Path | None = None
    summary: Path | None = None

    def load(self) -> tuple[Policy, RunResults | None] | None:
        """The policy and baseline, read before any work so a bad one fails fast."""
        if self.policy is None:
            if self.baseline is not None:
                raise ConfigError("--baseline needs --policy (its [baseline] table lists the metrics to compare)")
            if self.junit is not None or self.summary is not None:
                raise ConfigError("--junit and --summary write the gate's verdicts; they need --policy")
            return None
        return load_policy(self.policy), RunResults.read(self.baseline) if self.baseline is not None else None


def regate(results: Path, gate: Gate, out: Path | None = None) -> GateResult:
    """Gate a written results.json again (``auditkit gate``); with ``out``, also write the pair with
    the verdicts there. The CI outputs are written in any case."""
    from auditkit.io import write_outputs

    inputs = gate.load()
    if inputs is None:
        raise ConfigError("--policy is required to gate a results.json")
    loaded = RunResults.read(results)
    verdict = evaluate(loaded, *inputs)
    updated = with_gate(loaded, verdict)
    if out is not None:
        write_outputs(updated, out)
    write_ci_outputs(verdict, updated, junit=gate.junit, summary=gate.summary)
    return verdict
