"""Sweeps on the shipped demo family: the grid, the cells' scores, resume, cancel, bad specs,
best / Pareto, and the command line. Few items per skill, so each test takes seconds."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

import fusion_ui.merge as merge_module
from fusion_ui.cli import main
from fusion_ui.errors import RecipeError
from fusion_ui.evals import evaluate, load_causal_lm
from fusion_ui.merge import merge_to_state_dict
from fusion_ui.progress import CancelToken, Progress
from fusion_ui.recipe import load_recipe, recipe_from_dict
from fusion_ui.resources import demo_dir, demo_recipe
from fusion_ui.sweep import (
    TIME_COLUMNS,
    SweepError,
    best_row,
    grid_cells,
    load_sweep,
    pareto_front,
    recipe_of,
    run_sweep,
    sweep_from_dict,
)

DEMO = demo_dir()
ITEMS = 10  # per skill


def grid_spec(**changes: Any) -> dict[str, Any]:
    """A 2 x 3 sweep of the demo DARE-TIES recipe: drop rate x λ, three skills, 10 items each."""
    spec = {
        "name": "demo grid",
        "recipe": str(demo_recipe("dare_ties")),
        "axes": [
            {"parameter": "drop_rate", "values": [0.5, 0.9]},
            {"parameter": "lambda", "range": {"start": 0.5, "stop": 1.5, "num": 3}},
        ],
        "eval": {"skills": ["upper", "shift", "mirror"], "items_per_skill": ITEMS},
    }
    spec.update(changes)
    return spec


def write_sweep(folder: Path, data: dict[str, Any], name: str = "grid.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def scores_only(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=list(TIME_COLUMNS)).reset_index(drop=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The 2 x 3 grid run once, locally, on the CPU."""
    folder = tmp_path_factory.mktemp("sweep")
    sweep = load_sweep(write_sweep(folder, grid_spec()))
    threads = torch.get_num_threads()
    result = run_sweep(sweep, device="cpu", threads=1)  # 1 thread: fastest for tiny models
    assert torch.get_num_threads() == threads  # set back
    return result


class MergeCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = merge_module.run_merge

        def counting(*args: Any, **kwargs: Any) -> None:
            self.count += 1
            real(*args, **kwargs)

        monkeypatch.setattr(merge_module, "run_merge", counting)


# -- the grid ------------------------------------------------------------------------------


def test_cell_recipes_equal_hand_written_recipes(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path, grid_spec()))
    cells = grid_cells(sweep)
    assert [c.values for c in cells] == [
        {"drop_rate": p, "lambda": lam} for p in (0.5, 0.9) for lam in (0.5, 1.0, 1.5)
    ]
    assert cells[4].key == '{"drop_rate": 0.9, "lambda": 1.0}'
    recipes = demo_dir() / "recipes"
    for cell in cells:
        p, lam = cell.values["drop_rate"], cell.values["lambda"]
        by_hand = recipe_from_dict(
            {
                "method": "dare_ties",
                "base": "../base",
                "seed": 0,
                "models": [
                    {"model": f"../expert_{s}", "weight": 1.0, "drop_rate": p}
                    for s in ("upper", "shift", "mirror")
                ],
                "parameters": {"lambda": lam, "rescale": "inverse", "normalize": True},
            },
            folder=recipes,
        )
        assert cell.recipe.model_dump(exclude={"name"}) == by_hand.model_dump(exclude={"name"})


def test_axes_on_one_model_the_complement_the_method_and_the_seed(tmp_path: Path) -> None:
    sweep = sweep_from_dict(
        grid_spec(
            axes=[
                {"parameter": "weight", "model": "expert_shift", "values": [0.5]},
                {"parameter": "density", "values": [0.2]},  # drop_rate's other spelling
                {"parameter": "method", "values": ["dare_ties", "ties"]},
            ]
        ),
        folder=tmp_path,
    )
    dare, ties = (c.recipe for c in grid_cells(sweep))
    assert [e.parameters["weight"] for e in dare.models] == [1.0, 0.5, 1.0]
    assert all(
        e.parameters == {"weight": e.parameters["weight"], "density": 0.2} for e in dare.models
    )
    assert dare.resolve("model.layers.0.mlp.up_proj.weight", 4)[1][0]["drop_rate"] == pytest.approx(
        0.8
    )
    assert ties.method == "ties" and "rescale" not in ties.parameters  # TIES has no rescale
    assert ties.parameters["normalize"] is True and ties.parameters["lambda"] == 1.0
    assert sweep.axes[0].label == "weight[expert_shift]"
    seeds = sweep_from_dict(
        grid_spec(axes=[{"parameter": "seed", "values": [0, 7]}]), folder=tmp_path
    )
    assert [c.recipe.seed for c in grid_cells(seeds)] == [0, 7]


