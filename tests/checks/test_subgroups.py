from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import MetricFrame, count, false_negative_rate, false_positive_rate
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score
from typer.testing import CliRunner

from auditkit.checks.subgroups import GroupStats, normalise_column, subgroup_stats
from auditkit.cli import app
from auditkit.engine.loop import Outcome
from auditkit.inputs.data import ImageDataset
from auditkit.ops.calibration import ece
from auditkit.ops.metrics import holm

CLASSES = ("cat", "dog", "emu")


@pytest.fixture
def predictions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 600
    y = rng.integers(0, 3, n)
    skin = rng.choice(["dark", "light"], n, p=[0.3, 0.7])
    sex = rng.choice(["F", "M"], n)
    # errors concentrated in dark-skinned women
    p_wrong = np.where((skin == "dark") & (sex == "F"), 0.35, 0.05)
    wrong = rng.random(n) < p_wrong
    pred = np.where(wrong, (y + rng.integers(1, 3, n)) % 3, y)
    conf = rng.uniform(0.34, 1.0, n)
    return {"y": y, "pred": pred, "conf": conf, "skin": skin, "sex": sex}


def by_key(groups: tuple[GroupStats, ...]) -> dict[str, GroupStats]:
    return {g.key: g for g in groups}


def test_exact_agreement_with_fairlearn(predictions: dict[str, np.ndarray]) -> None:
    p = predictions
    groups, _ = subgroup_stats(
        y_true=p["y"],
        y_pred=p["pred"],
        confidence=p["conf"],
        columns={"skin": list(p["skin"]), "sex": list(p["sex"])},
        class_names=CLASSES,
        min_support=1,
    )
    got = by_key(groups)
    metrics = {"accuracy": accuracy_score, "balanced_accuracy": balanced_accuracy_score, "count": count}
    for c in range(3):
        metrics[f"recall_{c}"] = lambda yt, yp, c=c: recall_score(yt == c, yp == c, zero_division=np.nan)
        metrics[f"fpr_{c}"] = lambda yt, yp, c=c: false_positive_rate(yt == c, yp == c)
        metrics[f"fnr_{c}"] = lambda yt, yp, c=c: false_negative_rate(yt == c, yp == c)
    frames = {
        "skin": MetricFrame(metrics=metrics, y_true=p["y"], y_pred=p["pred"], sensitive_features=p["skin"]),
        "sex": MetricFrame(metrics=metrics, y_true=p["y"], y_pred=p["pred"], sensitive_features=p["sex"]),
        "both": MetricFrame(
            metrics=metrics,
            y_true=p["y"],
            y_pred=p["pred"],
            sensitive_features=pd.DataFrame({"skin": p["skin"], "sex": p["sex"]}),
        ),
    }
    checked = 0
    for name, frame in frames.items():
        for idx, row in frame.by_group.iterrows():
            key = f"skin={idx[0]},sex={idx[1]}" if name == "both" else f"{name}={idx}"
            g = got[key]
            assert g.n == row["count"]
            assert g.accuracy.value == pytest.approx(row["accuracy"], abs=1e-12)
            assert g.balanced_accuracy == pytest.approx(row["balanced_accuracy"], abs=1e-12)
            for c in range(3):
                assert g.per_class[c].recall.value == pytest.approx(row[f"recall_{c}"], abs=1e-12)
                assert g.per_class[c].false_positive_rate.value == pytest.approx(row[f"fpr_{c}"], abs=1e-12)
                assert g.per_class[c].false_negative_rate.value == pytest.approx(row[f"fnr_{c}"], abs=1e-12)
            checked += 1
    assert checked == 2 + 2 + 4
    assert got["skin=dark,sex=F"].accuracy.value < got["skin=light,sex=M"].accuracy.value


def test_disparity_flags_the_worse_intersection(predictions: dict[str, np.ndarray]) -> None:
    p = predictions
    groups, disparities = subgroup_stats(
        y_true=p["y"],
        y_pred=p["pred"],
        confidence=p["conf"],
        columns={"skin": list(p["skin"]), "sex": list(p["sex"])},
        class_names=CLASSES,
    )
    inter = next(d for d in disparities if d.attribute == "skin×sex")
    assert inter.worst == "dark & F"
    assert "dark & F" in inter.significant
    g = by_key(groups)["skin=dark,sex=F"]
    assert g.error_share > g.data_share
    shares = [x.error_share for x in groups if x.attribute == "skin"]
    assert sum(shares) == pytest.approx(1.0)


