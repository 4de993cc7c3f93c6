"""The report in a real browser: headless Chromium renders it without console errors, and the
verdict, the leak gallery and the charts are visible.

Chromium comes from the distribution's packages: the test installs it with apt-get when it is
missing and the run is root (as on CI); otherwise it is skipped with the reason.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import run_cli

pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True, env=env)
        path = shutil.which("chromium")
    if path is None:
        pytest.skip("Chromium is not installed and cannot be installed here (apt-get install chromium)")
    return path


def test_report_renders_in_chromium(tiny_sets, tmp_path, chromium):
    from playwright.sync_api import sync_playwright

    html = tmp_path / "report.html"
    code, _, _ = run_cli("check", "--generator", tiny_sets["copy_gen"], "--train", tiny_sets["train"],
                         "--holdout", tiny_sets["holdout"], "--num-samples", "150", "--tta", "none", "--html", html)
    assert code == 1
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: problems.append(f"network request {r.url}") if not r.url.startswith(("file:", "data:")) else None)
        page.goto(html.as_uri())
        assert page.locator("#verdict").is_visible()
        assert "FAIL" in page.locator("#verdict h1").inner_text()
        gallery = page.locator("#leaks .gallery img")
        assert gallery.count() > 0 and gallery.first.is_visible()
        assert gallery.first.evaluate("img => img.complete && img.naturalWidth > 0")
        for chart in ("#leaks svg", "#modes svg"):
            box = page.locator(chart).first.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 50, chart
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert not problems, problems
    assert (tmp_path / "report.png").stat().st_size > 10_000
