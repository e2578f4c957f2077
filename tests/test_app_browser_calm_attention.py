"""What the bridges read, in a real browser (Debian's chromium through Playwright): the Compose
tab shows the demo bridges' layer diagram, one click reads the preselected held-out item,
answers it and draws one heatmap per bridge (the mean over heads, or one head), and the diagram of the layer pairs to train
follows what is typed.

The screenshot goes to ``test-artifacts/screenshots/`` (or ``$FUSION_UI_ARTIFACTS``); with
``FUSION_UI_UPDATE_SCREENSHOTS=1`` it is also copied to ``assets/ui/screenshots/`` for the README.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from apptools import BROWSER_MARKS, CHROMIUM, CHROMIUM_ARGS, RunningApp, save_screenshot

from fusion_ui.app.compose import READ_PROMPT
from fusion_ui.resources import demo_dir

TIMEOUT_MS = 60_000
HEATMAPS = "() => document.querySelector('#compose-attention .js-plotly-plot').data.filter(t => t.type === 'heatmap').length"

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


def section_shot(page: Any, name: str) -> Path:
    """A screenshot from the section's heading to the bottom of its figure."""
    top = page.locator("#compose-read-heading").bounding_box()
    bottom = page.locator("#compose-attention").bounding_box()
    scroll = page.evaluate("() => window.scrollY")
    clip = {"x": 0, "y": top["y"] + scroll - 12, "width": 1400,
            "height": bottom["y"] + bottom["height"] - top["y"] + 24}
    return save_screenshot(page, name, clip=clip)


def test_compose_tab_shows_what_the_demo_bridges_read(tmp_path: Path) -> None:
    app = RunningApp(demo_dir(), tmp_path / "state")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page: Any = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url + "?__theme=light")
            page.click("#tab-compose-button")
            expect(page.locator("#compose-read-prompt textarea")).to_have_value(READ_PROMPT)
            expect(page.locator("#compose-layers")).to_contain_text("which m_A block feeds which m_B block",
                                                                    timeout=TIMEOUT_MS)
            page.click("#compose-read")
            status = page.locator("#compose-read-status")
            expect(status).to_contain_text("Read 3 bridges over 15 tokens", timeout=TIMEOUT_MS)
            expect(status).to_contain_text("(right)")
            expect(page.locator("#compose-read-answer textarea")).to_have_value("14")
            page.locator("#compose-attention .js-plotly-plot").first.wait_for(timeout=TIMEOUT_MS)
            assert page.evaluate(HEATMAPS) == 3
            expect(page.locator("#compose-attention")).to_contain_text("bridge 2: m_A block 3 → m_B block 1")
            page.wait_for_timeout(300)  # let plotly finish drawing before the picture
            assert section_shot(page, "8-compose-attention.png").stat().st_size > 10_000
            # picking one head reads again and draws that head's weights
            page.locator("#compose-read-head input").click()
            page.get_by_role("option", name="head 2").click()
            expect(page.locator("#compose-attention")).to_contain_text("(head 2)", timeout=TIMEOUT_MS)
            # the diagram of the pairs to train redraws as they are typed
            page.click("#compose-training button")
            pairs = page.locator("#compose-train-pairs textarea")
            expect(pairs).to_have_value("3:0,3:1,3:2")
            pairs.fill("0:1,2:3")
            expect(page.locator("#compose-train-layers")).to_contain_text("bridge 2: 2 → 3", timeout=TIMEOUT_MS)
            expect(page.locator("#compose-train-layers")).to_contain_text("2 bridges to train")
            browser.close()
    finally:
        app.close()
