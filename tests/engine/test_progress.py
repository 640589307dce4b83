"""Progress: bars count images (x perturbations), move inside long batches, and each check reports."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch
from rich.console import Console

from auditkit.checks.attack import AdversarialAttack
from auditkit.checks.clean import CleanAccuracy
from auditkit.checks.rotation import RotationSweep
from auditkit.checks.saliency import SaliencyMaps, randomisation_stages
from auditkit.checks.shortcut import ShortcutProbes
from auditkit.checks.subgroups import Subgroups
from auditkit.engine.distributed import World
from auditkit.engine.loop import Batch, Engine
from auditkit.engine.progress import NullSink, RecordedTask, RecordingSink, RichSink, remaining_seconds, terminal_sink
from auditkit.inputs.data import ImageDataset, load_dataset
from auditkit.inputs.models import AuditModel
from auditkit.ops.perturb import Affine, rotations
from auditkit.training.train import TrainConfig, fit
from tests.conftest import DIGITS_SPEC

N = 40


@pytest.fixture
def model(tiny_net: torch.nn.Module) -> AuditModel:
    return AuditModel(tiny_net, DIGITS_SPEC)


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    return load_dataset("digits", limit=N)


def recording(batch_size: int = 16) -> tuple[Engine, RecordingSink]:
    sink = RecordingSink()
    return Engine(device="cpu", batch_size=batch_size, progress=sink), sink


def assert_complete(task: RecordedTask) -> None:
    """Closed, only ever growing, never past the total, and ending exactly at it."""
    assert task.stopped
    assert task.updates == sorted(task.updates)
    assert all(u <= task.total + 1e-9 for u in task.updates)
    assert task.completed == pytest.approx(task.total)


def test_a_loop_counts_images_not_batches(data: ImageDataset) -> None:
    engine, sink = recording(batch_size=16)
    assert list(engine.map(lambda b: b.stop - b.start, data, description="work")) == [16, 16, 8]
    (task,) = sink.tasks
    assert (task.description, task.total, task.unit) == ("work", N, "images")
    assert task.updates == [16, 32, 40]
    assert_complete(task)


def test_one_batch_reports_inside_a_long_operation(data: ImageDataset) -> None:
    engine, sink = recording(batch_size=256)  # the whole dataset is one batch

    def attack(b: Batch) -> int:
        for step in range(10):  # e.g. an attack's steps
            b.report((step + 1) / 10)
        return b.stop

    assert list(engine.map(attack, data, description="attack", grad=True)) == [N]
    (task,) = sink.tasks
    assert task.total == N
    assert len(task.updates) >= 10  # the bar moves inside the single batch
    assert task.updates[0] == pytest.approx(N / 10)
    assert_complete(task)


def test_a_sweep_counts_images_times_perturbations_and_moves_per_forward_pass(
    model: AuditModel, data: ImageDataset
) -> None:
    engine, sink = recording(batch_size=64)  # one batch; 64 // 40 = one angle per forward pass
    params = rotations(torch.tensor([-20.0, -10.0, 0.0, 10.0, 20.0], dtype=torch.float64))
    engine.sweep(model, data, Affine(), params, description="rotation sweep", identity=Affine.is_identity(params))
    (sweep,) = sink.named("rotation sweep")
    assert sweep.total == N * 4 and sweep.unit == "perturbed images"  # the identity row reuses the clean pass
    assert len(sweep.updates) == 4
    assert_complete(sweep)
    (clean,) = sink.named("clean pass")
    assert clean.total == N


def test_a_task_spans_several_loops(data: ImageDataset) -> None:
    engine, sink = recording(batch_size=16)
    with engine.task("two passes", 2 * N * 3) as task:
        for _ in range(2):
            list(engine.map(lambda b: None, data, description="pass", per_image=3, task=task))
    (only,) = sink.tasks  # the loops advance the caller's bar instead of opening their own
    assert only.total == 2 * N * 3
    assert_complete(only)


def test_a_retried_batch_does_not_count_twice(model: AuditModel, data: ImageDataset) -> None:
    class OOMAbove8(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 8:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return model(x)

    engine, sink = recording(batch_size=32)
    engine.predict(OOMAbove8(), data)
    (task,) = sink.tasks
    assert task.total == N
    assert_complete(task)


def test_track_counts_items() -> None:
    engine, sink = recording()
    assert list(engine.track(iter("abcde"), 5, "decoding images")) == list("abcde")
    (task,) = sink.tasks
    assert task.updates == [1, 2, 3, 4, 5]
    assert_complete(task)


def test_progress_off_without_a_terminal_and_on_other_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(Engine(device="cpu", progress=False).sink, NullSink)
    assert isinstance(Engine(device="cpu", progress=RecordingSink(), world=World(rank=1, size=2)).sink, NullSink)
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    assert isinstance(terminal_sink(True), NullSink)  # pytest's stderr is not a terminal
    monkeypatch.setenv("TTY_INTERACTIVE", "1")  # rich's switch: forced on
    assert isinstance(terminal_sink(True), RichSink)
    assert isinstance(terminal_sink(False), NullSink)


def test_jupyter_gets_bars_where_rich_can_draw_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    import rich.console

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed: rich would warn at every refresh
    assert isinstance(terminal_sink(True), NullSink)
    monkeypatch.setitem(sys.modules, "ipywidgets", types.ModuleType("ipywidgets"))
    sink = terminal_sink(True)
    assert isinstance(sink, RichSink) and sink.console.is_jupyter


def test_eta_is_known_after_the_first_update() -> None:
    assert remaining_seconds(2.0, 10, 40) == pytest.approx(6.0)
    assert remaining_seconds(2.0, 0, 40) is None
    assert remaining_seconds(None, 10, 40) is None


def test_rich_bars_go_to_their_console_and_never_to_stdout(
    data: ImageDataset, capsys: pytest.CaptureFixture[str]
) -> None:
    screen = io.StringIO()
    sink = RichSink(Console(file=screen, force_terminal=True, force_interactive=True, width=120))
    engine = Engine(device="cpu", batch_size=16, progress=sink)
    seen: list[str] = []

    def look(b: Batch) -> None:
        assert sink.progress is not None
        seen.append(str(sink.progress.columns[-1].render(sink.progress.tasks[0])))

    list(engine.map(look, data, description="clean pass"))
    engine.note("clean: accuracy 10.0%")
    assert sink.progress is None  # the finished bar is gone: the live display stopped
    assert seen[0].endswith("ETA -:--:--") and "ETA 0:" in seen[1]  # an ETA from the first batch on
    text = screen.getvalue()
    assert "clean pass" in text and "/40 images" in text
    assert text.rstrip().endswith("clean: accuracy 10.0%")
    assert capsys.readouterr().out == ""


def _tasks_per_check(sink: RecordingSink) -> dict[str, float]:
    for t in sink.tasks:
        assert_complete(t)
    assert sink.most_open <= 2
    return {t.descriptions[0]: t.total for t in sink.tasks}


def test_clean_and_subgroups_report_the_clean_pass(model: AuditModel, data: ImageDataset) -> None:
    for check in (CleanAccuracy(), Subgroups()):
        engine, sink = recording()
        check.run(model, data, engine=engine)
        assert _tasks_per_check(sink) == {"clean pass": N}


def test_rotation_reports_images_times_angles(model: AuditModel, data: ImageDataset) -> None:
    engine, sink = recording(batch_size=64)
    check = RotationSweep(angles=(-30.0, 0.0, 30.0), spatial_angles=(-10.0, 10.0), translate_steps=1, k=2)
    check.run(model, data, engine=engine)
    totals = _tasks_per_check(sink)
    assert totals == {"clean pass": N, "rotation sweep": N * 2, "spatial attack grid": N * 2}  # 0° reuses clean
    assert len(sink.named("rotation sweep")[0].updates) == 2  # one batch, one update per forward pass


def test_attack_reports_the_images_attacked(model: AuditModel, data: ImageDataset) -> None:
    agreed = dataclasses.replace(data, labels=Engine(device="cpu", progress=False).predict(model, data).pred)
    engine, sink = recording()  # every image is classified correctly, so every one is attacked
    check = AdversarialAttack(strength="fast", epsilons=(0.0, 0.05), steps=2, sanity_samples=4, examples=1)
    check.run(model, agreed, engine=engine)
    totals = _tasks_per_check(sink)
    assert totals["clean pass"] == N
    assert totals["soundness probes"] == 4
    attacked = [total for name, total in totals.items() if name.endswith("eps=0.05")]
    assert attacked[0] == N  # the curve; then the convergence re-check of the sanity images left standing
    assert all(total <= 4 for total in attacked[1:])


def test_saliency_reports_maps_and_the_sanity_check(model: AuditModel, data: ImageDataset) -> None:
    engine, sink = recording()
    check = SaliencyMaps(methods=("saliency", "input_x_gradient"), per_kind=1, sanity_samples=4)
    result = check.run(model, data, engine=engine)
    totals = _tasks_per_check(sink)
    stages = len(randomisation_stages(model))
    assert totals == {
        "clean pass": N,
        "saliency maps": len(result.examples) * 2,  # type: ignore[attr-defined]
        "saliency sanity check (randomised layers)": 4 * 2 * (stages + 1),
    }


def test_shortcut_probes_report_images(model: AuditModel, data: ImageDataset) -> None:
    engine, sink = recording()
    ShortcutProbes(shift_steps=2).run(model, data, engine=engine)
    totals = _tasks_per_check(sink)
    assert totals == {
        "clean pass": N,
        "shortcut: planted cue": N,
        "shortcut: location": N * 2 * 2,
        "shortcut: saliency mass": N,
    }


def test_training_is_one_bar_over_its_epochs(model: AuditModel, data: ImageDataset) -> None:
    engine, sink = recording(batch_size=16)
    train, val = data.take(torch.arange(32)), data.take(torch.arange(32, N))
    fit(model, train, engine=engine, config=TrainConfig(epochs=2), val=val)
    (training,) = sink.named("training")
    assert training.total == 2 * 32
    assert_complete(training)
    assert training.descriptions[1:] == [
        "training epoch 1/2 (standard training)",
        "training epoch 2/2 (standard training)",
    ]
    assert [t.total for t in sink.named("validation")] == [8, 8]
    assert sink.most_open == 2  # validation shows under the training bar


def test_a_finished_check_leaves_its_headline(tmp_path: Path, tiny_net: torch.nn.Module) -> None:
    from auditkit.config import resolve_config
    from auditkit.inputs.models import save_model
    from auditkit.pipeline import run_audit

    path = save_model(tiny_net, DIGITS_SPEC, tmp_path / "model.safetensors")
    config = resolve_config({"model": str(path), "data": "digits", "checks": ("clean",), "device": "cpu", "limit": 20})
    sink = RecordingSink()
    results = run_audit(config, engine=Engine(device="cpu", progress=sink))
    assert sink.notes == [f"clean: {results.checks[0].headline()}"]
    assert [t.description for t in sink.tasks] == ["clean pass"]


@pytest.mark.parametrize("strength", ["standard", "thorough"])
def test_an_attack_on_one_batch_moves_its_bar_step_by_step(
    strength: str, model: AuditModel, data: ImageDataset
) -> None:
    """APGD (and thorough's Square) report inside the batch, so a dataset that fits in one batch
    does not show a frozen bar for the whole attack."""
    agreed = dataclasses.replace(data, labels=Engine(device="cpu", progress=False).predict(model, data).pred)
    engine, sink = recording(batch_size=256)
    check = AdversarialAttack(  # type: ignore[arg-type]
        strength=strength, epsilons=(0.0, 0.01), steps=5, sanity_samples=4, examples=0, square_queries=50
    )
    check.run(model, agreed, engine=engine)
    (curve,) = [t for t in sink.tasks if t.description.endswith("eps=0.01") and t.total == N]
    assert len(curve.updates) >= 5 and curve.updates[0] < N / 2
    assert_complete(curve)


def test_a_terminal_sees_each_headline_once(tmp_path: Path, tiny_net: torch.nn.Module) -> None:
    """On an interactive terminal the headline replaces the check's bars as it finishes, and the
    summary printed at the end (stdout, the same terminal) does not repeat it; piped, stdout keeps it."""
    import os
    import subprocess
    import sys

    from auditkit.inputs.models import save_model

    path = save_model(tiny_net, DIGITS_SPEC, tmp_path / "model.safetensors")
    argv = [sys.executable, "-m", "auditkit", "subgroups", str(path), "digits", "--limit", "60", "--device", "cpu"]
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120", "TTY_INTERACTIVE": "1"}
    env.pop("NO_COLOR", None)
    leader, follower = os.openpty()
    with subprocess.Popen(
        [*argv, "--out", str(tmp_path / "tty")], stdin=follower, stdout=follower, stderr=follower, env=env
    ) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=300) == 0
    os.close(leader)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert screen.count("clean: ") == 1 and screen.count("subgroups: ") == 1, screen
    assert "report:" in screen
    piped = subprocess.run(
        [*argv, "--out", str(tmp_path / "pipe")], capture_output=True, text=True, env=env, check=True, timeout=300
    )
    assert piped.stdout.count("clean: ") == 1 and piped.stdout.count("subgroups: ") == 1, piped.stdout
