"""The app's engine (fusion_ui.app, one facade per tab), without Gradio: cache, preview merges, streaming,
evals, export and history."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from factory import SKILLS, dare_ties, demo_like_family
from transformers import AutoModelForCausalLM

from fusion_ui import merge_to_state_dict, recipe_from_dict
from fusion_ui.app import (
    DemoFamily,
    Engine,
    GenerationSettings,
    MergeRef,
    check_ref,
    make_selection,
    parse_recipe,
)
from fusion_ui.errors import ExportError, InputError, ModelSourceError, RecipeError
from fusion_ui.evals import greedy_generate, load_causal_lm
from fusion_ui.runtime.cache import LoadedModel, ModelCache


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_like_family(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def engine(family: Path, tmp_path: Path) -> Engine:
    return Engine(demo_dir=family, state_dir=tmp_path / "state", export_root=tmp_path, device="cpu")


def test_demo_family_is_discovered_or_absent(family: Path, tmp_path: Path) -> None:
    demo = DemoFamily.find(family)
    assert demo is not None and set(demo.experts) == set(SKILLS) and set(demo.eval_sets) == set(SKILLS)
    assert demo.selection()["labels"] == ["expert_alpha", "expert_beta"]
    assert DemoFamily.find(tmp_path / "nothing") is None
    assert Engine(demo_dir=tmp_path / "nothing", state_dir=tmp_path).models.presets() == {}


def test_check_ref_explains_what_is_wrong(family: Path, tmp_path: Path) -> None:
    assert check_ref(str(family / "base"))[0]
    ok, msg = check_ref(str(tmp_path))
    assert not ok and "config.json" in msg
    ok, msg = check_ref(str(tmp_path / "missing"))
    assert not ok and "no such folder" in msg
    assert check_ref("org/name")[0]
    with pytest.raises(RecipeError, match="fine-tune"):
        make_selection(str(family / "base"), ["", "  "])


def test_model_cache_evicts_least_recently_used_and_refuses_oversized() -> None:
    cache = ModelCache(budget_bytes=100)
    item = lambda n: lambda: LoadedModel(torch.nn.Linear(1, 1), None, n, "x")  # noqa: E731
    cache.get("a", 40, item(40))
    cache.get("b", 40, item(40))
    cache.peek("a")  # a is now the most recent
    cache.get("c", 40, item(40))
    assert cache.keys() == ["a", "c"] and cache.used_bytes == 80
    with pytest.raises(ModelSourceError, match="budget"):
        cache.get("huge", 101, item(101))


def test_inspect_remembers_recent_selections(engine: Engine) -> None:
    sel = engine.demo.selection()
    result = engine.models.inspect(sel)
    assert result.verdict == "compatible" and len(result.table) == 3
    assert any(name.startswith("Recent:") for name in engine.models.presets())


def test_preview_merge_equals_merge_to_state_dict_and_is_re_merged_in_place(engine: Engine) -> None:
    sel = engine.demo.selection()
    first = recipe_from_dict(dare_ties(sel, 0.9))
    engine.merges.merge("s1", first)
    model_id = id(engine.context.cache.peek("merge:s1").model)
    expected = merge_to_state_dict(first, device="cpu")
    state = engine.merges.preview_state("s1")
    assert all(torch.equal(state[k], v.float()) for k, v in expected.items())

    second = recipe_from_dict(dare_ties(sel, 0.5, seed=3))
    engine.merges.merge("s1", second)
    assert id(engine.context.cache.peek("merge:s1").model) == model_id  # the same module, re-merged
    expected = merge_to_state_dict(second, device="cpu")
    state = engine.merges.preview_state("s1")
    assert all(torch.equal(state[k], v.float()) for k, v in expected.items())
    assert engine.merges.preview_state("other-session") is None  # sessions do not share previews
    assert [e["kind"] for e in engine.context.history.entries] == ["merge", "merge"]


def test_side_by_side_streams_every_column_like_greedy_generate(engine: Engine) -> None:
    sel = engine.demo.selection()
    recipe = recipe_from_dict(dare_ties(sel))
    cols = engine.compare.columns(sel, MergeRef(recipe))
    assert [c.label for c in cols] == ["base", "expert_alpha", "expert_beta", "merge"]
    snapshots = list(engine.compare.generate_side_by_side("s", cols, "alpha: abc =", GenerationSettings(max_new_tokens=6)))
    final = snapshots[-1]
    assert len(snapshots) > len(cols)  # streamed piece by piece, not one answer per column
    assert all(text.strip() for text in final)
    model, tok = load_causal_lm(sel["base"], device="cpu")
    assert final[0] == greedy_generate(model, tok, ["alpha: abc ="], max_new_tokens=6)[0]
    with pytest.raises(InputError, match="prompt"):
        next(engine.compare.generate_side_by_side("s", cols, "   "))


def test_evaluate_scores_every_column(engine: Engine, tmp_path: Path) -> None:
    sel = engine.demo.selection()
    upload = tmp_path / "mine.csv"
    upload.write_text("prompt,answer\nabc =,cba\n")
    items = engine.compare.eval_items(["alpha"], str(upload))
    results = engine.compare.evaluate("s", engine.compare.columns(sel, None), items, per_skill=2)
    assert set(results["model"]) == {"base", "expert_alpha", "expert_beta"}
    assert set(results["skill"]) == {"alpha", "mine"}
    with pytest.raises(RecipeError, match="eval set"):
        engine.compare.eval_items([], None)


def test_export_reloads_with_transformers_and_is_in_history(engine: Engine, tmp_path: Path) -> None:
    sel = engine.demo.selection()
    recipe = recipe_from_dict(dare_ties(sel))
    out = tmp_path / "merged"
    summary = engine.exports.export("s", recipe, str(out), dtype="bfloat16", tokenizer_source="model:1")
    assert Path(summary.path) == out and "README.md" in summary.files and summary.mergekit_yaml
    assert yaml.safe_load(summary.recipe_yaml)["tokenizer_source"] == "model:1"
    model = AutoModelForCausalLM.from_pretrained(out)
    expected = merge_to_state_dict(recipe.model_copy(update={"dtype": "bfloat16"}), device="cpu")
    got = model.state_dict()
    assert all(torch.equal(got[k].to(v.dtype), v) for k, v in expected.items())
    entry = engine.context.history.entries[-1]
    assert entry["kind"] == "export" and entry["path"] == str(out)
    assert parse_recipe(engine.exports.history_recipe(entry["id"])).tokenizer_source == "model:1"
    with pytest.raises(ExportError, match="exists"):
        engine.exports.export("s", recipe, str(out))
    # The history survives a restart.
    again = Engine(demo_dir=None, state_dir=engine.context.state_dir, export_root=engine.exports.root)
    assert len(again.exports.history_table()) == len(engine.context.history.entries)


def test_bad_recipes_are_recipe_errors(engine: Engine) -> None:
    with pytest.raises(RecipeError, match="YAML"):
        parse_recipe("method: [unclosed")
    with pytest.raises(RecipeError):
        parse_recipe("method: no_such_method\nmodels: [a]\n")
    assert engine.cancel("nobody") is False
