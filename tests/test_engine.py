from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from auditkit.checks.clean import CleanAccuracy
from auditkit.engine.loop import Batch, Engine, batch_seed, eval_mode, resolve_device
from auditkit.exceptions import ConfigError, ModelError, NonFiniteOutputError
from auditkit.inputs.data import load_dataset
from auditkit.inputs.models import AuditModel
from tests.conftest import DIGITS_SPEC, write_png


@pytest.fixture
def model(tiny_net: torch.nn.Module) -> AuditModel:
    return AuditModel(tiny_net, DIGITS_SPEC)


def test_results_do_not_depend_on_batch_size(model: AuditModel) -> None:
    data = load_dataset("digits", limit=100)
    runs = [Engine(device="cpu", batch_size=bs, progress=False) for bs in (1, 7, 64, 1000)]
    preds = [e.predict(model, data) for e in runs]
    for p in preds[1:]:
        assert torch.equal(p.pred, preds[0].pred)
        torch.testing.assert_close(p.logits, preds[0].logits, rtol=1e-5, atol=1e-5)
    results = [CleanAccuracy().run(model, data, engine=e) for e in runs]
    for r in results[1:]:
        assert r.confusion == results[0].confusion
        assert r.accuracy == results[0].accuracy
        assert [c.accuracy for c in r.per_class] == [c.accuracy for c in results[0].per_class]
        assert [e.id for e in r.errors] == [e.id for e in results[0].errors]
        assert r.mean_confidence == pytest.approx(results[0].mean_confidence, rel=1e-5)


def test_out_of_memory_halves_the_batch_and_keeps_results(model: AuditModel) -> None:
    data = load_dataset("digits", limit=50)
    reference = Engine(device="cpu", batch_size=50, progress=False).predict(model, data)
    calls: list[int] = []

    class OOMAbove8(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            if x.shape[0] > 8:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return model(x)

    engine = Engine(device="cpu", batch_size=32, progress=False)
    got = engine.predict(OOMAbove8(), data)
    assert engine.batch_size == 8
    assert calls[:3] == [32, 16, 8]
    assert torch.equal(got.pred, reference.pred)


def test_clean_pass_is_computed_once(model: AuditModel) -> None:
    data = load_dataset("digits", limit=20)
    engine = Engine(device="cpu", progress=False)
    assert engine.predict(model, data) is engine.predict(model, data)


def test_eval_mode_restores_each_module() -> None:
    net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(3))
    net.train()
    net[1].eval()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training


def test_non_finite_outputs_fail_naming_samples() -> None:
    class HalfNaN(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 10)
            out[::2] = float("inf")
            return out

    data = load_dataset("digits", limit=4)
    with pytest.raises(NonFiniteOutputError, match="2 samples"):
        Engine(device="cpu", progress=False).predict(HalfNaN(), data)


def test_model_crash_becomes_model_error() -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(ModelError, match="boom"):
        Engine(device="cpu", progress=False).predict(Broken(), load_dataset("digits", limit=4))


def test_device_choices() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="must be one of auto, cpu, cuda, mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_bad_batch_size() -> None:
    with pytest.raises(ConfigError, match="batch-size"):
        Engine(batch_size=0)


def _stream_manifest(tmp_path: Path, n: int = 40) -> Path:
    data = load_dataset("digits", limit=n)
    rows = ["path,label"]
    for i in range(n):
        write_png(tmp_path / f"{i}.png", data.images[i, 0].numpy())
        rows.append(f"{i}.png,{int(data.labels[i])}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_data_gives_the_in_memory_results(model: AuditModel, tmp_path: Path, workers: int) -> None:
    manifest = _stream_manifest(tmp_path)
    memory = load_dataset(manifest, stream="off", class_names=DIGITS_SPEC.class_names)
    streamed = load_dataset(manifest, stream="on", class_names=DIGITS_SPEC.class_names)
    ref = Engine(device="cpu", batch_size=16, progress=False).predict(model, memory)
    got = Engine(device="cpu", batch_size=16, progress=False, workers=workers).predict(model, streamed)
    assert torch.equal(got.logits, ref.logits)


def test_batches_get_seeds_that_do_not_depend_on_what_ran_before(model: AuditModel) -> None:
    data = load_dataset("digits", limit=40)

    def draw(b: Batch) -> tuple[int, Tensor, Tensor]:
        return b.start, torch.rand(2), torch.rand(2, generator=b.generator())

    a = list(Engine(device="cpu", batch_size=8, seed=3, progress=False).map(draw, data, description="d"))
    torch.manual_seed(123)  # the global RNG state before the loop does not matter
    b = list(Engine(device="cpu", batch_size=8, seed=3, progress=False).map(draw, data, description="d"))
    assert all(torch.equal(x[1], y[1]) and torch.equal(x[2], y[2]) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0][1], a[1][1])  # batches differ from each other
    c = list(Engine(device="cpu", batch_size=8, seed=4, progress=False).map(draw, data, description="d"))
    assert not torch.equal(a[0][2], c[0][2])  # and with the seed
    assert batch_seed(3, "d", 8) == batch_seed(3, "d", 8) != batch_seed(3, "d", 16)


def test_amp_bf16_on_cpu_keeps_the_clean_accuracy(demo_run: Path) -> None:
    from auditkit.config import AuditConfig
    from auditkit.pipeline import run_audit

    base = {
        "model": str(demo_run / "model" / "model.safetensors"),
        "data": str(demo_run / "data" / "test.csv"),
        "device": "cpu",
        "checks": ("clean",),
        "progress": False,
    }
    fp32 = run_audit(AuditConfig(**base)).metrics["clean.accuracy"]  # type: ignore[arg-type]
    bf16 = run_audit(AuditConfig(**base, amp="bf16")).metrics["clean.accuracy"]  # type: ignore[arg-type]
    assert abs(fp32 - bf16) <= 0.01
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Engine(device="cpu", amp="fp16")
    with pytest.raises(ConfigError, match="--amp must be one of off, bf16, fp16"):
        Engine(device="cpu", amp="fp8")


@pytest.mark.parametrize(("amp_attack", "expected"), [(False, False), (True, True)])
def test_gradient_loops_use_amp_only_when_asked(amp_attack: bool, expected: bool) -> None:
    data = load_dataset("digits", limit=8)
    engine = Engine(device="cpu", amp="bf16", amp_attack=amp_attack, progress=False)

    def probe(b: Batch) -> bool:
        return torch.is_autocast_enabled("cpu")

    assert list(engine.map(probe, data, description="fwd")) == [True]  # forward-only: always under --amp
    assert list(engine.map(probe, data, description="grad", grad=True)) == [expected]
