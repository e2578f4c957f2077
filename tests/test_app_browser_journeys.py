"""Journeys a new user takes in a real browser (Debian's chromium through Playwright): Stop that
tells the truth, a history and recent choices that follow the app, status lines that never go
stale, no stray toasts, Enter that generates, a reload that keeps the recipe, a closed page
that frees the device, and sliders that answer on release.

Screenshots of the moments checked go to ``test-artifacts/screenshots/`` (or
``$FUSION_UI_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apptools import RunningApp
from factory import demo_like_family

import fusion_ui.app.compare as compare_module
import fusion_ui.app.merges as merges_module
from fusion_ui import recipe_from_dict
from fusion_ui.runtime import JobState

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FUSION_UI_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
]
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    family = demo_like_family(tmp_path_factory.mktemp("demo"))
    running = RunningApp(family, tmp_path_factory.mktemp("state"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(app: RunningApp, browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.goto(app.url + "?__theme=light")
    expect(pg.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)
    yield pg
    context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_tab(page: Any, name: str) -> None:
    page.click(f"#tab-{name}-button")


def pick(page: Any, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").first.click()
    page.get_by_role("option", name=option).first.click()
    if dropdown == "#method":  # wait until the recipe has been recomposed for the method
        method = option.rsplit("(", 1)[-1].rstrip(")")
        ready = re.compile(rf"ready: {method} of|{re.escape(method)}.*needs|[Tt]ick")
        expect(page.locator("#recipe-note")).to_contain_text(ready, timeout=TIMEOUT_MS)


def session_of_page(app: RunningApp, kind: str, since: float) -> str:
    """The session of the page that started a job of ``kind`` after ``since`` (time.monotonic)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for session, jobs in list(app.engine.jobs._by_session.items()):
            if any(j.kind == kind and j.submitted >= since for j in list(jobs)):
                return session
        time.sleep(0.05)
    raise AssertionError(f"the page started no {kind} job")


