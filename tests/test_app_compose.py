"""The Compose tab: the shipped CALM pair scored and generated beside each model alone, in the
app's engine and in a real browser."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apptools import RunningApp

from fusion_ui import figures
from fusion_ui.app import Engine
from fusion_ui.app.compose import ROLES, BridgesTraining, Composition
from fusion_ui.compose import load_composition, read_bridges_info
from fusion_ui.errors import FusionError, InputError
from fusion_ui.evals import greedy_generate
from fusion_ui.resources import demo_dir
from fusion_ui.runtime import JobState

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


# -- training bridges from the app -----------------------------------------------------------


def quick_bridges(pair: Composition, **changes: object) -> BridgesTraining:
    """A few steps of fresh bridges for the demo pair on the demo's composition set."""
    form = {"anchor": pair.anchor, "augment": pair.augment, "steps": 3, "batch_size": 4}
    return BridgesTraining(**(form | changes))  # type: ignore[arg-type]


def test_bridges_trained_in_the_app_grow_a_loss_history_and_compose(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    job = engine.compose.start_training("t", quick_bridges(pair))
    seen = [len(engine.training.history(job).steps) for _ in job.watch(0.05)]
    result = engine.context.wait(job)
    assert seen == sorted(seen) and seen[-1] == 3 == len(result.losses)
    assert result.pairs == "3:0,3:1,3:2"  # the shipped demo bridges' pairs by default
    assert engine.compose.bridges_choices("t")[0] == (f"trained here: {Path(result.folder).name}", result.folder)
    info = read_bridges_info(result.folder)
    assert info.training["steps"] == 3 and info.training["n_items"] == 5000  # the demo's composition set
    assert result.trainable > 0 and "after 3 of 3 steps (done)" in figures.figure_title(engine.compose.curve(job))
    trained = Composition(pair.anchor, pair.augment, result.folder)
    answers = engine.context.wait(engine.compose.start_generation("t", trained, "hpg + amy =", max_new_tokens=2))
    assert list(answers) == list(ROLES)


def test_stop_mid_bridges_training_leaves_no_bridges_folder(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    job = engine.compose.start_training("stop-bridges", quick_bridges(pair, steps=5000))
    deadline = time.monotonic() + 60
    while len(engine.training.history(job).steps) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    (view,) = engine.stop("stop-bridges")
    assert view.state is JobState.CANCELLED and len(engine.training.history(job).steps) < 5000
    workspace = engine.training.workspace("stop-bridges")
    assert not workspace.exists() or list(workspace.iterdir()) == []
    assert [label for label, _ in engine.compose.bridges_choices("stop-bridges")] == ["the demo's shipped bridges"]


@pytest.mark.parametrize(("change", "message"), [
    ({"anchor": ""}, "give the anchor"),
    ({"data": "/nowhere/set.jsonl"}, "no such file"),
    ({"steps": 0}, "steps must be from 1"),
    ({"lr": -1}, "learning rate must be above 0"),
])
def test_bad_bridges_training_input_is_a_message_before_any_job(
        engine: Engine, change: dict[str, object], message: str) -> None:
    pair = engine.compose.demo_pair()
    with pytest.raises(InputError, match=message):
        engine.compose.start_training("bad-train", quick_bridges(pair, **change))
    assert engine.jobs.jobs("bad-train") == []


def test_layer_pairs_out_of_range_fail_as_a_message_and_write_nothing(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    job = engine.compose.start_training("far", quick_bridges(pair, pairs="9:0"))
    with pytest.raises(FusionError, match="out of range: 9:0"):
        engine.context.wait(job)
    assert not engine.training.workspace("far").exists()
