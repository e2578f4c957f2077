"""The Cocktail tab: LM-Cocktail's weights from a few examples, in the app.

On the shipped demo family and its forgetful (no-replay) upper expert: the preset that picks
them, the losses job, weights that follow the temperature without a model run, edited weights,
the merge that lands in the session like any other (checked tensor by tensor), typed examples
and their errors; then the same journey in a real browser (Debian's chromium, Playwright).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from apptools import RunningApp
from safetensors.torch import load_file

import fusion_ui.evals.run as eval_run
from fusion_ui.app import Engine
from fusion_ui.app.cocktail import parse_typed_examples
from fusion_ui.errors import InputError
from fusion_ui.recipe import load_recipe
from fusion_ui.resources import demo_dir
from fusion_ui.tune import CocktailResult

PRESET = "Demo: base + the upper expert that forgot (for LM-Cocktail)"
CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FUSION_UI_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    state = tmp_path_factory.mktemp("state")
    e = Engine(demo_dir=demo_dir(), device="cpu", state_dir=state, export_root=state / "exports")
    yield e
    e.close()


@pytest.fixture(scope="module")
def scored(engine: Engine) -> CocktailResult:
    """The losses of the base and the forgetful expert on the shipped 5 upper examples."""
    sel = engine.models.presets()[PRESET]
    examples = engine.cocktail.examples("", None, "upper_5")
    job = engine.cocktail.start("s", [sel["base"], *sel["models"]], examples, base=sel["base"])
    return engine.context.wait(job)


def softmax(losses: list[float], t: float) -> list[float]:
    terms = [math.exp(-v / t) for v in losses]
    return [x / sum(terms) for x in terms]


def test_the_forgetful_expert_is_a_preset_and_not_in_the_default_family(engine: Engine) -> None:
    presets = engine.models.presets()
    demo = engine.demo
    assert presets[PRESET]["models"] == [str(demo.forgetful["upper"])]
    assert str(demo.forgetful["upper"]) not in presets["Built-in demo family"]["models"]
    assert sorted(engine.cocktail.demo_examples()) == ["mirror_5", "shift_5", "upper_5"]


def test_losses_pick_the_expert_for_its_skill_and_weights_are_their_softmax(scored: CocktailResult) -> None:
    assert scored.labels == ("base", "expert_upper") and scored.n_examples == 5
    base_loss, expert_loss = scored.losses
    assert expert_loss < 0.01 < 1.0 < base_loss  # the expert knows the skill; the base does not
    assert scored.weights == pytest.approx(softmax(list(scored.losses), 5.0), abs=1e-12)
    assert scored.weights[1] > scored.weights[0]


def test_the_temperature_moves_the_weights_without_running_a_model(
        engine: Engine, scored: CocktailResult, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a reweight loaded a model")

    monkeypatch.setattr(eval_run, "load_causal_lm", no_model)
    sharp = engine.cocktail.reweight(scored, 0.5)
    assert sharp.weights == pytest.approx(softmax(list(scored.losses), 0.5), abs=1e-12)
    assert sharp.weights[1] > 0.98 and sharp.losses == scored.losses
    floored = engine.cocktail.reweight(scored, 0.5, 0.6)
    assert floored.weights == pytest.approx([0.6, 0.4], abs=1e-12)
    chart = engine.cocktail.chart(floored)
    assert [list(t.y) for t in chart.data] == [list(scored.losses), pytest.approx([60.0, 40.0])]
    with pytest.raises(InputError, match="temperature"):
        engine.cocktail.reweight(scored, 0)
    with pytest.raises(InputError, match="base floor"):
        engine.cocktail.reweight(scored, 5, 1.5)


def test_merging_the_weights_gives_the_weighted_sum_and_keeps_where_they_came_from(
        engine: Engine, scored: CocktailResult) -> None:
    recipe = engine.cocktail.recipe(scored, [1, 3])  # edited in the table: 1/4 base, 3/4 expert
    assert recipe.method == "linear" and [e.parameters["weight"] for e in recipe.models] == [1.0, 3.0]
    assert recipe.weights_from is not None and recipe.weights_from.examples == 5
    assert [c.loss for c in recipe.weights_from.candidates] == pytest.approx(list(scored.losses), rel=1e-5)
    engine.merges.merge("s", recipe)
    merged = engine.merges.preview_state("s")
    base = load_file(str(Path(scored.candidates[0]) / "model.safetensors"))
    expert = load_file(str(Path(scored.candidates[1]) / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    want = 0.25 * base[name].float() + 0.75 * expert[name].float()
    got = merged[name]  # rounded to the output dtype, the base's bf16, as an export would write it
    assert torch.equal(got, got.bfloat16().float())
    assert torch.equal(got, want.bfloat16().float())
    assert engine.merges.session_merge("s").recipe.weights_from == recipe.weights_from


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1, -1], "0 or more"), (["x", 1], "must be a number"), ([0, 0], "above 0"), ([float("nan"), 1], "0 or more")],
)
def test_bad_edited_weights_are_messages(engine: Engine, scored: CocktailResult, weights: list[Any],
                                         message: str) -> None:
    with pytest.raises(InputError, match=message):
        engine.cocktail.recipe(scored, weights)


def test_typed_examples_in_both_forms() -> None:
    items = parse_typed_examples('upper: abc => ABC\n\n{"prompt": "upper: xy =", "answer": "XY"}\n')
    assert [(i.prompt, i.answer) for i in items] == [("upper: abc", "ABC"), ("upper: xy =", "XY")]


@pytest.mark.parametrize(
    ("text", "message"),
    [("just words", "line 1 is neither"), ("ok => fine\n{bad json", "line 2 is not valid JSON"),
     ('{"prompt": "p"}', "line 1 needs"), (" => answer", "empty prompt")],
)
def test_typed_examples_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_typed_examples(text)


def test_examples_and_candidates_are_checked_before_any_job(engine: Engine) -> None:
    with pytest.raises(InputError, match="give a few examples"):
        engine.cocktail.examples("", None, None)
    with pytest.raises(InputError, match="no demo example set 'nope'"):
        engine.cocktail.examples("", None, "nope")
    with pytest.raises(InputError, match="up to 200"):
        engine.cocktail.examples("\n".join(f"p{k} => a" for k in range(201)))
    with pytest.raises(InputError, match="at least two candidates"):
        engine.cocktail.start("s", [str(engine.demo.base)], parse_typed_examples("a => b"))


# -- in a real browser ---------------------------------------------------------------------------


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
def test_cocktail_tab_in_a_browser_scores_reweights_and_merges(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    app = RunningApp(demo_dir(), tmp_path / "state")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url + "?__theme=light")
            expect(page.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)
            page.locator("#preset input").first.click()
            page.get_by_role("option", name=PRESET).first.click()
            expect(page.locator("#finetunes textarea").first).to_have_value(str(app.engine.demo.forgetful["upper"]),
                                                                             timeout=TIMEOUT_MS)
            page.click("#load-models")
            expect(page.locator("#models-table")).not_to_contain_text("expert_shift", timeout=TIMEOUT_MS)

            page.click("#tab-cocktail-button")
            page.click("#cocktail-compute")
            expect(page.locator("#cocktail-status")).to_contain_text("Losses of 2 candidates on 5 examples",
                                                                      timeout=TIMEOUT_MS)
            table = page.locator("#cocktail-table")
            expect(table).to_contain_text("expert_upper")
            session_results = [j for jobs in app.engine.jobs._by_session.values() for j in jobs
                               if j.kind == "cocktail"]
            result = session_results[-1].result
            expect(table).to_contain_text(f"{round(result.weights[1], 4):g}")

            # The temperature slider's release reweights at once (no model run): at a lower T the
            # base's share shrinks (about a quarter near T = 2).
            box = page.locator("#cocktail-temperature input[type=range]").first.bounding_box()
            page.mouse.click(box["x"] + 0.1 * box["width"], box["y"] + box["height"] / 2)
            number = page.locator("#cocktail-temperature input[type=number]").first
            expect(number).not_to_have_value("5", timeout=TIMEOUT_MS)
            moved = app.engine.cocktail.reweight(result, float(number.input_value()))
            assert moved.weights[0] < result.weights[0]
            expect(table).to_contain_text(f"{round(moved.weights[0], 4):g}", timeout=TIMEOUT_MS)
            page.locator("#cocktail-chart .js-plotly-plot").first.wait_for(timeout=TIMEOUT_MS)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "4-cocktail.png"), full_page=True)

            page.click("#cocktail-merge")
            expect(page.locator("#cocktail-status")).to_contain_text("Merged", timeout=TIMEOUT_MS)
            page.click("#tab-compare-button")
            expect(page.locator("#column-2")).to_contain_text("merge", timeout=TIMEOUT_MS)  # base, expert, merge

            # Export writes the cocktail with where its weights came from, in the recipe and the card.
            page.click("#tab-export-button")
            page.locator("#export-folder textarea, #export-folder input").first.fill("cocktail")
            page.click("#export-button")
            expect(page.locator("#export-result")).to_contain_text("Exported", timeout=TIMEOUT_MS)
            folder = app.export_root / "cocktail"
            exported = load_recipe(folder / "fusion_ui_recipe.yaml")
            assert exported.weights_from is not None and exported.weights_from.temperature == pytest.approx(
                moved.temperature)
            card = (folder / "README.md").read_text()
            assert "Where the weights came from" in card
            assert "were edited" not in card  # the table's rounding of the weights is not an edit
            assert [e.parameters["weight"] for e in exported.models] == pytest.approx(list(moved.weights), abs=1e-6)
            browser.close()
    finally:
        app.close()
