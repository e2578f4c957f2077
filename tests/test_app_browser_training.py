"""Training from the app in a real browser (Debian's chromium through Playwright): the Frozen LM
tab trains a prompt in front of the frozen demo base, the loss curve gets points while it runs,
Stop ends it, and the page shows the stopped state with nothing written.

The screenshot goes to ``test-artifacts/screenshots/`` (or ``$FUSION_UI_ARTIFACTS``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from apptools import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, RunningApp, save_screenshot

from fusion_ui.resources import demo_dir

TIMEOUT_MS = 60_000
POINTS = "() => document.querySelector('#frozen-curve .js-plotly-plot').data[0].x.length"

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


def test_frozen_lm_training_shows_a_live_loss_curve_and_stops(tmp_path: Path) -> None:
    app = RunningApp(demo_dir(), tmp_path / "state")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page: Any = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url + "?__theme=light")
            expect(page.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)
            page.click("#tab-frozen-button")
            expect(page.locator("#frozen-model textarea")).to_have_value(str(app.engine.demo.base))
            page.locator("#frozen-length input").first.fill("2")
            page.locator("#frozen-steps input").first.fill(
                "2000"
            )  # far more than the test waits for
            page.click("#frozen-train")
            curve, status = page.locator("#frozen-curve"), page.locator("#frozen-status")
            # the curve gets points while the run goes on, and the status line says where it is
            expect(curve).to_contain_text(
                re.compile(r"after \d+ of 2000 steps \(training\)"), timeout=TIMEOUT_MS
            )
            expect(status).to_contain_text(re.compile(r"Training \d+ / 2000"), timeout=TIMEOUT_MS)
            expect(status).to_contain_text("ETA", timeout=TIMEOUT_MS)
            first = page.evaluate(POINTS)
            page.wait_for_function(f"({POINTS})() > {first}", timeout=TIMEOUT_MS)  # it grows live
            page.click("#frozen-stop")
            expect(status).to_contain_text("Stopped", timeout=TIMEOUT_MS)
            expect(status).to_contain_text("Nothing was written", timeout=TIMEOUT_MS)
            expect(curve).to_contain_text("stopped at step", timeout=TIMEOUT_MS)
            stopped_at = page.evaluate(POINTS)
            assert first < stopped_at < 2000
            save_screenshot(page, "9-frozen-stopped.png", readme=False)
            browser.close()
        # Stop left nothing behind: no prompt folder, no staging folder
        trained = app.engine.context.state_dir / "trained"
        assert not trained.exists() or not [f for f in trained.rglob("*") if f.is_file()]
        assert not [
            j for jobs in app.engine.jobs._by_session.values() for j in jobs if not j.state.final
        ]
    finally:
        app.close()
