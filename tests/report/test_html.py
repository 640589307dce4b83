from __future__ import annotations

import os
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch

from auditkit.audit import run_audit, write_outputs
from auditkit.config import AuditConfig
from auditkit.inputs.models import ModelSpec, save_model
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


def test_opens_offline_in_chromium(demo_run: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((demo_run / "index.html").resolve().as_uri())
        page.wait_for_load_state("load")
        assert page.locator("h1").inner_text() == "Model audit report"
        assert page.locator("#clean svg").count() == 2
        assert page.locator("#clean .gallery img").count() > 0
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    external = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert external == []
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000
