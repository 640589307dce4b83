"""The CUDA path: every check run on a CUDA device agrees with the same run on the CPU.

Skipped where torch sees no CUDA device (CI has none). Run on a GPU machine with
``python -m pytest tests/test_cuda.py``; ``AUDITKIT_CUDA_REPORT=<file>`` also writes every metric's CPU and
CUDA values side by side, for docs/benchmarks.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from auditkit.api import audit
from auditkit.results import RunResults
from tests.conftest import small_digits_cnn

#: the device under test; AUDITKIT_CUDA_TEST_DEVICE=cpu runs the module's own logic without a GPU
DEVICE = os.environ.get("AUDITKIT_CUDA_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")

N = 96
SETTINGS: dict[str, Any] = {
    "angles": "-90:90:30",
    "epsilons": "0,0.05,0.1",
    "strength": "fast",
    "steps": 10,
    "methods": "saliency,smoothgrad",
    "corruptions": "gaussian_noise,defocus_blur,fog,jpeg_compression,elastic_transform,scale",
    "severities": "1,3,5",
    "batch_size": 32,
    "seed": 0,
    "progress": False,
}
#: metrics computed by counting images the model gets right: CPU and CUDA kernels differ in the last bits,
#: which may flip an image whose two top logits tie to float precision, so allow 2 images in N
COUNTED = ("clean.accuracy", "rotation.accuracy", "corrupt.accuracy", "corrupt.mca", "subgroups.accuracy")


def _data() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor, dict[str, list[str]]]]:
    net, x, y = small_digits_cnn(N)
    meta = {"half": ["a" if i < N // 2 else "b" for i in range(N)]}
    return net, (x, y, meta)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResults, RunResults, torch.nn.Module]:
    net, data = _data()
    spec = {"mean": (0.0,), "std": (1.0,), "input_size": (28, 28), "channels": 1}
    cpu = audit(net, data, device="cpu", out=tmp_path_factory.mktemp("cpu"), **spec, **SETTINGS)
    gpu = audit(net, data, device=DEVICE, out=tmp_path_factory.mktemp("cuda"), **spec, **SETTINGS)
    return cpu, gpu, net


def _write_report(cpu: dict[str, float], gpu: dict[str, float]) -> None:
    where = os.environ.get("AUDITKIT_CUDA_REPORT")
    if not where:
        return
    lines = [f"{'metric':60s} {'cpu':>12s} {'cuda':>12s} {'diff':>10s}"]
    for key in sorted(cpu):
        a, b = cpu[key], gpu.get(key, math.nan)
        lines.append(f"{key:60s} {a:12.6f} {b:12.6f} {b - a:+10.6f}")
    Path(where).write_text("\n".join(lines) + "\n")


def test_every_check_runs_on_cuda_and_says_so(runs: tuple[RunResults, RunResults, torch.nn.Module]) -> None:
    cpu, gpu, net = runs
    assert [c.kind for c in gpu.checks] == [c.kind for c in cpu.checks]
    assert {"clean", "rotation", "attack", "corrupt", "saliency", "shortcut", "subgroups"} <= {
        c.kind for c in gpu.checks
    }
    assert gpu.manifest.device.startswith(DEVICE)
    assert cpu.manifest.device == "cpu"
    # the caller's model is handed back where it was
    assert next(net.parameters()).device.type == "cpu"


def test_metrics_agree_with_the_cpu_run(runs: tuple[RunResults, RunResults, torch.nn.Module]) -> None:
    cpu, gpu, _ = runs
    a, b = dict(cpu.metrics), dict(gpu.metrics)
    _write_report(a, b)
    assert set(a) == set(b)
    for key, value in a.items():
        other = b[key]
        assert math.isnan(value) == math.isnan(other), key
        if math.isnan(value):
            continue
        if key.startswith(COUNTED):
            assert other == pytest.approx(value, abs=2 / N + 1e-9), key
        elif key.startswith("attack."):
            # random starts drawn by a different generator on each device: the curve may move a little
            # (on an H200 it did not move at all: every robust accuracy was the CPU's)
            assert other == pytest.approx(value, abs=0.06), key
        else:
            # calibration, saliency statistics: float sums in another order (and SmoothGrad's noise drawn
            # on another device); measured on an H200: at most 1.4e-4 apart, SmoothGrad's Spearman 5.5e-3
            assert other == pytest.approx(value, abs=0.02), key


def test_clean_logits_match_the_cpu(runs: tuple[RunResults, RunResults, torch.nn.Module]) -> None:
    net, (x, _, _) = _data()
    with torch.no_grad():
        ref = net(x)
        out = net.to(DEVICE)(x.to(DEVICE)).cpu()
    # cuDNN convolutions use TF32 by default: measured on an H200, logits at most 1.6e-3 from the CPU's
    torch.testing.assert_close(out, ref, atol=5e-3, rtol=1e-3)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.skipif(DEVICE != "cuda", reason="mixed precision is a CUDA path")
def test_mixed_precision_runs_on_cuda(amp: str) -> None:
    net, data = _data()
    spec = {"mean": (0.0,), "std": (1.0,), "input_size": (28, 28), "channels": 1}
    full = audit(net, data, checks=["rotation", "corrupt"], device=DEVICE, **spec, **SETTINGS)
    half = audit(net, data, checks=["rotation", "corrupt"], device=DEVICE, amp=amp, **spec, **SETTINGS)
    for key, value in full.metrics.items():
        if key.startswith(COUNTED):
            assert half.metrics[key] == pytest.approx(value, abs=4 / N + 1e-9), key
