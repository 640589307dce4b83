"""The public audit path: config -> model -> data -> engine -> checks -> results -> report.

The demo and every CLI command call :func:`run_audit`; there is no other way in.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from auditkit import __version__, registry
from auditkit.checks.base import Check, CheckFailure
from auditkit.config import AuditConfig
from auditkit.engine.distributed import World
from auditkit.engine.loop import Engine, eval_mode
from auditkit.engine.resume import BatchStore, run_key
from auditkit.exceptions import AuditkitError, ConfigError, ModelError, NonFiniteOutputError, RunError
from auditkit.inputs.data import INFERRED_SOURCE, ImageDataset, InMemoryData, Preprocess, load_dataset
from auditkit.inputs.models import LoadedModel, ModelSpec, load_model, probe_outputs, wrap_module
from auditkit.io import write_outputs as write_outputs  # the pair writer, re-exported (torch-free)
from auditkit.results import RunManifest, RunResults, SampleOutcomes, collect_metrics


def build_checks(config: AuditConfig) -> list[Check]:
    """The configured checks, each from its validated settings, in order (``runs_last`` ones last)."""
    classes = [registry.check(name) for name in config.checks]
    classes.sort(key=lambda cls: cls.runs_last)
    return [cls.from_settings(config.check_settings[cls.name]) for cls in classes]


def make_engine(config: AuditConfig, world: World | None = None) -> Engine:
    """The engine for ``config``; ``world`` places it in a torch.distributed job."""
    return Engine(
        device=config.device,
        batch_size=config.batch_size,
        seed=config.seed,
        deterministic=config.deterministic,
        progress=config.progress,
        world=world,
        workers=config.workers,
        amp=config.amp,
        amp_attack=config.amp_attack,
    )


def model_spec(config: AuditConfig) -> ModelSpec:
    """The model settings the user gave (flags or auditkit.toml); ``None`` fields are not given."""
    return ModelSpec(
        arch=config.arch,
        num_classes=config.num_classes,
        input_size=config.input_size,
        channels=config.channels,
        mean=config.mean,
        std=config.std,
        class_names=read_class_names(config.class_names),
        output=config.output,
        weights=config.weights,
        resize=config.resize,
        crop=config.crop,
        resize_interpolation=config.resize_interpolation,
        antialias=config.antialias,
    )


def preprocess_for(spec: ModelSpec) -> Preprocess:
    """How images are brought to the model's input: ``--resize``/``--crop`` or a plain resize."""
    return Preprocess(
        size=spec.input_size,
        resize=spec.resize,
        crop=spec.crop,
        interpolation=spec.resize_interpolation or "bilinear",
        antialias=True if spec.antialias is None else spec.antialias,
    )


@dataclass(frozen=True)
class InMemory:
    """A model and/or data the Python API (:func:`auditkit.api.audit`) holds in memory: they stand in for
    the files ``config.model``/``config.data`` name, and go through the same settings and checks."""

    model: nn.Module | None = None
    data: InMemoryData | None = None


def load_inputs(
    config: AuditConfig, engine: Engine, given: InMemory | None = None
) -> tuple[LoadedModel, ImageDataset, list[str]]:
    """Load the model and the data (or take ``given`` ones), check the model's output convention on
    the first batch."""
    given = given or InMemory()
    spec = model_spec(config)
    if given.model is not None:
        loaded = wrap_module(given.model, spec)
    else:
        loaded = load_model(config.model, spec=spec, trust=config.trust_model)
    s = loaded.spec
    data = load_dataset(
        given.data if given.data is not None else config.data,
        class_names=s.class_names,
        class_source=loaded.class_source or "--class-names",
        num_classes=s.num_classes,
        preprocess=preprocess_for(s),
        channels=s.channels,
        limit=config.limit,
        sample=config.sample,
        seed=config.seed,
        max_bad_fraction=config.max_bad_fraction,
        track=engine.track,
        stream=config.stream,
        split=config.split,
    )
    engine.to_device(loaded.model)
    probe = engine.batch(data, 0, min(len(data), 8))
    with eval_mode(loaded.model):
        n_out, warnings = probe_outputs(loaded.model, probe.x, data.num_classes)
    data = conform_classes(data, n_out)
    if data.class_source == INFERRED_SOURCE:
        warnings.append(
            f"class order inferred by sorting the data's {data.num_classes} label names; "
            "pass --class-names to state the model's output order"
        )
    return loaded, data, warnings


