"""Model Stock under mergekit import: parity with mergekit 0.1.5's ``model_stock``, per tensor and
``filter_wise`` (one t per row), on the tiny float32 family of ``tests/data/make_mergekit_reference.py``.

The stored outputs were made by that script in a separate venv with mergekit (its docstring has
the command); mergekit is not installed here. The family's deltas have small mean cosines of
either sign, so tensors where mergekit extrapolates (t < 0) are among those compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from parity import mk, ulps

from fusion_ui import merge_to_state_dict, recipe_from_dict
from fusion_ui.methods.model_stock import model_stock_t


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return mk.build_family(tmp_path_factory.mktemp("mk-family"))


def test_the_reference_was_made_from_these_inputs_and_cases() -> None:
    _, meta = mk.load_reference("model_stock")
    assert meta["mergekit_version"] == "0.1.5"
    assert mk.digest(mk.family_tensors()) == meta["inputs_sha256"]
    assert json.loads(meta["cases"]) == mk.CASES["model_stock"]


@pytest.mark.parametrize("case", ["tensor", "rows"])
def test_model_stock_matches_mergekit(family: dict[str, Path], case: str) -> None:
    reference, _ = mk.load_reference("model_stock")
    recipe = recipe_from_dict(mk.fill(mk.CASES["model_stock"][case], family))
    merged = merge_to_state_dict(recipe, device="cpu")
    assert merged.keys() == {k.split("/", 1)[1] for k in reference if k.startswith(f"{case}/")}
    worst = {name: ulps(t, reference[f"{case}/{name}"]) for name, t in merged.items()}
    assert max(worst.values()) <= 1, worst  # 0 when measured: the same float32 operations


def test_the_family_has_tensors_where_mergekit_extrapolates() -> None:
    models = mk.family_tensors()
    base = models["base"]
    fts = [models[f"ft{i}"] for i in range(3)]
    negative = [n for n in base if float(model_stock_t([f[n] - base[n] for f in fts], clamp_negative=False)) < 0]
    assert negative  # otherwise the parity test would not see the extrapolation
    # and fusion_ui's own default (t clamped at 0) differs from mergekit exactly there
    recipe_native = {"method": "model_stock", "base": "b", "models": [{"model": "x"}, {"model": "y"}]}
    assert recipe_from_dict(recipe_native).parameters == {}
    assert np.isfinite([float(model_stock_t([f[n] - base[n] for f in fts])) for n in base]).all()
