"""mergekit YAML in (with mergekit's defaults) and out (with the differences stated)."""

from __future__ import annotations

import pytest
import yaml

from fusion_ui.errors import RecipeError
from fusion_ui.mergekit_compat import recipe_to_mergekit
from fusion_ui.recipe import recipe_from_dict

DARE_TIES = """
models:
  - model: org/base
  - model: org/ft-a
    parameters: {weight: 0.4, density: 0.5}
  - model: org/ft-b
    parameters:
      weight: 0.3
      density: [0.2, 0.6]
merge_method: dare_ties
base_model: org/base
parameters:
  int8_mask: true
dtype: bfloat16
"""


def test_dare_ties_config_gets_mergekit_defaults() -> None:
    r = recipe_from_dict(yaml.safe_load(DARE_TIES))
    assert r.method == "dare_ties" and r.base == "org/base"
    assert [m.model for m in r.models] == ["org/ft-a", "org/ft-b"]  # the base is not a fine-tune
    assert r.models[0].parameters == {"weight": 0.4, "drop_rate": 0.5}
    assert r.models[1].parameters["drop_rate"] == pytest.approx([0.8, 0.4])
    # mergekit: dare_ties does not normalize, and rescales to the L1 norm
    assert r.parameters["normalize"] is False and r.parameters["rescale"] == "l1"
    assert r.dtype == "bfloat16"


def test_ties_density_defaults_to_mergekits_one() -> None:
    r = recipe_from_dict({"merge_method": "ties", "base_model": "b",
                          "models": [{"model": "x", "parameters": {"weight": 1}}]})
    _, pm = r.resolve("model.layers.0.mlp.up_proj.weight", 2)
    assert pm[0]["density"] == 1.0
    assert r.parameters["normalize"] is True


def test_filters_become_overrides_first_match_wins() -> None:
    r = recipe_from_dict({
        "merge_method": "slerp", "base_model": "a",
        "models": [{"model": "a"}, {"model": "b"}],
        "parameters": {"t": [{"filter": "self_attn", "value": 0.2}, {"filter": "attn", "value": 0.4},
                             {"value": 0.7}]},
    })
    assert [m.model for m in r.models] == ["a", "b"]
    assert r.resolve("model.layers.0.self_attn.q_proj.weight", 2)[0]["t"] == 0.2
    assert r.resolve("transformer.h.0.attn.c_attn.weight", 2)[0]["t"] == 0.4
    assert r.resolve("model.layers.0.mlp.up_proj.weight", 2)[0]["t"] == 0.7


def test_unsupported_mergekit_features_are_named() -> None:
    with pytest.raises(RecipeError, match="`slices:` is empty"):  # passthrough and slices: supported
        recipe_from_dict({"merge_method": "passthrough", "slices": []})
    with pytest.raises(RecipeError, match="requires a weight"):
        recipe_from_dict({"merge_method": "task_arithmetic", "base_model": "b", "models": [{"model": "x"}]})
    with pytest.raises(RecipeError, match="LoRA"):
        recipe_from_dict({"merge_method": "linear", "models": [{"model": "x+lora", "parameters": {"weight": 1}}]})


def test_export_round_trips_through_mergekit_form() -> None:
    r = recipe_from_dict(yaml.safe_load(DARE_TIES))
    text, notes = recipe_to_mergekit(r)
    assert text is not None and "random masks" in " ".join(notes)
    back = recipe_from_dict(yaml.safe_load(text))
    assert back.method == r.method and back.parameters["rescale"] == "l1"
    for a, b in zip(back.models, r.models, strict=True):
        assert a.model == b.model
        assert a.parameters["drop_rate"] == pytest.approx(b.parameters["drop_rate"])
        assert a.parameters["weight"] == b.parameters["weight"]


def test_export_states_semantic_differences() -> None:
    r = recipe_from_dict({"method": "dare_linear", "base": "b", "models": [{"model": "x", "drop_rate": 0.9}]})
    text, notes = recipe_to_mergekit(r)
    assert "1/(1-p)" in text and "density: 0.1" in text
    r = recipe_from_dict({"method": "della", "base": "b", "models": [{"model": "x"}]})
    assert "merge_method: della_linear" in recipe_to_mergekit(r)[0]
    r = recipe_from_dict({"method": "magnitude_prune", "base": "b", "models": [{"model": "x"}]})
    assert recipe_to_mergekit(r)[0] is None