def conform_classes(data: ImageDataset, k: int) -> ImageDataset:
    """Hold the data's classes to the model's ``k`` outputs (the output contract).

    Integer labels are indices, so the classes are the ``k`` outputs; any other class order must
    list exactly ``k`` names. Fewer names from the data itself are ambiguous (exit 2).
    """
    n = data.num_classes
    if data.class_source == "label indices":
        top = int(data.labels.max()) if len(data) else -1
        if top >= k:
            raise ModelError(
                f"the labels go up to {top} but the model returns {k} outputs; if it returns several heads, "
                "choose the logits with --output"
            )
        return dataclasses.replace(data, class_names=tuple(str(i) for i in range(k)))
    if n == k:
        return data
    if data.class_source == "--class-names":
        raise ConfigError(f"--class-names lists {n} names but the model returns {k} outputs per image")
    from_data = data.class_source == INFERRED_SOURCE or data.class_source.startswith(("folder", "torchvision"))
    if n < k and from_data:
        raise ConfigError(
            f"the data has {n} classes ({data.class_source}) but the model returns {k} outputs, so their order "
            "cannot be known; pass --class-names (a comma list or a file, one name per line, in output order)"
        )
    raise ModelError(
        f"the model returns {k} outputs per image but there are {n} classes ({data.class_source}); "
        "choose the logits with --output if it returns several heads, or fix --num-classes/--class-names"
    )


