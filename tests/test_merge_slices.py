"""`slices:` frankenmerges: passthrough layer stacks (with `scale`) and the full-range slerp form,
compared with mergekit 0.1.5's stored outputs (``tests/data/make_mergekit_reference.py``, cases
``passthrough`` and ``slerp_slices``), exported, loaded in transformers; bad ranges and mismatched
architectures fail from the headers, naming the slice and the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from parity import mk, ulps

from fusion_ui import merge_to_state_dict, recipe_from_dict
from fusion_ui.errors import IncompatibleModelsError, RecipeError
from fusion_ui.export import export_merge
from fusion_ui.merge import plan_merge
from fusion_ui.recipe import load_recipe


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return mk.build_family(tmp_path_factory.mktemp("mk-family"))


@pytest.mark.parametrize("method", ["passthrough", "slerp_slices", "task_arithmetic_slices"])
def test_the_reference_was_made_from_these_inputs_and_cases(method: str) -> None:
    _, meta = mk.load_reference(method)
    assert meta["mergekit_version"] == "0.1.5"
    assert mk.digest(mk.family_tensors()) == meta["inputs_sha256"]
    assert json.loads(meta["cases"]) == mk.CASES[method]


# measured: 0 ulp everywhere except slerp at t = 0.3 ("middle"), where mergekit computes the
# coefficients in float32 (t, acos, sin of a float32 dot) and fusion_ui's slerp in double: 2 ulp
# on lm_head (a float32 replica of mergekit's formula gives 0 there)
@pytest.mark.parametrize(("method", "case", "limit"), [
    ("passthrough", "stack", 0), ("passthrough", "scale", 0),
    ("slerp_slices", "full", 1), ("slerp_slices", "middle", 2), ("task_arithmetic_slices", "ramp", 1),
])
def test_slices_match_mergekit(family: dict[str, Path], method: str, case: str, limit: int) -> None:
    reference, _ = mk.load_reference(method)
    merged = merge_to_state_dict(recipe_from_dict(mk.fill(mk.CASES[method][case], family)), device="cpu")
    assert merged.keys() == {k.split("/", 1)[1] for k in reference if k.startswith(f"{case}/")}
    worst = {name: ulps(t, reference[f"{case}/{name}"]) for name, t in merged.items()}
    assert max(worst.values()) <= limit, worst


def test_a_passthrough_stack_renames_layers_and_takes_the_outer_tensors_from_the_ends(
    family: dict[str, Path],
) -> None:
    recipe = recipe_from_dict(mk.fill(mk.CASES["passthrough"]["stack"], family))
    with plan_merge(recipe) as plan:  # known before any tensor is read
        assert plan.layout is not None and plan.layout.num_layers == 3
        assert plan.config_updates == {"num_hidden_layers": 3}
        per_layer = sum(v.numel() for k, v in mk.family_tensors()["ft0"].items() if ".layers.0." in k)
        outer = sum(v.numel() for k, v in mk.family_tensors()["ft0"].items() if ".layers." not in k)
        assert plan.layout.num_parameters == 3 * per_layer + outer
        job = {j.name: j for j in plan.jobs}
        assert job["model.layers.2.mlp.up_proj.weight"].inputs == ((1, "model.layers.1.mlp.up_proj.weight"),)
        assert job["model.embed_tokens.weight"].inputs == ((0, "model.embed_tokens.weight"),)  # first slice
        assert job["lm_head.weight"].inputs == ((1, "lm_head.weight"),)  # last slice
    merged = merge_to_state_dict(recipe, device="cpu")
    ft1 = mk.family_tensors()["ft1"]
    assert torch.equal(merged["model.layers.2.self_attn.q_proj.weight"], ft1["model.layers.1.self_attn.q_proj.weight"])


def test_the_exported_stack_loads_in_transformers_and_states_its_slices(
    family: dict[str, Path], tmp_path: Path,
) -> None:
    transformers = pytest.importorskip("transformers")
    config = mk.fill(mk.CASES["passthrough"]["scale"], family)
    path = tmp_path / "frankenmerge.yml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    export_merge(load_recipe(path), out, device="cpu")
    written = json.loads((out / "config.json").read_text())
    assert written["num_hidden_layers"] == 3
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 3
    with torch.no_grad():
        logits = model(torch.tensor([[0, 3, 5, 7]])).logits
    assert logits.shape == (1, 4, mk.VOCAB) and bool(torch.isfinite(logits).all())
    card = (out / "README.md").read_text()
    assert "## Layer stack" in card and "3 layers" in card
    assert "slices[1]: output layers 1-2 <- " in card
    exported = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert exported["merge_method"] == "passthrough"
    assert [s["sources"][0]["layer_range"] for s in exported["slices"]] == [[0, 1], [0, 2]]
    # the written recipe reproduces the merge
    again = load_recipe(out / "fusion_ui_recipe.yaml")
    assert again.slices == load_recipe(path).slices


def test_a_native_slices_recipe_round_trips() -> None:
    data = {"method": "passthrough", "slices": [
        {"sources": [{"model": "a", "layer_range": [0, 2]}]},
        {"sources": [{"model": "b", "layer_range": [1, 2], "scale": 0.5}]},
    ]}
    recipe = recipe_from_dict(data)
    assert [e.model for e in recipe.models] == ["a", "b"]
    assert recipe_from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
    assert recipe.updated(seed=1).slices == recipe.slices


@pytest.mark.parametrize(("slices", "message"), [
    ([{"sources": [{"model": "{ft0}", "layer_range": [0, 3]}]}],
     r"slices\[0\]\.sources\[0\]\.layer_range: \[0, 3\] runs past .*2 layers"),
    ([{"sources": [{"model": "{ft0}", "layer_range": [0, 1]}]},
      {"sources": [{"model": "{ft1}", "layer_range": [1, 2]}, {"model": "{ft2}", "layer_range": [0, 2]}]}],
     r"slices\[1\]: every source of a slice covers the same number of layers"),
    ([{"sources": [{"model": "{ft0}", "layer_range": [0, 1]}, {"model": "{ft1}", "layer_range": [0, 1]}]}],
     r"slices\[0\]: method 'passthrough' takes at most 1"),
])
def test_bad_slices_name_the_slice_and_key(family: dict[str, Path], slices: list, message: str) -> None:
    config = {"merge_method": "passthrough", "dtype": "float32", "slices": slices}
    with pytest.raises(RecipeError, match=message):
        plan_merge(recipe_from_dict(mk.fill(config, family)))


def test_a_model_of_another_shape_is_refused_before_any_tensor_is_read(
    family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from safetensors.torch import load_file, save_file

    from fusion_ui.io.checkpoint import Checkpoint

    wide = tmp_path / "wide"
    shutil.copytree(family["ft1"], wide)
    tensors = load_file(str(wide / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(16, mk.HIDDEN)
    save_file(tensors, str(wide / "model.safetensors"), metadata={"format": "pt"})
    config = {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": "{ft0}", "layer_range": [0, 2]}]},
        {"sources": [{"model": str(wide), "layer_range": [1, 2]}]},
    ]}

    def no_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(Checkpoint, "tensor", no_reads)
    with pytest.raises(IncompatibleModelsError, match=r"slices\[1\] \(output layer 2\): tensor "
                       r"model\.layers\.2\.mlp\.up_proj\.weight is \[16, 4\] where output layer 0 has \[8, 4\]"):
        plan_merge(recipe_from_dict(mk.fill(config, family)))
    other = tmp_path / "gpt2ish"
    shutil.copytree(family["ft1"], other)
    (other / "config.json").write_text(json.dumps({**mk.CONFIG, "model_type": "mistral",
                                                   "architectures": ["MistralForCausalLM"]}))
    config["slices"][1]["sources"][0]["model"] = str(other)
    with pytest.raises(IncompatibleModelsError, match=r"slices\[1\]\.sources\[0\]\.model: .* is a mistral"):
        plan_merge(recipe_from_dict(mk.fill(config, family)))


def test_mergekit_slice_keys_fusion_ui_does_not_do_are_refused_by_name(family: dict[str, Path]) -> None:
    base = {"merge_method": "slerp", "base_model": "{base}", "parameters": {"t": 0.5}}
    bad = [{"sources": [{"model": "{base}", "layer_range": [0, 2]}, {"model": "{ft0}", "layer_range": [0, 2]}],
            "residual_weight": 0.1}]
    with pytest.raises(RecipeError, match=r"slices\[0\]\.residual_weight"):
        recipe_from_dict(mk.fill({**base, "slices": bad}, family))
    no_base = [{"sources": [{"model": "{ft1}", "layer_range": [0, 2]}, {"model": "{ft0}", "layer_range": [0, 2]}]}]
    with pytest.raises(RecipeError, match=r"base_model among each slice's sources; slices\[0\]"):
        recipe_from_dict(mk.fill({**base, "slices": no_base}, family))
    with pytest.raises(RecipeError, match="modules"):
        recipe_from_dict({"merge_method": "linear", "modules": {"text": {"models": []}}})


def test_the_readme_slerp_form_exports_as_the_same_mergekit_config(family: dict[str, Path], tmp_path: Path) -> None:
    """The written mergekit_config.yml keeps the slices and the t filter lists: read back, it is
    the same recipe (run through mergekit 0.1.5 when this was written, it gave the same bits)."""
    recipe = recipe_from_dict(mk.fill(mk.CASES["slerp_slices"]["full"], family))
    export_merge(recipe, tmp_path / "out", device="cpu")
    text = (tmp_path / "out" / "mergekit_config.yml").read_text()
    assert "overrides" not in text  # no "not exported" note: the filters are there
    exported = yaml.safe_load(text)
    assert exported["parameters"]["t"][0] == {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}
    back = recipe_from_dict(exported)
    assert (back.slices, back.parameters, back.overrides, back.base) == (
        recipe.slices, recipe.parameters, recipe.overrides, recipe.base)
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"slices[0]: output layers 0-1 <- {family['base']} layers 0-1 + {family['ft0']} layers 0-1" in card