def test_linear_export_has_no_base_model() -> None:
    # mergekit would merge base_model as one more model of a linear merge and ask for its weight
    r = recipe_from_dict({"method": "linear", "base": "b", "models": [{"model": "x"}, {"model": "y"}]})
    mk = yaml.safe_load(recipe_to_mergekit(r)[0])
    assert "base_model" not in mk and [m["model"] for m in mk["models"]] == ["x", "y"]


def test_out_dtype_is_the_output_dtype() -> None:
    # mergekit computes in `dtype` and writes `out_dtype`; the import used to take `dtype`
    r = recipe_from_dict({"merge_method": "linear", "dtype": "float32", "out_dtype": "bfloat16",
                          "models": [{"model": "x", "parameters": {"weight": 1}}]})
    assert r.dtype == "bfloat16"


@pytest.mark.parametrize(("extra", "named"), [
    ({"chat_template": "chatml"}, "`chat_template:`"),
    ({"tokenizer": {"source": "base", "pad_to_multiple_of": 64}}, "`tokenizer.pad_to_multiple_of:`"),
    ({"tokenizer": {"source": "union", "tokens": {"<x>": {"source": "x"}}}}, "`tokenizer.tokens:`"),
])
def test_keys_that_change_the_output_are_refused_by_name(extra: dict, named: str) -> None:
    config = {"merge_method": "linear", "models": [{"model": "x", "parameters": {"weight": 1}}], **extra}
    with pytest.raises(RecipeError, match=named.replace(".", r"\.")):
        recipe_from_dict(config)


def test_modules_configs_say_what_is_missing() -> None:
    # used to be "needs at least 1 model(s), got 0"
    with pytest.raises(RecipeError, match="`modules:`"):
        recipe_from_dict({"merge_method": "linear", "modules": {"text": {"models": [{"model": "x"}]}}})


def test_star_filter_is_a_catch_all_and_what_follows_it_is_never_reached() -> None:
    # mergekit: the first entry whose filter is in the name, missing or "*" wins
    r = recipe_from_dict({
        "merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}],
        "parameters": {"t": [{"filter": "self_attn", "value": 0.2}, {"filter": "*", "value": 0.5},
                             {"filter": "mlp", "value": 0.9}]},
    })
    assert r.resolve("model.layers.0.self_attn.q_proj.weight", 2)[0]["t"] == 0.2
    assert r.resolve("model.layers.0.mlp.up_proj.weight", 2)[0]["t"] == 0.5  # mlp entry: dead
    assert r.resolve("model.norm.weight", 2)[0]["t"] == 0.5


def test_a_filter_list_without_catch_all_falls_through_to_the_global_value() -> None:
    r = recipe_from_dict({
        "merge_method": "linear", "parameters": {"weight": 0.5},
        "models": [{"model": "x", "parameters": {"weight": [{"filter": "mlp", "value": 2.0}]}},
                   {"model": "y"}],
    })
    assert [m["weight"] for m in r.resolve("model.layers.0.mlp.up_proj.weight", 2)[1]] == [2.0, 0.5]
    assert [m["weight"] for m in r.resolve("model.layers.0.self_attn.q_proj.weight", 2)[1]] == [0.5, 0.5]


def test_model_stock_import_takes_filter_wise_extrapolates_and_ignores_weights() -> None:
    r = recipe_from_dict({
        "merge_method": "model_stock", "base_model": "b", "parameters": {"filter_wise": True},
        "models": [{"model": "x", "parameters": {"weight": 1.0}}, {"model": "y", "parameters": {"weight": 1.0}}],
    })
    assert r.parameters == {"filter_wise": True, "clamp_negative": False}
    assert all(m.parameters == {} for m in r.models)  # mergekit's model_stock reads no weight