def test_tiny_and_all_insufficient_groups_are_inconclusive(predictions: dict[str, np.ndarray]) -> None:
    p = predictions
    col = ["rare" if i < 3 else "common" for i in range(len(p["y"]))]
    groups, disparities = subgroup_stats(
        y_true=p["y"],
        y_pred=p["pred"],
        confidence=p["conf"],
        columns={"site": col},
        class_names=CLASSES,
    )
    rare = by_key(groups)["site=rare"]
    assert rare.n == 3 and not rare.sufficient and math.isnan(rare.p_holm)
    assert disparities[0].inconclusive == ("rare",)
    assert disparities[0].compared == 1 and math.isnan(disparities[0].gap)
    groups, disparities = subgroup_stats(
        y_true=p["y"][:5],
        y_pred=p["pred"][:5],
        confidence=p["conf"][:5],
        columns={"site": col[:5]},
        class_names=CLASSES,
        min_support=30,
    )
    assert all(not g.sufficient for g in groups)
    assert disparities[0].compared == 0


def test_empty_data_does_not_crash() -> None:
    empty = np.array([], dtype=np.int64)
    groups, disparities = subgroup_stats(
        y_true=empty,
        y_pred=empty,
        confidence=np.array([]),
        columns={"site": []},
        class_names=CLASSES,
    )
    assert groups == () and disparities[0].compared == 0


def test_null_case_false_alarm_rate() -> None:
    """No true difference between groups: a disparity is flagged in at most ~alpha of simulations."""
    rng = np.random.default_rng(2026)
    sims, flagged = 400, 0
    for _ in range(sims):
        n = 300
        y = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.85, y, (y + 1) % 3)
        site = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
        _, disparities = subgroup_stats(
            y_true=y, y_pred=pred, confidence=np.full(n, 0.9), columns={"site": list(site)}, class_names=CLASSES
        )
        flagged += bool(disparities[0].significant)
    rate = flagged / sims
    assert rate <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / sims)


def test_robustness_outcomes_per_group(predictions: dict[str, np.ndarray]) -> None:
    p = predictions
    robust = torch.from_numpy((p["skin"] == "light").astype(np.float32))
    groups, _ = subgroup_stats(
        y_true=p["y"],
        y_pred=p["pred"],
        confidence=p["conf"],
        columns={"skin": list(p["skin"])},
        class_names=CLASSES,
        outcomes=[Outcome(key="spatial_grid", label="spatial", values=robust)],
    )
    g = by_key(groups)
    assert g["skin=light"].robustness[0].value.value == 1.0
    assert g["skin=dark"].robustness[0].value.value == 0.0


def test_holm_matches_definition() -> None:
    p = [0.01, 0.04, 0.03, float("nan"), 0.005]
    adj = holm(p)
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert adj[4] == pytest.approx(0.02)
    assert adj[0] == pytest.approx(0.03)
    assert adj[2] == pytest.approx(0.06)
    assert adj[1] == pytest.approx(0.06)
    assert math.isnan(adj[3])


