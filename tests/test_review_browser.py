"""The review parts of the report in headless Chromium: the copy button puts the exact
waiver snippet on the clipboard, the filters and the sort do what they say, without console
errors or network requests; with scripts off everything is still listed."""
from __future__ import annotations

import json
import tomllib

import pytest
import torch

from conftest import load_folder_as_tensor, run_cli, save_torchscript
from ganaudit.review.waivers import parse_review, waiver_snippet
from test_browser import chromium  # noqa: F401  (the session fixture that finds or installs Chromium)
from test_review_waivers import fill, waiver

pytest.importorskip("playwright.sync_api")
ARGS = ("--num-samples", "150", "--tta", "flip")


class FlipBankGenerator(torch.nn.Module):
    """Emits training images picked by z[:, 0], mirrored where z[:, 1] > 0."""

    def __init__(self, bank: torch.Tensor):
        super().__init__()
        self.register_buffer("bank", bank)
        self.z_dim = 8

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        j = (torch.special.ndtr(z[:, 0]) * self.bank.shape[0]).long().clamp(max=self.bank.shape[0] - 1)
        out = self.bank[j]
        out = torch.where((z[:, 1] > 0)[:, None, None, None], out.flip(-1), out)
        return out * 2 - 1


@pytest.fixture(scope="module")
def report(tiny_sets, tmp_path_factory) -> dict:
    """An audit with flipped and plain copies over three classes, re-run with class_0's images waived
    and against the first run as baseline."""
    root = tmp_path_factory.mktemp("review-browser")
    generator = save_torchscript(FlipBankGenerator(load_folder_as_tensor(tiny_sets["train"])), root / "flip.pt")
    common = ("--generator", generator, "--train", tiny_sets["train"], "--holdout", tiny_sets["holdout"], *ARGS)
    assert run_cli("check", *common, "--json", root / "first.json")[0] == 1
    first = json.loads((root / "first.json").read_text())["memorization"]["flagged"]
    waived = sorted({e["train_sha256"] for e in first if e["train_class"] == "class_0"})
    (root / "review.toml").write_text("".join(waiver(d) for d in waived))
    run_cli("check", *common, "--review-file", root / "review.toml", "--baseline", root / "first.json",
            "--json", root / "r.json", "--html", root / "r.html")
    assert run_cli("compare", root / "first.json", root / "r.json", "--html", root / "diff.html")[0] == 0
    return {"root": root, "result": json.loads((root / "r.json").read_text()),
            "html": root / "r.html", "diff": root / "diff.html"}


def _browse(chromium_path: str, scripts: bool = True):
    from playwright.sync_api import sync_playwright

    p = sync_playwright().start()
    browser = p.chromium.launch(executable_path=chromium_path, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
    context = browser.new_context(java_script_enabled=scripts, viewport={"width": 1200, "height": 900})
    if scripts:
        context.grant_permissions(["clipboard-read", "clipboard-write"])
    problems: list[str] = []
    page = context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: problems.append(f"network request {r.url}")
            if not r.url.startswith(("file:", "data:")) else None)
    return p, browser, page, problems


def _visible(page) -> list[dict]:
    """The flagged rows a reader sees (laid out, not merely marked hidden), in page order."""
    return page.eval_on_selector_all("#flagged .flag", """rows => rows.filter(r => r.offsetParent !== null).map(r => ({
        sample: +r.dataset.sample, kind: r.dataset.kind, cls: r.dataset.class, waived: r.dataset.waived,
        p: +r.dataset.p, count: +r.dataset.count, order: +r.dataset.order}))""")