@pytest.mark.parametrize(
    "axes, message",
    [
        ([{"parameter": "temperature", "values": [1]}], "has no parameter 'temperature'"),
        (
            [{"parameter": "drop_rate", "values": [0.5, 1.0]}],
            "values[1]: drop_rate = 1.0 is out of range",
        ),
        (
            [{"parameter": "lambda", "range": {"start": -1, "stop": 1, "num": 3}}],
            "lambda = -1.0 is out of range",
        ),
        ([{"parameter": "lambda", "values": [1]}] * 4, "1 to 3 axes"),
        ([{"parameter": "lambda", "values": [1], "model": 0}], "lambda is a global parameter"),
        (
            [{"parameter": "weight", "values": [1], "model": "expert_nope"}],
            "model 'expert_nope' is not in the recipe",
        ),
        (
            [{"parameter": "method", "values": ["dare_ties", "frankenmerge"]}],
            "unknown method(s) ['frankenmerge']",
        ),
        (
            [{"parameter": "lambda", "values": [1], "range": {"start": 0, "stop": 1, "num": 2}}],
            "either `values",
        ),
        (
            [{"parameter": "lambda", "values": [1]}, {"parameter": "lambda", "values": [2]}],
            "two axes sweep the same",
        ),
        ([{"parameter": "seed", "values": [-1]}], "a seed is a whole number"),
        (
            [{"parameter": "weight", "values": [0.0]}],
            "weights sum to 0",
        ),  # a rule across parameters
    ],
)
def test_bad_specs_are_refused_when_loaded(tmp_path: Path, axes: list[dict], message: str) -> None:
    data = grid_spec(axes=axes)
    if message == "weights sum to 0":
        data["recipe"] = {
            **yaml.safe_load(demo_recipe("dare_ties").read_text()),
            "method": "dare_linear",
        }
        data["recipe"]["models"] = [{"model": str(DEMO / "expert_upper"), "weight": 1.0}]
    with pytest.raises(RecipeError) as info:
        sweep_from_dict(data, folder=demo_dir() / "recipes")
    assert message in str(info.value)


def test_bad_eval_and_best_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="eval.skills: spelling not in the eval sets"):
        sweep_from_dict(grid_spec(eval={"skills": ["spelling"]}), folder=tmp_path)
    with pytest.raises(SweepError, match="best.by names skill 'general'"):
        sweep_from_dict(grid_spec(best={"by": "general"}), folder=tmp_path)
    with pytest.raises(SweepError, match="a sweep must be a YAML mapping"):
        sweep_from_dict(["axes"], folder=tmp_path)
    with pytest.raises(SweepError, match="recipe: Field required"):
        sweep_from_dict({"axes": [{"parameter": "lambda", "values": [1]}]}, folder=tmp_path)


# -- running ---------------------------------------------------------------------------


def test_a_cells_scores_equal_a_merge_and_an_eval_by_hand(full_run: Any) -> None:
    table = full_run.table
    assert full_run.complete and full_run.ran == 6 and not full_run.cancelled
    assert list(table.columns) == [
        "cell",
        "sweep",
        "drop_rate",
        "lambda",
        "upper",
        "shift",
        "mirror",
        "mean",
        *TIME_COLUMNS,
    ]
    cell = grid_cells(full_run.sweep)[3]  # drop_rate 0.9, λ 0.5
    model, tokenizer = load_causal_lm(str(DEMO / "base"), device="cpu")
    state = merge_to_state_dict(cell.recipe, device="cpu")
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    by_hand = evaluate(model, tokenizer, full_run.sweep.items, device="cpu", batch_size=200)
    row = table.iloc[3]
    assert row["cell"] == cell.key
    for r in by_hand.itertuples():
        assert row[r.skill] == r.exact_match
    assert row["mean"] == sum(by_hand["exact_match"]) / 3
    assert all(table["merge_s"] > 0) and all(table["eval_s"] > 0)


