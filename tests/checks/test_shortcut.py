"""Shortcut probes: known answers (the demo's tagged vs clean model) and the pieces by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from auditkit.checks.shortcut import (
    ShortcutProbes,
    ShortcutResult,
    Stamp,
    _control_boxes,
    cue_box,
    paired_difference,
)
from auditkit.engine.loop import Engine
from auditkit.exceptions import ConfigError, DataError
from auditkit.inputs.data import load_dataset
from auditkit.results import RunResults


def _probe(results_json: Path) -> ShortcutResult:
    result = RunResults.read(results_json).check(ShortcutResult)
    assert result is not None
    return result


def test_demo_flags_the_tagged_model_and_not_the_clean_one(demo_run: Path) -> None:
    tagged = _probe(demo_run / "shortcut-tagged" / "results.json")
    clean = _probe(demo_run / "shortcut-clean" / "results.json")
    # the tag hides in plain sight: the tagged model is as accurate as the clean one on tagged test data
    assert RunResults.read(demo_run / "shortcut-tagged" / "results.json").metrics["clean.accuracy"] >= 0.93
    assert tagged.flagged and not clean.flagged
    assert tagged.planted.flagged and tagged.planted.top_class == "3" and tagged.planted.attraction.low > 0.3
    assert not clean.planted.flagged and clean.planted.attraction.high < 0.1
    assert tagged.removal is not None and clean.removal is not None
    assert tagged.removal.flagged and tagged.removal.reliance.low > 0.1
    assert not clean.removal.flagged
    assert tagged.saliency.flagged and tagged.saliency.concentration > 3 > clean.saliency.concentration
    html = (demo_run / "shortcut-tagged" / "index.html").read_text()
    assert "Shortcut probes" in html and "a learned shortcut" in html


def test_main_demo_audit_runs_the_probes_without_boxes(demo_run: Path) -> None:
    probe = _probe(demo_run / "results.json")
    assert probe.removal is None and not probe.flagged
    assert "shortcut.planted.attraction" in RunResults.read(demo_run / "results.json").metrics


class CornerCheat(nn.Module):
    """Answers class 1 when the top-left 4x4 corner is bright, else class 0: a pure shortcut."""

    def forward(self, x: Tensor) -> Tensor:
        corner = x[:, 0, 1:5, 1:5].mean(dim=(1, 2))
        return torch.stack([0.5 - corner, corner - 0.5], dim=1) * 10


def test_a_pure_corner_shortcut_is_flagged_and_located_by_saliency() -> None:
    data = load_dataset("digits", limit=60)
    data = type(data)(**{**data.__dict__, "labels": torch.zeros(60, dtype=torch.long), "class_names": ("a", "b")})
    result = ShortcutProbes().run(CornerCheat(), data, engine=Engine(device="cpu", progress=False))
    assert isinstance(result, ShortcutResult)
    assert result.planted.attraction.value == 1.0 and result.planted.top_class == "b"
    assert result.saliency.mass.value == pytest.approx(1.0)  # every gradient sits in the cue box
    # the location grid's centre is the clean accuracy (identity reuses the clean pass)
    k = len(result.location.shifts) // 2
    assert result.location.accuracy[k][k] == pytest.approx(1.0)


def test_cue_box_positions() -> None:
    assert cue_box("top-left", 4, 28, 28) == (1, 1, 5, 5)
    assert cue_box("bottom-right", 4, 28, 28) == (23, 23, 27, 27)
    assert cue_box("center", 4, 28, 28) == (12, 12, 16, 16)
    with pytest.raises(ConfigError, match="--cue-position"):
        cue_box("middle", 4, 28, 28)
    with pytest.raises(ConfigError, match="--cue-size"):
        cue_box("top-left", 40, 28, 28)


def test_stamps(tmp_path: Path) -> None:
    x = torch.zeros(2, 1, 10, 10)
    patch = Stamp("patch", (1, 1, 3, 3), 1.0, 1)(x)
    assert patch.sum() == 2 * 4 and patch[0, 0, 1:3, 1:3].eq(1).all()
    border = Stamp("border", (1, 1, 3, 3), 0.5, 1)(x)
    assert border[0, 0, 0].eq(0.5).all() and border[0, 0, 1, 1] == 0.5 and border[0, 0, 2, 2] == 0  # 2 px wide
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(tmp_path / "cue.png")
    picture = Stamp(str(tmp_path / "cue.png"), (6, 6, 9, 9), 1.0, 1)(x)
    assert picture[0, 0, 6:9, 6:9].eq(1).all() and picture.sum() == 2 * 9
    with pytest.raises(ConfigError, match="--cue must be"):
        Stamp(str(tmp_path / "missing.png"), (1, 1, 3, 3), 1.0, 1)


def test_paired_difference_by_hand() -> None:
    a = torch.tensor([1, 1, 1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    b = torch.tensor([0, 0, 1, 0, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    ci = paired_difference(a, b)
    # 3 only-a, 1 only-b, n = 10: d = 0.2, se = sqrt(3 + 1 - 0.4) / 10
    se = float(np.sqrt(3.6)) / 10
    assert ci.value == pytest.approx(0.2)
    assert ci.low == pytest.approx(0.2 - 1.959964 * se, abs=1e-5)
    assert ci.high == pytest.approx(0.2 + 1.959964 * se, abs=1e-5)


def test_control_boxes_do_not_overlap_and_keep_size() -> None:
    boxes = torch.tensor([[1, 1, 5, 5], [10, 10, 20, 14]])
    control = _control_boxes(boxes, 28, 28, seed=0)
    for (x0, y0, x1, y1), (c0, d0, c1, d1) in zip(boxes.tolist(), control.tolist(), strict=True):
        assert (c1 - c0, d1 - d0) == (x1 - x0, y1 - y0)
        assert c0 >= x1 or c1 <= x0 or d0 >= y1 or d1 <= y0
        assert c0 >= 0 and c1 <= 28 and d0 >= 0 and d1 <= 28


def test_bad_boxes_are_a_data_error(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,x0,y0,x1,y1\na.png,0,5,5,40,9\na.png,1,,,,\n")
    data = load_dataset(tmp_path / "m.csv")
    with pytest.raises(DataError, match="cue boxes must satisfy"):
        ShortcutProbes().run(CornerCheat(), data, engine=Engine(device="cpu", progress=False))


def test_shortcut_cli_bad_option_is_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from auditkit.cli import app

    result = CliRunner().invoke(app, ["shortcut", "x.safetensors", "digits", "--occlusion", "paint"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
