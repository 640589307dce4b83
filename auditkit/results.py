"""Typed, frozen results and their versioned JSON form.

A run's results are a :class:`RunResults`: the run manifest, one typed result per check and a
flat ``metrics`` map (names documented in docs/metrics.md) that gates reference. The report
and the gate read only this file, so ``auditkit report results.json`` needs nothing else.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from auditkit.exceptions import DataError
from auditkit.io import atomic_write_text

SCHEMA_VERSION = "1.2"

T = TypeVar("T")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval (``nan`` when undefined)."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = 0.95


Direction = Literal["higher", "lower", "none"]


@dataclass(frozen=True)
class Metric:
    """One gateable number: its name (docs/metrics.md), value, unit, which direction is better
    (``none``: informational, e.g. a count or an angle) and its interval, when it has one."""

    name: str
    value: float
    direction: Direction = "higher"
    unit: str = "fraction"
    interval: Interval | None = None

    @classmethod
    def of(cls, name: str, interval: Interval, direction: Direction = "higher", unit: str = "fraction") -> Metric:
        """A metric with a confidence interval; its value is the interval's point estimate."""
        return cls(name, interval.value, direction, unit, interval)


Severity = Literal["fail", "warn", "pass", "info"]
SEVERITIES: tuple[Severity, ...] = ("fail", "warn", "pass", "info")


@dataclass(frozen=True)
class Conditions:
    """The default conditions that turn numbers into findings when no policy says otherwise
    (docs/findings.md). Drops and gaps are fractions: ``0.05`` is 5 points."""

    warn_drop: float = 0.05
    fail_drop: float = 0.20
    warn_gap: float = 0.05
    fail_gap: float = 0.10

    @classmethod
    def of(cls, manifest: RunManifest) -> Conditions:
        """The conditions a run was made with (its ``warn_drop`` ... settings in the manifest's
        config); the defaults for what it does not record."""
        known = {f.name for f in dataclasses.fields(cls)}
        given = {k: float(v) for k, v in manifest.config if k in known}
        return cls(**given)

    def describe(self) -> str:
        """``auditkit's default conditions`` or, when changed, the thresholds in points."""
        if self == Conditions():
            return "auditkit's default conditions"
        return (
            f"this run's conditions: drops warn from {points(self.warn_drop)}, fail from {points(self.fail_drop)}; "
            f"gaps warn from {points(self.warn_gap)}, fail from {points(self.fail_gap)}"
        )

    def drop(self, drop: float) -> Severity:
        """The severity of an accuracy drop (clean minus perturbed)."""
        return "fail" if drop >= self.fail_drop else "warn" if drop >= self.warn_drop else "pass"

    def gap(self, gap: float, significant: bool) -> Severity:
        """The severity of a gap between groups: only a significant gap can fail, and a significant
        one always warns."""
        if significant:
            return "fail" if gap >= self.fail_gap else "warn"
        return "warn" if gap >= self.warn_gap else "pass"


@dataclass(frozen=True)
class Finding:
    """One thing a check found, in plain words: its severity, one sentence, the number behind it,
    the metric that number is (for a tooltip or details column) and the check it came from."""

    severity: Severity
    text: str
    value: str
    metric: str = ""
    check: str = ""
    anchor: str = ""


def points(fraction: float) -> str:
    """A gap or drop in percentage points: ``0.047`` -> ``4.7 pt``."""
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:.1f} pt"


def eps_label(eps: float, norm: str = "linf") -> str:
    """An epsilon as people read it: ``8/255`` when an Linf epsilon is a whole number of 255ths."""
    k = eps * 255
    if norm == "linf" and eps > 0 and abs(k - round(k)) < 1e-6 * max(1.0, k):
        return f"{round(k)}/255"
    return f"{eps:.4g}"


@dataclass(frozen=True)
class CheckResult:
    """Base of every check's result. A result presents itself: ``title`` and :meth:`headline` for
    the report and the CLI, :meth:`metric_records` for the gate and results.json, ``template``
    (a file under ``auditkit/report/templates/sections/`` or Jinja source) and
    :meth:`report_context` (plots) for its report section."""

    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""
    template: ClassVar[str] = ""
    #: where its section stands in the report: the verdict first, then what hardening changed
    order: ClassVar[int] = 2

    @property
    def anchor(self) -> str:
        """The report section's HTML id."""
        return self.kind

    def headline(self) -> str:
        """One sentence on what the check found."""
        return ""

    def report_context(self) -> dict[str, Any]:
        """Extra values (e.g. SVG plots) its report section uses besides ``s.result``."""
        return {}

    def metric_records(self) -> tuple[Metric, ...]:
        """The typed, gateable metrics."""
        raise NotImplementedError

    def findings(self, conditions: Conditions) -> tuple[Finding, ...]:
        """What the check found, judged by ``conditions``; by default its headline, as information."""
        return (Finding("info", self.headline(), ""),)

    def metrics(self) -> dict[str, float]:
        """The flat map results.json stores: each value, and ``.ci_low``/``.ci_high`` of intervals."""
        out: dict[str, float] = {}
        for m in self.metric_records():
            out[m.name] = m.value
            if m.interval is not None:
                out[f"{m.name}.ci_low"] = m.interval.low
                out[f"{m.name}.ci_high"] = m.interval.high
        return out


