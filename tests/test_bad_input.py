"""Bad input, table-driven (issue 16): every row is one line on stderr starting
``auditkit: error:``, the documented exit code (docs/exit-codes.md), no traceback, and no
half-written outputs.

The table covers every option of every command with at least one malformed value, and every file
auditkit reads (model, model.json, image files, .npz, CSV manifest, dataset card, IDX, class-names
file, cue image, auditkit.toml, policy, baseline, results.json) with a truncated, a binary, a
wrong-type and an empty version. A row is ``(id, exit code, needle, command)``; the command is split
on whitespace and each word formatted with ``{r}`` (the fixture folder), ``{m}`` (a good model),
``{res}`` (a good results.json) and ``{out}`` (the row's own output folder)."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from typer.testing import CliRunner

from auditkit.cli import app
from auditkit.engine.resume import RESUME_DIR
from auditkit.inputs.models import save_model
from tests.conftest import DIGITS_SPEC


class NanWhenRotated(nn.Module):
    """Finite on pixel-exact images (k/255), NaN on interpolated (rotated) ones."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        off_grid = ((x * 255 - (x * 255).round()).abs().flatten(1).amax(dim=1) > 1e-3)[:, None]
        out = self.linear(x.flatten(1))
        return torch.where(off_grid, torch.full_like(out, float("nan")), out)


def nan_when_rotated(num_classes: int = 10) -> NanWhenRotated:
    return NanWhenRotated(num_classes)


PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\xff" * 8  # a binary file that is no text, JSON, TOML or CSV


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _idx(array: np.ndarray) -> bytes:
    """An IDX file (uint8) holding ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _write(root: Path, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)


def _make_files(root: Path) -> None:
    """Every malformed file the table refers to, under ``root``."""
    from auditkit.zoo import digits_cnn

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = save_model(digits_cnn(), DIGITS_SPEC, root / "model" / "model.safetensors")
    weights = model.read_bytes()
    spec = json.loads((root / "model" / "model.json").read_text())
    nan_spec = DIGITS_SPEC.merged(arch="tests.test_bad_input:nan_when_rotated", mean=(0.0,), std=(1.0,))
    save_model(NanWhenRotated(), nan_spec, root / "nan" / "model.safetensors")
    result = CliRunner().invoke(
        app, ["rotate", str(model), "digits", "--limit", "16", "--angles", "0", "--out", str(root / "good")]
    )
    assert result.exit_code == 0, result.output
    good_json = (root / "good" / "results.json").read_text()
    good = json.loads(good_json)

    state = io.BytesIO()
    torch.save(digits_cnn().state_dict(), state)
    module = io.BytesIO()
    torch.save(nn.Linear(2, 2), module)
    not_tensors = io.BytesIO()
    torch.save({"weight": 1, "bias": "b"}, not_tensors)
    files: dict[str, bytes | str] = {
        # model files
        "m-empty.pt": b"",
        "m-binary.pt": PNG_BYTES,
        "m-image.pt": _png(rng.integers(0, 256, (28, 28))),
        "m-trunc/model.safetensors": weights[: len(weights) // 2],
        "m-trunc/model.json": json.dumps(spec),
        "m-trunc-zip.pt": state.getvalue()[: len(state.getvalue()) // 2],
        "m-not-tensors.pt": not_tensors.getvalue(),
        "m-module.pt": module.getvalue(),
        "m-pickle.safetensors": pickle.dumps({"weight": [1.0]}),
        "m-folder/readme.txt": "no model here",
        # model.json beside good weights
        "spec-trunc/model.json": json.dumps(spec)[:40],
        "spec-binary/model.json": PNG_BYTES,
        "spec-empty/model.json": "",
        "spec-list/model.json": "[1, 2]",
        "spec-list-of-objects/model.json": json.dumps([spec]),
        "spec-input-size-int/model.json": json.dumps(spec | {"input_size": 28}),
        "spec-num-classes-text/model.json": json.dumps(spec | {"num_classes": "ten"}),
        "spec-channels-2/model.json": json.dumps(spec | {"channels": 2}),
        "spec-mean-text/model.json": json.dumps(spec | {"mean": ["dark"]}),
        "spec-mean-nan/model.json": json.dumps(spec | {"mean": [float("nan")]}),
        "spec-class-names-text/model.json": json.dumps(spec | {"class_names": "0123456789"}),
        "spec-antialias-text/model.json": json.dumps(spec | {"antialias": "yes"}),
        "spec-arch-int/model.json": json.dumps(spec | {"arch": 5}),
        "spec-unknown-key/model.json": json.dumps(spec | {"archh": "x"}),
        "spec-arch-kwargs-list/model.json": json.dumps(spec | {"arch_kwargs": [1]}),
        "spec-arch-os-system/model.json": json.dumps(spec | {"arch": "os:system"}),
        # image files, each behind a CSV manifest whose every row is bad
        **{f"imgs/{i}.png": _png(rng.integers(0, 256, (28, 28))) for i in range(16)},
        "imgs/trunc.png": _png(rng.integers(0, 256, (28, 28)))[:60],
        "imgs/binary.png": PNG_BYTES[8:] * 20,
        "imgs/empty.png": b"",
        "imgs/text.png": "path,label\n",
        "good.csv": "path,label,site\n" + "".join(f"imgs/{i}.png,{i % 10},{'AB'[i % 2]}\n" for i in range(16)),
        **{f"img-{k}.csv": "path,label\n" + f"imgs/{k}.png,1\n" * 4 for k in ("trunc", "binary", "empty", "text")},
        "img-missing.csv": "path,label\nimgs/nope.png,1\nimgs/nope2.png,2\n",
        # CSV manifests
        "csv-trunc.csv": "path,label\nimgs/0.png,0\nimgs/1.png,1\nimgs/2.p",
        "csv-binary.csv": PNG_BYTES,
        "csv-nul.csv": "path,label\nimgs/0.png,0\x00\n",
        "csv-empty.csv": "",
        "csv-json.csv": json.dumps({"path": "imgs/0.png", "label": 0}),
        "csv-header-only.csv": "path,label\n",
        "csv-no-label.csv": "path,site\nimgs/0.png,A\n",
        "csv-label-range.csv": "path,label\nimgs/0.png,12\n",
        "csv-escape.csv": "path,label\n../outside.png,0\n",
        "csv-absolute.csv": "path,label\n/etc/passwd,0\n",
        "csv-empty-path.csv": "path,label\n,0\n",
        "data.jsonl": json.dumps({"path": "imgs/0.png", "label": 0}) + "\n",
        # dataset cards beside a good manifest
        **{f"card-{k}.csv": "path,label\n" + "".join(f"imgs/{i}.png,{i}\n" for i in range(8)) for k in "tbel"},
        "card-t.card.json": '{"notes": ["cut',
        "card-b.card.json": PNG_BYTES,
        "card-e.card.json": "",
        "card-l.card.json": '{"notes": "not a list"}',
        # .npz arrays
        "npz-trunc.npz": _npz(x=np.zeros((8, 28, 28), np.uint8), y=np.arange(8))[:100],
        "npz-binary.npz": PNG_BYTES,
        "npz-damaged.npz": _npz(x=np.zeros((8, 28, 28), np.uint8), y=np.arange(8)).replace(
            b"'shape': (8", b"'shape': ?8"
        ),
        "npz-empty.npz": b"",
        "npz-npy.npz": b"\x93NUMPY" + _npz(x=np.zeros(3))[6:40],
        "npz-text-x.npz": _npz(x=np.full((2, 28, 28), "a"), y=np.arange(2)),
        "npz-object.npz": _npz(x=np.array([None, 1], dtype=object), y=np.arange(2)),
        "npz-no-y.npz": _npz(x=np.zeros((8, 28, 28), np.uint8)),
        "npz-x-1d.npz": _npz(x=np.zeros(8, np.uint8), y=np.arange(8)),
        "npz-y-2d.npz": _npz(x=np.zeros((8, 28, 28), np.uint8), y=np.zeros((8, 2), np.int64)),
        "npz-lengths.npz": _npz(x=np.zeros((8, 28, 28), np.uint8), y=np.arange(3)),
        "npz-range.npz": _npz(x=np.full((8, 28, 28), 2.0), y=np.arange(8)),
        "npz-no-samples.npz": _npz(x=np.zeros((0, 28, 28), np.uint8), y=np.zeros(0, np.int64)),
        # IDX folders
        "idx-trunc/test-images-idx3-ubyte": _idx(np.zeros((8, 28, 28)))[:300],
        "idx-trunc/test-labels-idx1-ubyte": _idx(np.arange(8)),
        "idx-binary/test-images-idx3-ubyte": PNG_BYTES,
        "idx-binary/test-labels-idx1-ubyte": _idx(np.arange(8)),
        "idx-empty/test-images-idx3-ubyte": b"",
        "idx-empty/test-labels-idx1-ubyte": _idx(np.arange(8)),
        "idx-wrong/test-images-idx3-ubyte": _idx(np.zeros((8, 28, 28))),
        "idx-wrong/test-labels-idx1-ubyte": _idx(np.zeros((8, 28, 28))),
        "idx-gz/test-images-idx3-ubyte.gz": gzip.compress(_idx(np.zeros((8, 28, 28))))[:50],
        "idx-gz/test-labels-idx1-ubyte": _idx(np.arange(8)),
        **{f"idx-two/{s}-images-idx3-ubyte": _idx(np.zeros((8, 28, 28))) for s in ("train", "t10k")},
        **{f"idx-two/{s}-labels-idx1-ubyte": _idx(np.arange(8)) for s in ("train", "t10k")},
        # ImageFolders
        "folder-splits/train/0/a.png": _png(np.zeros((28, 28))),
        "folder-splits/test/0/a.png": _png(np.zeros((28, 28))),
        **{f"folder-no-images/{c}/notes.txt": "x" for c in range(10)},
        **{f"folder-empty-images/{c}/a.png": b"" for c in range(10)},
        # class-names files
        "names-binary.txt": PNG_BYTES,
        "names-empty.txt": "",
        "names-dup.txt": "\n".join("0012345678") + "\n",
        "names-five.txt": "a\nb\nc\nd\ne\n",
        # cue images
        "cue-trunc.png": _png(np.zeros((8, 8)))[:40],
        "cue-binary.png": PNG_BYTES,
        "cue-empty.png": b"",
        "cue-text.png": "patch\n",
        # auditkit.toml
        "cfg-trunc.toml": 'model = "m',
        "cfg-binary.toml": PNG_BYTES,
        "cfg-latin1.toml": 'model = "m"\ndata = "digits"\n# caf\xe9\n'.encode("latin-1"),
        "cfg-empty.toml": "",
        "cfg-json.toml": json.dumps({"model": "m", "data": "digits"}),
        "cfg-limit-text.toml": f'model = "{model}"\ndata = "digits"\nlimit = "ten"\n',
        "cfg-model-int.toml": 'model = 5\ndata = "digits"\n',
        "cfg-section.toml": f'model = "{model}"\ndata = "digits"\nrotation = 5\n',
        "cfg-angles-int.toml": f'model = "{model}"\ndata = "digits"\n[rotation]\nangles = 5\n',
        "cfg-unknown.toml": f'model = "{model}"\ndata = "digits"\nlimt = 8\n',
        "cfg-dir/auditkit.toml": "",
        # policies
        "pol-ok.toml": '[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = 0\n',
        "pol-trunc.toml": '[[rule]]\nmetric = "clean.acc',
        "pol-binary.toml": PNG_BYTES,
        "pol-zero-bytes.toml": "",
        "pol-comments.toml": "# no rules\n",
        "pol-json.toml": good_json,
        "pol-rule-int.toml": "rule = 5\n",
        "pol-rule-text.toml": 'rule = "clean.accuracy >= 0.9"\n',
        "pol-baseline-int.toml": "baseline = 5\n",
        "pol-metrics-text.toml": '[baseline]\nmetrics = "clean.accuracy"\n',
        "pol-metric-int.toml": '[[rule]]\nmetric = 5\nop = ">="\nvalue = 0\n',
        "pol-value-text.toml": '[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = "high"\n',
        "pol-value-nan.toml": '[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = nan\n',
        "pol-op.toml": '[[rule]]\nmetric = "clean.accuracy"\nop = ">"\nvalue = 0\n',
        "pol-bound.toml": '[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = 0\nbound = "mid"\n',
        "pol-rule-key.toml": '[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = 0\nbund = "ci_low"\n',
        "pol-no-op.toml": '[[rule]]\nmetric = "clean.accuracy"\nvalue = 0\n',
        "pol-inconclusive.toml": 'inconclusive = "maybe"\n[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = 0\n',
        "pol-top-key.toml": 'rules = []\n[[rule]]\nmetric = "clean.accuracy"\nop = ">="\nvalue = 0\n',
        "pol-tolerance.toml": '[baseline]\nmetrics = ["clean.accuracy"]\ntolerance = "1%"\n',
        "pol-alpha.toml": '[baseline]\nmetrics = ["clean.accuracy"]\nalpha = -1\n',
        "pol-baseline-key.toml": '[baseline]\nmetrics = ["clean.accuracy"]\ntolerence = 0.1\n',
        # results.json (as RESULTS and as --baseline)
        "res-binary.json": PNG_BYTES,
        "res-trunc.json": good_json[: len(good_json) // 2],
        "res-empty.json": "",
        "res-list.json": "[1, 2]",
        "res-null.json": "null",
        "res-toml.json": '[[rule]]\nmetric = "clean.accuracy"\n',
        "res-metrics-list.json": json.dumps(good | {"metrics": [1, 2]}),
        "res-schema.json": json.dumps(good | {"schema_version": "99.0"}),
        "res-kind.json": json.dumps(good | {"checks": [{"kind": "nope", "result": {}}]}),
        "res-other-data.json": json.dumps(good | {"manifest": good["manifest"] | {"data_sha256": "0" * 64}}),
        # plain files and folders where the other is expected
        "a-file": "not a folder",
        "a-dir/keep": "",
    }
    _write(root, files)
    for folder in [p.parent for p in root.glob("spec-*/model.json")]:
        shutil.copy(model, folder / "model.safetensors")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    _make_files(root)
    return {
        "root": root,
        "model": root / "model" / "model.safetensors",
        "nan": root / "nan" / "model.safetensors",
        "results": root / "good" / "results.json",
    }


# a light run of each audit command: every row below fails before (or soon after) the model runs
LIGHT = " --limit 8 --no-progress --out {out}"
ROTATE = "rotate {m} digits --angles 0 --no-spatial" + LIGHT
ATTACK = "attack {m} digits --epsilons 0" + LIGHT
AUDIT = "audit {m} digits --angles 0 --no-spatial --epsilons 0 --methods saliency --shift-steps 1" + LIGHT
SALIENCY = "saliency {m} digits --methods saliency" + LIGHT
SHORTCUT = "shortcut {m} digits --shift-steps 1" + LIGHT
SUBGROUPS = "subgroups {m} digits" + LIGHT
CORRUPT = "corrupt {m} digits --corruptions contrast --severities 1" + LIGHT
HARDEN = "harden {m} digits --limit 32 --epochs 1 --epsilons 0,0.01 --no-progress --out {out}"
GATE = "gate {res} --policy {r}/pol-ok.toml"
NOT_A_FLAG_VALUE = "does not take a value"
INVALID = "not a valid auditkit results.json"
POLICY = " --policy {r}/pol-ok.toml"
HTML = " --out {out}/i.html"


def xfail(row: tuple[str, int, str, str], reason: str) -> Any:
    return pytest.param(*row, id=row[0], marks=pytest.mark.xfail(strict=True, reason=reason))


ROWS: list[Any] = [
    # --- the command line itself
    ("unknown-command", 2, "No such command", "rotat {m} digits"),
    ("unknown-option", 2, "No such option: --bogus", ROTATE + " --bogus"),
    ("debug-with-value", 2, NOT_A_FLAG_VALUE, "--debug=1 rotate {m} digits"),
    # --- MODEL (positional) and model files
    ("model-missing-argument", 2, "no model given", "rotate"),
    ("data-missing-argument", 2, "no data given", "rotate {m}"),
    ("model-not-found", 3, "model file not found", "rotate {r}/nope.safetensors digits" + LIGHT),
    ("model-folder-without-model", 3, "holds no model.safetensors", "rotate {r}/m-folder digits" + LIGHT),
    ("model-empty", 3, "not a recognised model file", "rotate {r}/m-empty.pt digits" + LIGHT),
    ("model-binary", 3, "not a recognised model file", "rotate {r}/m-binary.pt digits" + LIGHT),
    ("model-wrong-type-png", 3, "not a recognised model file", "rotate {r}/m-image.pt digits" + LIGHT),
    ("model-truncated-safetensors", 3, "cannot read safetensors file", "rotate {r}/m-trunc digits" + LIGHT),
    (
        "model-truncated-torch-save",
        3,
        "damaged",
        "rotate {r}/m-trunc-zip.pt digits --arch auditkit.zoo:digits_cnn" + LIGHT,
    ),
    (
        "model-state-dict-not-tensors",
        3,
        "not a state_dict of tensors",
        "rotate {r}/m-not-tensors.pt digits --arch auditkit.zoo:digits_cnn" + LIGHT,
    ),
    ("model-pickled-module-untrusted", 4, "refused to load", "rotate {r}/m-module.pt digits" + LIGHT),
    ("model-pickle-named-safetensors", 4, "named .safetensors", "rotate {r}/m-pickle.safetensors digits" + LIGHT),
    # --- model.json beside the weights
    ("spec-truncated", 2, "cannot read model spec", "rotate {r}/spec-trunc digits" + LIGHT),
    ("spec-binary", 2, "not UTF-8", "rotate {r}/spec-binary digits" + LIGHT),
    ("spec-empty", 2, "is empty", "rotate {r}/spec-empty digits" + LIGHT),
    ("spec-wrong-type-list", 2, "must be a JSON object", "rotate {r}/spec-list digits" + LIGHT),
    ("spec-wrong-type-list-of-objects", 2, "must be a JSON object", "rotate {r}/spec-list-of-objects digits" + LIGHT),
    ("spec-input-size-int", 2, "input_size must be a list", "rotate {r}/spec-input-size-int digits" + LIGHT),
    ("spec-num-classes-text", 2, "num_classes must be", "rotate {r}/spec-num-classes-text digits" + LIGHT),
    ("spec-channels-2", 2, "channels must be 1 or 3", "rotate {r}/spec-channels-2 digits" + LIGHT),
    ("spec-mean-text", 2, "mean must be", "rotate {r}/spec-mean-text digits" + LIGHT),
    ("spec-mean-nan", 2, "mean must be", "rotate {r}/spec-mean-nan digits" + LIGHT),
    ("spec-class-names-text", 2, "class_names must be a list", "rotate {r}/spec-class-names-text digits" + LIGHT),
    ("spec-antialias-text", 2, "antialias must be", "rotate {r}/spec-antialias-text digits" + LIGHT),
    ("spec-arch-int", 2, "arch must be", "rotate {r}/spec-arch-int digits" + LIGHT),
    ("spec-unknown-key", 2, "unknown keys ['archh']", "rotate {r}/spec-unknown-key digits" + LIGHT),
    ("spec-arch-kwargs-list", 2, "arch_kwargs must be an object", "rotate {r}/spec-arch-kwargs-list digits" + LIGHT),
    ("spec-arch-outside-code", 4, "'os:system'", "rotate {r}/spec-arch-os-system digits" + LIGHT),
    # --- DATA (positional) and data files
    ("data-not-found", 3, "dataset not found", "rotate {m} {r}/nope.csv" + LIGHT),
    ("data-jsonl-manifest-unsupported", 3, "cannot tell the format", "rotate {m} {r}/data.jsonl" + LIGHT),
    ("data-torchvision-unknown", 2, "torchvision:<Dataset>:<root>", "rotate {m} torchvision:Nope:{r}" + LIGHT),
    ("data-torchvision-not-there", 3, "download is off", "rotate {m} torchvision:MNIST:{r}/nope --split test" + LIGHT),
    ("data-torchvision-pickled", 3, "Python pickle", "rotate {m} torchvision:CIFAR10:{r}" + LIGHT),
    ("image-truncated", 3, "could not be read", "rotate {m} {r}/img-trunc.csv" + LIGHT),
    ("image-binary", 3, "could not be read", "rotate {m} {r}/img-binary.csv" + LIGHT),
    ("image-empty", 3, "could not be read", "rotate {m} {r}/img-empty.csv" + LIGHT),
    ("image-wrong-type-text", 3, "could not be read", "rotate {m} {r}/img-text.csv" + LIGHT),
    ("image-missing-files", 3, "file not found", "rotate {m} {r}/img-missing.csv" + LIGHT),
    ("imagefolder-empty-images", 3, "could not be read", "rotate {m} {r}/folder-empty-images" + LIGHT),
    ("imagefolder-no-images", 3, "no image files", "rotate {m} {r}/folder-no-images" + LIGHT),
    ("imagefolder-split-folders", 2, "split folders", "rotate {m} {r}/folder-splits" + LIGHT),
    ("manifest-truncated", 3, "row 4", "rotate {m} {r}/csv-trunc.csv" + LIGHT),
    ("manifest-binary", 3, "cannot read manifest", "rotate {m} {r}/csv-binary.csv" + LIGHT),
    ("manifest-nul-byte", 3, "is not among the classes", "rotate {m} {r}/csv-nul.csv" + LIGHT),
    ("manifest-empty", 3, "is empty", "rotate {m} {r}/csv-empty.csv" + LIGHT),
    ("manifest-wrong-type-json", 3, "lacks column(s)", "rotate {m} {r}/csv-json.csv" + LIGHT),
    ("manifest-header-only", 3, "has no rows", "rotate {m} {r}/csv-header-only.csv" + LIGHT),
    ("manifest-no-label-column", 3, "lacks column(s) ['label']", "rotate {m} {r}/csv-no-label.csv" + LIGHT),
    ("manifest-label-out-of-range", 3, "label 12 is not a class index", "rotate {m} {r}/csv-label-range.csv" + LIGHT),
    ("manifest-path-escapes", 3, "escapes the manifest's folder", "rotate {m} {r}/csv-escape.csv" + LIGHT),
    ("manifest-absolute-path", 3, "absolute path", "rotate {m} {r}/csv-absolute.csv" + LIGHT),
    ("manifest-empty-path", 3, "empty path", "rotate {m} {r}/csv-empty-path.csv" + LIGHT),
    ("card-truncated", 3, "cannot read dataset card", "rotate {m} {r}/card-t.csv" + LIGHT),
    ("card-binary", 3, "cannot read dataset card", "rotate {m} {r}/card-b.csv" + LIGHT),
    ("card-empty", 3, "cannot read dataset card", "rotate {m} {r}/card-e.csv" + LIGHT),
    ("card-wrong-type-notes", 3, "must be a list of strings", "rotate {m} {r}/card-l.csv" + LIGHT),
    ("npz-truncated", 3, "cannot read", "rotate {m} {r}/npz-trunc.npz" + LIGHT),
    ("npz-binary", 3, "not an .npz", "rotate {m} {r}/npz-binary.npz" + LIGHT),
    ("npz-damaged-member", 3, "damaged or truncated", "rotate {m} {r}/npz-damaged.npz" + LIGHT),
    ("npz-empty", 3, "is empty", "rotate {m} {r}/npz-empty.npz" + LIGHT),
    ("npz-wrong-type-npy", 3, "not an .npz", "rotate {m} {r}/npz-npy.npz" + LIGHT),
    ("npz-wrong-type-text-x", 3, "x must be numbers", "rotate {m} {r}/npz-text-x.npz" + LIGHT),
    ("npz-pickled-objects", 3, "pickled", "rotate {m} {r}/npz-object.npz" + LIGHT),
    ("npz-no-y", 3, "must hold arrays 'x' (images) and 'y'", "rotate {m} {r}/npz-no-y.npz" + LIGHT),
    ("npz-x-1d", 3, "x has shape (8,)", "rotate {m} {r}/npz-x-1d.npz" + LIGHT),
    ("npz-y-2d", 3, "y must be one label per image", "rotate {m} {r}/npz-y-2d.npz" + LIGHT),
    ("npz-length-mismatch", 3, "x has 8 images but y has 3", "rotate {m} {r}/npz-lengths.npz" + LIGHT),
    ("npz-float-out-of-range", 3, "must lie in [0, 1]", "rotate {m} {r}/npz-range.npz" + LIGHT),
    ("npz-no-samples", 3, "no samples", "rotate {m} {r}/npz-no-samples.npz" + LIGHT),
    ("idx-truncated", 3, "IDX header declares", "rotate {m} {r}/idx-trunc" + LIGHT),
    ("idx-binary", 3, "bad magic number", "rotate {m} {r}/idx-binary" + LIGHT),
    ("idx-empty", 3, "bad magic number", "rotate {m} {r}/idx-empty" + LIGHT),
    ("idx-wrong-type-labels", 3, "expected uint8 images", "rotate {m} {r}/idx-wrong" + LIGHT),
    ("idx-gzip-truncated", 3, "cannot read IDX file", "rotate {m} {r}/idx-gz" + LIGHT),
    ("idx-several-splits", 2, "choose one with --split", "rotate {m} {r}/idx-two" + LIGHT),
    # --- shared input settings (every audit command; harden too)
    ("arch-no-colon", 2, "--arch must look like", ROTATE + " --arch digits_cnn"),
    ("arch-unknown-module", 2, "cannot build architecture", ROTATE + " --arch nosuchmodule:net"),
    ("arch-unknown-torchvision", 2, "cannot build architecture", ROTATE + " --arch torchvision:nosuchnet"),
    ("num-classes-zero", 2, "num_classes", ATTACK + " --num-classes 0"),
    ("num-classes-text", 2, "--num-classes", ATTACK + " --num-classes ten"),
    ("num-classes-wrong", 3, "do not fit", ROTATE + " --num-classes 5"),
    ("input-size-one-value", 2, "--input-size", ROTATE + " --input-size 28"),
    ("input-size-zero", 2, "input_size", SALIENCY + " --input-size 0 28"),
    ("channels-2", 2, "channels", SHORTCUT + " --channels 2"),
    ("channels-text", 2, "--channels", ROTATE + " --channels grey"),
    ("mean-text", 2, "mean/std takes comma-separated float", SUBGROUPS + " --mean dark"),
    ("mean-two-values", 2, "1 or 3 values", ROTATE + " --mean 0.1,0.2"),
    ("mean-nan", 2, "finite", ROTATE + " --mean nan"),
    ("std-zero", 2, "must be positive", ROTATE + " --std 0"),
    ("std-inf", 2, "finite", ROTATE + " --std inf"),
    ("class-names-duplicate", 2, "lists '0' twice", ROTATE + " --class-names 0,0,1,2,3,4,5,6,7,8"),
    ("class-names-wrong-count", 2, "2 class names", ROTATE + " --class-names a,b"),
    ("class-names-blank", 2, "non-empty names", ROTATE + " --class-names a,,b"),
    ("class-names-file-binary", 2, "cannot read --class-names file", ROTATE + " --class-names {r}/names-binary.txt"),
    ("class-names-file-empty", 2, "non-empty names", ROTATE + " --class-names {r}/names-empty.txt"),
    ("class-names-file-duplicate", 2, "lists '0' twice", ROTATE + " --class-names {r}/names-dup.txt"),
    ("class-names-file-wrong-count", 2, "5 class names", ROTATE + " --class-names {r}/names-five.txt"),
    ("output-on-a-single-tensor", 3, "drop it", ROTATE + " --output 0"),
    ("weights-no-prefix", 2, "--weights must be torchvision:", ROTATE + " --weights ResNet18_Weights.IMAGENET1K_V1"),
    ("weights-unknown-enum", 2, "not a torchvision weights enum", ROTATE + " --weights torchvision:Nope.X"),
    ("resize-without-crop", 2, "resize needs crop", ROTATE + " --resize 32"),
    ("resize-zero", 2, "resize", ROTATE + " --resize 0 --crop 28 28"),
    ("crop-zero", 2, "crop", ROTATE + " --crop 0 0"),
    ("crop-text", 2, "--crop", ROTATE + " --crop a b"),
    ("resize-interpolation-unknown", 2, "resize_interpolation", ROTATE + " --resize-interpolation cubic"),
    ("antialias-with-value", 2, NOT_A_FLAG_VALUE, ROTATE + " --antialias=yes"),
    ("split-unknown", 2, "--split 'nope' is not in", "rotate {m} {r}/idx-two --split nope" + LIGHT),
    ("trust-model-with-value", 2, NOT_A_FLAG_VALUE, ROTATE + " --trust-model=yes"),
    ("limit-zero", 2, "limit", ROTATE + " --limit 0"),
    ("limit-negative", 2, "limit", AUDIT + " --limit -5"),
    ("limit-text", 2, "--limit", ROTATE + " --limit all"),
    ("sample-zero", 2, "sample", ROTATE + " --sample 0"),
    ("max-bad-fraction-above-1", 2, "max_bad_fraction", ROTATE + " --max-bad-fraction 1.5"),
    ("max-bad-fraction-nan", 2, "max_bad_fraction", ROTATE + " --max-bad-fraction nan"),
    # --- engine and output settings
    ("device-unknown", 2, "device: must be one of", ATTACK + " --device tpu"),
    ("device-index", 2, "device: must be one of", ROTATE + " --device cpu:abc"),
    ("batch-size-zero", 2, "batch_size", ROTATE + " --batch-size 0"),
    ("seed-text", 2, "--seed", ROTATE + " --seed abc"),
    ("seed-negative", 2, "seed", ROTATE + " --seed -1"),
    ("seed-too-big", 2, "seed", ROTATE + " --seed 99999999999999999999"),
    ("deterministic-with-value", 2, NOT_A_FLAG_VALUE, ROTATE + " --deterministic=yes"),
    ("progress-with-value", 2, NOT_A_FLAG_VALUE, ROTATE + " --progress=yes"),
    ("resume-with-nothing-to-resume", 2, "nothing to --resume", ROTATE + " --resume"),
    ("distributed-without-launcher", 2, "--distributed", ROTATE + " --distributed"),
    ("stream-unknown", 2, "stream", ROTATE + " --stream maybe"),
    ("workers-negative", 2, "workers", ROTATE + " --workers -1"),
    ("amp-unknown", 2, "amp", ROTATE + " --amp fp8"),
    ("amp-fp16-without-cuda", 2, "fp16", ROTATE + " --amp fp16 --device cpu"),
    ("amp-attack-with-value", 2, NOT_A_FLAG_VALUE, ROTATE + " --amp-attack=yes"),
    ("out-is-a-file", 2, "--out", "rotate {m} digits --limit 8 --angles 0 --out {r}/a-file"),
    ("out-empty", 2, "out", "rotate {m} digits --limit 8 --angles 0 --out="),
    ("out-inside-a-file", 2, "a-file", "rotate {m} digits --limit 8 --angles 0 --out {r}/a-file/sub"),
    # --- --config (auditkit.toml)
    ("config-not-found", 2, "cannot read config file", "rotate --config {r}/nope.toml"),
    ("config-is-a-folder", 2, "cannot read config file", "rotate --config {r}/cfg-dir"),
    ("config-truncated", 2, "not valid TOML", "rotate --config {r}/cfg-trunc.toml"),
    ("config-binary", 2, "not UTF-8", "rotate --config {r}/cfg-binary.toml"),
    ("config-latin1", 2, "not UTF-8", "rotate --config {r}/cfg-latin1.toml"),
    ("config-empty", 2, "no model given", "rotate --config {r}/cfg-empty.toml"),
    ("config-wrong-type-json", 2, "not valid TOML", "rotate --config {r}/cfg-json.toml"),
    ("config-limit-text", 2, "limit", "rotate --config {r}/cfg-limit-text.toml --out {out}"),
    ("config-model-int", 2, "model", "rotate --config {r}/cfg-model-int.toml --out {out}"),
    ("config-section-not-a-table", 2, "[rotation] must be a table", "rotate --config {r}/cfg-section.toml"),
    ("config-angles-int", 2, "angles", "rotate --config {r}/cfg-angles-int.toml --out {out}"),
    ("config-unknown-key", 2, "did you mean 'limit'", "rotate --config {r}/cfg-unknown.toml --out {out}"),
    # --- --policy, --baseline, --junit, --summary on an audit command
    ("policy-not-found", 2, "cannot read policy", ROTATE + " --policy {r}/nope.toml"),
    ("policy-truncated", 2, "not valid TOML", ROTATE + " --policy {r}/pol-trunc.toml"),
    ("policy-binary", 2, "not UTF-8", ROTATE + " --policy {r}/pol-binary.toml"),
    ("policy-empty", 2, "would check nothing", ROTATE + " --policy {r}/pol-zero-bytes.toml"),
    ("policy-only-comments", 2, "would check nothing", GATE.replace("pol-ok", "pol-comments")),
    ("policy-wrong-type-json", 2, "not valid TOML", ROTATE + " --policy {r}/pol-json.toml"),
    ("policy-rule-int", 2, "array of tables", GATE.replace("pol-ok", "pol-rule-int")),
    ("policy-rule-text", 2, "array of tables", GATE.replace("pol-ok", "pol-rule-text")),
    ("policy-baseline-int", 2, "[baseline] must be a table", GATE.replace("pol-ok", "pol-baseline-int")),
    ("policy-baseline-metrics-text", 2, "metrics must be a list", GATE.replace("pol-ok", "pol-metrics-text")),
    ("policy-metric-int", 2, "metric must be a metric name", GATE.replace("pol-ok", "pol-metric-int")),
    ("policy-value-text", 2, "value must be a", GATE.replace("pol-ok", "pol-value-text")),
    ("policy-value-nan", 2, "value must be a finite number", GATE.replace("pol-ok", "pol-value-nan")),
    ("policy-op-unknown", 2, "op must be one of", GATE.replace("pol-ok", "pol-op")),
    ("policy-op-missing", 2, "needs metric, op and value", GATE.replace("pol-ok", "pol-no-op")),
    ("policy-bound-unknown", 2, "bound must be one of", GATE.replace("pol-ok", "pol-bound")),
    ("policy-rule-unknown-key", 2, "unknown key(s) ['bund']", GATE.replace("pol-ok", "pol-rule-key")),
    ("policy-inconclusive-unknown", 2, "inconclusive must be", GATE.replace("pol-ok", "pol-inconclusive")),
    ("policy-unknown-key", 2, "unknown key(s) ['rules']", GATE.replace("pol-ok", "pol-top-key")),
    ("policy-tolerance-text", 2, "tolerance must be a non-negative number", GATE.replace("pol-ok", "pol-tolerance")),
    ("policy-alpha-negative", 2, "alpha must be a non-negative number", GATE.replace("pol-ok", "pol-alpha")),
    ("policy-baseline-unknown-key", 2, "['tolerence']", GATE.replace("pol-ok", "pol-baseline-key")),
    ("baseline-without-policy", 2, "--baseline needs --policy", ROTATE + " --baseline {res}"),
    ("baseline-not-found", 3, "cannot read results file", ROTATE + POLICY + " --baseline {r}/no.json"),
    (
        "baseline-truncated",
        3,
        INVALID,
        ROTATE + POLICY + " --baseline {r}/res-trunc.json",
    ),
    (
        "baseline-other-settings",
        3,
        "the baseline used a different configuration",
        ROTATE + " --angles 0,90" + POLICY + " --baseline {res}",
    ),
    ("junit-without-policy", 2, "need --policy", ROTATE + " --junit {r}/j.xml"),
    ("summary-without-policy", 2, "need --policy", ROTATE + " --summary {r}/s.md"),
    ("junit-is-a-folder", 2, "--junit", ROTATE + " --policy {r}/pol-ok.toml --junit {r}/a-dir"),
    ("summary-is-a-folder", 2, "--summary", ROTATE + " --policy {r}/pol-ok.toml --summary {r}/a-dir"),
    # --- rotate
    ("angles-inf", 2, "finite numbers", ROTATE + " --angles 0:inf:1"),
    ("angles-too-many", 2, "grid points", ROTATE + " --angles 0:360:1e-9"),
    ("angles-text", 2, "--angles takes", ROTATE + " --angles left"),
    ("angles-empty", 2, "--angles is empty", ROTATE + " --angles ,"),
    ("mean-range-negative", 2, "mean_range", ROTATE + " --mean-range -1"),
    ("fraction-of-clean-above-1", 2, "fraction_of_clean", ROTATE + " --fraction-of-clean 2"),
    ("interpolation-unknown", 2, "interpolation", ROTATE + " --interpolation cubic"),
    ("fill-unknown", 2, "fill", ROTATE + " --fill wrap"),
    ("spatial-with-value", 2, NOT_A_FLAG_VALUE, ROTATE + " --spatial=yes"),
    ("spatial-angles-text", 2, "--spatial-angles", ROTATE + " --spatial-angles left"),
    ("translate-negative", 2, "translate", ROTATE + " --translate -1"),
    ("translate-steps-zero", 2, "translate_steps", ROTATE + " --translate-steps 0"),
    ("k-zero", 2, "worst_of_k", ROTATE + " --k 0"),
    (
        "nan-on-rotated-images",
        3,
        "check 'rotation' crashed",
        "rotate {r}/nan/model.safetensors digits --arch tests.test_bad_input:nan_when_rotated --limit 16 "
        "--angles 0,45 --no-spatial --out {r}/o-nan",
    ),
    # --- attack
    ("attack-unknown", 2, "must be pgd, fgsm or foolbox", ATTACK + " --attack cw"),
    ("attack-foolbox-unknown", 2, "foolbox", ATTACK + " --attack foolbox:NoSuchAttack"),
    ("norm-unknown", 2, "norm", ATTACK + " --norm l3"),
    ("strength-unknown", 2, "strength", ATTACK + " --strength max"),
    ("loss-with-fast", 2, "--loss replace the attacks of --strength fast", ATTACK + " --strength fast --loss dlr"),
    ("target-with-fgsm", 2, "--target set a custom APGD run", ATTACK + " --attack fgsm --target next"),
    ("attack-args-without-foolbox", 2, "--attack-args passes arguments", ATTACK + " --attack-args steps=5"),
    ("attack-args-not-key-value", 2, "is not key=value", ATTACK + " --attack foolbox:LinfPGD --attack-args 5"),
    ("epsilons-nan", 2, "--epsilons", ATTACK + " --epsilons nan"),
    ("epsilons-empty", 2, "--epsilons is empty", ATTACK + " --epsilons="),
    ("epsilons-above-1", 2, "[0, 1] pixel units", ATTACK + " --epsilons 0,2"),
    ("epsilons-negative-l2", 2, "non-negative", ATTACK + " --norm l2 --epsilons -1,0"),
    ("steps-zero", 2, "steps", ATTACK + " --steps 0"),
    ("rel-step-zero", 2, "rel_step", ATTACK + " --rel-step 0"),
    ("restarts-zero", 2, "restarts", ATTACK + " --restarts 0"),
    ("random-start-with-value", 2, NOT_A_FLAG_VALUE, ATTACK + " --random-start=yes"),
    ("targeted-with-value", 2, NOT_A_FLAG_VALUE, ATTACK + " --targeted=yes"),
    # --- saliency
    ("methods-unknown", 2, "methods", SALIENCY + " --methods lime"),
    ("methods-empty", 2, "methods", SALIENCY + " --methods=,"),
    ("saliency-target-unknown-class", 2, "saliency-target", SALIENCY + " --saliency-target cat"),
    ("layer-unknown", 2, "--layer 'nope' is not a layer", SALIENCY + " --methods gradcam --layer nope"),
    # --- shortcut
    ("cue-unknown", 2, "is neither", SHORTCUT + " --cue star"),
    ("cue-image-truncated", 3, "cannot read the cue image", SHORTCUT + " --cue {r}/cue-trunc.png"),
    ("cue-image-binary", 3, "cannot read the cue image", SHORTCUT + " --cue {r}/cue-binary.png"),
    ("cue-image-empty", 3, "cannot read the cue image", SHORTCUT + " --cue {r}/cue-empty.png"),
    ("cue-image-wrong-type-text", 3, "cannot read the cue image", SHORTCUT + " --cue {r}/cue-text.png"),
    ("cue-position-unknown", 2, "cue_position", SHORTCUT + " --cue-position middle"),
    ("cue-size-zero", 2, "cue_size", SHORTCUT + " --cue-size 0"),
    ("cue-value-above-1", 2, "cue_value", SHORTCUT + " --cue-value 2"),
    ("occlusion-unknown", 2, "occlusion", SHORTCUT + " --occlusion erase"),
    ("shift-negative", 2, "shift", SHORTCUT + " --shift -1"),
    ("shift-steps-zero", 2, "shift_steps", SHORTCUT + " --shift-steps 0"),
    ("boxes-unknown", 2, "boxes", SHORTCUT + " --boxes both"),
    ("positions-one", 2, "positions", SHORTCUT + " --positions 1"),
    ("position-background-unknown", 2, "position_background", SHORTCUT + " --position-background grey"),
    # --- corrupt
    ("corruptions-unknown", 2, "corruptions: must be among", CORRUPT + " --corruptions fogg"),
    ("corruptions-twice", 2, "more than once", CORRUPT + " --corruptions fog,fog"),
    ("corruption-needs-rgb", 2, "needs RGB images", CORRUPT + " --corruptions saturate"),
    ("severities-six", 2, "severities: must be integers from 1 to 5", CORRUPT + " --severities 6"),
    ("severities-text", 2, "severities: must be integers", CORRUPT + " --severities mild"),
    # --- the findings' conditions (rotate: its rows are written out; the other commands' are generated)
    ("rotate-warn-drop-above-1", 2, "warn_drop", ROTATE + " --warn-drop 2"),
    ("rotate-fail-drop-negative", 2, "fail_drop", ROTATE + " --fail-drop -0.1"),
    ("rotate-warn-gap-above-fail", 2, "warn_gap (0.5) must not exceed fail_gap", ROTATE + " --warn-gap 0.5"),
    ("rotate-fail-gap-text", 2, "--fail-gap", ROTATE + " --fail-gap wide"),
    # --- subgroups
    ("group-not-a-column", 2, "--group 'hospital' is not a column", SUBGROUPS + " --group hospital"),
    ("min-support-zero", 2, "min_support", SUBGROUPS + " --min-support 0"),
    ("bins-one", 2, "bins", SUBGROUPS + " --bins 1"),
    # --- report
    ("report-results-not-found", 3, "cannot read results file", "report {r}/nope.json"),
    ("report-results-binary", 3, "not UTF-8", "report {r}/res-binary.json"),
    (
        "report-results-truncated",
        3,
        INVALID,
        "report {r}/res-trunc.json" + HTML,
    ),
    ("report-results-empty", 3, INVALID, "report {r}/res-empty.json" + HTML),
    (
        "report-results-wrong-type-list",
        3,
        INVALID,
        "report {r}/res-list.json" + HTML,
    ),
    ("report-results-null", 3, INVALID, "report {r}/res-null.json" + HTML),
    (
        "report-results-wrong-type-toml",
        3,
        INVALID,
        "report {r}/res-toml.json" + HTML,
    ),
    ("report-results-schema-version", 3, "schema_version 99.0", "report {r}/res-schema.json" + HTML),
    ("report-results-unknown-check", 3, "unknown check kind 'nope'", "report {r}/res-kind.json" + HTML),
    ("report-out-is-a-folder", 2, "--out", "report {res} --out {r}/a-dir"),
    ("report-baseline-binary", 3, "not UTF-8", "report {res}" + HTML + " --baseline {r}/res-binary.json"),
    (
        "report-baseline-empty",
        3,
        INVALID,
        "report {res}" + HTML + " --baseline {r}/res-empty.json",
    ),
    # --- gate
    ("gate-policy-option-missing", 2, "Missing option '--policy'", "gate {res}"),
    ("gate-results-not-found", 3, "cannot read results file", GATE.replace("{res}", "{r}/nope.json")),
    ("gate-results-binary", 3, "not UTF-8", GATE.replace("{res}", "{r}/res-binary.json")),
    ("gate-results-truncated", 3, INVALID, GATE.replace("{res}", "{r}/res-trunc.json")),
    ("gate-results-empty", 3, INVALID, GATE.replace("{res}", "{r}/res-empty.json")),
    (
        "gate-results-metrics-list",
        3,
        INVALID,
        GATE.replace("{res}", "{r}/res-metrics-list.json"),
    ),
    ("gate-baseline-truncated", 3, INVALID, GATE + " --baseline {r}/res-trunc.json"),
    ("gate-baseline-binary", 3, "not UTF-8", GATE + " --baseline {r}/res-binary.json"),
    ("gate-baseline-empty", 3, INVALID, GATE + " --baseline {r}/res-empty.json"),
    ("gate-baseline-wrong-type-list", 3, INVALID, GATE + " --baseline {r}/res-list.json"),
    ("gate-baseline-other-data", 3, "different data", GATE + " --baseline {r}/res-other-data.json"),
    ("gate-out-is-a-file", 2, "--out", GATE + " --out {r}/a-file"),
    ("gate-junit-is-a-folder", 2, "--junit", GATE + " --junit {r}/a-dir"),
    ("gate-summary-is-a-folder", 2, "--summary", GATE + " --summary {r}/a-dir"),
    # --- demo
    ("demo-dataset-unknown", 2, "dataset", "demo --dataset cifar --out {out}"),
    ("demo-out-is-a-file", 2, "--out", "demo --out {r}/a-file --epochs 1"),
    ("demo-data-root-without-fashion", 2, "--data-root applies to", "demo --data-root {r} --out {out}"),
    (
        "demo-data-root-not-fashion",
        2,
        "Fashion-MNIST not found",
        "demo --dataset fashion-mnist --data-root {r}/nope --out {out}",
    ),
    ("demo-epochs-zero", 2, "epochs", "demo --epochs 0 --out {out}"),
    ("demo-seed-text", 2, "--seed", "demo --seed abc --out {out}"),
    ("demo-device-unknown", 2, "device: must be one of", "demo --device tpu --out {out}"),
    ("demo-progress-with-value", 2, NOT_A_FLAG_VALUE, "demo --progress=yes --out {out}"),
    # --- harden (its own options, and the shared ones it takes)
    ("harden-eval-data-not-found", 3, "dataset not found", HARDEN + " --eval-data {r}/nope.csv"),
    ("harden-eval-data-binary", 3, "cannot read manifest", HARDEN + " --eval-data {r}/csv-binary.csv"),
    ("harden-method-unknown", 2, "method", HARDEN + " --method mixup"),
    ("harden-eps-negative", 2, "eps", HARDEN + " --eps -0.1"),
    ("harden-norm-unknown", 2, "train_norm", HARDEN + " --norm l3"),
    ("harden-attack-steps-zero", 2, "attack_steps", HARDEN + " --attack-steps 0"),
    ("harden-trades-beta-negative", 2, "trades_beta", HARDEN + " --trades-beta -1"),
    ("harden-rotate-above-180", 2, "rotate", HARDEN + " --rotate 200"),
    ("harden-epochs-zero", 2, "epochs", HARDEN + " --epochs 0"),
    ("harden-lr-zero", 2, "lr", HARDEN + " --lr 0"),
    ("harden-weight-decay-negative", 2, "weight_decay", HARDEN + " --weight-decay -1"),
    ("harden-train-batch-size-zero", 2, "train_batch_size", HARDEN + " --train-batch-size 0"),
    ("harden-fresh-with-value", 2, NOT_A_FLAG_VALUE, HARDEN + " --fresh=yes"),
    ("harden-resume-without-checkpoint", 2, "no checkpoint", HARDEN + " --resume"),
    ("harden-val-fraction-above-half", 2, "val_fraction", HARDEN + " --val-fraction 0.9"),
    ("harden-eval-fraction-zero", 2, "eval_fraction", HARDEN + " --eval-fraction 0"),
    ("harden-eval-fraction-half", 2, "--eval-fraction must be in (0, 0.5)", HARDEN + " --eval-fraction 0.5"),
    ("harden-eval-steps-zero", 2, "eval_steps", HARDEN + " --eval-steps 0"),
    ("harden-epsilons-nan", 2, "--epsilons", HARDEN + " --epsilons nan"),
    ("harden-restarts-zero", 2, "restarts", HARDEN + " --restarts 0"),
    ("harden-strength-unknown", 2, "strength", HARDEN + " --strength max"),
    ("harden-angles-inf", 2, "finite numbers", HARDEN + " --angles 0:inf:1"),
    ("harden-out-is-a-file", 2, "--out", "harden {m} digits --epochs 1 --out {r}/a-file"),
    ("harden-model-binary", 3, "not a recognised model file", "harden {r}/m-binary.pt digits --epochs 1 --out {out}"),
]


# one malformed value per shared option, run on every audit command (rotate's rows are above) and
# harden: option -> (label, the malformed words, exit code, needle)
SHARED_BAD: dict[str, tuple[str, str, int, str]] = {
    "--warn-drop": ("above-1", "--warn-drop 2", 2, "warn_drop"),
    "--fail-drop": ("negative", "--fail-drop -0.1", 2, "fail_drop"),
    "--warn-gap": ("above-fail", "--warn-gap 0.5", 2, "warn_gap (0.5) must not exceed fail_gap"),
    "--fail-gap": ("text", "--fail-gap wide", 2, "--fail-gap"),
    "--arch": ("no-colon", "--arch digits_cnn", 2, "--arch must look like"),
    "--num-classes": ("zero", "--num-classes 0", 2, "num_classes"),
    "--input-size": ("zero", "--input-size 0 28", 2, "input_size"),
    "--channels": ("2", "--channels 2", 2, "channels"),
    "--mean": ("text", "--mean dark", 2, "mean/std takes comma-separated float"),
    "--std": ("zero", "--std 0", 2, "must be positive"),
    "--class-names": ("blank", "--class-names a,,b", 2, "non-empty names"),
    "--output": ("empty", "--output=", 2, "output: must be an output index"),
    "--weights": ("no-prefix", "--weights ResNet18", 2, "--weights must be torchvision:"),
    "--resize": ("zero", "--resize 0 --crop 28 28", 2, "resize"),
    "--crop": ("zero", "--crop 0 0", 2, "crop"),
    "--resize-interpolation": ("unknown", "--resize-interpolation cubic", 2, "resize_interpolation"),
    "--antialias": ("with-value", "--antialias=yes", 2, NOT_A_FLAG_VALUE),
    "--split": ("unknown", "--split nope", 2, "--split 'nope' is not in"),
    "--trust-model": ("with-value", "--trust-model=yes", 2, NOT_A_FLAG_VALUE),
    "--limit": ("zero", "--limit 0", 2, "limit"),
    "--sample": ("zero", "--sample 0", 2, "sample"),
    "--max-bad-fraction": ("above-1", "--max-bad-fraction 1.5", 2, "max_bad_fraction"),
    "--device": ("unknown", "--device tpu", 2, "device: must be one of"),
    "--batch-size": ("zero", "--batch-size 0", 2, "batch_size"),
    "--seed": ("negative", "--seed -1", 2, "seed"),
    "--deterministic": ("with-value", "--deterministic=yes", 2, NOT_A_FLAG_VALUE),
    "--progress": ("with-value", "--progress=yes", 2, NOT_A_FLAG_VALUE),
    "--resume": ("with-value", "--resume=yes", 2, NOT_A_FLAG_VALUE),
    "--distributed": ("with-value", "--distributed=yes", 2, NOT_A_FLAG_VALUE),
    "--stream": ("unknown", "--stream maybe", 2, "stream"),
    "--workers": ("negative", "--workers -1", 2, "workers"),
    "--amp": ("unknown", "--amp fp8", 2, "amp"),
    "--amp-attack": ("with-value", "--amp-attack=yes", 2, NOT_A_FLAG_VALUE),
    "--out": ("empty", "--out=", 2, "out: must name a folder"),
    "--config": ("not-found", "--config {r}/nope.toml", 2, "cannot read config file"),
    "--policy": ("binary", "--policy {r}/pol-binary.toml", 2, "not UTF-8"),
    "--baseline": ("without-policy", "--baseline {res}", 2, "--baseline needs --policy"),
    "--junit": ("without-policy", "--junit {r}/j.xml", 2, "need --policy"),
    "--summary": ("without-policy", "--summary {r}/s.md", 2, "need --policy"),
}
# one malformed value per check option, on ``audit`` (which takes every check's options); the check's
# own command has its rows above. option -> (label, words, code, needle[, xfail reason])
CHECK_BAD: dict[str, tuple[Any, ...]] = {
    "--corruptions": ("unknown", "--corruptions fogg", 2, "corruptions: must be among"),
    "--severities": ("zero", "--severities 0", 2, "severities: must be integers from 1 to 5"),
    "--boxes": ("unknown", "--boxes both", 2, "boxes"),
    "--positions": ("eight", "--positions 8", 2, "positions"),
    "--position-background": ("unknown", "--position-background grey", 2, "position_background"),
    "--angles": ("text", "--angles left", 2, "--angles takes"),
    "--mean-range": ("negative", "--mean-range -1", 2, "mean_range"),
    "--fraction-of-clean": ("above-1", "--fraction-of-clean 2", 2, "fraction_of_clean"),
    "--interpolation": ("unknown", "--interpolation cubic", 2, "interpolation"),
    "--fill": ("unknown", "--fill wrap", 2, "fill"),
    "--spatial": ("with-value", "--spatial=yes", 2, NOT_A_FLAG_VALUE),
    "--spatial-angles": (
        "text",
        "--spatial-angles left",
        2,
        "--spatial-angles",
    ),
    "--translate": ("negative", "--translate -1", 2, "translate"),
    "--translate-steps": ("zero", "--translate-steps 0", 2, "translate_steps"),
    "--k": ("zero", "--k 0", 2, "worst_of_k"),
    "--attack": ("unknown", "--attack cw", 2, "must be pgd, fgsm or foolbox"),
    "--norm": ("unknown", "--norm l3", 2, "norm"),
    "--strength": ("unknown", "--strength max", 2, "strength"),
    "--attack-args": ("without-foolbox", "--attack-args steps=5", 2, "--attack-args passes arguments"),
    "--epsilons": ("text", "--epsilons small", 2, "--epsilons"),
    "--steps": ("zero", "--steps 0", 2, "steps"),
    "--rel-step": ("zero", "--rel-step 0", 2, "rel_step"),
    "--restarts": ("zero", "--restarts 0", 2, "restarts"),
    "--random-start": ("with-value", "--random-start=yes", 2, NOT_A_FLAG_VALUE),
    "--targeted": ("with-value", "--targeted=yes", 2, NOT_A_FLAG_VALUE),
    "--loss": ("unknown", "--loss hinge", 2, "loss"),
    "--target": ("unknown", "--target worst", 2, "target"),
    "--methods": ("unknown", "--methods lime", 2, "methods"),
    "--saliency-target": ("unknown-class", "--saliency-target cat", 2, "saliency-target"),
    "--layer": ("unknown", "--methods gradcam --layer nope", 2, "--layer 'nope' is not a layer"),
    "--cue": ("unknown", "--cue star", 2, "is neither"),
    "--cue-position": ("unknown", "--cue-position middle", 2, "cue_position"),
    "--cue-size": ("zero", "--cue-size 0", 2, "cue_size"),
    "--cue-value": ("above-1", "--cue-value 2", 2, "cue_value"),
    "--occlusion": ("unknown", "--occlusion erase", 2, "occlusion"),
    "--shift": ("negative", "--shift -1", 2, "shift"),
    "--shift-steps": ("zero", "--shift-steps 0", 2, "shift_steps"),
    "--group": ("not-a-column", "--group hospital", 2, "--group 'hospital' is not a column"),
    "--min-support": ("zero", "--min-support 0", 2, "min_support"),
    "--bins": ("text", "--bins many", 2, "--bins"),
}
COMMANDS = {
    "audit": AUDIT,
    "attack": ATTACK,
    "corrupt": CORRUPT,
    "saliency": SALIENCY,
    "shortcut": SHORTCUT,
    "subgroups": SUBGROUPS,
}


def _cli_options(command: str) -> set[str]:
    """The long options ``auditkit COMMAND`` takes (from the CLI itself)."""
    import typer.main

    group: Any = typer.main.get_command(app)
    return {o for p in group.commands[command].params for o in p.opts if o.startswith("--") and o != "--help"}


def _generated_rows() -> list[Any]:
    rows: list[Any] = []
    for command, prefix in [*COMMANDS.items(), ("harden", HARDEN)]:
        options = _cli_options(command)
        for option, (label, words, code, needle) in SHARED_BAD.items():
            if option in options and not (command == "harden" and option == "--resume"):
                bad = words if option != "--split" else words + " --out {out}"
                head = prefix if option != "--split" else prefix.replace(" digits ", " {r}/idx-two ", 1)
                rows.append((f"{command}{option}-{label}", code, needle, f"{head} {bad}"))
    for option, (label, words, code, needle, *reason) in CHECK_BAD.items():
        row = (f"audit{option}-{label}", code, needle, f"{AUDIT} {words}")
        rows.append(xfail(row, reason[0]) if reason else row)
    return rows


ROWS += _generated_rows()


def _values(row: Any) -> tuple[str, int, str, str]:
    return row.values if hasattr(row, "marks") else row  # a pytest.param or a plain row


def _ids(rows: list[Any]) -> list[str]:
    return [_values(r)[0] for r in rows]


def _args(cmd: str, f: dict[str, Path], name: str) -> list[str]:
    paths = {"r": f["root"], "m": f["model"], "res": f["results"], "out": f["root"] / "out" / name}
    return [word.format(**paths) for word in cmd.split()]


def _option(args: list[str], *names: str) -> Path | None:
    for i, word in enumerate(args):
        if word in names and i + 1 < len(args):
            return Path(args[i + 1])
    return None


def _pair_is_whole(out: Path) -> bool:
    """``out`` does not exist, or holds results.json and index.html both or neither (a resumable
    run's saved batches may stay: that is what ``--resume`` continues)."""
    if not out.is_dir():
        return True
    names = {p.name for p in out.iterdir()} - {RESUME_DIR}
    pair = {"results.json", "index.html"}
    return pair <= names or not (pair & names)


def test_table_ids_are_unique() -> None:
    ids = _ids(ROWS)
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]


