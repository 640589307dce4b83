"""Render a :class:`RunResults` into one self-contained HTML file (Jinja2, autoescape on)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from auditkit.io import atomic_write_text
from auditkit.results import SEVERITIES, CheckResult, Conditions, RunResults, pct, points

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("auditkit.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = pct
    return env


def headline(check: CheckResult) -> str:
    """One line on what a check found (summary table, CLI output)."""
    return check.headline()


def _natural(name: str) -> list[Any]:
    """Sort key: by check, then numbers by value (``eps=0`` before ``eps=0.1`` before ``eps=1``)."""
    return [
        float(t) if re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", t) else t
        for t in re.split(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)", name)
    ]


def comparison_rows(results: RunResults, baseline: RunResults) -> list[dict[str, str]]:
    """One row per headline metric both runs have (no per-class or per-angle detail, no interval
    bounds), sorted by check then naturally: before, after and change as people read them
    (fractions in %, changes in points), ``tone`` good/bad by the metric's direction, and ``n/a``
    with the reason where a value is undefined."""
    directions = {m.name: m for c in results.checks for m in c.metric_records()}
    rows = []
    for name in sorted(set(results.metrics) & set(baseline.metrics), key=_natural):
        detail = ("rotation.accuracy[angle=", "corrupt.accuracy[")  # per angle / per corruption x severity
        if name.endswith((".ci_low", ".ci_high")) or "class=" in name or name.startswith(detail):
            continue
        old, new = baseline.metrics[name], results.metrics[name]
        metric = directions.get(name)
        fraction = metric is not None and metric.unit == "fraction"
        show = (lambda v: pct(v)) if fraction else (lambda v: "n/a" if math.isnan(v) else f"{v:.4g}")
        row = {"name": name, "old": show(old), "new": show(new), "change": "n/a", "tone": "", "reason": ""}
        if math.isnan(old) or math.isnan(new):
            row["reason"] = f"undefined in the {'baseline' if math.isnan(old) else 'this'} run (too few images)"
        else:
            delta = new - old
            row["change"] = f"{'+' if delta >= 0 else '−'}{points(abs(delta))}" if fraction else f"{delta:+.4g}"
            direction = metric.direction if metric is not None else "none"
            better = delta > 0 if direction == "higher" else delta < 0 if direction == "lower" else None
            if delta != 0 and better is not None:
                row["tone"] = "good" if better else "bad"
        rows.append(row)
    return rows


def summary(results: RunResults) -> dict[str, Any]:
    """What the report's first screen shows: the gate (if any), one tile per check with its worst
    finding's severity and its headline, the findings ranked by severity, and their counts."""
    findings = results.findings()
    tiles = []
    for check in sorted(results.checks, key=lambda c: c.order):
        if check.kind == "gate":
            continue
        mine = [f.severity for f in findings if f.anchor == check.anchor]
        worst = min(mine, key=SEVERITIES.index) if mine else "info"
        tiles.append({"severity": worst, "anchor": check.anchor, "title": check.title, "headline": check.headline()})
    counts = {sev: sum(f.severity == sev for f in findings) for sev in SEVERITIES}
    overall = "fail" if counts["fail"] else "warn" if counts["warn"] else "pass"
    gate = next((c for c in results.checks if c.kind == "gate"), None)
    conditions = Conditions.of(results.manifest).describe()
    return {
        "gate": gate,
        "tiles": tiles,
        "findings": findings,
        "counts": counts,
        "overall": overall,
        "conditions": conditions,
    }


def render_report(results: RunResults, baseline: RunResults | None = None) -> str:
    """The report HTML for ``results`` (compared with ``baseline`` when given): inline CSS and
    SVG, images as data URIs, no scripts."""
    env = _environment()
    sections = []
    for check in sorted(results.checks, key=lambda c: c.order):
        source = check.template
        section = env.get_template(f"sections/{source}") if source.endswith(".j2") else env.from_string(source)
        sections.append(
            {
                "kind": check.kind,
                "anchor": check.anchor,
                "title": check.title or check.kind,
                "headline": check.headline(),
                "result": check,
                "template": section,
                **check.report_context(),
            }
        )
    template = env.get_template("report.html.j2")
    return template.render(
        results=results,
        manifest=results.manifest,
        sections=sections,
        csp=CSP,
        baseline=baseline,
        comparison=comparison_rows(results, baseline) if baseline is not None else [],
        **summary(results),
    )


def write_report(results: RunResults, path: str | Path, baseline: RunResults | None = None) -> Path:
    """Render and write the report atomically."""
    return atomic_write_text(path, render_report(results, baseline))
