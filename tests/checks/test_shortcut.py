"""Shortcut probes: known answers (the demo's tagged vs clean model, the synthetic sky, stars-moons and
corner-tag demos and their clean twins, over several seeds) and the pieces by hand."""

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
    _donors,
    _placements,
    bounding_boxes,
    cue_box,
    fill_background,
    paired_difference,
    paired_newcombe,
    position_score,
    translate,
)
from auditkit.demo_shortcuts import BUILDERS, DEMOS, ShortcutDemo, audit
from auditkit.engine.loop import Engine
from auditkit.exceptions import ConfigError, DataError
from auditkit.inputs.data import load_dataset, with_masks
from auditkit.results import Conditions, RunResults


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
    assert tagged.planted.reliance.low > 0.1  # far beyond the same tag stamped at the other places
    assert not clean.planted.flagged and clean.planted.attraction.high < 0.1
    assert tagged.removal is not None and clean.removal is not None
    assert tagged.removal.flagged and tagged.removal.reliance.low > 0.1
    assert not clean.removal.flagged
    assert tagged.saliency.concentrated and tagged.saliency.concentration > 3 > clean.saliency.concentration
    # no masks in the demo's data: the foreground probes say why they did not run
    assert tagged.background is None and any("no foreground masks" in why for why in tagged.skipped)
    html = (demo_run / "shortcut-tagged" / "index.html").read_text()
    assert "Shortcut probes" in html and "a learned shortcut" in html


def test_main_demo_audit_runs_the_probes_without_boxes(demo_run: Path) -> None:
    probe = _probe(demo_run / "results.json")
    assert probe.removal is None and not probe.flagged and probe.hits() == ()
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


# ---------------------------------------------------------------- saliency never flags on its own


class QuietCorner(nn.Module):
    """All of its gradient sits in the top-left corner, yet its answer never changes (a fixed bias wins)."""

    def forward(self, x: Tensor) -> Tensor:
        corner = x[:, 0, 1:5, 1:5].sum(dim=(1, 2))
        return torch.stack([corner + 100.0, -corner], dim=1)


def test_saliency_mass_alone_never_flags() -> None:
    data = load_dataset("digits", limit=40)
    result = ShortcutProbes(shift_steps=1).run(QuietCorner(), data, engine=Engine(device="cpu", progress=False))
    assert isinstance(result, ShortcutResult)
    assert result.saliency.concentrated and result.saliency.concentration > 10  # all attribution on the cue ...
    assert result.planted.flip_rate.value == 0.0  # ... but the cue moves no answer
    assert not result.flagged and result.hits() == ()
    assert [f.severity for f in result.findings(Conditions())] == ["pass"]


# ---------------------------------------------------------------- pieces by hand


def test_paired_newcombe_by_hand() -> None:
    from scipy.stats import binomtest

    # 30 both right, 10 only a, 2 only b, 8 neither (n = 50): a*d - b*c = 220 > n/2, so phi is corrected
    a = torch.tensor([1] * 30 + [1] * 10 + [0] * 2 + [0] * 8, dtype=torch.bool)
    b = torch.tensor([1] * 30 + [0] * 10 + [1] * 2 + [0] * 8, dtype=torch.bool)
    ci = paired_newcombe(a, b)
    p1, p2 = 40 / 50, 32 / 50
    w1 = binomtest(40, 50).proportion_ci(method="wilson")
    w2 = binomtest(32, 50).proportion_ci(method="wilson")
    phi = (30 * 8 - 10 * 2 - 25) / np.sqrt(40 * 10 * 32 * 18)
    d1, d2 = p1 - w1.low, w2.high - p2
    assert ci.value == pytest.approx(0.16)
    assert ci.low == pytest.approx(0.16 - np.sqrt(d1**2 - 2 * phi * d1 * d2 + d2**2))
    assert ci.low > 0.16 - 1.959964 * np.sqrt(12 - 8**2 / 50) / 50 - 0.02  # close to the Wald interval here
    # no discordant pairs: Wald has zero width, Newcombe does not
    same = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 1, 0], dtype=torch.bool)
    tie = paired_newcombe(same, same)
    assert tie.value == 0 and tie.low < 0 < tie.high
    assert paired_difference(same, same).low == 0


