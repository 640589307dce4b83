"""Render a :class:`RunResults` into one self-contained HTML file (Jinja2, autoescape on)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from auditkit.checks.attack import AttackResult
from auditkit.checks.base import CheckFailure
from auditkit.checks.clean import CleanResult
from auditkit.checks.harden import HardenResult
from auditkit.checks.rotation import RotationResult
from auditkit.checks.saliency import SaliencyResult
from auditkit.checks.shortcut import ShortcutResult
from auditkit.checks.subgroups import SubgroupResult
from auditkit.gate import GateResult
from auditkit.io import atomic_write_text
from auditkit.report import plots
from auditkit.results import CheckResult, RunResults, fmt

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

#: kind -> function giving the extra template context (plots) for that check's section
SECTION_PLOTS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "clean": lambda r: {
        "per_class_svg": Markup(plots.sanitize_svg(plots.per_class_accuracy(r))),
        "confusion_svg": Markup(plots.sanitize_svg(plots.confusion_matrix(r))),
    },
}

SECTION_PLOTS["rotation"] = lambda r: {
    "curve_svg": Markup(plots.sanitize_svg(plots.rotation_curve(r))),
    "per_class_svg": Markup(plots.sanitize_svg(plots.rotation_per_class(r))),
}

SECTION_PLOTS["attack"] = lambda r: {"curve_svg": Markup(plots.sanitize_svg(plots.attack_curve(r)))}

SECTION_PLOTS["subgroups"] = lambda r: {
    "bars": {a: Markup(plots.sanitize_svg(plots.subgroup_bars(r, a))) for a in r.attributes},
}


def _harden_plots(r: HardenResult) -> dict[str, Any]:
    def svg(text: str) -> Markup:
        return Markup(plots.sanitize_svg(text))

    out: dict[str, Any] = {"training_svg": svg(plots.harden_training(r)), "attack_svg": "", "rotation_svg": ""}
    if r.after_attack:
        label = f"epsilon ({r.norm}, [0, 1] pixel units)"
        out["attack_svg"] = svg(plots.before_after(r.before_attack, r.after_attack, xlabel=label, ylabel="robust acc."))
    if r.after_rotation:
        label = "rotation angle (degrees)"
        out["rotation_svg"] = svg(plots.before_after(r.before_rotation, r.after_rotation, xlabel=label, ylabel="acc."))
    return out


SECTION_PLOTS["harden"] = _harden_plots

SECTION_PLOTS["shortcut"] = lambda r: {"location_svg": Markup(plots.sanitize_svg(plots.location_heatmap(r)))}

SECTION_TITLES: dict[str, str] = {
    "shortcut": "Shortcut probes",
    "harden": "Hardening: before vs after",
    "gate": "CI gate",
    "failure": "Check that crashed",
    "clean": "Clean accuracy",
    "rotation": "Rotation robustness",
    "attack": "Adversarial robustness",
    "saliency": "Saliency",
    "subgroups": "Subgroups",
}


def _pct(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}%"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("auditkit.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = _pct
    return env


def headline(check: CheckResult) -> str:
    """One line on what a check found (summary table, CLI output)."""
    if isinstance(check, CleanResult):
        a = check.accuracy
        return f"{_pct(a.value)} accuracy (95% CI {_pct(a.low)}–{_pct(a.high)}) on {a.n} images"
    if isinstance(check, RotationResult):
        text = (
            f"{_pct(check.mean_accuracy.value)} mean accuracy within ±{check.mean_range:g}°; "
            f"worst {_pct(check.worst_accuracy)} at {check.worst_angle:g}°"
        )
        if check.spatial is not None:
            text += f"; spatial attack (grid) leaves {_pct(check.spatial.grid.value)}"
        return text
    if isinstance(check, AttackResult):
        last = check.curve[-1]
        warns = sum(not s.passed for s in check.soundness)
        sound = "all soundness checks pass" if not warns else f"{warns} soundness warning(s)"
        return f"{_pct(last.robust.value)} robust accuracy under {check.attack} at eps {last.eps:.4g}; {sound}"
    if isinstance(check, HardenResult):
        parts = [f"{check.label}, kept epoch {check.kept_epoch}"]
        if check.overfit_epoch is not None:
            parts.append(f"catastrophic overfitting at epoch {check.overfit_epoch}")
        for name, old, new, _ in check.deltas:
            if name == "clean.accuracy" or name.startswith(("attack.robust_accuracy", "rotation.mean_accuracy")):
                if name.startswith("attack.robust_accuracy") and f"eps={fmt(check.eps)}]" not in name:
                    continue
                parts.append(f"{name} {_pct(old)} → {_pct(new)}")
        return "; ".join(parts)
    if isinstance(check, ShortcutResult):
        found = [
            name
            for name, hit in (
                ("planted cue", check.planted.flagged),
                ("cue removal", check.removal is not None and check.removal.flagged),
                ("saliency mass", check.saliency.flagged),
            )
            if hit
        ]
        if not found:
            return f"no shortcut found (planted cue pulls {_pct(check.planted.attraction.value)} to one class)"
        pull = f"{_pct(check.planted.attraction.value)} of answers to '{check.planted.top_class}'"
        return f"SHORTCUT flagged by {', '.join(found)}; the planted cue pulls {pull}"
    if isinstance(check, CheckFailure):
        return f"CRASHED — {check.check}: {check.error[:120]}"
    if isinstance(check, GateResult):
        failed = sum(v.status in ("fail", "error") for v in check.verdicts)
        return (
            "PASSED" if check.passed else "FAILED"
        ) + f": {len(check.verdicts) - failed} of {len(check.verdicts)} rules hold"
    if isinstance(check, SaliencyResult):
        ok = [s.method for s in check.sanity if s.passed]
        bad = [s.method for s in check.sanity if not s.passed]
        return f"sanity check passed: {', '.join(ok) or 'none'}" + (
            f"; not trustworthy here: {', '.join(bad)}" if bad else ""
        )
    if isinstance(check, SubgroupResult):
        if not check.groups:
            return "no metadata column to group by"
        worst = [d for d in check.disparities if d.compared >= 2]
        if not worst:
            return "fewer than two groups with enough data"
        d = max(worst, key=lambda d: d.gap)
        flag = f"; {len(d.significant)} group(s) differ significantly (Holm)" if d.significant else ""
        return f"largest accuracy gap {_pct(d.gap)} by {d.attribute} ({d.best} vs {d.worst}){flag}"
    return ""


def comparison_rows(results: RunResults, baseline: RunResults) -> list[tuple[str, float, float, float]]:
    """``(metric, baseline, now, delta)`` for the headline metrics both runs have (no per-class or
    per-angle detail, no interval bounds)."""
    rows = []
    for name in sorted(set(results.metrics) & set(baseline.metrics)):
        if name.endswith((".ci_low", ".ci_high")) or "class=" in name or "rotation.accuracy[angle=" in name:
            continue
        old, new = baseline.metrics[name], results.metrics[name]
        rows.append((name, old, new, new - old))
    return rows


def render_report(results: RunResults, baseline: RunResults | None = None) -> str:
    """The report HTML for ``results`` (compared with ``baseline`` when given): inline CSS and
    SVG, images as data URIs, no scripts."""
    env = _environment()
    sections = []
    order = {"gate": 0, "harden": 1}  # the verdict first, then what hardening changed
    for check in sorted(results.checks, key=lambda c: order.get(c.kind, 2)):
        extra = SECTION_PLOTS.get(check.kind, lambda r: {})(check)
        sections.append(
            {
                "kind": check.kind,
                "anchor": f"{check.kind}-{check.check}" if isinstance(check, CheckFailure) else check.kind,
                "title": SECTION_TITLES.get(check.kind, check.kind),
                "headline": headline(check),
                "result": check,
                **extra,
            }
        )
    template = env.get_template("report.html.j2")
    return template.render(
        results=results,
        manifest=results.manifest,
        sections=sections,
        csp=CSP,
        clean=results.check(CleanResult),
        baseline=baseline,
        comparison=comparison_rows(results, baseline) if baseline is not None else [],
    )


def write_report(results: RunResults, path: str | Path, baseline: RunResults | None = None) -> Path:
    """Render and write the report atomically."""
    return atomic_write_text(path, render_report(results, baseline))
