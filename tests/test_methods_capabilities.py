"""Methods declare what they are (capabilities, parameter complements); the planner, recipes,
mergekit export and the model card ask them instead of guessing from names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fusion_ui.card import fusion_ui_version, model_card
from fusion_ui.errors import RecipeError
from fusion_ui.merge import plan_merge, read_inputs
from fusion_ui.mergekit_compat import recipe_to_mergekit
from fusion_ui.methods import METHODS, Capabilities, DropSettings, RandomDrop, get_method
from fusion_ui.methods.base import MergeMethod, TensorContext
from fusion_ui.methods.params import DROP_RATE, ParamSpec, complement_value
from fusion_ui.recipe import recipe_from_dict

LAYER = "model.layers.0.mlp.up_proj.weight"


def test_every_method_declares_how_it_uses_the_base_the_seed_and_a_drop() -> None:
    expected = {  # name: (base, random drop rate or "ranked" or None, rescale parameter)
        "linear": ("unused", None, None),
        "task_arithmetic": ("required", None, None),
        "ties": ("required", None, None),
        "dare_linear": ("required", "drop_rate", "rescale"),
        "dare_ties": ("required", "drop_rate", "rescale"),
        "magnitude_prune": ("required", None, "rescale"),
        "breadcrumbs": ("required", None, None),
        "breadcrumbs_ties": ("required", None, None),
        "della": ("required", "ranked", "rescale"),
        "della_ties": ("required", "ranked", "rescale"),
        "slerp": ("optional", None, None),
        "model_stock": ("required", None, None),
        "sce": ("required", None, None),
        "fisher": ("optional", "drop_rate", "rescale"),  # DARE in front while `dare` is on
        "regmean": ("optional", "drop_rate", "rescale"),
        "passthrough": ("unused", None, None),  # one model's tensors, times scale (slices:)
    }
    assert set(METHODS) == set(expected)
    for name, (base, drop, rescale) in expected.items():
        caps = METHODS[name].capabilities
        got_drop = None if caps.random_drop is None else (caps.random_drop.rate or "ranked")
        assert (caps.base, got_drop, caps.rescale) == (base, drop, rescale), name
        assert caps.uses_seed == (drop is not None) == METHODS[name].uses_seed, name
        assert caps.dare_preview == (drop == "drop_rate"), name
        assert METHODS[name].needs_base == (base == "required"), name
        METHODS[name].check_declaration()
        schema = METHODS[name].schema()
        assert schema["capabilities"]["dare_preview"] == caps.dare_preview
        assert schema["capabilities"]["base"] == base
    assert METHODS["slerp"].capabilities.base_switch == "on_deltas"


def test_the_base_switch_is_read_from_the_parameters() -> None:
    slerp = get_method("slerp")
    assert slerp.needs_base_with({"t": 0.5, "on_deltas": True})
    assert not slerp.needs_base_with({"t": 0.5, "on_deltas": False})
    assert not slerp.needs_base_with({})  # the switch's default
    assert not slerp.needs_base_with({"on_deltas": "yes"})  # not a bool: validation refuses it later
    assert get_method("ties").needs_base_with({}) and not get_method("linear").needs_base_with({})


def test_drop_settings_are_the_tensors_resolved_values() -> None:
    r = recipe_from_dict({
        "method": "dare_ties", "base": "b", "parameters": {"rescale": "l1"},
        "models": [{"model": "x", "density": [0.2, 0.6]}, {"model": "y"}],
    })
    g, mp = r.resolve("model.layers.3.mlp.up_proj.weight", 4)
    settings = r.merge_method.drop_settings(g, mp[0])
    assert settings == DropSettings(drop_rate=pytest.approx(0.4), rescale="l1")
    assert r.merge_method.drop_settings(g, mp[1]) == DropSettings(drop_rate=0.9, rescale="l1")
    for name in ("della", "ties", "magnitude_prune", "linear"):
        m = get_method(name)
        defaults = {p.name: p.default for p in m.params}
        assert m.drop_settings(defaults, defaults) is None, name


def test_a_declaration_naming_a_missing_or_wrong_parameter_is_refused() -> None:
    class Broken(MergeMethod):
        name, title, summary, reference = "broken", "Broken", "-", "-"
        params = (ParamSpec("t", 0.5, minimum=0.0, maximum=1.0, label="t", help="t"),)

        def merge(self, ctx: TensorContext) -> torch.Tensor:
            return ctx.models[0]

    for caps, message in [
        (Capabilities(base="optional", base_switch="on_deltas"), "base_switch 'on_deltas'"),
        (Capabilities(base="optional", base_switch="t"), "base_switch 't'"),  # not a bool
        (Capabilities(random_drop=RandomDrop(rate="t")), "random_drop.rate 't'"),  # not per model
        (Capabilities(rescale="t"), "rescale 't'"),  # not a choice
    ]:
        method = Broken()
        method.capabilities = caps
        with pytest.raises(TypeError, match=message):
            method.check_declaration()
    with pytest.raises(TypeError, match="base_switch"):
        Capabilities(base="optional")
    with pytest.raises(TypeError, match="base_switch"):
        Capabilities(base="required", base_switch="on_deltas")


def test_the_density_complement_is_declared_by_the_parameter() -> None:
    assert DROP_RATE.complement == "density" and DROP_RATE.names() == ("drop_rate", "density")
    assert get_method("dare_linear").param_for("density") is get_method("dare_linear").param("drop_rate")
    assert get_method("ties").param_for("drop_rate").name == "density"
    assert get_method("magnitude_prune").param("drop_rate").complement == "density"
    with pytest.raises(RecipeError, match="no parameter 'density'"):
        get_method("task_arithmetic").param_for("density")
    assert DROP_RATE.value_in({"density": 0.1}) == 0.9 and DROP_RATE.value_in({"drop_rate": 0.3}) == 0.3
    assert DROP_RATE.value_in({"weight": 1.0}) is None
    assert complement_value(0.9) == 0.1 and complement_value([0.25, "0.75"]) == [0.75, 0.25]
    with pytest.raises(RecipeError, match="density must be a number"):
        DROP_RATE.value_in({"density": "lots"})
    assert get_method("dare_ties").schema()["params"][1]["complement"] == "density"


def test_a_global_density_is_exported_to_mergekit_as_the_recipe_means_it() -> None:
    # `parameters: {density: 0.2}` sets every model's drop_rate to 0.8; the export once wrote
    # the default drop rate's density (0.1) instead
    r = recipe_from_dict({"method": "dare_linear", "base": "b", "parameters": {"density": 0.2},
                          "models": [{"model": "x"}, {"model": "y", "drop_rate": 0.5}]})
    mk = yaml.safe_load(recipe_to_mergekit(r)[0])
    assert [m["parameters"]["density"] for m in mk["models"]] == [0.2, 0.5]


def test_methods_called_without_a_base_say_so_instead_of_asserting() -> None:
    models = [torch.ones(3), torch.zeros(3)]
    for name in ("ties", "dare_linear", "model_stock", "sce"):
        m = get_method(name)
        g = {p.name: p.default for p in m.global_params()}
        mps = [{p.name: p.default for p in m.model_params()} for _ in models]
        with pytest.raises(RecipeError, match="needs the base"):
            m.merge(TensorContext("w", None, models, mps, g))
    with pytest.raises(RecipeError, match="on_deltas"):
        get_method("slerp").merge(TensorContext("w", None, models, [{}, {}], {"t": 0.5, "on_deltas": True}))


def test_a_mergekit_config_that_does_not_convert_is_reported_in_mergekit_terms() -> None:
    with pytest.raises(RecipeError, match="mergekit config could not be converted: parameters.lambda"):
        recipe_from_dict({"merge_method": "ties", "base_model": "b", "parameters": {"lambda": {"x": 1}},
                          "models": [{"model": "x", "parameters": {"weight": 1.0}}]})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent / "data" / "make_mergekit_reference.py"
    spec = importlib.util.spec_from_file_location("make_mergekit_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module.build_family(tmp_path_factory.mktemp("tiny"))


def _slerp(tiny: dict[str, Path], **extra: Any) -> dict[str, Any]:
    return {"method": "slerp", "base": str(tiny["base"]), "models": [str(tiny["ft0"]), str(tiny["ft1"])],
            "parameters": {"t": 0.3}, **extra}


def test_the_planner_reads_the_base_only_for_tensors_whose_parameters_use_it(tiny: dict[str, Path]) -> None:
    # slerp of the weights never reads θ0 (it was read for every tensor and thrown away); an
    # override that interpolates task vectors in layer 1 reads it there only
    recipe = recipe_from_dict(_slerp(tiny, overrides=[{"layers": [1, 1], "parameters": {"on_deltas": True}}]))
    with plan_merge(recipe) as plan:
        assert plan.reads_base
        for job in plan.jobs:
            inputs = read_inputs(plan, job)
            assert (inputs.base is not None) == (".layers.1." in job.name), job.name
    with plan_merge(recipe_from_dict(_slerp(tiny))) as plan:
        assert not plan.reads_base
        assert all(read_inputs(plan, j).base is None for j in plan.jobs)


def test_the_card_says_when_the_base_is_not_read_and_what_the_seed_does(tiny: dict[str, Path]) -> None:
    with plan_merge(recipe_from_dict(_slerp(tiny))) as plan:
        card = model_card(plan, "method: slerp\n", None)
    assert f"| base | `{tiny['base']}` | not read: slerp with these settings" in card
    assert "(unused: this method is deterministic)" in card
    assert f"fusion_ui {fusion_ui_version()} using" in card
    dare = {"method": "dare_linear", "base": str(tiny["base"]), "models": [str(tiny["ft0"])], "seed": 4}
    with plan_merge(recipe_from_dict(dare)) as plan:
        card = model_card(plan, "method: dare_linear\n", None)
    assert f"| base | `{tiny['base']}` |  |" in card
    assert "seed: `4` (keys the random drop masks" in card


def test_switched_parameters_are_the_drop_behind_a_base_switch() -> None:
    # Fisher / RegMean drop only with `dare: true`; the app hides the drop controls while it is off
    for name in ("fisher", "regmean"):
        schema = get_method(name).schema()
        assert schema["switch"] == "dare" and schema["switched"] == ["drop_rate", "rescale"]
    assert get_method("slerp").schema()["switched"] == []  # its switch (task vectors) gates no drop
    assert get_method("dare_ties").schema()["switched"] == []  # always drops: nothing gated