PREFIXES = sorted(
    [ROTATE, ATTACK, AUDIT, CORRUPT, SALIENCY, SHORTCUT, SUBGROUPS, HARDEN, GATE, LIGHT], key=len, reverse=True
)


def _malformed_options(cmd: str) -> tuple[str, set[str]]:
    """The command a row runs and the options it gives a malformed value (not those of its prefix,
    nor an ``--out`` pointing at the row's own folder)."""
    words = cmd.split()
    command = next(w for w in words if not w.startswith("--"))
    prefix = next((p for p in PREFIXES if cmd.startswith(p)), None)
    rest = cmd.removeprefix(prefix).split() if prefix else words
    for p in PREFIXES:  # a data or model row: the light run follows its MODEL and DATA
        if prefix is None and cmd.endswith(p):
            rest = cmd.removesuffix(p).split()
    return command, {w.split("=")[0] for w in rest if w.startswith("--")}


def test_table_covers_every_option_of_every_command() -> None:
    import typer.main

    group: Any = typer.main.get_command(app)
    covered: dict[str, set[str]] = {}
    for row in ROWS:
        cmd = _values(row)[3]
        command, options = _malformed_options(cmd)
        covered.setdefault(command, set()).update(options)
    missing = {c: sorted(_cli_options(c) - covered.get(c, set())) for c in group.commands}
    assert not any(missing.values()), missing