def read_class_names(value: str | None) -> tuple[str, ...] | None:
    """``--class-names``: a comma list, or a file with one name per line."""
    if not value:
        return None
    path = Path(value)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --class-names file {path}: {exc}") from exc
        names = tuple(line.strip() for line in lines if line.strip())
    else:
        names = tuple(n.strip() for n in value.split(","))
    if not names or any(not n for n in names):
        raise ConfigError(f"--class-names needs non-empty names (a comma list or a file), got {value!r}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"--class-names lists {dup!r} twice")
    return names


#: the layout of the batches a run saves; raised whenever a check's saved batch outputs change (2: the
#: rotation and attack batches carry confidences, the corruption sweep's per-image draws), so batches saved
#: by older code are refused by ``--resume`` rather than misread
BATCH_FORMAT = "2"


def resume_key(config: AuditConfig, loaded: LoadedModel, data: ImageDataset, engine: Engine) -> dict[str, str]:
    """What a saved partial run must match to be resumed: model, data, settings, device, version and the
    saved batches' layout."""
    return {
        "model": loaded.sha256,
        "data": data.sha256,
        "config": run_key(config.as_pairs()),
        "device": engine.device.type,
        "auditkit": __version__,
        "batches": BATCH_FORMAT,
    }


def run_audit(
    config: AuditConfig,
    *,
    engine: Engine | None = None,
    save_batches: bool = False,
    given: InMemory | None = None,
) -> RunResults:
    """Run the configured checks and return typed results.

    Nothing is written, except with ``save_batches``: then each finished batch is saved under
    ``config.out`` (see :mod:`auditkit.engine.resume`) and ``config.resume`` restores them; call
    :func:`auditkit.engine.resume.discard` once the outputs are written. ``given`` hands over a model
    and/or data held in memory instead of the files ``config`` names.
    """
    engine = engine or make_engine(config)
    engine.seed_everything()
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    timings: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    loaded, data, warnings = load_inputs(config, engine, given)
    timings.append(("load", time.perf_counter() - t0))
    if save_batches or config.resume:
        describe = resume_key(config, loaded, data, engine)
        key = run_key(sorted(describe.items()))
        engine.store = BatchStore.open(config.out, key, resume=config.resume, describe=describe, main=engine.world.main)
        engine.world.barrier()
    try:
        return _run_checks(config, engine, loaded, data, warnings, started, timings)
    finally:
        engine.store = None


def _run_checks(
    config: AuditConfig,
    engine: Engine,
    loaded: LoadedModel,
    data: ImageDataset,
    warnings: list[str],
    started: str,
    timings: list[tuple[str, float]],
) -> RunResults:
    t1 = time.perf_counter()
    engine.predict(loaded.model, data)
    timings.append(("clean_pass", time.perf_counter() - t1))
    results = []
    for check in build_checks(config):
        t = time.perf_counter()
        try:
            with engine.finite_outputs(loaded.model, f"check '{check.name}'"):
                results.append(check.run(loaded.model, data, engine=engine))
        except NonFiniteOutputError as exc:  # fail closed: the check is recorded as crashed, the run exits 3
            results.append(CheckFailure(check=check.name, error=str(exc)))
        except (AuditkitError, KeyboardInterrupt):
            raise
        except Exception as exc:  # fail closed: recorded, reported, and the run exits 3
            results.append(CheckFailure(check=check.name, error=f"{type(exc).__name__}: {' '.join(str(exc).split())}"))
        timings.append((check.name, time.perf_counter() - t))
        engine.note(f"{results[-1].kind}: {results[-1].headline()}")  # replaces its bars (shown only with them)
    checks = tuple(results)
    manifest = RunManifest(
        auditkit_version=__version__,
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        python_version=platform.python_version(),
        device=str(engine.device),
        seed=config.seed,
        deterministic=config.deterministic,
        batch_size=config.batch_size,
        model_path=loaded.describe()[0],
        model_format=loaded.format,
        model_sha256=loaded.sha256,
        model_arch=loaded.describe()[1],
        data_path=data.source,
        data_format=data.format,
        data_sha256=data.sha256,
        num_samples=len(data),
        skipped_files=data.skipped,
        class_names=data.class_names,
        config=config.as_pairs(),
        started_at=started,
        timings=tuple((k, round(v, 4)) for k, v in timings),
        warnings=tuple(warnings) + _chance_warning(clean_accuracy(engine, loaded, data), data.num_classes),
        notes=data.notes,
        class_source=data.class_source,
        preprocessing=preprocess_for(loaded.spec).describe(),
    )
    clean = engine.predict(loaded.model, data)
    per_sample = {"clean.accuracy": clean.correct.numpy()}
    per_sample |= {o.metric: (o.values.numpy() >= 0.5) for o in engine.outcomes(data) if o.metric}
    samples = SampleOutcomes.pack(data.ids, per_sample)
    return RunResults(manifest=manifest, checks=checks, metrics=collect_metrics(checks), samples=samples)


def clean_accuracy(engine: Engine, loaded: LoadedModel, data: ImageDataset) -> float:
    """Top-1 accuracy of the (cached) clean pass."""
    return float(engine.predict(loaded.model, data).correct.float().mean()) if len(data) else float("nan")


def _chance_warning(accuracy: float, k: int) -> tuple[str, ...]:
    """A near-chance clean accuracy usually means wrong preprocessing or class order, not a bad model."""
    if k < 2 or not accuracy <= 1.5 / k:
        return ()
    return (
        f"clean accuracy {accuracy:.1%} is near chance ({1 / k:.1%} for {k} classes): did you forget --mean/--std "
        "or --weights, or is the class order wrong (--class-names)?",
    )


def raise_for_failures(results: RunResults) -> None:
    """Exit 3 (after the outputs are written) when any check crashed."""
    failed = [c for c in results.checks if isinstance(c, CheckFailure)]
    if failed:
        first = failed[0]
        raise RunError(f"check '{first.check}' crashed ({first.error[:200]}); the report records it")