def test_translate_and_bounding_boxes() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    moved = translate(x, torch.tensor([1]), torch.tensor([-1]))[0, 0]
    assert moved.tolist() == [[0, 4, 5, 6], [0, 8, 9, 10], [0, 12, 13, 14], [0, 0, 0, 0]]
    wrapped = translate(x, torch.tensor([2]), torch.tensor([0]), wrap=True)[0, 0]
    assert wrapped[0].tolist() == [2, 3, 0, 1]
    m = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    m[0, 0, 1:3, 2:5] = True
    assert bounding_boxes(m).tolist() == [[2, 1, 5, 3], [0, 0, 0, 0]]


def test_fill_background_tiles_a_periodic_texture_back_exactly() -> None:
    stripes = (torch.arange(12) % 2).float().expand(12, 12).clone()  # vertical stripes, period 2
    x = stripes[None, None].clone()
    m = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    m[0, 0, 3:7, 4:8] = True  # a 4x4 object: shifting by its width keeps the stripes' phase
    x[m] = 0.5
    filled = fill_background(x, m)
    assert filled[0, 0].equal(stripes)


def test_donors_follow_the_variants_definitions() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    donors, next_class = _donors(labels, seed=0)
    idx = np.arange(len(labels))
    assert (labels[donors["mixed_same"]] == labels).all() and (donors["mixed_same"] != idx).all()
    assert (labels[donors["mixed_rand"]] != labels).all()
    assert next_class.tolist() == [1, 1, 2, 2, 0, 0, 0] and (labels[donors["mixed_next"]] == next_class).all()
    again, _ = _donors(labels, seed=0)
    assert all((again[k] == donors[k]).all() for k in donors)  # seeded


def test_placements_span_the_data_and_stay_in_the_frame() -> None:
    boxes = torch.tensor([[0, 10, 6, 16], [20, 10, 26, 16], [10, 2, 14, 12]])
    dx, dy = _placements(boxes, 3, 28, 28)  # type: ignore[misc]
    x0, y0 = boxes[:, :1] + dx, boxes[:, 1:2] + dy
    assert (x0 >= 0).all() and (x0 + (boxes[:, 2:3] - boxes[:, :1]) <= 28).all()
    assert (y0 >= 0).all() and (y0 + (boxes[:, 3:4] - boxes[:, 1:2]) <= 28).all()
    assert len({tuple(row) for row in dx.tolist()[0:1]}) == 1 and len(set(dx[0].tolist())) == 3
    same = torch.tensor([[5, 5, 9, 9]] * 4)
    assert _placements(same, 3, 28, 28) is None  # one place only: nothing to compare


def test_position_score_known_answers() -> None:
    y = torch.arange(200) % 2
    by_class = y[:, None].repeat(1, 9)
    assert position_score(by_class, y, seed=0).value == 0  # answers follow the object
    by_place = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1, 1]).repeat(200, 1)
    score = position_score(by_place, y, seed=0)  # answers follow the place only
    assert score.low > 0.3
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 2, (200, 9)))
    assert position_score(noise, y, seed=0).low < 0  # fitted on the other half: noise does not score


# ---------------------------------------------------------------- skips and bad input


def test_background_and_position_need_masks_or_object_boxes(tmp_path: Path) -> None:
    data = load_dataset("digits", limit=30)
    engine = Engine(device="cpu", progress=False)
    plain = ShortcutProbes(shift_steps=1).run(CornerCheat(), data, engine=engine)
    assert isinstance(plain, ShortcutResult) and plain.background is None and plain.position is None
    assert [why.split(":")[0] for why in plain.skipped] == ["background", "object position"]
    for i in range(3):
        Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    rows = "".join(f"{i}.png,{i % 2},{2 + 8 * i},4,{10 + 8 * i},12\n" for i in range(3))
    (tmp_path / "m.csv").write_text("path,label,x0,y0,x1,y1\n" + rows)
    boxed = load_dataset(tmp_path / "m.csv")
    as_cue = ShortcutProbes(shift_steps=1).run(CornerCheat(), boxed, engine=engine)
    assert isinstance(as_cue, ShortcutResult) and as_cue.background is None and as_cue.removal is not None
    assert "--boxes object" in as_cue.skipped[0]
    as_object = ShortcutProbes(shift_steps=1, boxes="object").run(CornerCheat(), boxed, engine=engine)
    assert isinstance(as_object, ShortcutResult) and as_object.removal is None
    assert as_object.background is not None and as_object.background.n == 3
    assert as_object.position is not None and as_object.position.n == 3