@pytest.fixture
def slow_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every merge takes ~0.1 s per tensor (about 3 s for the test family): time to click Stop."""
    real = merges_module.run_merge

    def slow(plan: Any, sink: Any, *, device: Any, progress: Any = None, cancel: Any = None) -> None:
        def report(p: Any) -> None:
            time.sleep(0.1)
            if progress is not None:
                progress(p)

        real(plan, sink, device=device, progress=report, cancel=cancel)

    monkeypatch.setattr(merges_module, "run_merge", slow)


# -- Stop --------------------------------------------------------------------------------------


def test_stop_after_a_finished_merge_says_nothing_is_running(page: Any) -> None:
    open_tab(page, "merge")
    page.click("#merge-button")
    expect(page.locator("#merge-status")).to_contain_text("Merged", timeout=TIMEOUT_MS)
    page.click("#stop-button")
    expect(page.locator("#merge-status")).to_contain_text("Nothing is running", timeout=TIMEOUT_MS)
    expect(page.locator("#merge-status")).to_contain_text("merge finished")


def test_stop_during_a_merge_ends_in_stopped_for_good(app: RunningApp, page: Any, slow_merges: None) -> None:
    since = time.monotonic()
    open_tab(page, "merge")
    page.click("#merge-button")
    expect(page.locator("#merge-status")).to_contain_text("Merging", timeout=TIMEOUT_MS)
    session = session_of_page(app, "merge", since)
    page.click("#stop-button")
    expect(page.locator("#merge-status")).to_contain_text("Stopped", timeout=TIMEOUT_MS)
    page.wait_for_timeout(1500)
    text = page.locator("#merge-status").inner_text()
    assert "Stopped" in text and "Stopping" not in text and "Merged" not in text
    assert app.engine.merges.preview_state(session) is None and app.engine.merges.session_merge(session) is None
    shot(page, "j-stop-during-merge")


def test_stop_right_after_merge_means_the_merge_does_not_happen(app: RunningApp, page: Any,
                                                                  slow_merges: None) -> None:
    open_tab(page, "merge")
    merges_before = [e for e in app.engine.context.history.entries if e["kind"] == "merge"]
    page.click("#merge-button")
    page.wait_for_timeout(30)
    page.click("#stop-button")
    page.wait_for_timeout(5000)  # longer than the slow merge would take
    status = page.locator("#merge-status").inner_text()
    assert "Merged" not in status and "Stopping" not in status
    assert "Stopped" in status or "Nothing is running" in status
    assert [e for e in app.engine.context.history.entries if e["kind"] == "merge"] == merges_before


# -- history and recent choices ----------------------------------------------------------------


def test_a_new_page_shows_the_history_and_loads_from_it(app: RunningApp, browser: Any) -> None:
    sel = app.engine.demo.selection()
    recipe = recipe_from_dict({"method": "ties", "base": sel["base"],
                               "models": [{"model": m, "weight": 0.5, "density": 0.4} for m in sel["models"]]})
    for _ in range(3):
        app.engine.merges.merge("someone-else", recipe)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app.url)
    expect(page.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)
    open_tab(page, "export")
    newest = app.engine.context.history.entries[-1]["id"]
    expect(page.locator("#history")).to_contain_text("ties", timeout=TIMEOUT_MS)
    page.locator("#history-pick input").first.click()
    options = page.get_by_role("option")
    expect(options.first).to_contain_text(f"#{newest}")
    options.first.click()
    page.click("#history-load")
    expect(page.locator("#method input").first).to_have_value("TIES (ties)", timeout=TIMEOUT_MS)
    expect(page.locator("#recipe-note")).to_contain_text("ties", timeout=TIMEOUT_MS)
    shot(page, "j-history-loaded")
    context.close()


def test_a_new_selection_is_a_recent_choice_at_once_and_live_merges_are_not_history(
        app: RunningApp, page: Any) -> None:
    demo = app.engine.demo
    page.locator("#finetunes textarea").first.fill(str(demo.experts["alpha"]))
    page.click("#load-models")
    expect(page.locator("#models-table")).not_to_contain_text("expert_beta", timeout=TIMEOUT_MS)
    page.locator("#preset input").first.click()
    expect(page.get_by_role("option", name="Recent: base + expert_alpha").first).to_be_visible(timeout=TIMEOUT_MS)
    page.keyboard.press("Escape")

    open_tab(page, "merge")
    page.locator("#live input").check()
    count = len(app.engine.context.history.entries)
    box = page.locator("#drop_rate-0 input[type=range]").first.bounding_box()
    page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + box["height"] / 2)
    expect(page.locator("#merge-status")).to_contain_text("Live re-merge", timeout=TIMEOUT_MS)
    assert len(app.engine.context.history.entries) == count


# -- status lines after errors -----------------------------------------------------------------


def test_status_lines_follow_failures_and_failures_cover_nothing_else(app: RunningApp, page: Any,
                                                                       tmp_path: Path) -> None:
    page.locator("#base-model textarea, #base-model input").first.fill(str(tmp_path / "missing"))
    page.click("#load-models")
    expect(page.locator("#verdict")).to_contain_text("Could not load", timeout=TIMEOUT_MS)
    assert "Compatible" not in page.locator("#verdict").inner_text()
    page.reload()
    expect(page.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)

    open_tab(page, "merge")
    page.click("#merge-button")
    expect(page.locator("#merge-status")).to_contain_text("Merged", timeout=TIMEOUT_MS)
    pick(page, "#method", "SLERP (slerp)")
    page.locator("#use-1 input").uncheck()
    page.click("#merge-button")
    expect(page.locator("#merge-status")).to_contain_text("Failed", timeout=TIMEOUT_MS)
    assert "Merged" not in page.locator("#merge-status").inner_text()

    page.locator("#use-1 input").check()
    open_tab(page, "export")
    page.locator("#export-folder textarea, #export-folder input").first.fill("../outside")
    page.click("#export-button")
    expect(page.locator("#export-result")).to_contain_text(".. is not allowed", timeout=TIMEOUT_MS)
    expect(page.locator("#export-result")).to_contain_text("Failed")
    shot(page, "j-failed-export")
    for part in ("#history", "#model-card", "#export-result"):  # Gradio's own status overlays stay hidden
        trackers = page.locator(f"{part} [data-testid='status-tracker']")
        for k in range(trackers.count()):
            classes = trackers.nth(k).get_attribute("class") or ""
            assert "hide" in classes.split(), f"an error overlay covers {part}: {classes}"


# -- the form: no stray toasts, typed text kept, the preview only for DARE ---------------------


def test_start_from_does_not_overwrite_typed_text(page: Any) -> None:
    page.locator("#preset input").first.click()
    page.keyboard.press("Escape")
    box = page.locator("#finetunes textarea").first
    box.fill("/my/own/fine-tune")
    page.wait_for_timeout(1000)
    assert box.input_value() == "/my/own/fine-tune"


def test_implicit_changes_never_toast_and_the_preview_follows_the_method(page: Any) -> None:
    open_tab(page, "merge")
    expect(page.locator("#dare-preview")).to_be_visible(timeout=TIMEOUT_MS)
    pick(page, "#method", "SLERP (slerp)")
    expect(page.locator("#dare-preview")).to_be_hidden(timeout=TIMEOUT_MS)
    for _ in range(3):
        page.locator("#use-1 input").uncheck()
        page.wait_for_timeout(300)
        page.locator("#use-1 input").check()
        page.wait_for_timeout(300)
    page.locator("#use-0 input").uncheck()
    expect(page.locator("#recipe-note")).to_contain_text("needs at least 2", timeout=TIMEOUT_MS)
    shot(page, "j-slerp-one-ticked")
    page.locator("#use-1 input").uncheck()
    expect(page.locator("#recipe-note")).to_contain_text(re.compile("tick “use in the merge”", re.I),
                                                         timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)
    assert page.locator(".toast-body").count() == 0
    page.locator("#use-0 input").check()  # the ticks stay as the user left them across methods
    pick(page, "#method", "DARE + TIES (dare_ties)")
    assert not page.locator("#use-1 input").is_checked()
    expect(page.locator("#dare-preview")).to_be_visible(timeout=TIMEOUT_MS)


def test_enter_in_the_prompt_generates(page: Any) -> None:
    open_tab(page, "compare")
    box = page.locator("#prompt textarea").first
    box.fill("alpha: abc =")
    box.press("Enter")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.gen-column textarea')].filter(t => t.value.trim()).length >= 3",
        timeout=TIMEOUT_MS)
    assert box.input_value() == "alpha: abc ="  # no newline added


def test_a_reload_keeps_the_method_and_the_recipe(page: Any) -> None:
    open_tab(page, "merge")
    pick(page, "#method", "TIES (ties)")
    page.wait_for_timeout(500)
    page.reload()
    expect(page.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)
    open_tab(page, "merge")
    expect(page.locator("#method input").first).to_have_value("TIES (ties)", timeout=TIMEOUT_MS)
    expect(page.locator("#merge-status")).to_contain_text("Restored", timeout=TIMEOUT_MS)


# -- the device is freed when a page goes away -------------------------------------------------


def test_closing_the_page_cancels_its_job(app: RunningApp, browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    entered = threading.Event()

    def endless(model: Any, tokenizer: Any, prompt: str, **options: Any) -> Any:
        entered.set()
        while True:
            options["cancel"].raise_if_cancelled()
            time.sleep(0.02)
            yield "x"

    monkeypatch.setattr(compare_module, "stream_continuation", endless)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app.url)
    expect(page.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)
    since = time.monotonic()
    open_tab(page, "compare")
    page.click("#generate")
    assert entered.wait(30)
    session = session_of_page(app, "generate", since)
    job = next(j for j in app.engine.jobs.jobs(session) if j.kind == "generate")
    context.close()  # the tab goes away mid-generation
    assert job.wait(30), "the generation kept the device after its page closed"
    assert job.state is JobState.CANCELLED
    other = app.engine.merges.start("another-user", recipe_from_dict({
        "method": "linear", "models": [{"model": m} for m in app.engine.demo.selection()["models"]],
    }))
    assert other.wait(30) and other.state is JobState.FINISHED


# -- sliders answer on release -----------------------------------------------------------------


def test_a_released_slider_redraws_the_preview_and_re_merges_live(page: Any) -> None:
    open_tab(page, "merge")
    expect(page.locator("#preview-text")).to_contain_text("p = 0.9", timeout=TIMEOUT_MS)
    page.locator("#live input").check()
    box = page.locator("#drop_rate-0 input[type=range]").first.bounding_box()
    start = time.perf_counter()
    page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + box["height"] / 2)
    expect(page.locator("#preview-text")).not_to_contain_text("p = 0.9", timeout=TIMEOUT_MS)
    preview_s = time.perf_counter() - start
    expect(page.locator("#merge-status")).to_contain_text("Live re-merge", timeout=TIMEOUT_MS)
    merged_s = time.perf_counter() - start
    value = float(page.locator("#drop_rate-0 input[type=number]").first.input_value())
    assert value < 0.5 and f"p = {value:g}" in page.locator("#preview-text").inner_text()
    # Timings are for the record (benchmarks/ui_latency.py holds the targets), not asserted here.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "slider-release.txt").write_text(f"preview {preview_s:.2f} s, live re-merge {merged_s:.2f} s\n")
