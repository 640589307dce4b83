"""The public audit path: config -> model -> data -> engine -> checks -> results -> report.

The demo and every CLI command call :func:`run_audit`; there is no other way in.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from auditkit import __version__
from auditkit.checks.attack import AdversarialAttack, parse_epsilons
from auditkit.checks.base import Check, CheckFailure
from auditkit.checks.clean import CleanAccuracy
from auditkit.checks.rotation import RotationSweep, parse_angles
from auditkit.checks.saliency import SaliencyMaps
from auditkit.checks.shortcut import ShortcutProbes
from auditkit.checks.subgroups import Subgroups
from auditkit.config import AuditConfig, parse_methods
from auditkit.data import ImageDataset, load_dataset
from auditkit.distributed import World
from auditkit.engine import Engine, eval_mode
from auditkit.exceptions import AuditkitError, RunError
from auditkit.models import LoadedModel, ModelSpec, load_model, probe_outputs
from auditkit.report.html import write_report
from auditkit.results import RunManifest, RunResults, SampleOutcomes, collect_metrics
from auditkit.resume import BatchStore, run_key


def build_checks(config: AuditConfig) -> list[Check]:
    """The configured checks, in order, with their settings from the config."""
    factories: dict[str, Callable[[], Check]] = {
        "clean": CleanAccuracy,
        "rotation": lambda: RotationSweep(
            angles=parse_angles(config.angles),
            mean_range=config.mean_range,
            fraction_of_clean=config.fraction_of_clean,
            interpolation=config.interpolation,  # type: ignore[arg-type]  # validated in config
            fill=config.fill,  # type: ignore[arg-type]
            spatial=config.spatial,
            spatial_angles=parse_angles(config.spatial_angles),
            translate=config.translate,
            translate_steps=config.translate_steps,
            k=config.worst_of_k,
        ),
        "attack": lambda: AdversarialAttack(
            attack=config.attack,
            norm=config.norm,  # type: ignore[arg-type]  # validated in config
            epsilons=parse_epsilons(config.epsilons, config.norm),
            steps=config.steps,
            rel_step=config.rel_step,
            restarts=config.restarts,
            random_start=config.random_start,
            targeted=config.targeted,
        ),
        "saliency": lambda: SaliencyMaps(
            methods=parse_methods(config.methods), target=config.saliency_target, layer=config.layer
        ),
        "shortcut": lambda: ShortcutProbes(
            cue=config.cue,
            position=config.cue_position,
            size=config.cue_size,
            value=config.cue_value,
            occlusion=config.occlusion,
            shift=config.shift,
            shift_steps=config.shift_steps,
        ),
        "subgroups": lambda: Subgroups(groups=config.groups, min_support=config.min_support, bins=config.bins),
    }
    # subgroups last: it breaks down the per-sample outcomes the other checks publish
    order = sorted(config.checks, key=lambda name: name == "subgroups")
    return [factories[name]() for name in order]


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


def load_inputs(config: AuditConfig, engine: Engine) -> tuple[LoadedModel, ImageDataset, list[str]]:
    """Load the model and the data, check the model's output convention on the first batch."""
    spec = ModelSpec(
        arch=config.arch,
        num_classes=config.num_classes,
        input_size=config.input_size,
        channels=config.channels,
        mean=config.mean,
        std=config.std,
    )
    loaded = load_model(config.model, spec=spec, trust=config.trust_model)
    s = loaded.spec
    data = load_dataset(
        config.data,
        class_names=s.class_names,
        num_classes=s.num_classes,
        image_size=s.input_size,
        channels=s.channels,
        limit=config.limit,
        sample=config.sample,
        seed=config.seed,
        max_bad_fraction=config.max_bad_fraction,
        track=engine.track,
        stream=config.stream,
    )
    engine.to_device(loaded.model)
    probe = engine.batch(data, 0, min(len(data), 8))
    with eval_mode(loaded.model):
        n_out, warnings = probe_outputs(loaded.model, probe.x, data.num_classes)
    if n_out > data.num_classes:
        extra = tuple(f"output {i}" for i in range(data.num_classes, n_out))
        data = dataclasses.replace(data, class_names=data.class_names + extra)
    return loaded, data, warnings


def resume_key(config: AuditConfig, loaded: LoadedModel, data: ImageDataset, engine: Engine) -> dict[str, str]:
    """What a saved partial run must match to be resumed: model, data, settings, device, version."""
    return {
        "model": loaded.sha256,
        "data": data.sha256,
        "config": run_key(config.as_pairs()),
        "device": engine.device.type,
        "auditkit": __version__,
    }


def run_audit(config: AuditConfig, *, engine: Engine | None = None, save_batches: bool = False) -> RunResults:
    """Run the configured checks and return typed results.

    Nothing is written, except with ``save_batches``: then each finished batch is saved under
    ``config.out`` (see :mod:`auditkit.resume`) and ``config.resume`` restores them; call
    :func:`auditkit.resume.discard` once the outputs are written.
    """
    engine = engine or make_engine(config)
    engine.seed_everything()
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    timings: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    loaded, data, warnings = load_inputs(config, engine)
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
            results.append(check.run(loaded.model, data, engine=engine))
        except (AuditkitError, KeyboardInterrupt):
            raise
        except Exception as exc:  # fail closed: recorded, reported, and the run exits 3
            results.append(CheckFailure(check=check.name, error=f"{type(exc).__name__}: {' '.join(str(exc).split())}"))
        timings.append((check.name, time.perf_counter() - t))
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
        model_path=str(loaded.path),
        model_format=loaded.format,
        model_sha256=loaded.sha256,
        model_arch=loaded.spec.arch or "(stored in the file)",
        data_path=data.source,
        data_format=data.format,
        data_sha256=data.sha256,
        num_samples=len(data),
        skipped_files=data.skipped,
        class_names=data.class_names,
        config=config.as_pairs(),
        started_at=started,
        timings=tuple((k, round(v, 4)) for k, v in timings),
        warnings=tuple(warnings),
        notes=data.notes,
    )
    clean = engine.predict(loaded.model, data)
    per_sample = {"clean.accuracy": clean.correct.numpy()}
    per_sample |= {o.metric: (o.values.numpy() >= 0.5) for o in engine.outcomes(data) if o.metric}
    samples = SampleOutcomes.pack(data.ids, per_sample)
    return RunResults(manifest=manifest, checks=checks, metrics=collect_metrics(checks), samples=samples)


def raise_for_failures(results: RunResults) -> None:
    """Exit 3 (after the outputs are written) when any check crashed."""
    failed = [c for c in results.checks if isinstance(c, CheckFailure)]
    if failed:
        first = failed[0]
        raise RunError(f"check '{first.check}' crashed ({first.error[:200]}); the report records it")


def write_outputs(results: RunResults, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``index.html`` into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    json_path = results.write(out / "results.json")
    html_path = write_report(results, out / "index.html")
    return json_path, html_path