def test_model_stock_export_states_the_clamp_and_round_trips() -> None:
    native = recipe_from_dict({"method": "model_stock", "base": "b", "models": [{"model": "x"}, {"model": "y"}]})
    text, notes = recipe_to_mergekit(native)
    assert "clamp_negative" not in yaml.safe_load(text).get("parameters", {})  # not a mergekit key
    assert any("extrapolates" in n for n in notes)
    back = recipe_from_dict(yaml.safe_load(text))
    assert back.parameters == {"filter_wise": False, "clamp_negative": False}  # mergekit's semantics


def test_cancelling_weights_under_normalize_are_the_plain_sum_as_in_mergekit() -> None:
    # mergekit divides by 1 where the weights sum to 0 (used to be refused: "would divide by 0")
    config = {"merge_method": "task_arithmetic", "base_model": "b", "parameters": {"normalize": True},
              "models": [{"model": "x", "parameters": {"weight": 1.0}}, {"model": "y", "parameters": {"weight": -1.0}}]}
    r = recipe_from_dict(config)
    assert r.parameters["normalize"] is False
    params, model_params = r.resolve("model.layers.0.mlp.up_proj.weight", 2)
    r.merge_method.check(params, model_params)  # no refusal
    # weights that do not cancel keep mergekit's normalize
    config["models"][1]["parameters"]["weight"] = -0.5
    assert recipe_from_dict(config).parameters["normalize"] is True
    # and a native recipe still refuses: dividing by a zero sum is not a choice fusion_ui makes silently
    with pytest.raises(RecipeError, match="sum to 0"):
        native = recipe_from_dict({"method": "task_arithmetic", "base": "b", "parameters": {"normalize": True},
                                   "models": [{"model": "x", "weight": 1.0}, {"model": "y", "weight": -1.0}]})
        native.merge_method.check(*native.resolve("w", 2))


@pytest.mark.parametrize("method, normalize, expected_share", [
    ("dare_linear", True, 0.5),  # normalised linear: the zero delta's weight still divides
    ("ties", True, 1.0),  # sign election: a zero delta never agrees, so it does not divide
    ("della", True, 1.0),
])
def test_density_zero_is_a_zero_delta_as_in_mergekit(method: str, normalize: bool, expected_share: float) -> None:
    # mergekit sparsifies a delta at density 0 to zeros (used to be refused: "density must be in (0, 1]")
    import torch
    from safetensors.torch import load_file

    from fusion_ui.demo import DEMO_DIR
    from fusion_ui.merge import merge_to_state_dict

    base, upper, shift = (str(DEMO_DIR / n) for n in ("base", "expert_upper", "expert_shift"))
    params: dict = {"normalize": normalize}
    if method == "della":
        params["epsilon"] = 0.1
    config = {"merge_method": method, "base_model": base, "dtype": "float32", "parameters": params,
              "models": [{"model": upper, "parameters": {"weight": 1.0, "density": 0.0}},
                         {"model": shift, "parameters": {"weight": 1.0, "density": 1.0}}]}
    recipe = recipe_from_dict(config)
    assert recipe.models[0].model == base  # the density-0 model is the base itself: δ = 0
    merged = merge_to_state_dict(recipe, device="cpu")
    theta0, theta2 = load_file(f"{base}/model.safetensors"), load_file(f"{shift}/model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    want = theta0[name].float() + expected_share * (theta2[name].float() - theta0[name].float())
    torch.testing.assert_close(merged[name], want, rtol=0, atol=1e-6)
    _, notes = recipe_to_mergekit(recipe)
    assert any("both the base and a model" in n for n in notes)


def test_density_zero_inside_a_filter_list_is_still_refused_by_name() -> None:
    config = {"merge_method": "ties", "base_model": "b",
              "models": [{"model": "x", "parameters": {"weight": 1.0,
                                                       "density": [{"filter": "mlp", "value": 0.0}, {"value": 0.5}]}}]}
    with pytest.raises(RecipeError, match="density"):
        r = recipe_from_dict(config)
        r.merge_method.check(*r.resolve("model.layers.0.mlp.up_proj.weight", 1))
