"""Recipes: validation with actionable errors, and per-tensor parameter resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fusion_ui.errors import RecipeError
from fusion_ui.recipe import Recipe, load_recipe, ramp_position, ramp_value, recipe_from_dict


def make(**kw) -> Recipe:
    data = {"method": "dare_ties", "base": "b", "models": [{"model": "x"}, {"model": "y"}]} | kw
    return recipe_from_dict(data)


def test_defaults_come_from_the_method_schema() -> None:
    g, per_model = make().resolve("model.layers.0.mlp.up_proj.weight", 4)
    assert g == {"rescale": "inverse", "lambda": 1.0, "normalize": True}
    assert per_model == [{"weight": 1.0, "drop_rate": 0.9}] * 2


def test_density_is_an_alias_of_one_minus_drop_rate() -> None:
    r = make(models=[{"model": "x", "density": 0.25}, {"model": "y", "parameters": {"drop_rate": 0.5}}])
    _, per_model = r.resolve("model.layers.0.mlp.up_proj.weight", 4)
    assert per_model[0]["drop_rate"] == pytest.approx(0.75)
    assert per_model[1]["drop_rate"] == 0.5
    with pytest.raises(RecipeError, match="not both"):
        make(models=[{"model": "x", "density": 0.2, "drop_rate": 0.8}])


def test_ramps_interpolate_across_layers() -> None:
    r = make(models=[{"model": "x", "drop_rate": [0.9, 0.5]}, {"model": "y"}])
    at = {i: r.resolve(f"model.layers.{i}.self_attn.q_proj.weight", 5)[1][0]["drop_rate"] for i in range(5)}
    assert at == pytest.approx({0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6, 4: 0.5})
    assert r.resolve("model.embed_tokens.weight", 5)[1][0]["drop_rate"] == pytest.approx(0.9)
    assert r.resolve("lm_head.weight", 5)[1][0]["drop_rate"] == pytest.approx(0.5)
    assert ramp_value([0.0, 1.0, 0.0], 0.25) == pytest.approx(0.5)
    assert ramp_position("transformer.h.2.attn.c_attn.weight", 2, 3) == 1.0


def test_overrides_by_pattern_layer_range_and_model() -> None:
    r = make(overrides=[
        {"match": "*.self_attn.*", "layers": [0, 1], "parameters": {"drop_rate": 0.5, "lambda": 2.0}},
        {"match": "re:mlp\\.down", "models": {1: {"weight": 0.25}, "x": {"weight": 3.0}}},
    ])
    g, pm = r.resolve("model.layers.1.self_attn.q_proj.weight", 4)
    assert g["lambda"] == 2.0 and pm[0]["drop_rate"] == 0.5 and pm[1]["drop_rate"] == 0.5
    g, pm = r.resolve("model.layers.2.self_attn.q_proj.weight", 4)
    assert g["lambda"] == 1.0 and pm[0]["drop_rate"] == 0.9
    _, pm = r.resolve("model.layers.2.mlp.down_proj.weight", 4)
    assert pm[0]["weight"] == 3.0 and pm[1]["weight"] == 0.25


def test_include_and_exclude_choose_merged_tensors() -> None:
    r = make(exclude=["*embed_tokens*", "lm_head.*"])
    assert not r.is_merged("model.embed_tokens.weight") and not r.is_merged("lm_head.weight")
    assert r.is_merged("model.layers.0.mlp.up_proj.weight")
    r = make(include=["*.mlp.*"])
    assert r.is_merged("model.layers.0.mlp.up_proj.weight")
    assert not r.is_merged("model.layers.0.self_attn.q_proj.weight")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"method": "frankenmerge"}, "unknown merge method"),
        ({"models": [{"model": "x", "drop_rate": 1.0}]}, "out of range"),
        ({"method": "ties", "models": [{"model": "x", "density": 0.0}]}, "out of range"),
        ({"method": "ties", "models": [{"model": "x", "weight": -1.0}]}, "out of range"),
        ({"models": [{"model": "x", "temperature": 1.0}]}, "no parameter 'temperature'"),
        ({"base": None}, "needs a base"),
        ({"method": "slerp", "models": [{"model": "x"}]}, "at least 2"),
        ({"parameters": {"lambda": "big"}}, "must be a number"),
        ({"models": [{"model": "x", "lambda": 1.0}]}, "global parameter"),
        ({"parameters": {"rescale": "l2"}}, "one of inverse, l1, none"),
        ({"overrides": [{"models": {"z": {"weight": 1}}}]}, "no model 'z'"),
        ({"tokenizer_source": "model:7"}, "no model '7'"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_recipes_are_refused_with_the_reason(data: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        make(**data)


def test_yaml_round_trip_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "ft").mkdir()
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "method": "ties", "base": "base", "models": [{"model": "ft", "density": [0.1, 0.3], "weight": 0.5}],
        "seed": 5, "exclude": ["lm_head.*"],
    }))
    r = load_recipe(path)
    assert r.base == str(tmp_path / "base") and r.models[0].model == str(tmp_path / "ft")
    again = recipe_from_dict(yaml.safe_load(r.to_yaml()))
    assert again == r
    with pytest.raises(RecipeError, match="not valid YAML"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("method: [unclosed")
        load_recipe(bad)