@pytest.mark.parametrize(("name", "code", "needle", "cmd"), ROWS, ids=_ids(ROWS))
def test_bad_input_is_one_line_and_its_exit_code(
    files: dict[str, Path], name: str, code: int, needle: str, cmd: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _args(cmd, files, name)
    cwd = files["root"] / "cwd" / name  # a relative default (reports/latest) never lands in the repository
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    written = [p for p in (_option(args, "--junit"), _option(args, "--summary")) if p is not None and not p.exists()]
    before = {p: p.read_bytes() for p in files["root"].glob("*") if p.is_file()}
    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    errors = [line for line in lines if line.startswith("auditkit: error:")]
    assert len(errors) == 1 and needle in errors[0], lines
    assert not [line for line in lines if not line.startswith(("auditkit: error:", "warning:"))], lines
    assert not any(p.exists() for p in written), written  # no CI output from a failed run
    out = _option(args, "--out", "-o")
    if out is not None:
        assert _pair_is_whole(out if out.suffix != ".html" else out.parent), sorted(out.iterdir())
    assert {p: p.read_bytes() for p in files["root"].glob("*") if p.is_file()} == before  # inputs untouched


def test_nan_check_is_recorded_as_crashed_with_null_metrics(files: dict[str, Path]) -> None:
    out = files["root"] / "o-nan"
    cmd = next(_values(r)[3] for r in ROWS if _values(r)[0] == "nan-on-rotated-images")
    CliRunner().invoke(app, _args(cmd, files, "nan-on-rotated-images"))
    doc = json.loads((out / "results.json").read_text())
    kinds = [c["kind"] for c in doc["checks"]]
    assert kinds == ["clean", "failure"] and "16 of 16 images" in doc["checks"][1]["result"]["error"]
    assert doc["metrics"]["rotation.crashed"] == 1.0
    assert not any(k.startswith("rotation.accuracy") for k in doc["metrics"])
    assert (out / "index.html").is_file()  # the pair is complete


def test_messages_cannot_inject_ci_workflow_commands() -> None:
    from auditkit.messages import one_line

    assert one_line("group\n::error::pwned") == "group ::error::pwned"
    assert not one_line("::error::pwned").startswith("::")


def test_outputs_honour_the_umask(files: dict[str, Path]) -> None:
    import os

    mode = (files["results"]).stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask
