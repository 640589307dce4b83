"""The Python API (issue 17, item 8): ``auditkit.audit`` on an ``nn.Module`` and tensors held in memory.

docs/api.md is executed block by block and its numbers are checked against scikit-learn and against
the CLI run on the same model and data saved to files; then every bad input gives the right
exception with a one-line message.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from typer.testing import CliRunner

import auditkit
from auditkit.cli import app
from auditkit.inputs.models import save_model
from tests.conftest import DIGITS_SPEC

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"
FAST = {"device": "cpu", "progress": False}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and stay fast on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Every python block of docs/api.md, run in order in one namespace, in a fresh folder."""
    import os

    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 6
    where = tmp_path_factory.mktemp("notebook")
    namespace: dict[str, Any] = {"__name__": "notebook"}
    before, threads = Path.cwd(), torch.get_num_threads()
    torch.set_num_threads(1)
    os.chdir(where)
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"{DOCS.name} block {i + 1}", "exec"), namespace)
    finally:
        os.chdir(before)
        torch.set_num_threads(threads)
    return namespace, where


# ----------------------------------------------------------------------------- the walkthrough


def test_walkthrough_clean_accuracy_is_sklearns(walkthrough: tuple[dict[str, Any], Path]) -> None:
    ns, _ = walkthrough
    model, x, y, results = ns["model"], ns["x"], ns["y"], ns["results"]
    with torch.no_grad():
        pred = model((x - 0.1) / 0.3).argmax(dim=1)
    assert results.metrics["clean.accuracy"] == pytest.approx(accuracy_score(y.numpy(), pred.numpy()), abs=1e-12)
    assert results.metrics["clean.accuracy"] > 0.8  # it did learn something
    assert [c.kind for c in results.checks] == ["clean", "rotation", "attack"]
    assert results.manifest.num_samples == 200 and results.manifest.model_format == "in_memory"
    assert results.manifest.model_path == "in-memory nn.Module torch.nn.modules.container.Sequential"
    assert results.manifest.data_path == "in-memory (x, y)"
    assert dict(results.manifest.config)["epsilons"] == repr("0,0.02,0.05")
    assert not model.training  # eval mode restored as it was


def test_walkthrough_frame_is_the_metrics(walkthrough: tuple[dict[str, Any], Path]) -> None:
    ns, _ = walkthrough
    results, frame = ns["results"], ns["frame"]
    assert list(frame.columns) == ["check", "value", "direction", "unit", "ci_low", "ci_high", "n"]
    assert frame.index.is_unique
    for name, row in frame.iterrows():
        assert row["value"] == pytest.approx(results.metrics[name], nan_ok=True)
        if f"{name}.ci_low" in results.metrics:
            assert row["ci_low"] == results.metrics[f"{name}.ci_low"]
    assert set(frame.index) == {k for k in results.metrics if not k.endswith((".ci_low", ".ci_high"))}


def test_walkthrough_files_are_the_clis_pair(walkthrough: tuple[dict[str, Any], Path]) -> None:
    ns, where = walkthrough
    results = ns["results"]
    out = where / "reports" / "notebook"
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "results.json"]
    doc = json.loads((out / "results.json").read_text())
    assert doc["run_id"] == results.run_id
    assert f'content="{results.run_id}"' in (out / "index.html").read_text()
    single = (where / "reports" / "by-site.html").read_text()
    assert single == ns["html"] and "Subgroup" in single
    assert not list(where.glob("reports/latest*"))  # audit() without out= wrote nothing


def test_walkthrough_equals_the_cli_on_the_saved_model_and_data(
    walkthrough: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    ns, _ = walkthrough
    model, x, y, results = ns["model"], ns["x"], ns["y"], ns["results"]
    torch.save(model, tmp_path / "model.pt")
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    args = ["rotate", str(tmp_path / "model.pt"), str(tmp_path / "data.npz"), "--trust-model"]
    args += ["--mean", "0.1", "--std", "0.3", "--angles=-30:30:15", "--no-spatial", "--device", "cpu"]
    done = CliRunner().invoke(app, [*args, "--no-progress", "--out", str(tmp_path / "cli")])
    assert done.exit_code == 0, done.output
    cli = auditkit.RunResults.read(tmp_path / "cli" / "results.json")
    assert cli.manifest.data_sha256 == results.manifest.data_sha256  # the same pixels, labels and order
    ours = {k: v for k, v in results.metrics.items() if k.startswith(("clean.", "rotation."))}
    assert ours and ours == {k: v for k, v in cli.metrics.items() if k.startswith(("clean.", "rotation."))}


def test_walkthrough_subgroups_use_the_metadata(walkthrough: tuple[dict[str, Any], Path]) -> None:
    ns, _ = walkthrough
    sub = ns["by_site"].check(auditkit.SubgroupResult)
    assert sub is not None and "site" in sub.headline()
    assert any(k.startswith("subgroups.") and "site" in k for k in ns["by_site"].metrics)


# ----------------------------------------------------------------------------- the inputs


@pytest.fixture
def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 3-class linear model and 24 random 8x8 grey images with labels 0-2."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    x = torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8).float() / 255
    y = torch.arange(24) % 3
    return model, x, y


def clean(model: Any, data: Any, **settings: Any) -> auditkit.RunResults:
    return auditkit.audit(model, data, checks=[], **(FAST | settings))


class Items(Dataset[Any]):
    """A map-style dataset of ``(image, label)`` items, images as tensors or PIL images."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, pil: bool = False, meta: bool = False) -> None:
        self.x, self.y, self.pil, self.meta = x, y, pil, meta

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Any:
        image: Any = self.x[i]
        if self.pil:
            image = Image.fromarray((self.x[i, 0] * 255).round().byte().numpy(), mode="L")
        item = (image, int(self.y[i]))
        return (*item, {"half": "a" if i < 12 else "b"}) if self.meta else item


def test_every_form_of_data_is_the_same_dataset(tiny: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = tiny
    forms: dict[str, Any] = {
        "tensors": (x, y),
        "numpy": (x.numpy(), y.numpy()),
        "uint8": ((x * 255).round().byte(), y),
        "dataset": Items(x, y),
        "pil": Items(x, y, pil=True),
        "tensor dataset": TensorDataset(x, y),
        "loader": DataLoader(TensorDataset(x, y), batch_size=5),
    }
    runs = {name: clean(model, data) for name, data in forms.items()}
    reference = runs["tensors"]
    with torch.no_grad():
        expected = accuracy_score(y.numpy(), model(x).argmax(dim=1).numpy())
    for name, run in runs.items():
        assert run.manifest.data_sha256 == reference.manifest.data_sha256, name
        assert run.metrics == reference.metrics, name
    assert reference.metrics["clean.accuracy"] == pytest.approx(expected)
    flipped = clean(model, (x.numpy()[::-1], y.numpy()[::-1]))  # negative strides
    assert flipped.metrics["clean.accuracy"] == reference.metrics["clean.accuracy"]
    assert runs["loader"].manifest.data_format == "dataloader"
    assert runs["pil"].manifest.data_path == "in-memory Items"


def test_metadata_from_a_tuple_or_dataset_items(tiny: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = tiny
    half = ["a"] * 12 + ["b"] * 12
    settings = {"checks": ["subgroups"], "min_support": 5} | FAST
    by_tuple = auditkit.audit(model, (x, y, {"half": half}), **settings)
    by_items = auditkit.audit(model, Items(x, y, meta=True), **settings)
    assert by_tuple.manifest.data_sha256 == by_items.manifest.data_sha256
    assert by_tuple.metrics == by_items.metrics
    assert any("half" in k for k in by_tuple.metrics)


def test_files_through_the_api_equal_tensors(tmp_path: Path, tiny_net: nn.Module) -> None:
    path = save_model(tiny_net, DIGITS_SPEC, tmp_path / "model.safetensors")
    from_files = clean(str(path), "digits", limit=40)
    from auditkit.inputs.data import digits_split

    test = digits_split()["test"]
    x = torch.from_numpy(test["x"][:40]).float() / 255
    held = clean(tiny_net, (x, torch.from_numpy(test["y"][:40]), {"site": test["site"][:40]}), mean=[0.1], std=[0.3])
    assert from_files.metrics == held.metrics
    assert from_files.manifest.data_sha256 == held.manifest.data_sha256


def test_class_names_and_string_labels(tiny: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = tiny
    names = ["cat", "dog", "owl"]
    by_index = clean(model, (x, y), class_names=names)
    by_name = clean(model, (x, np.array([names[i] for i in y])), class_names=names)
    assert by_index.manifest.class_names == by_name.manifest.class_names == ("cat", "dog", "owl")
    assert by_index.metrics == by_name.metrics
    assert clean(model, (x, y)).manifest.class_names == ("0", "1", "2")  # integer labels: the output indices


def test_out_writes_the_pair_and_nothing_else(
    tiny: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    model, x, y = tiny
    results = auditkit.audit(model, (x, y), checks=[], out=tmp_path / "run", **FAST)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["index.html", "results.json"]
    assert auditkit.RunResults.read(tmp_path / "run" / "results.json").metrics == results.metrics
    assert results.report(tmp_path) == tmp_path / "index.html"  # a folder: index.html in it


def test_without_out_nothing_is_written(
    tiny: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = tiny
    monkeypatch.chdir(tmp_path)
    clean(model, (x, y))
    assert list(tmp_path.iterdir()) == []


def test_the_module_is_handed_back_as_it_came(tiny: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = tiny
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clean(model, (x, y))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"


def test_an_audit_model_keeps_its_spec(tmp_path: Path, tiny_net: nn.Module) -> None:
    loaded = auditkit.load_model(save_model(tiny_net, DIGITS_SPEC, tmp_path / "m.safetensors"))
    results = clean(loaded.model, "digits", limit=20)
    assert results.manifest.class_names == DIGITS_SPEC.class_names
    assert results.manifest.model_arch == "auditkit.zoo:digits_cnn"


def test_a_policy_gates_the_run(tiny: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    model, x, y = tiny
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = 2\n')
    results = auditkit.audit(model, (x, y), checks=[], policy=policy, **FAST)
    gate = results.check(auditkit.GateResult)
    assert gate is not None and not gate.passed and results.metrics["gate.passed"] == 0.0


def test_check_classes_name_checks(tiny: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = tiny
    results = auditkit.audit(model, (x, y), checks=[auditkit.SubgroupBreakdown], **FAST)
    assert [c.kind for c in results.checks] == ["clean", "subgroups"]
    alone = auditkit.audit(model, (x, y), checks=auditkit.Subgroups, **FAST)
    assert alone.metrics == results.metrics


# ----------------------------------------------------------------------------- bad input

BAD: list[tuple[str, type[Exception], str, Any]] = [
    # (id, exception, needle, lambda model, x, y -> kwargs of audit)
    ("x-above-1", auditkit.DataError, "not [0, 1]", lambda m, x, y: {"data": (x * 2, y)}),
    ("x-normalised", auditkit.DataError, "mean=/std=", lambda m, x, y: {"data": ((x - 0.5) / 0.2, y)}),
    ("x-nan", auditkit.DataError, "NaN", lambda m, x, y: {"data": (x.masked_fill(x > 0.5, float("nan")), y)}),
    ("x-3d", auditkit.DataError, "(N, C, H, W)", lambda m, x, y: {"data": (x[:, 0], y)}),
    ("x-channels-last", auditkit.DataError, "permute", lambda m, x, y: {"data": (x.permute(0, 2, 3, 1), y)}),
    ("x-int64", auditkit.DataError, "dtype torch.int64", lambda m, x, y: {"data": ((x * 255).long(), y)}),
    ("x-list", auditkit.DataError, "tensor of images", lambda m, x, y: {"data": (x.tolist(), y)}),
    ("x-strings", auditkit.DataError, "dtype <U", lambda m, x, y: {"data": (x.numpy().astype(str), y)}),
    ("y-float", auditkit.DataError, "integer class indices", lambda m, x, y: {"data": (x, y.float())}),
    ("y-short", auditkit.DataError, "24 images but 23 labels", lambda m, x, y: {"data": (x, y[:-1])}),
    ("y-2d", auditkit.DataError, "shape (N,)", lambda m, x, y: {"data": (x, y[:, None])}),
    ("y-beyond-outputs", auditkit.ModelError, "3 outputs", lambda m, x, y: {"data": (x, y + 1)}),
    ("y-negative", auditkit.DataError, "not a class index", lambda m, x, y: {"data": (x, y - 1)}),
    ("empty", auditkit.DataError, "no samples", lambda m, x, y: {"data": (x[:0], y[:0])}),
    ("meta-not-dict", auditkit.ConfigError, "dict of columns", lambda m, x, y: {"data": (x, y, ["a"] * 24)}),
    ("meta-short", auditkit.DataError, "'site'", lambda m, x, y: {"data": (x, y, {"site": ["a"] * 23})}),
    ("meta-string", auditkit.DataError, "one value per image", lambda m, x, y: {"data": (x, y, {"site": "A"})}),
    ("data-list", auditkit.ConfigError, "torch Dataset", lambda m, x, y: {"data": [x, y]}),
    ("data-4-tuple", auditkit.ConfigError, "(x, y, metadata)", lambda m, x, y: {"data": (x, y, {}, {})}),
    ("data-missing", auditkit.DataError, "not found", lambda m, x, y: {"data": "no/such/folder"}),
    ("item-float-label", auditkit.DataError, "item 0's label", lambda m, x, y: {"data": TensorDataset(x, y.float())}),
    ("item-bare-tensor", auditkit.DataError, "(image, label", lambda m, x, y: {"data": TensorDataset(x)}),
    ("item-batch", auditkit.DataError, "one image (C, H, W)", lambda m, x, y: {"data": TensorDataset(x[:, None], y)}),
    ("model-callable", auditkit.ConfigError, "nn.Module", lambda m, x, y: {"model": lambda t: t}),
    ("model-missing", auditkit.ModelError, "not found", lambda m, x, y: {"model": "no/such/model.pt"}),
    ("model-wrong-shape", auditkit.ModelError, "model failed", lambda m, x, y: {"data": (x[:, :, :4], y)}),
    ("arch-for-module", auditkit.ConfigError, "drop arch", lambda m, x, y: {"arch": "auditkit.zoo:digits_cnn"}),
    ("check-unknown", auditkit.ConfigError, "rotation, attack", lambda m, x, y: {"checks": ["rotations"]}),
    ("check-command", auditkit.ConfigError, "is 'rotation'", lambda m, x, y: {"checks": "rotate"}),
    ("check-not-a-name", auditkit.ConfigError, "checks must be", lambda m, x, y: {"checks": [3]}),
    ("check-nested", auditkit.ConfigError, "got ['rotation']", lambda m, x, y: {"checks": [["rotation"]]}),
    ("checks-not-a-list", auditkit.ConfigError, "list of check names", lambda m, x, y: {"checks": 5}),
    ("out-not-a-path", auditkit.ConfigError, "out must be a path", lambda m, x, y: {"out": 5}),
    ("setting-unknown", auditkit.ConfigError, "did you mean 'strength'", lambda m, x, y: {"strenght": "fast"}),
    ("setting-literal", auditkit.ConfigError, "'fast'", lambda m, x, y: {"strength": "max"}),
    ("setting-type", auditkit.ConfigError, "batch_size", lambda m, x, y: {"batch_size": "many"}),
    ("setting-angles", auditkit.ConfigError, "angles", lambda m, x, y: {"angles": "a:b"}),
    (
        "setting-internal",
        auditkit.ConfigError,
        "unknown setting 'check_settings'",
        lambda m, x, y: {"check_settings": {}},
    ),
    ("mean-too-many", auditkit.ConfigError, "1 or 3 values", lambda m, x, y: {"mean": [0.1, 0.2]}),
    ("class-names-short", auditkit.ConfigError, "2 names", lambda m, x, y: {"data": (x, y % 2), "class_names": "a,b"}),
    ("label-not-a-name", auditkit.DataError, "not a class index", lambda m, x, y: {"class_names": ["a", "b"]}),
    ("class-names-comma", auditkit.ConfigError, "comma", lambda m, x, y: {"class_names": ["a,b", "c", "d"]}),
    ("resume-without-out", auditkit.ConfigError, "out=", lambda m, x, y: {"resume": True}),
]


@pytest.mark.parametrize(("case", "error", "needle", "make"), BAD, ids=[row[0] for row in BAD])
def test_bad_input_is_one_line_of_the_right_type(
    case: str, error: type[Exception], needle: str, make: Any, tiny: tuple[nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, x, y = tiny
    kwargs = {"model": model, "data": (x, y), "checks": []} | FAST | make(model, x, y)
    with pytest.raises(error) as caught:
        auditkit.audit(**kwargs)
    message = str(caught.value)
    assert needle in message and "\n" not in message, message
    assert isinstance(caught.value, auditkit.AuditkitError)


def test_out_that_is_a_file_is_refused(tiny: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    model, x, y = tiny
    (tmp_path / "taken").write_text("")
    with pytest.raises(auditkit.ConfigError, match="existing file"):
        auditkit.audit(model, (x, y), checks=[], out=tmp_path / "taken", **FAST)


class FailsUnderGrad(nn.Module):
    """Fine in the clean pass; raises in any pass that needs gradients (an attack)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("no gradients\nhere")
        return self.linear(x.flatten(1))


def test_a_crashing_check_raises_after_writing(
    tiny: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    _, x, y = tiny
    with pytest.raises(auditkit.RunError) as caught:
        auditkit.audit(FailsUnderGrad(), (x, y), checks=["attack"], epsilons="0,0.03", out=tmp_path, **FAST)
    assert "check 'attack' crashed" in str(caught.value) and "\n" not in str(caught.value)
    doc = json.loads((tmp_path / "results.json").read_text())  # written first, as the CLI does
    assert [c["kind"] for c in doc["checks"]] == ["clean", "failure"]


def test_to_frame_without_pandas(
    tiny: tuple[nn.Module, torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x, y = tiny
    results = clean(model, (x, y))
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(auditkit.ConfigError) as caught:
        results.to_frame()
    assert str(caught.value) == "pandas is needed for to_frame(); pip install pandas"


# ----------------------------------------------------------------------------- the package


def test_import_auditkit_does_not_import_torch() -> None:
    code = "import sys, auditkit; auditkit.__all__; auditkit.ConfigError; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_public_names() -> None:
    assert auditkit.__all__ == sorted(auditkit.__all__)
    for name in auditkit.__all__:
        assert getattr(auditkit, name) is not None, name
    from auditkit.checks.saliency import SaliencyMaps
    from auditkit.checks.subgroups import Subgroups

    assert auditkit.SaliencyCheck is SaliencyMaps and auditkit.SubgroupBreakdown is Subgroups
    names = [auditkit.CleanAccuracy, auditkit.RotationSweep, auditkit.AdversarialAttack, auditkit.CorruptionSweep]
    names += [auditkit.SaliencyMaps]
    names += [auditkit.ShortcutProbes, auditkit.Subgroups]
    assert [c.name for c in names] == list(auditkit.audit.__globals__["registry"].checks())


def test_audit_is_the_function_even_after_the_run_path_module_is_imported() -> None:
    import auditkit.api
    from auditkit.pipeline import run_audit  # the run-path module of the same name

    assert callable(run_audit)
    assert auditkit.audit is auditkit.api.audit
    assert sys.modules["auditkit.pipeline"].run_audit is run_audit
    from auditkit import audit

    assert audit is auditkit.api.audit
