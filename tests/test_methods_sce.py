"""SCE: its definition on hand-worked tensors, and parity with mergekit 0.1.5's ``sce``.

The mergekit outputs were made once, in a separate venv, by ``tests/data/make_mergekit_reference.py``
(its docstring has the command; the file's metadata records mergekit's version); mergekit is not
installed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from parity import mk, ulps

from fusion_ui import merge_to_state_dict, recipe_from_dict
from fusion_ui.errors import RecipeError
from fusion_ui.mergekit_compat import recipe_to_mergekit
from fusion_ui.methods import METHODS, get_method
from fusion_ui.methods.base import TensorContext
from fusion_ui.methods.sce import energy_weights, select_count, variance_select_mask


def sce(base: list, models: list[list], select_topk: float = 1.0) -> torch.Tensor:
    ctx = TensorContext("w", torch.tensor(base), [torch.tensor(m) for m in models], [{} for _ in models],
                        {"select_topk": select_topk})
    return get_method("sce").merge(ctx)


def test_sce_worked_example_weights_by_energy_and_erases_minority_signs() -> None:
    # δ1 = [0.2, -0.1, 0.0, 0.4], δ2 = [0.1, 0.3, 0.0, -0.2]: energies 0.0525 and 0.035,
    # weights 0.6 and 0.4; signs of δ1+δ2: [+, +, +(tie at 0), +]
    base = [1.0, 1.0, 1.0, 1.0]
    out = sce(base, [[1.2, 0.9, 1.0, 1.4], [1.1, 1.3, 1.0, 0.8]])
    w1, w2 = 0.6, 0.4
    expected = [
        1 + (w1 * 0.2 + w2 * 0.1) / (w1 + w2),  # both agree
        1 + 0.3,  # only δ2 is positive
        1.0,  # nobody agrees with + on a zero: the base
        1 + 0.4,  # only δ1 is positive
    ]
    torch.testing.assert_close(out, torch.tensor(expected), rtol=0, atol=1e-6)


def test_sce_select_keeps_the_elements_where_the_models_differ_most() -> None:
    deltas = torch.tensor([[0.1, 0.5, -0.3, 0.0], [0.1, -0.5, 0.3, 0.2]])  # variances 0, .25, .09, .01
    assert variance_select_mask(deltas, 0.7).tolist() == [False, True, True, False]  # ⌊3·0.7⌋ = 2
    assert variance_select_mask(deltas, 0.5).tolist() == [False, True, False, False]  # ⌊3·0.5⌋ = 1
    assert select_count(3, 0.5) == 1 and select_count(100, 0.29) == 29 and select_count(3, 0.1) == 1
    assert select_count(0, 0.5) == 0


def test_sce_never_keeps_nothing_of_a_tensor_that_differs() -> None:
    # one element varies (the third); mergekit: ⌊1·0.1⌋ = 0 elements, so the tensor stays θ0.
    # Here that element is kept; its sum is negative, so only the second model's -0.5 counts.
    out = sce([0.0] * 4, [[0.1, 0.0, 0.3, 0.0], [0.1, 0.0, -0.5, 0.0]], select_topk=0.1)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.5, 0.0])


def test_sce_equal_weights_when_the_deltas_are_all_zero() -> None:
    assert energy_weights(torch.zeros(3, 5)).tolist() == pytest.approx([1 / 3] * 3)
    assert torch.equal(sce([1.0, 2.0], [[1.0, 2.0], [1.0, 2.0]]), torch.tensor([1.0, 2.0]))


def test_sce_declares_its_parameter_and_capabilities() -> None:
    m = METHODS["sce"]
    assert [p.name for p in m.params] == ["select_topk"] and not m.params[0].per_model
    assert m.needs_base and not m.uses_seed and not m.capabilities.dare_preview
    schema = m.schema()
    assert schema["params"][0]["minimum"] == 0.0 and schema["params"][0]["maximum"] == 1.0
    with pytest.raises(RecipeError, match="out of range"):
        recipe_from_dict({"method": "sce", "base": "b", "models": [{"model": "x"}],
                          "parameters": {"select_topk": 0.0}})
    with pytest.raises(RecipeError, match="needs a base"):
        recipe_from_dict({"method": "sce", "models": [{"model": "x"}]})


def test_sce_mergekit_yaml_in_and_out() -> None:
    r = recipe_from_dict({"merge_method": "sce", "base_model": "b", "dtype": "float32",
                          "models": [{"model": "b"}, {"model": "x"}, {"model": "y"}],
                          "parameters": {"select_topk": 0.3, "int8_mask": True}})
    assert r.method == "sce" and r.base == "b" and [m.model for m in r.models] == ["x", "y"]
    assert r.parameters == {"select_topk": 0.3} and all(not m.parameters for m in r.models)
    text, _ = recipe_to_mergekit(r)
    out = yaml.safe_load(text)
    assert out["merge_method"] == "sce" and out["base_model"] == "b"
    assert out["parameters"] == {"select_topk": 0.3}
    assert recipe_from_dict(out) == r


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return mk.build_family(tmp_path_factory.mktemp("mk-family"))


def test_the_rebuilt_inputs_are_the_ones_mergekit_merged() -> None:
    _, meta = mk.load_reference("sce")
    assert meta["mergekit_version"] == "0.1.5"
    assert mk.digest(mk.family_tensors()) == meta["inputs_sha256"]
    assert json.loads(meta["cases"]) == mk.CASES["sce"]


@pytest.mark.parametrize("case", ["all", "half", "two"])
def test_sce_matches_mergekit_to_one_ulp(family: dict[str, Path], case: str) -> None:
    reference, _ = mk.load_reference("sce")
    recipe = recipe_from_dict(mk.fill(mk.CASES["sce"][case], family))
    merged = merge_to_state_dict(recipe, device="cpu")
    assert merged.keys() == {k.split("/", 1)[1] for k in reference if k.startswith(f"{case}/")}
    worst = {name: ulps(t, reference[f"{case}/{name}"]) for name, t in merged.items()}
    assert max(worst.values()) <= 1, worst
    assert all(t.dtype == torch.float32 for t in merged.values())


def test_sce_differs_from_mergekit_only_where_mergekit_keeps_no_element(family: dict[str, Path]) -> None:
    reference, _ = mk.load_reference("sce")
    recipe = recipe_from_dict(mk.fill(mk.CASES["sce"]["sparse"], family))
    merged = merge_to_state_dict(recipe, device="cpu")
    base = mk.family_tensors()["base"]
    differing = []
    for name, t in merged.items():
        ref = reference[f"sparse/{name}"]
        if int(np.float32(t.numel()) * np.float32(0.1)) == 0:  # mergekit's k: it keeps nothing
            assert torch.equal(ref, base[name]) and not torch.equal(t, base[name]), name
            differing.append(name)
        else:
            assert ulps(t, ref) <= 1, name
    assert sorted(differing) == sorted(n for n in merged if n.endswith("norm.weight"))  # the 4-element norms
