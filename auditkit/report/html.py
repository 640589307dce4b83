"""Render a :class:`RunResults` into one self-contained HTML file (Jinja2, autoescape on)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from auditkit.io import atomic_write_text
from auditkit.results import CheckResult, RunResults, pct

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
    )


def write_report(results: RunResults, path: str | Path, baseline: RunResults | None = None) -> Path:
    """Render and write the report atomically."""
    return atomic_write_text(path, render_report(results, baseline))