def test_filters_and_sort_in_chromium(report, chromium):  # noqa: F811
    flagged = report["result"]["memorization"]["flagged"]
    kinds = {e["augmentation"].split("(")[0] for e in flagged}
    assert {"identity", "hflip"} <= kinds and report["result"]["review"]["n_waived"] > 0
    playwright, browser, page, problems = _browse(chromium)
    try:
        page.goto(report["html"].as_uri())
        assert page.locator("#flag-filters").is_visible()
        assert len(_visible(page)) == len(flagged)
        for selector, value, wanted in (
                ("#filter-kind", "hflip", lambda e: e["augmentation"] == "hflip"),
                ("#filter-class", "class_1", lambda e: e["augmentation"] == "hflip" and e["train_class"] == "class_1"),
                ("#filter-kind", "", lambda e: e["train_class"] == "class_1"),
                ("#filter-class", "", lambda e: True),
                ("#filter-waived", "yes", lambda e: e["waived_by"] is not None),
                ("#filter-waived", "no", lambda e: e["waived_by"] is None)):
            page.select_option(selector, value)
            expected = sorted(e["sample_index"] for e in flagged if wanted(e))
            assert sorted(r["sample"] for r in _visible(page)) == expected, (selector, value)
            assert page.locator("#flag-count").inner_text() == f"{len(expected)} of {len(flagged)} shown"
        page.select_option("#filter-waived", "")
        order = {e["sample_index"]: i for i, e in enumerate(flagged)}
        hits = {}
        for e in flagged:
            hits[e["train_index"]] = hits.get(e["train_index"], 0) + 1
        for how, key in (("p", lambda e: (e["p_value"], order[e["sample_index"]])),
                         ("count", lambda e: (-hits[e["train_index"]], e["p_value"], order[e["sample_index"]])),
                         ("order", lambda e: order[e["sample_index"]])):
            page.select_option("#sort-by", how)
            assert [r["sample"] for r in _visible(page)] == [e["sample_index"] for e in sorted(flagged, key=key)], how
        assert page.locator("#compare").is_visible()  # --baseline: the comparison is in the report
    finally:
        browser.close()
        playwright.stop()
    assert not problems, problems


def test_copy_buttons_put_the_exact_snippet_on_the_clipboard(report, chromium):  # noqa: F811
    flagged = {e["sample_index"]: e for e in report["result"]["memorization"]["flagged"]}
    playwright, browser, page, problems = _browse(chromium)
    try:
        page.goto(report["html"].as_uri())
        page.select_option("#filter-waived", "no")
        page.select_option("#sort-by", "count")
        row = page.locator("#flagged .flag:not([hidden])").nth(2)
        sample = int(row.get_attribute("data-sample"))
        row.locator("button.copy").click()
        page.wait_for_function("document.querySelectorAll('button[data-copied]').length == 1", timeout=5000)
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == row.locator("pre.snippet").inner_text() == waiver_snippet(flagged[sample])
        assert row.locator("button.copy").inner_text() == "copied"
        evidence = page.locator("#evidence tr[data-waived='none']").first
        evidence.locator("button.copy").click()
        page.wait_for_function("document.querySelectorAll('button[data-copied]').length == 2", timeout=5000)
        per_image = page.evaluate("navigator.clipboard.readText()")
    finally:
        browser.close()
        playwright.stop()
    assert not problems, problems
    (w,) = parse_review(tomllib.loads(fill(copied)), "pasted")
    assert w.matches(flagged[sample]) and w.seed == tuple(flagged[sample]["seed"])
    (w,) = parse_review(tomllib.loads(fill(per_image)), "pasted")
    assert w.seed is None and sum(w.matches(e) for e in flagged.values()) >= 1


def test_without_scripts_everything_is_listed(report, chromium):  # noqa: F811
    flagged = report["result"]["memorization"]["flagged"]
    n_open = sum(e["waived_by"] is None for e in flagged)
    playwright, browser, page, problems = _browse(chromium, scripts=False)
    try:
        page.goto(report["html"].as_uri())
        assert not page.locator("#flag-filters").is_visible()
        assert page.locator("#flagged .flag").count() == len(flagged)
        assert all(page.locator("#flagged .flag").nth(i).is_visible() for i in (0, len(flagged) - 1))
        assert page.locator("#flagged pre.snippet").count() == n_open
        assert page.locator("#flagged .waived").count() == len(flagged) - n_open
        assert page.locator("button.copy:visible").count() == 0
        page.goto(report["diff"].as_uri())
        assert page.locator("#compare-figures tr").count() > 10
    finally:
        browser.close()
        playwright.stop()
    assert not problems, problems
