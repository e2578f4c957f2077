"""The Compose tab: the shipped CALM pair scored and generated beside each model alone, in the
app's engine and in a real browser."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apptools import RunningApp

from fusion_ui.app import Engine
from fusion_ui.app.compose import Composition
from fusion_ui.compose import load_composition
from fusion_ui.errors import FusionError, InputError
from fusion_ui.evals import greedy_generate
from fusion_ui.resources import demo_dir

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FUSION_UI_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    state = tmp_path_factory.mktemp("state")
    e = Engine(demo_dir=demo_dir(), device="cpu", state_dir=state, export_root=state / "exports")
    yield e
    e.close()


def test_the_demo_pair_is_found_with_its_three_sets(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    assert pair is not None and Path(pair.bridges, "bridges.json").is_file()
    assert list(engine.compose.eval_sets()) == ["kv_arithmetic", "kv_substitution", "numeric_arithmetic"]


def test_scores_show_the_composition_doing_what_neither_model_does_alone(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    job = engine.compose.start_scores("s", pair, ["kv_arithmetic", "kv_substitution"], items=200)
    table = engine.compose.table(engine.context.wait(job)).set_index("model")
    assert list(table.index) == ["m_A", "m_B", "CALM"]
    assert table.loc["m_A", "kv_substitution"] >= 90  # m_A knows the keys
    # the shipped demo's table: CALM 41 % on held-out keys, m_A 8 %, m_B 11.5 %
    assert table.loc["CALM", "kv_arithmetic"] >= table.loc["m_B", "kv_arithmetic"] + 15
    assert table.loc["CALM", "kv_arithmetic"] >= table.loc["m_A", "kv_arithmetic"] + 15


def test_generation_answers_with_each_model_as_the_engine_does(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    answers = engine.context.wait(engine.compose.start_generation("s", pair, "hpg + amy =", max_new_tokens=4))
    calm, tok = load_composition(pair.anchor, pair.augment, pair.bridges, device="cpu")
    want = {role: greedy_generate(m, tok, ["hpg + amy ="], max_new_tokens=4, device="cpu")[0]
            for role, m in (("m_A", calm.augment), ("m_B", calm.anchor), ("CALM", calm))}
    assert answers == want


@pytest.mark.parametrize(("change", "message"), [
    ({"bridges": ""}, "give the bridges folder"),
    ({"anchor": " "}, "give the anchor"),
    ({"bridges": "/nowhere"}, "holds no bridges.json"),
])
def test_bad_compositions_are_messages_before_any_job(engine: Engine, change: dict[str, str], message: str) -> None:
    pair = engine.compose.demo_pair()
    bad = Composition(**({"anchor": pair.anchor, "augment": pair.augment, "bridges": pair.bridges} | change))
    with pytest.raises(InputError, match=message):
        engine.compose.start_generation("s", bad, "abc =")
    with pytest.raises(InputError, match="pick the sets"):
        engine.compose.start_scores("s", pair, [])
    with pytest.raises(InputError, match="type a prompt"):
        engine.compose.start_generation("s", pair, "  ")


def test_bridges_for_other_models_fail_as_a_message(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    swapped = Composition(pair.augment, pair.anchor, pair.bridges)  # anchor and augmenting model swapped
    job = engine.compose.start_generation("s", swapped, "hpg + amy =")
    with pytest.raises(FusionError, match="swapped"):
        engine.context.wait(job)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
def test_compose_tab_in_a_browser_scores_and_generates(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    app = RunningApp(demo_dir(), tmp_path / "state")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
            page: Any = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url + "?__theme=light")
            expect(page.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)
            page.click("#tab-compose-button")
            page.locator("#compose-items input").first.fill("200")  # every held-out item: a table worth showing
            page.click("#compose-score")
            expect(page.locator("#compose-status")).to_contain_text("Scored m_A, m_B and CALM", timeout=TIMEOUT_MS)
            expect(page.locator("#compose-table")).to_contain_text("CALM")
            page.locator("#compose-chart .js-plotly-plot").first.wait_for(timeout=TIMEOUT_MS)
            page.click("#compose-generate")
            expect(page.locator("#compose-status")).to_contain_text("Generated with each", timeout=TIMEOUT_MS)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "8-compose.png"), full_page=True)
            calm_answer = page.locator("#compose-out-CALM textarea").first.input_value()
            assert calm_answer.strip().lstrip("-").isdigit()  # an integer, as the arithmetic asks
            browser.close()
    finally:
        app.close()
