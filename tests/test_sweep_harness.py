"""Sweep cells scored by lm-evaluation-harness tasks (the ``lm-eval`` extra), on local task files
over the demo eval sets: no hub, no download. The harness must see each cell's merged weights,
so its exact match per cell equals fusion_ui's own quick eval of the same items."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fusion_ui.errors import InputError, RecipeError
from fusion_ui.evals import evaluate, load_causal_lm, load_eval_set
from fusion_ui.evals.harness import HarnessSpec, check_tasks, metric_of
from fusion_ui.merge import merge_to_state_dict
from fusion_ui.resources import demo_dir, demo_recipe
from fusion_ui.sweep import SweepError, grid_cells, run_sweep, sweep_from_dict

pytest.importorskip("lm_eval", reason='the lm-eval extra: pip install -e ".[lm-eval]"')

DEMO = demo_dir()
SKILLS = ("upper", "mirror")
LIMIT = 8


@pytest.fixture(autouse=True)
def _offline_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_tasks(folder: Path) -> Path:
    """One generate-until task per skill over the shipped JSONL, scored by exact match."""
    folder.mkdir(parents=True, exist_ok=True)
    for skill in SKILLS:
        task = {
            "task": f"demo_{skill}",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(DEMO / "evals" / f"{skill}.jsonl")}},
            "test_split": "test",
            "output_type": "generate_until",
            "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 24},
            "filter_list": [
                {
                    "name": "strip",
                    "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}],
                }
            ],
            "metric_list": [
                {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
            ],
        }
        (folder / f"demo_{skill}.yaml").write_text(yaml.safe_dump(task), encoding="utf-8")
    return folder


def harness_sweep(folder: Path, **harness: Any) -> dict[str, Any]:
    return {
        "name": "harness grid",
        "recipe": str(demo_recipe("dare_ties")),
        "axes": [{"parameter": "lambda", "values": [0.3, 1.0]}],
        "eval": {
            "harness": {
                "tasks": [f"demo_{s}" for s in SKILLS],
                "include_path": "tasks",
                "limit": LIMIT,
                "metric": "exact_match",
                **harness,
            }
        },
    }


def test_harness_scores_each_cell_as_the_quick_eval_does(tmp_path: Path) -> None:
    write_tasks(tmp_path / "tasks")
    sweep = sweep_from_dict(harness_sweep(tmp_path), folder=tmp_path, source=tmp_path / "h.yaml")
    assert sweep.skills == ["demo_upper", "demo_mirror"] and sweep.items == []
    result = run_sweep(sweep, threads=1)
    assert result.complete and len(result.table) == 2

    # The same cells merged and scored by fusion_ui's own evals on the same first LIMIT items.
    model, tok = load_causal_lm(str(DEMO / "base"), device="cpu")
    items = [it for s in SKILLS for it in load_eval_set(DEMO / "evals" / f"{s}.jsonl")[:LIMIT]]
    expected = []
    for cell in grid_cells(sweep):
        model.load_state_dict(merge_to_state_dict(cell.recipe), strict=False)
        table = evaluate(model, tok, items, device="cpu")
        expected.append({f"demo_{r.skill}": r.exact_match for r in table.itertuples()})
    got = result.table[["demo_upper", "demo_mirror"]].to_dict("records")
    assert got == expected  # k/8 fractions: exact
    assert expected[0] != expected[1]  # the two λ really score differently: weights were re-read


def test_unknown_task_and_mixed_specs_fail_at_load(tmp_path: Path) -> None:
    write_tasks(tmp_path / "tasks")
    bad = harness_sweep(tmp_path, tasks=["demo_upper", "demo_uper"])
    with pytest.raises(SweepError, match=r"unknown task 'demo_uper'.*did you mean"):
        sweep_from_dict(bad, folder=tmp_path)
    mixed = harness_sweep(tmp_path)
    mixed["eval"]["skills"] = ["upper"]
    with pytest.raises(SweepError, match="harness: replaces skills"):
        sweep_from_dict(mixed, folder=tmp_path)
    missing = harness_sweep(tmp_path, include_path="nowhere")
    with pytest.raises(SweepError, match="include_path .*nowhere does not exist"):
        sweep_from_dict(missing, folder=tmp_path)


def test_a_metric_the_task_lacks_names_the_ones_it_has() -> None:
    results = {"t": {"alias": "t", "exact_match,strip": 0.5, "exact_match_stderr,strip": 0.1}}
    assert metric_of(results, "t", "exact_match") == 0.5
    with pytest.raises(
        RecipeError, match="'acc' is not a metric of task 't'; it reports exact_match"
    ):
        metric_of(results, "t", "acc")


def test_without_the_extra_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(InputError, match=r'pip install "fusion-ui\[lm-eval\]"'):
        check_tasks(HarnessSpec(tasks=["x"]))
