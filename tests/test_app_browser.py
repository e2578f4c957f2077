"""The app in a real headless browser (Debian's chromium through Playwright): the journey by clicks.

Screenshots go to ``test-artifacts/screenshots/`` (or ``$FUSION_UI_ARTIFACTS``); with
``FUSION_UI_UPDATE_SCREENSHOTS=1`` they are also copied to ``assets/ui/screenshots/`` for the
README. ``FUSION_UI_TEST_DEMO_DIR`` points the app at another family (e.g. ``assets/demo``) for
README pictures; by default a tiny random family is built in seconds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apptools import RunningApp
from factory import demo_like_family

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FUSION_UI_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
README_SHOTS = REPO / "assets" / "ui" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                       "(apt-get install chromium); Playwright's own browsers are never downloaded"),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
]
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    custom = os.environ.get("FUSION_UI_TEST_DEMO_DIR")
    family = Path(custom) if custom else demo_like_family(tmp_path_factory.mktemp("demo"))
    running = RunningApp(family, tmp_path_factory.mktemp("state"))
    experts = sorted(p.name for p in family.glob("expert_*"))
    running.first_expert, running.n_experts = experts[0], len(experts)  # type: ignore[attr-defined]
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("FUSION_UI_UPDATE_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, README_SHOTS / path.name)


def open_tab(page: Any, name: str) -> None:
    page.click(f"#tab-{name.lower()}-button")


def wait_text(page: Any, selector: str, text: str) -> None:
    sync_api.expect(page.locator(selector).first).to_contain_text(text, timeout=TIMEOUT_MS)


def test_journey_by_clicks(app: RunningApp, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app.url + "?__theme=light")
    # The demo family is loaded on start: the table and the verdict appear without a click.
    wait_text(page, "#verdict", "Compatible")
    wait_text(page, "#models-table", app.first_expert)  # type: ignore[attr-defined]
    shot(page, "1-models")

    open_tab(page, "Deltas")  # opening the tab runs the analysis
    wait_text(page, "#dare-verdicts", "DARE")
    page.locator("#delta-histogram .js-plotly-plot").first.wait_for(timeout=TIMEOUT_MS)
    shot(page, "2-deltas")

    open_tab(page, "Merge")
    page.locator("#drop_rate-0").wait_for(timeout=TIMEOUT_MS)
    page.click("#merge-button")
    wait_text(page, "#merge-status", "Merged")
    page.locator("#dare-preview .js-plotly-plot").first.wait_for(timeout=TIMEOUT_MS)
    shot(page, "3-merge")

    open_tab(page, "Compare")
    n = app.n_experts  # type: ignore[attr-defined]
    wait_text(page, f"#column-{n + 1}", "merge")  # base, every fine-tune, then the merge's column
    page.click("#generate")
    page.wait_for_function(
        f"() => [...document.querySelectorAll('.gen-column textarea')].filter(t => t.value.trim()).length >= {n + 2}",
        timeout=TIMEOUT_MS,
    )
    page.click("#score")
    page.locator("#score-chart .js-plotly-plot").first.wait_for(timeout=TIMEOUT_MS)
    shot(page, "4-compare")

    open_tab(page, "Export")
    page.locator("#export-folder textarea, #export-folder input").first.fill("exported")
    folder = app.export_root / "exported"
    page.click("#export-button")
    wait_text(page, "#export-result", "Exported")
    assert (folder / "config.json").is_file() and (folder / "README.md").is_file()
    shot(page, "5-export")

    # Dark theme, the Merge tab.
    page.click("#theme-toggle")
    open_tab(page, "Merge")
    page.wait_for_function("() => document.body.classList.contains('dark')", timeout=TIMEOUT_MS)
    page.wait_for_timeout(300)
    shot(page, "6-merge-dark")
    page.close()


def test_errors_show_as_messages(app: RunningApp, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(app.url)
    wait_text(page, "#verdict", "Compatible")
    base = page.locator("#base-model textarea, #base-model input").first
    base.fill(str(tmp_path / "missing"))
    wait_text(page, ".checklist", "no such folder")  # validated as you type
    page.click("#load-models")
    wait_text(page, ".toast-body", "model folder not found")
    assert "Traceback" not in page.content()
    shot(page, "7-error")
    page.close()