def test_resume_skips_done_cells_and_gives_the_same_table(
    full_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = load_sweep(write_sweep(tmp_path, grid_spec()))
    lines = full_run.path.read_text().splitlines(keepends=True)
    # three cells done, and half a row that a crash left
    sweep.results_path().write_text("".join(lines[:4]) + lines[4][:20])
    merges = MergeCounter(monkeypatch)
    resumed = run_sweep(sweep, device="cpu", threads=1)
    assert (resumed.ran, resumed.skipped, merges.count) == (3, 3, 3)
    pd.testing.assert_frame_equal(
        scores_only(resumed.table), scores_only(full_run.table), check_exact=True
    )
    again = run_sweep(sweep, device="cpu", threads=1)
    assert (again.ran, again.skipped, merges.count) == (0, 6, 3)


def test_a_cancel_mid_sweep_leaves_a_valid_csv_of_the_done_cells(
    full_run: Any, tmp_path: Path
) -> None:
    sweep = load_sweep(write_sweep(tmp_path, grid_spec()))
    cancel = CancelToken()
    reports: list[Progress] = []

    def progress(p: Progress) -> None:
        reports.append(p)
        if p.done == 2:
            cancel.cancel()

    result = run_sweep(sweep, device="cpu", progress=progress, cancel=cancel, threads=1)
    assert result.cancelled and not result.complete and result.ran == 2
    assert "ETA" in reports[-1].message and reports[-1].total == 6
    on_disk = pd.read_csv(result.path)
    assert len(on_disk) == 2 and list(on_disk["cell"]) == list(full_run.table["cell"][:2])
    pd.testing.assert_frame_equal(
        scores_only(result.table), scores_only(full_run.table)[:2], check_exact=True
    )


def test_results_of_another_sweep_are_refused(full_run: Any, tmp_path: Path) -> None:
    path = write_sweep(
        tmp_path, grid_spec(eval={"skills": ["upper", "shift", "mirror"], "items_per_skill": 3})
    )
    sweep = load_sweep(path)
    # the same columns, other eval items: another fingerprint
    sweep.results_path().write_text(full_run.path.read_text())
    with pytest.raises(SweepError, match="holds results of another sweep"):
        run_sweep(sweep, device="cpu", threads=1)


# -- best cell, Pareto front -------------------------------------------------------------------


def test_best_cell_and_pareto_front_on_a_hand_made_table() -> None:
    table = pd.DataFrame(
        {
            "cell": ["a", "b", "c", "d", "e"],
            "upper": [1.0, 0.9, 0.5, 0.9, 0.2],
            "shift": [0.1, 0.8, 0.9, 0.7, 0.9],
        }
    )
    table["mean"] = (table["upper"] + table["shift"]) / 2
    assert best_row(table)["cell"] == "b"  # 0.85
    assert best_row(table, "shift")["cell"] == "c"  # ties (c, e) go to the first in grid order
    front = pareto_front(table, ("upper", "shift"))
    assert list(front["cell"]) == ["a", "b", "c"]  # d is beaten by b, e by c
    with pytest.raises(SweepError, match="no column general"):
        best_row(table, "general")
    with pytest.raises(SweepError, match="no finished cell"):
        best_row(table.iloc[:0])


def test_the_best_recipe_is_the_cells_recipe(full_run: Any) -> None:
    best = best_row(full_run.table)
    recipe = full_run.best_recipe()
    assert recipe == recipe_of(full_run.sweep, best)
    assert math.isclose(float(best["mean"]), full_run.table["mean"].max())


# -- the command line ------------------------------------------------------------------------


def test_cli_end_to_end(full_run: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_sweep(tmp_path, grid_spec(best={"by": "mean", "pareto": ["upper", "mirror"]}))
    out = tmp_path / "out"
    out.mkdir()
    # five cells are done already (copied from the full run): the command runs one
    (out / "grid.results.csv").write_text(
        "".join(full_run.path.read_text().splitlines(keepends=True)[:6])
    )
    assert main(["sweep", str(path), "--out", str(out), "--device", "cpu", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "1 cells run, 5 resumed" in printed
    assert "Pareto front over upper and mirror" in printed
    best = load_recipe(out / "grid.best.yaml")
    assert best == full_run.best_recipe()
    assert (out / "grid.best.yaml").read_text() in printed
    table = pd.read_csv(out / "grid.results.csv")
    assert len(table) == 6


def test_cli_errors_are_messages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_sweep(tmp_path, grid_spec(axes=[{"parameter": "lambda", "values": [20]}]))
    assert main(["sweep", str(path)]) == 2
    assert "lambda = 20.0 is out of range" in capsys.readouterr().err


def test_ray_asked_for_without_ray_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    path = write_sweep(tmp_path, grid_spec())
    assert main(["sweep", str(path), "--ray", "auto"]) == 2
    assert 'install the ray extra with `pip install "fusion-ui[ray]"`' in capsys.readouterr().err
    assert not (tmp_path / "grid.results.csv").exists()


def test_the_shipped_demo_sweep_loads_with_its_nine_cells() -> None:
    sweep = load_sweep(DEMO / "recipes" / "sweep_dare_ties.yaml")
    cells = grid_cells(sweep)
    assert [(c.values["drop_rate"], c.values["lambda"]) for c in cells[:4]] == [
        (0.5, 1.0), (0.5, 1.5), (0.5, 2.0), (0.9, 1.0)]
    assert len(cells) == 9
    third = cells[2].recipe  # drop rate 0.5, lambda 2: every model's drop rate and the global lambda set
    assert [e.parameters["drop_rate"] for e in third.models] == [0.5, 0.5, 0.5]
    assert third.parameters["lambda"] == 2.0 and third.base == sweep.recipe.base
