"""TIES' trim and breadcrumbs' band under mergekit import: ⌊density·n⌋ kept elements
(``count_rounding: floor``), checked against mergekit 0.1.5's own output on the tiny float32
family of ``tests/data/make_mergekit_reference.py``; fusion_ui's own default rounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from parity import mk, ulps

from fusion_ui import merge_to_state_dict, recipe_from_dict
from fusion_ui.methods.sparsify import breadcrumbs, keep_count, magnitude_prune


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return mk.build_family(tmp_path_factory.mktemp("mk-family"))


def test_counts_by_hand() -> None:
    assert [keep_count(10, d) for d in (0.05, 0.25, 0.35, 0.99)] == [1, 2, 4, 10]  # round (half to even)
    assert [keep_count(10, d, "floor") for d in (0.05, 0.25, 0.35, 0.99)] == [1, 2, 3, 9]
    delta = torch.tensor([0.1, -0.5, 0.3, 0.2, -0.4, 0.05, 0.6, -0.15, 0.25, 0.35])
    assert int(magnitude_prune(delta, 0.35).ne(0).sum()) == 4  # 0.6, -0.5, -0.4, 0.35
    assert int(magnitude_prune(delta, 0.35, rounding="floor").ne(0).sum()) == 3
    # breadcrumbs, floor: ⌊0.55·10⌋ = 5 kept, ⌊0.15·10⌋ = 1 outlier dropped (0.6), 4 smallest dropped
    kept = breadcrumbs(delta, 0.55, 0.15, rounding="floor")
    assert kept.ne(0).tolist() == [False, True, True, False, True, False, False, False, True, True]
    assert int(breadcrumbs(delta, 0.55, 0.15).ne(0).sum()) == 6  # round(5.5) = 6 (half to even)


@pytest.mark.parametrize(("method", "case"), [("ties", "trim"), ("breadcrumbs", "band"), ("breadcrumbs", "ties")])
def test_mergekit_configs_match_mergekit(family: dict[str, Path], method: str, case: str) -> None:
    reference, meta = mk.load_reference(method)
    assert meta["mergekit_version"] == "0.1.5" and json.loads(meta["cases"]) == mk.CASES[method]
    assert mk.digest(mk.family_tensors()) == meta["inputs_sha256"]
    recipe = recipe_from_dict(mk.fill(mk.CASES[method][case], family))
    assert recipe.parameters["count_rounding"] == "floor"
    merged = merge_to_state_dict(recipe, device="cpu")
    worst = {name: ulps(t, reference[f"{case}/{name}"]) for name, t in merged.items()}
    assert max(worst.values()) <= 1, worst
    # and fusion_ui's own rounding keeps other counts on some tensor: the option is what matches
    native = recipe.model_copy(update={"parameters": {**recipe.parameters, "count_rounding": "round"}})
    rounded = merge_to_state_dict(native, device="cpu")
    assert any(ulps(rounded[n], reference[f"{case}/{n}"]) > 1 for n in rounded)
