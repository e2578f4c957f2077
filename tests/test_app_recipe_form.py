"""The Merge tab's controls as a RecipeForm: composed into a Recipe in one validated step, and
read back from a Recipe (the controls a history entry or a reload shows)."""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import demo_like_family

from fusion_ui.app.recipe_form import (
    OUTPUT_DTYPES,
    RecipeForm,
    compose,
    form_of,
    globs,
    parse_recipe,
)
from fusion_ui.errors import InputError, RecipeError
from fusion_ui.recipe import recipe_from_dict


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = demo_like_family(tmp_path_factory.mktemp("demo"))
    return {"base": str(root / "base"), "models": [str(root / "expert_alpha"), str(root / "expert_beta")]}


def form(refs: dict, **changes: object) -> RecipeForm:
    data = {"method": "dare_ties", "base": refs["base"], "models": refs["models"], "use": [True, True],
            "per_model": {"weight": [0.3, 0.7], "drop_rate": [0.8, 0.6], "density": [0.5, 0.5]},
            "globals": {"lambda": 1.5, "rescale": "l1", "normalize": True, "t": 0.5}, "seed": 3}
    return RecipeForm(**{**data, **changes})


def test_compose_keeps_only_the_ticked_models_and_the_methods_own_parameters(refs: dict) -> None:
    recipe = compose(form(refs, use=[False, True]))
    assert [e.model for e in recipe.models] == [refs["models"][1]]
    assert recipe.models[0].parameters == {"weight": 0.7, "drop_rate": 0.6}  # not TIES' density
    assert recipe.parameters == {"lambda": 1.5, "rescale": "l1", "normalize": True}  # not slerp's t
    assert recipe.seed == 3 and recipe.base == refs["base"]


def test_a_ramp_applies_to_every_fine_tune_and_a_global_ramp_to_the_merge(refs: dict) -> None:
    per_model = compose(form(refs, ramp=("drop_rate", 0.9, 0.5)))
    assert [e.parameters["drop_rate"] for e in per_model.models] == [[0.9, 0.5], [0.9, 0.5]]
    global_ = compose(form(refs, ramp=("lambda", 1.0, 0.2)))
    assert global_.parameters["lambda"] == [1.0, 0.2]
    ignored = compose(form(refs, ramp=("t", 0.0, 1.0)))  # not a parameter of dare_ties
    assert ignored.parameters["lambda"] == 1.5 and "t" not in ignored.parameters


def test_overrides_dtype_and_patterns_come_through_and_mistakes_are_messages(refs: dict) -> None:
    recipe = compose(form(refs, overrides="- match: '*mlp*'\n  parameters: {lambda: 0.5}\n", dtype="float16",
                          include=globs("*.mlp.*, *.self_attn.*"), exclude=globs("lm_head.*\n")))
    assert recipe.overrides[0].match == ["*mlp*"] and recipe.overrides[0].parameters == {"lambda": 0.5}
    assert recipe.dtype == "float16" and recipe.include == ["*.mlp.*", "*.self_attn.*"]
    assert recipe.exclude == ["lm_head.*"]
    assert set(OUTPUT_DTYPES) == {"float32", "float16", "bfloat16"}
    with pytest.raises(InputError, match="use in the merge"):
        compose(form(refs, use=[False, False]))
    with pytest.raises(RecipeError, match="overrides are not valid YAML"):
        compose(form(refs, overrides="- match: ["))
    with pytest.raises(RecipeError, match="dtype"):
        compose(form(refs, dtype="int8"))
    with pytest.raises(InputError, match="whole number"):
        compose(form(refs, seed=1.5))
    with pytest.raises(RecipeError, match="drop_rate"):
        compose(form(refs, per_model={"weight": [1, 1], "drop_rate": [1.0, 0.5]}))


def test_form_of_reads_a_recipe_back_into_the_controls(refs: dict) -> None:
    recipe = compose(form(refs, use=[True, False], ramp=("drop_rate", 0.9, 0.5), dtype="bfloat16",
                          overrides="- match: '*mlp*'\n  parameters: {lambda: 0.5}\n"))
    shown, exact = form_of(recipe, refs["models"])
    assert exact and shown.use == [True, False] and shown.ramp == ("drop_rate", 0.9, 0.5)
    assert shown.per_model["weight"] == [0.3, None] and shown.dtype == "bfloat16"
    assert compose(shown) == recipe  # the controls give back the same recipe


def test_form_of_reads_density_as_the_drop_rate_and_flags_what_controls_cannot_hold(refs: dict) -> None:
    a, b = refs["models"]
    mergekit_style = recipe_from_dict({"method": "dare_ties", "base": refs["base"],
                                       "models": [{"model": a, "density": 0.25}, {"model": b, "density": 0.5}]})
    shown, exact = form_of(mergekit_style, [a, b])
    assert shown.per_model["drop_rate"] == [pytest.approx(0.75), pytest.approx(0.5)] and exact
    three_points = recipe_from_dict({"method": "dare_ties", "base": refs["base"],
                                     "models": [{"model": a, "drop_rate": [0.9, 0.7, 0.5]}]})
    assert form_of(three_points, [a, b])[1] is False  # only "merge as written" can hold it
    mixed = recipe_from_dict({"method": "dare_ties", "base": refs["base"],
                              "models": [{"model": a, "drop_rate": [0.9, 0.5]}, {"model": b, "drop_rate": 0.9}]})
    assert form_of(mixed, [a, b])[1] is False


def test_parse_recipe_is_the_yaml_edge(refs: dict, tmp_path: Path) -> None:
    recipe = compose(form(refs))
    assert parse_recipe(recipe.to_yaml()) == recipe
    with pytest.raises(RecipeError, match="valid YAML"):
        parse_recipe("method: [")