def test_one_class_with_masks_skips_the_background_probe() -> None:
    data = load_dataset("digits", limit=20)
    data = type(data)(**{**data.__dict__, "labels": torch.zeros(20, dtype=torch.long)})
    masks = torch.zeros(20, 1, 28, 28, dtype=torch.bool)
    masks[:, :, 8:20, 8:20] = True
    result = ShortcutProbes(shift_steps=1).run(CornerCheat(), with_masks(data, masks), engine=Engine(device="cpu"))
    assert isinstance(result, ShortcutResult) and result.background is None
    assert "at least two classes" in result.skipped[0]
    assert "one place" in result.skipped[1]  # every mask at the same place


def test_bad_probe_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--boxes"):
        ShortcutProbes(boxes="both")
    with pytest.raises(ConfigError, match="--positions"):
        ShortcutProbes(positions=9)


# ---------------------------------------------------------------- known answers: the synthetic demos

SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def demos() -> dict[tuple[str, int], ShortcutDemo]:
    """Every demo for every seed (its models are trained when first used, once)."""
    return {(name, seed): BUILDERS[name](seed) for name in DEMOS for seed in SEEDS}


@pytest.fixture(scope="module")
def twins(demos: dict[tuple[str, int], ShortcutDemo]) -> dict[tuple[str, int], ShortcutResult]:
    """Every probe on every clean twin: 3 clean models x 5 seeds."""
    return {key: audit(demo, demo.twin, seed=key[1]) for key, demo in demos.items()}


@pytest.fixture(scope="module")
def shortcut_models(demos: dict[tuple[str, int], ShortcutDemo]) -> dict[str, ShortcutResult]:
    """Every probe on each demo's shortcut model (seed 0)."""
    return {name: audit(demos[name, 0], demos[name, 0].shortcut_model, seed=0) for name in DEMOS}


def test_no_false_alarm_on_any_clean_twin(twins: dict[tuple[str, int], ShortcutResult]) -> None:
    flags = {key: r.hits() for key, r in twins.items() if r.flagged}
    assert len(twins) == 15 and flags == {}
    # every probe the data allows ran: the background and position probes on the two demos with masks
    for (name, _), r in twins.items():
        assert (r.background is not None and r.position is not None) == (name != "corner-tag")
        assert (r.removal is not None) == (name == "corner-tag")


def test_sky_background_shortcut_is_flagged_and_its_twin_is_not(
    shortcut_models: dict[str, ShortcutResult], twins: dict[tuple[str, int], ShortcutResult]
) -> None:
    sky = shortcut_models["sky"]
    assert sky.hits() == ("background",) and sky.background is not None
    assert sky.background.gap.low > 0.3
    assert sky.background.accuracy_of("mixed_rand").value < 0.3 < sky.background.accuracy_of("original").value
    assert sky.background.follows_next.value > 0.5  # it names the class the background came from
    for seed in SEEDS:
        twin = twins["sky", seed].background
        assert twin is not None and twin.gap.low < 0 < twin.gap.high + 1e-9
        assert twin.accuracy_of("original").value > 0.85  # a real model, not a broken one