@dataclass(frozen=True)
class RunManifest:
    """What was run, on what, with which versions: enough to reproduce or compare runs."""

    auditkit_version: str
    torch_version: str
    torchvision_version: str
    python_version: str
    device: str
    seed: int
    deterministic: bool
    batch_size: int
    model_path: str
    model_format: str
    model_sha256: str
    model_arch: str
    data_path: str
    data_format: str
    data_sha256: str
    num_samples: int
    skipped_files: tuple[tuple[str, str], ...]
    class_names: tuple[str, ...]
    config: tuple[tuple[str, str], ...]
    started_at: str
    timings: tuple[tuple[str, float], ...]
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    class_source: str = ""
    preprocessing: str = ""


@dataclass(frozen=True)
class SampleOutcomes:
    """Per-sample 0/1 outcomes behind accuracy-type metrics, for paired baseline comparisons.

    ``bits`` maps a metric name to its ``N`` outcomes packed 8 per byte (numpy ``packbits``) and
    base64-encoded; ``ids_sha256`` identifies the samples and their order.
    """

    n: int
    ids_sha256: str
    bits: Mapping[str, str]

    @classmethod
    def pack(cls, ids: tuple[str, ...], outcomes: Mapping[str, Any]) -> SampleOutcomes:
        import numpy as np

        digest = hashlib.sha256("\x1f".join(ids).encode()).hexdigest()
        bits = {
            name: base64.b64encode(np.packbits(np.asarray(v, dtype=bool)).tobytes()).decode("ascii")
            for name, v in sorted(outcomes.items())
        }
        return cls(n=len(ids), ids_sha256=digest, bits=bits)

    def get(self, metric: str) -> Any:
        """The ``(N,)`` bool array behind ``metric``, or ``None`` when not stored."""
        import numpy as np

        raw = self.bits.get(metric)
        if raw is None:
            return None
        return np.unpackbits(np.frombuffer(base64.b64decode(raw), dtype=np.uint8))[: self.n].astype(bool)


@dataclass(frozen=True)
class RunResults:
    """Everything one run produced; serialised to results.json."""

    manifest: RunManifest
    checks: tuple[CheckResult, ...]
    schema_version: str = SCHEMA_VERSION
    metrics: Mapping[str, float] = field(default_factory=dict)
    samples: SampleOutcomes | None = None
    recorded_run_id: str = field(default="", compare=False)  # as read from a results.json

    @functools.cached_property
    def run_id(self) -> str:
        """16 hex digits that identify this run's results: stored in results.json and in the report
        written with it, so a reader can tell that the two files belong together."""
        return self.recorded_run_id or hashlib.sha256(self._document().encode()).hexdigest()[:16]

    def findings(self, conditions: Conditions | None = None) -> tuple[Finding, ...]:
        """Every check's findings, most severe first (then in report order), each naming its check
        and its report section. ``conditions``: the run's own (:meth:`Conditions.of`) when not given."""
        cond = conditions or Conditions.of(self.manifest)
        found = [
            dataclasses.replace(f, check=c.kind, anchor=c.anchor)
            for c in sorted(self.checks, key=lambda c: c.order)
            for f in c.findings(cond)
        ]
        return tuple(sorted(found, key=lambda f: SEVERITIES.index(f.severity)))

    def check(self, cls: type[T]) -> T | None:
        """The first result of type ``cls``, or ``None`` when that check did not run."""
        for result in self.checks:
            if isinstance(result, cls):
                return result
        return None

    def _fields(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "manifest": _encode(self.manifest),
            "metrics": {k: _encode(v) for k, v in sorted(self.metrics.items())},
            "checks": [{"kind": c.kind, "result": _encode(c)} for c in self.checks],
            "samples": _encode(self.samples) if self.samples is not None else None,
            "findings": [_encode(f) for f in self.findings()],
        }

    def _document(self) -> str:
        return json.dumps(self._fields(), indent=2, allow_nan=False)

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, **self._fields()}, indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunResults:
        try:
            doc = json.loads(text)
            version = str(doc["schema_version"])
            if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
                raise DataError(
                    f"results.json has schema_version {version}; this auditkit reads "
                    f"{SCHEMA_VERSION.split('.')[0]}.x — re-run the audit with this version"
                )
            from auditkit import registry

            manifest = _decode(RunManifest, doc["manifest"])
            checks = []
            known = registry.result_types()
            for item in doc["checks"]:
                result_cls = known.get(item["kind"])
                if result_cls is None:
                    raise DataError(f"results.json has an unknown check kind {item['kind']!r}")
                checks.append(_decode(result_cls, item["result"]))
            metrics = {str(k): _decode(float, v) for k, v in doc["metrics"].items()}
            samples = _decode(SampleOutcomes, doc["samples"]) if doc.get("samples") else None
            run_id = doc.get("run_id", "")
            if not isinstance(run_id, str):
                raise TypeError(f"run_id must be a string, got {type(run_id).__name__}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"not a valid auditkit results.json: {type(exc).__name__}: {exc}") from exc
        return cls(
            manifest=manifest,
            checks=tuple(checks),
            schema_version=version,
            metrics=metrics,
            samples=samples,
            recorded_run_id=run_id,
        )

    def write(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``results.json`` and ``index.html`` into ``out_dir`` as one atomic pair, as the CLI does."""
        from auditkit.io import write_outputs

        return write_outputs(self, out_dir)

    def report(self, path: str | Path) -> Path:
        """Write only the HTML report to ``path`` (into an existing folder: ``index.html`` there)."""
        from auditkit.report.html import write_report

        target = Path(path)
        return write_report(self, target / "index.html" if target.is_dir() else target)

    def to_frame(self) -> Any:
        """The metrics as a pandas DataFrame indexed by metric name (needs pandas): the check that
        reported each, its value, which direction is better, its unit and interval, when it has one."""
        try:
            import pandas as pd
        except ImportError:
            from auditkit.exceptions import ConfigError

            raise ConfigError("pandas is needed for to_frame(); pip install pandas") from None
        columns = ["metric", "check", "value", "direction", "unit", "ci_low", "ci_high", "n"]
        rows = [
            (m.name, check.kind, m.value, m.direction, m.unit)
            + ((m.interval.low, m.interval.high, m.interval.n) if m.interval is not None else (math.nan, math.nan, 0))
            for check in self.checks
            for m in check.metric_records()
        ]
        return pd.DataFrame(rows, columns=columns).set_index("metric")

    @classmethod
    def read(cls, path: str | Path) -> RunResults:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot read results file {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError:
            raise DataError(f"{path} is not a results.json (not UTF-8 text)") from None
        return cls.from_json(text)


RUN_ID_META = re.compile(r'<meta name="auditkit-run-id" content="([0-9a-f]*)">')


def pair_notice(results_path: Path, results: RunResults) -> str | None:
    """A warning when the ``index.html`` beside ``results_path`` is not the report of ``results``
    (written by another run, or by an auditkit without run ids); ``None`` when they match or there
    is no report."""
    report = results_path.with_name("index.html")
    try:
        with report.open("rb") as fh:
            head = fh.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return None
    found = RUN_ID_META.search(head)
    theirs = found.group(1) if found else "none"
    if theirs == results.run_id:
        return None
    return (
        f"{report} is not the report of {results_path.name} (run id {theirs} there, {results.run_id} here); "
        f"rebuild it with: auditkit report {results_path}"
    )


def pct(value: float | None, digits: int = 1) -> str:
    """``0.953`` -> ``95.3%``; ``n/a`` for a missing or undefined value."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}%"


def fmt(value: float) -> str:
    """A number as it appears in metric names: ``90`` not ``90.0``, ``22.5`` and ``0.0314`` kept."""
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def collect_metrics(checks: tuple[CheckResult, ...]) -> dict[str, float]:
    """Merge the flat metrics of every check into one map."""
    merged: dict[str, float] = {}
    for check in checks:
        merged.update(check.metrics())
    return merged


def _encode(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_encode(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


@functools.cache
def _type_hints(tp: type) -> dict[str, Any]:
    """The resolved field types of a result dataclass (resolved once per class: decoding is hot)."""
    return typing.get_type_hints(tp)


def _decode(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _type_hints(tp)
        kwargs = {
            f.name: _decode(hints[f.name], value[f.name]) for f in dataclasses.fields(tp) if f.init and f.name in value
        }
        return tp(**kwargs)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if origin in (dict, Mapping) or origin is typing.Mapping:
        return {k: _decode(args[1], v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value)
    if tp is float:
        if value is None:
            return math.nan
        if value in ("inf", "-inf"):
            return float(value)
        return float(value)
    if tp is int:
        return int(value)
    if tp is str:
        return str(value)
    if tp is bool:
        return bool(value)
    return value
