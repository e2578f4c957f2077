"""The Sweep tab: a grid around the Merge tab's recipe, in the app's engine and in a real browser.

The facade on the shipped demo family (axes from the method's schema, typed values, every bad
input a message before any work, a 2 x 2 grid whose table, heatmap and best cell agree), then
the journey by clicks: run a sweep, see its heatmap, send the best cell to the Merge tab, merge.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apptools import RunningApp

from fusion_ui.app import Engine
from fusion_ui.app.sweeps import AxisChoice, parse_values
from fusion_ui.errors import FusionError, InputError
from fusion_ui.recipe import load_recipe
from fusion_ui.resources import demo_dir, demo_recipe
from fusion_ui.sweep import SweepResult

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FUSION_UI_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
TIMEOUT_MS = 90_000
SKILLS = ["upper", "shift"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    state = tmp_path_factory.mktemp("state")
    e = Engine(demo_dir=demo_dir(), device="cpu", state_dir=state, export_root=state / "exports")
    yield e
    e.close()


@pytest.fixture(scope="module")
def swept(engine: Engine) -> SweepResult:
    recipe = load_recipe(demo_recipe("dare_ties"))
    axes = [AxisChoice("drop_rate", "0.5, 0.99"), AxisChoice("lambda", "1:3:2")]
    return engine.context.wait(engine.sweeps.start("s", recipe, axes, skills=SKILLS, items_per_skill=5))


def test_axes_come_from_the_methods_schema(engine: Engine) -> None:
    assert engine.sweeps.axis_parameters("dare_ties") == ["lambda", "weight", "drop_rate", "seed"]
    assert "t" in engine.sweeps.axis_parameters("slerp")
    assert "normalize" not in engine.sweeps.axis_parameters("linear")  # a switch is not an axis
    assert engine.sweeps.eval_skills() == ["general", "mirror", "shift", "upper"]


@pytest.mark.parametrize(("text", "want"), [("0.1, 0.5 ,0.9", [0.1, 0.5, 0.9]), ("0:1:3", [0.0, 0.5, 1.0]),
                                            ("2", [2.0]), ("0.5; 1", [0.5, 1.0])])
def test_values_as_typed(text: str, want: list[float]) -> None:
    assert parse_values(text, "lambda") == want


@pytest.mark.parametrize(("text", "parameter", "message"), [
    ("", "lambda", "give values"), ("a, b", "lambda", "neither numbers"), ("0:1", "lambda", "neither numbers"),
    ("1.5", "seed", "whole numbers"), ("nan", "lambda", "finite"), ("0:1:0", "lambda", "count must be"),
])
def test_bad_values_are_messages(text: str, parameter: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_values(text, parameter)


@pytest.mark.parametrize(("axes", "skills", "message"), [
    ([], SKILLS, "pick one or two axes"),
    ([AxisChoice("lambda", "1"), AxisChoice("lambda", "2")], SKILLS, "same parameter"),
    ([AxisChoice("lambda", "0:2:21"), AxisChoice("drop_rate", "0:0.99:21")], SKILLS, "441 cells"),
    ([AxisChoice("lambda", "1")], ["nope"], "pick the skills"),
    ([AxisChoice("drop_rate", "0.5, 1.5")], SKILLS, "drop_rate"),  # out of the parameter's range
])
def test_bad_sweeps_are_refused_before_any_job(engine: Engine, axes: list[AxisChoice], skills: list[str],
                                               message: str) -> None:
    recipe = load_recipe(demo_recipe("dare_ties"))
    with pytest.raises(FusionError, match=message):
        engine.sweeps.start("s", recipe, axes, skills=skills)
    assert engine.last_job("s", ["sweep"]) is None


def test_ray_is_only_what_the_app_was_started_with(engine: Engine) -> None:
    # the page cannot point the server at a cluster: only `fusion-ui app --ray ...` can
    assert engine.sweeps.ray_address is None
    recipe = load_recipe(demo_recipe("dare_ties"))
    with pytest.raises(InputError, match="started without a Ray cluster.*--ray local"):
        engine.sweeps.start("s", recipe, [AxisChoice("drop_rate", "0.5")], skills=SKILLS, on_ray=True)


def test_app_with_ray_but_without_the_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from fusion_ui.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["app", "--ray", "local", "--no-browser"]) == 2
    assert 'pip install "fusion-ui[ray]"' in capsys.readouterr().err


def test_a_two_axis_sweep_gives_its_table_heatmap_and_best_cell(engine: Engine, swept: SweepResult) -> None:
    table = engine.sweeps.table(swept)
    assert list(table.columns) == ["drop_rate", "lambda", "upper", "shift", "mean"]
    assert [tuple(r) for r in table[["drop_rate", "lambda"]].itertuples(index=False)] == [
        (0.5, 1.0), (0.5, 3.0), (0.99, 1.0), (0.99, 3.0)]
    assert ((table["upper"] + table["shift"]) / 2 - table["mean"]).abs().max() < 0.051  # % rounded to 0.1
    heat = engine.sweeps.chart(swept).data[0]
    assert heat.type == "heatmap" and list(heat.y) == ["0.5", "0.99"] and list(heat.x) == ["1.0", "3.0"]
    assert [list(r) for r in heat.z] == [list(100 * swept.table["mean"].iloc[:2]), list(100 * swept.table["mean"].iloc[2:])]
    best = engine.sweeps.cell_recipe(swept)
    top = swept.table.loc[swept.table["mean"].idxmax()]
    assert best.parameters["lambda"] == top["lambda"]
    assert [e.parameters["drop_rate"] for e in best.models] == [top["drop_rate"]] * 3
    third = engine.sweeps.cell_recipe(swept, 2)
    assert third.parameters["lambda"] == 1.0 and third.models[0].parameters["drop_rate"] == 0.99
    with pytest.raises(InputError, match="no row 9"):
        engine.sweeps.cell_recipe(swept, 8)
    assert engine.sweeps.csv_path(swept).is_file()


def test_one_axis_draws_a_line_per_skill_and_the_mean(engine: Engine) -> None:
    recipe = load_recipe(demo_recipe("dare_ties"))
    job = engine.sweeps.start("s", recipe, [AxisChoice("drop_rate", "0.5, 0.9")], skills=SKILLS, items_per_skill=3)
    fig = engine.sweeps.chart(engine.context.wait(job))
    assert [d.name for d in fig.data] == ["upper", "shift", "mean"] and list(fig.data[0].x) == [0.5, 0.9]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
@pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
def test_sweep_tab_in_a_browser_runs_and_sends_the_best_cell_to_merge(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    app = RunningApp(demo_dir(), tmp_path / "state")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
            page: Any = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url + "?__theme=light")
            expect(page.locator("#verdict")).to_contain_text("Compatible", timeout=TIMEOUT_MS)
            page.click("#tab-sweep-button")
            page.locator("#sweep-values-1 textarea, #sweep-values-1 input").first.fill("0.5, 0.99")
            page.locator("#sweep-values-2 textarea, #sweep-values-2 input").first.fill("1, 3")
            page.locator("#sweep-items input").first.fill("4")
            page.click("#sweep-run")
            expect(page.locator("#sweep-status")).to_contain_text("4 cells", timeout=TIMEOUT_MS)
            page.locator("#sweep-chart .js-plotly-plot").first.wait_for(timeout=TIMEOUT_MS)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "5-sweep.png"), full_page=True)
            done = [j for jobs in app.engine.jobs._by_session.values() for j in jobs if j.kind == "sweep"][-1].result
            best = done.table.loc[done.table["mean"].idxmax()]

            page.click("#sweep-use")
            expect(page.locator("#merge-status")).to_contain_text("From the sweep", timeout=TIMEOUT_MS)
            number = page.locator("#drop_rate-0 input[type=number]").first
            expect(number).to_have_value(f"{best['drop_rate']:g}", timeout=TIMEOUT_MS)
            page.click("#merge-button")
            expect(page.locator("#merge-status")).to_contain_text("Merged", timeout=TIMEOUT_MS)
            session = next(s for s, jobs in app.engine.jobs._by_session.items() if any(j.kind == "sweep" for j in jobs))
            merged = app.engine.merges.session_merge(session).recipe
            assert merged.parameters["lambda"] == best["lambda"]
            assert [e.parameters["drop_rate"] for e in merged.models] == [best["drop_rate"]] * 3
            browser.close()
    finally:
        app.close()