def test_stars_moons_position_shortcut_is_flagged_and_its_twin_is_not(
    shortcut_models: dict[str, ShortcutResult], twins: dict[tuple[str, int], ShortcutResult]
) -> None:
    stars = shortcut_models["stars-moons"].position
    assert stars is not None and stars.flagged and stars.score.low > 0.25
    # the control: pasting each object back in its own place keeps the clean accuracy
    assert stars.control_accuracy == pytest.approx(stars.clean_accuracy, abs=0.02)
    star_grid = dict(stars.per_class)["star"]
    assert min(row[0] for row in star_grid) > 0.9 > 0.1 > max(row[-1] for row in star_grid)
    for seed in SEEDS:
        twin = twins["stars-moons", seed].position
        assert twin is not None and not twin.flagged and twin.score.high < 0.1


def test_corner_tag_shortcut_stays_flagged(shortcut_models: dict[str, ShortcutResult]) -> None:
    tag = shortcut_models["corner-tag"]
    assert tag.flagged and tag.planted.top_class == "3" and "planted cue" in tag.hits()


def test_flagged_shortcuts_are_failures_with_gateable_metrics(shortcut_models: dict[str, ShortcutResult]) -> None:
    sky, stars = shortcut_models["sky"], shortcut_models["stars-moons"]
    found = {f.metric: f.severity for f in sky.findings(Conditions())}
    assert found == {"shortcut.background.gap": "fail"}
    assert "shortcut.position.score" in {f.metric for f in stars.findings(Conditions()) if f.severity == "fail"}
    metrics = sky.metrics()
    assert metrics["shortcut.flagged"] == 1.0 and metrics["shortcut.background.gap.ci_low"] > 0.3
    assert "shortcut.background.accuracy[variant=mixed_rand]" in metrics and "shortcut.position.score" in metrics


def test_results_round_trip_and_the_report_shows_the_strips(shortcut_models: dict[str, ShortcutResult]) -> None:
    from auditkit.report.html import _environment
    from auditkit.results import _decode, _encode

    sky = shortcut_models["sky"]
    assert _decode(ShortcutResult, _encode(sky)) == sky
    template = _environment().get_template("sections/shortcut.html.j2")
    html = template.render(s={"result": sky, **sky.report_context()})
    assert "BG-Gap" in html and "the model relies on backgrounds" in html
    assert sky.background is not None
    shots = len(sky.background.strips) * len(sky.background.strips[0].shots)
    assert html.count('alt="Mixed-Rand') == len(sky.background.strips) and shots >= 6 * 3
    stars = shortcut_models["stars-moons"]
    html = template.render(s={"result": stars, **stars.report_context()})
    assert "Object position" in html and "<svg" in html and 'alt="place 9' in html


def _masked_manifest(root: Path, mask_for: list[str]) -> Path:
    rows = ["path,label,mask"]
    for i, mask in enumerate(mask_for):
        img = np.full((28, 28), 60, dtype=np.uint8)
        img[6 + i : 14 + i, 4 + 2 * i : 12 + 2 * i] = 220
        Image.fromarray(img).save(root / f"{i}.png")
        if mask:
            Image.fromarray((img > 100).astype(np.uint8) * 255).save(root / mask)
        rows.append(f"{i}.png,{i % 2},{mask}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_cli_mask_column_runs_the_foreground_probes_and_a_missing_mask_is_exit_3(
    tmp_path: Path, tiny_net: nn.Module
) -> None:
    import json

    from typer.testing import CliRunner

    from auditkit.cli import app
    from auditkit.inputs.models import save_model
    from tests.conftest import DIGITS_SPEC

    model = tmp_path / "model.safetensors"
    save_model(tiny_net, DIGITS_SPEC, model)
    manifest = _masked_manifest(tmp_path, [f"m{i}.png" for i in range(6)])
    args = ["shortcut", str(model), str(manifest), "--device", "cpu", "--no-progress", "--shift-steps", "1"]
    ok = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    metrics = json.loads((tmp_path / "out" / "results.json").read_text())["metrics"]
    assert "shortcut.background.gap.ci_low" in metrics and "shortcut.position.score" in metrics
    assert "Mixed-Rand" in (tmp_path / "out" / "index.html").read_text()
    (tmp_path / "m3.png").unlink()
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 3 and "m.csv row 5: mask file 'm3.png' not found" in bad.output
    assert "Traceback" not in bad.output
