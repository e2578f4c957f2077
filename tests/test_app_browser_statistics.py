"""Data-aware merges from the app in a real browser (Debian's chromium through Playwright): picking
RegMean shows *Compute statistics* with the demo's skill examples preselected; one click computes
the Gram statistics of every demo expert, fills the per-model folder boxes, and **Merge** then
just works.

The screenshot goes to ``test-artifacts/screenshots/`` (or ``$FUSION_UI_ARTIFACTS``); with
``FUSION_UI_UPDATE_SCREENSHOTS=1`` it is also copied to ``assets/ui/screenshots/`` for the README.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from apptools import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, RunningApp, save_screenshot

from fusion_ui.resources import demo_dir

TIMEOUT_MS = 60_000

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


def test_regmean_computes_the_statistics_fills_the_folders_and_merges(tmp_path: Path) -> None:
    app = RunningApp(demo_dir(), tmp_path / "state")
    try:
        assert [d for d in app.blocks.config["dependencies"] if not d.get("api_name")] == []
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page: Any = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url + "?__theme=light")
            expect(page.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)
            page.click("#tab-merge-button")
            section = page.locator("#stats-section").first  # gradio gives a group its id twice
            expect(section).to_be_hidden()  # DARE-TIES reads no statistics
            page.locator("#method input").first.click()
            page.get_by_role("option", name="RegMean (regmean)").first.click()
            expect(page.locator("#recipe-note")).to_contain_text("ready: regmean of", timeout=TIMEOUT_MS)
            expect(section).to_be_visible()
            # DARE in front is off: its drop rate, seed and preview are hidden until it is ticked
            drop = page.locator("#drop_rate-0").first
            expect(drop).to_be_hidden()
            expect(page.locator("#seed").first).to_be_hidden()
            page.locator("#param-dare input").first.check()
            expect(drop).to_be_visible(timeout=TIMEOUT_MS)
            expect(page.locator("#seed").first).to_be_visible()
            page.locator("#param-dare input").first.uncheck()
            expect(drop).to_be_hidden(timeout=TIMEOUT_MS)
            expect(page.get_by_label("the demo's skill examples (each expert on its own skill)")).to_be_checked()
            page.locator("#stats-examples input").fill("8")
            page.click("#stats-compute")
            status = page.locator("#stats-status")
            expect(status).to_contain_text("3 computed", timeout=TIMEOUT_MS)
            root = str(app.engine.statistics.root)
            for i in range(3):
                expect(page.locator(f"#gram-{i} textarea")).to_have_value(re.compile(re.escape(root) + r"/gram-expert_"))
            page.click("#merge-button")  # reads the filled folders (an empty one would fail the merge)
            expect(page.locator("#merge-status")).to_contain_text("Merged", timeout=TIMEOUT_MS)
            merged = app.engine.merges.session_merge(next(iter(app.engine.context.merges)))
            assert [e.parameters["gram"] for e in merged.recipe.models] == [
                page.locator(f"#gram-{i} textarea").input_value() for i in range(3)]
            assert save_screenshot(page, "3-merge-statistics.png").stat().st_size > 10_000
            # a second click reuses them: the same folders, nothing computed
            page.click("#stats-compute")
            expect(status).to_contain_text("3 reused", timeout=TIMEOUT_MS)
            browser.close()
        assert len(list(app.engine.statistics.root.iterdir())) == 3
    finally:
        app.close()
