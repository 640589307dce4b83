from __future__ import annotations

import os
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch

from auditkit.config import AuditConfig
from auditkit.inputs.models import ModelSpec, save_model
from auditkit.pipeline import run_audit, write_outputs
from auditkit.report.html import render_report
from auditkit.results import RunResults
from auditkit.zoo import digits_cnn
from tests.conftest import write_png

XSS_LABEL = "<script>alert(1)</script>"
XSS_FILE = "<b>bold</b>.png"


@pytest.fixture
def xss_run(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(6):
        name = XSS_FILE if i == 0 else f"{i}.png"
        write_png(tmp_path / "imgs" / name, rng.integers(0, 256, (28, 28)))
        rows.append(f"imgs/{name},{XSS_LABEL if i % 2 else 'cat'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    spec = ModelSpec(arch="auditkit.zoo:digits_cnn", num_classes=2, input_size=(28, 28), channels=1)
    model = save_model(digits_cnn(num_classes=2), spec, tmp_path / "model.safetensors")
    cfg = AuditConfig(model=str(model), data=str(tmp_path / "m.csv"), device="cpu", progress=False)
    write_outputs(run_audit(cfg), tmp_path / "out")
    return tmp_path / "out"


def test_labels_and_paths_stay_text(xss_run: Path) -> None:
    html = (xss_run / "index.html").read_text()
    assert XSS_LABEL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html
    assert not re.search(r"<script", html, re.I)


def test_self_contained(xss_run: Path) -> None:
    html = (xss_run / "index.html").read_text()
    assert '<meta http-equiv="Content-Security-Policy"' in html
    assert "default-src 'none'" in unescape(html)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?https?:", html, re.I)
    assert "<svg" in html and "data:image/png;base64," in html


def test_report_from_json_alone(xss_run: Path) -> None:
    results = RunResults.read(xss_run / "results.json")
    assert render_report(results) == (xss_run / "index.html").read_text()


ARTIFACTS = Path(__file__).resolve().parents[2] / "reports" / "test-artifacts"


@pytest.mark.parametrize("width", [1366, 800])
def test_opens_offline_in_chromium_with_the_verdict_first(demo_run: Path, width: int) -> None:
    """At a desktop and a narrow width: no console errors, no network requests, no horizontal
    scrolling, and the verdict, the check tiles and the top finding on the first screen (900 px).
    The screenshots stay in reports/test-artifacts/ for a person to look at."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"demo-report-{width}px.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((demo_run / "index.html").resolve().as_uri())
        page.wait_for_load_state("load")
        assert page.locator("h1").inner_text() == "Model audit report"
        assert page.locator("#clean svg").count() == 3  # per class, confusion matrix, reliability diagram
        assert page.locator("#clean .gallery img").count() > 0
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), page.evaluate(
            "[document.documentElement.scrollWidth, window.innerWidth]"
        )
        for selector in (".verdict", ".tiles", "table.findings tbody tr"):
            box = page.locator(selector).first.bounding_box()
            assert box is not None and box["y"] + min(box["height"], 40) <= 900, (selector, box)
        assert page.locator(".verdict").inner_text().startswith("CI gate PASSED")
        sizes = "Array.from(document.querySelectorAll('#saliency table.strip img')).map(i => i.width)"
        assert min(page.evaluate(sizes)) >= 112  # saliency maps readable, with their colour scale
        assert page.locator("#saliency .colorbar").count() == 1
        page.screenshot(path=str(ARTIFACTS / f"demo-report-{width}px-first-screen.png"))
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    external = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert external == []
    assert errors == []
    assert shot.stat().st_size > 10_000


def test_the_first_thing_in_the_report_is_the_verdict(demo_run: Path) -> None:
    html = (demo_run / "index.html").read_text()
    verdict = html.index('class="verdict')
    assert verdict < html.index('class="tiles"') < html.index('class="findings"') < html.index('<section id="clean"')
    assert "CI gate PASSED" in html[verdict : verdict + 400]


def test_comparison_sorts_naturally_and_says_na(demo_run: Path) -> None:
    import dataclasses

    from auditkit.report.html import comparison_rows

    results = RunResults.read(demo_run / "results.json")
    names = [n for n in results.metrics if n.startswith("attack.robust_accuracy") and "ci_" not in n]
    largest = max(names, key=lambda n: float(n.split("eps=")[1].rstrip("]")))
    worse = {n: v - 0.1 for n, v in results.metrics.items()}
    worse[largest] = float("nan")
    rows = comparison_rows(results, dataclasses.replace(results, metrics=worse))
    attack = [r for r in rows if r["name"].startswith("attack.robust_accuracy")]
    eps = [float(r["name"].split("eps=")[1].rstrip("]")) for r in attack]
    assert eps == sorted(eps) and eps[0] == 0.0
    assert attack[0]["change"] == "+10.0 pt" and attack[0]["tone"] == "good"
    nan_row = attack[-1]
    assert nan_row["name"] == largest
    assert nan_row["old"] == "n/a" and nan_row["change"] == "n/a" and "baseline" in nan_row["reason"]
