"""Tiny deterministic fixtures: a small CNN, small on-disk datasets, the demo run (once)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from typer.testing import CliRunner

from auditkit.inputs.models import ModelSpec
from auditkit.zoo import digits_cnn

DIGITS_SPEC = ModelSpec(
    arch="auditkit.zoo:digits_cnn",
    num_classes=10,
    input_size=(28, 28),
    channels=1,
    mean=(0.1,),
    std=(0.3,),
    class_names=tuple(str(i) for i in range(10)),
)


@pytest.fixture
def tiny_net() -> torch.nn.Module:
    """An untrained digits CNN with fixed weights (seed 0), in eval mode."""
    torch.manual_seed(0)
    return digits_cnn(num_classes=10).eval()


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def manifest_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A CSV manifest of 12 random 28x28 grey PNGs, labels 0-2, a ``site`` column."""
    rows = ["path,label,site"]
    for i in range(12):
        write_png(tmp_path / "imgs" / f"{i}.png", rng.integers(0, 256, (28, 28)))
        rows.append(f"imgs/{i}.png,{i % 3},{'A' if i < 8 else 'B'}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``auditkit demo`` run once for the whole session, through the CLI."""
    from auditkit.cli import app

    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


#: torch threads for the tests: 2 by default; AUDITKIT_TEST_THREADS=1 on a machine shared with other jobs,
#: where two threads per process wait on each other (measured: an attack check 8 s with 1, 126 s with 2)
THREADS = int(os.environ.get("AUDITKIT_TEST_THREADS", min(2, os.cpu_count() or 1)))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _quiet_threads() -> None:
    torch.set_num_threads(THREADS)


def scale_args(demo_run: Path, out: Path, *extra: str) -> list[str]:
    """``auditkit audit`` on 200 demo test images in uneven batches (7 batches of 32, the last of 8),
    every check on, small grids: the reference configuration of the scale tests."""
    return [
        "audit",
        str(demo_run / "model" / "model.safetensors"),
        str(demo_run / "data" / "test.csv"),
        "--limit",
        "200",
        "--batch-size",
        "32",
        "--angles",
        "-90:90:30",
        "--epsilons",
        "0,0.05,0.1",
        "--strength",
        "fast",
        "--steps",
        "10",
        "--methods",
        "saliency,smoothgrad",
        "--corruptions",
        "gaussian_noise,jpeg_compression,scale",
        "--severities",
        "1,5",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def single_thread_env() -> dict[str, str]:
    """The environment for CLI subprocesses: one thread each, as torchrun gives every rank, so
    floating-point sums run in the same order in every process."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def comparable(results_json: Path) -> dict[str, object]:
    """results.json without what differs between runs by nature: wall-clock timings, start time and the
    run id (a hash of the content, timings included)."""
    import json

    doc = json.loads(results_json.read_text())
    doc.pop("run_id")
    doc["manifest"].pop("timings")
    doc["manifest"].pop("started_at")
    return doc


@pytest.fixture(scope="session")
def scale_reference(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process, uninterrupted run of :func:`scale_args` (one thread), run once."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("scale-reference")
    done = subprocess.run(
        [sys.executable, "-m", "auditkit", *scale_args(demo_run, out)],
        env=single_thread_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "results.json"


class NaNAfter(nn.Module):
    """A digits CNN whose logits turn NaN from the ``first_bad``-th call on (1: the clean pass)."""

    def __init__(self, first_bad: int) -> None:
        super().__init__()
        self.inner = digits_cnn(width=4)
        self.first_bad = first_bad
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls >= self.first_bad else out


def small_digits_cnn(n_images: int) -> tuple[nn.Module, Tensor, Tensor]:
    """A narrow digits CNN trained for 4 epochs on the embedded digits (seeded), in eval mode, and the
    first ``n_images`` test images ``(n, 1, 28, 28)`` in ``[0, 1]`` with their labels: the attack ops'
    reference-test model."""
    return _trained_digits_cnn(n_images, epochs=4, pgd_eps=None)


def adversarial_digits_cnn(n_images: int) -> tuple[nn.Module, Tensor, Tensor]:
    """The narrow digits CNN trained adversarially (Madry et al.: PGD-5, Linf eps 0.1, 8 epochs, seeded;
    about 13 s on one CPU), in eval mode, and the first ``n_images`` test images and labels: the
    adversarially trained model of the attack reference tests (89% clean on the first 100)."""
    return _trained_digits_cnn(n_images, epochs=8, pgd_eps=0.1)


def _trained_digits_cnn(n_images: int, *, epochs: int, pgd_eps: float | None) -> tuple[nn.Module, Tensor, Tensor]:
    """``digits_cnn(width=8)`` trained with Adam (lr 3e-3, batches of 64, seed 0) on the embedded digits'
    training split, on PGD-5 Linf ``pgd_eps`` examples when given; in eval mode, with the test images."""
    from torch.nn import functional as F

    from auditkit.inputs.data import digits_split
    from auditkit.ops.attacks import PGD

    split = digits_split(0)
    xtr = torch.from_numpy(split["train"]["x"]).float() / 255
    ytr = torch.from_numpy(split["train"]["y"])
    torch.manual_seed(0)
    net = digits_cnn(width=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    pgd = PGD(norm="linf", steps=5)
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=gen)
        for i in range(0, len(ytr), 64):
            b = perm[i : i + 64]
            inputs = xtr[b]
            if pgd_eps is not None:
                net.eval()
                inputs = pgd(net, inputs, ytr[b], pgd_eps, generator=gen)[0].detach()
                net.train()
            opt.zero_grad()
            F.cross_entropy(net(inputs), ytr[b]).backward()
            opt.step()
    net.eval()
    opt.zero_grad(set_to_none=True)
    x = torch.from_numpy(split["test"]["x"][:n_images]).float() / 255
    y = torch.from_numpy(split["test"]["y"][:n_images])
    return net, x, y