def test_ece_by_hand() -> None:
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([1, 0, 1, 1])
    # bin (0.933,1]: acc 0.5 vs conf 0.95 -> 0.45 * 2/4; bin (0.533,0.6]: acc 1 vs 0.55 -> 0.45 * 2/4
    assert ece(conf, correct) == pytest.approx(0.45)
    assert ece(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0


def test_normalise_column_missing_and_bins() -> None:
    assert normalise_column(["a", "", "NA", "b"], bins=None) == ["a", "(missing)", "(missing)", "b"]
    labels = normalise_column(["1", "2", "3", "4", "", "100"], bins=2)
    assert labels[4] == "(missing)"
    assert len(set(labels) - {"(missing)"}) == 2
    assert labels[0] == labels[1] and labels[3] == labels[5]
    assert normalise_column(["x", "y"], bins=3) == ["x", "y"]


def test_demo_report_shows_rare_site_gap(demo_run: Path) -> None:
    m = json.loads((demo_run / "results.json").read_text())["metrics"]
    assert m["subgroups.accuracy[site=B]"] < m["subgroups.accuracy[site=A]"]
    assert m["subgroups.accuracy_gap[attribute=site]"] > 0.02
    assert m["subgroups.p_holm[site=B]"] < 0.05
    assert "subgroups.robust_accuracy[site=B,outcome=rotation_mean[range=30]]" in m
    html = (demo_run / "index.html").read_text()
    assert "By site" in html and "Look at the errors, per group" in html


def test_subgroups_cli_group_option(demo_run: Path, tmp_path: Path) -> None:
    model = str(demo_run / "model" / "model.safetensors")
    data = str(demo_run / "data" / "test.csv")
    ok = CliRunner().invoke(
        app,
        [
            "subgroups",
            model,
            data,
            "--group",
            "site",
            "--min-support",
            "200",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
    )
    assert ok.exit_code == 0, ok.output
    doc = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [c["kind"] for c in doc["checks"]] == ["clean", "subgroups"]
    assert doc["metrics"]["subgroups.accuracy[site=B]"] is None  # 164 < 200: insufficient, inconclusive
    bad = CliRunner().invoke(app, ["subgroups", model, data, "--group", "hospital", "--out", str(tmp_path / "p")])
    assert bad.exit_code == 2
    assert "'hospital' is not a column of the data; available: ['site']" in bad.output


def test_ece_per_group_is_a_metric(predictions: dict[str, np.ndarray]) -> None:
    from torchmetrics.functional.classification import binary_calibration_error

    from auditkit.checks.subgroups import SubgroupResult
    from auditkit.ops.metrics import wilson_interval

    p = predictions
    groups, disparities = subgroup_stats(
        y_true=p["y"],
        y_pred=p["pred"],
        confidence=p["conf"],
        columns={"skin": list(p["skin"])},
        class_names=CLASSES,
        min_support=200,
    )
    result = SubgroupResult(
        attributes=("skin",),
        min_support=200,
        alpha=0.05,
        class_names=CLASSES,
        overall=wilson_interval(int((p["y"] == p["pred"]).sum()), len(p["y"])),
        groups=groups,
        disparities=disparities,
        notes=(),
    )
    m = result.metrics()
    correct = p["y"] == p["pred"]
    for g in groups:
        mask = p["skin"] == g.value
        # top-label ECE is the binary calibration error of (confidence, correct): torchmetrics, 15 bins
        ref = float(
            binary_calibration_error(
                torch.from_numpy(p["conf"][mask]), torch.from_numpy(correct[mask]).long(), n_bins=15
            )
        )
        assert g.ece == pytest.approx(ref, abs=1e-6)
        if g.sufficient:
            assert m[f"subgroups.ece[{g.key}]"] == g.ece
        else:
            assert math.isnan(m[f"subgroups.ece[{g.key}]"])  # too few images: not a number to gate on
    assert {r.name: r.direction for r in result.metric_records()}["subgroups.ece[skin=light]"] == "lower"
    assert any(not g.sufficient for g in groups) and any(g.sufficient for g in groups)


def test_masks_and_boxes_are_never_groups() -> None:
    """Automatic grouping takes metadata columns with 2-20 values, but not a mask path or box coordinates."""
    from auditkit.checks.subgroups import resolve_group_columns

    n = 12
    data = ImageDataset(
        images=torch.zeros(n, 1, 8, 8, dtype=torch.uint8),
        labels=torch.zeros(n, dtype=torch.long),
        class_names=("a", "b"),
        metadata={
            "site": tuple("AB"[i % 2] for i in range(n)),
            "mask": tuple(f"m{i % 3}.png" for i in range(n)),
            **{k: tuple(str(i % 2) for i in range(n)) for k in ("x0", "y0", "x1", "y1")},
        },
        ids=tuple(str(i) for i in range(n)),
        source="t",
        format="npz",
        sha256="0",
    )
    assert resolve_group_columns(data, ()) == ["site"]
    assert resolve_group_columns(data, ("x0",)) == ["x0"]  # asked for by name, it is used
