"""The grid: one full :class:`~fusion_ui.recipe.Recipe` per cell, and a key per cell that stays
the same across runs (what a resumed sweep matches its results file by).

Cells run in grid order, the first axis slowest (``itertools.product``). A cell's key is its
axis values as a JSON object in axis order, e.g. ``{"drop_rate": 0.9, "lambda": 1.5}``: the
same values give the same key on every machine, and adding values to an axis keeps the keys of
the cells already done.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from fusion_ui.errors import RecipeError
from fusion_ui.methods import get_method
from fusion_ui.recipe import Recipe, format_validation

if TYPE_CHECKING:
    from fusion_ui.sweep.spec import ResolvedAxis, Sweep


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    index: int  # position in grid order
    key: str  # stable id: the axis values as JSON, in axis order
    values: dict[str, Any]  # axis label -> value
    recipe: Recipe  # the complete recipe of the merge, validated


def grid_cells(sweep: Sweep) -> list[Cell]:
    """Every cell of the sweep, in grid order, each recipe validated like a loaded one."""
    cells = []
    for index, combo in enumerate(itertools.product(*(a.values for a in sweep.axes))):
        values = {a.label: v for a, v in zip(sweep.axes, combo, strict=True)}
        key = cell_key(values)
        recipe = cell_recipe(sweep.recipe, sweep.axes, combo, source=f"sweep cell {key}")
        cells.append(Cell(index, key, values, recipe))
    return cells


def cell_key(values: dict[str, Any]) -> str:
    """The cell's stable id (floats as Python writes them, which read back exactly)."""
    return json.dumps(values, ensure_ascii=False, separators=(", ", ": "))


def cell_recipe(
    base: Recipe,
    axes: tuple[ResolvedAxis, ...],
    combo: tuple[Any, ...],
    *,
    source: str = "sweep cell",
) -> Recipe:
    """``base`` with each axis set to its value in ``combo``: the method first (it decides which
    parameters exist), then the seed and the parameters."""
    data = base.model_dump()
    pairs = sorted(zip(axes, combo, strict=True), key=lambda av: av[0].kind != "method")
    for axis, value in pairs:
        if axis.kind == "method":
            _switch_method(data, str(value))
        elif axis.kind == "seed":
            data["seed"] = int(value)
        elif axis.per_model:
            targets = range(len(data["models"])) if axis.model is None else [axis.model]
            for i in targets:
                data["models"][i]["parameters"] = _set(
                    data["models"][i]["parameters"], data["method"], axis.parameter, value
                )
        else:
            data["parameters"] = _set(data["parameters"], data["method"], axis.parameter, value)
    data["name"] = f"{base.name or 'sweep'} | " + ", ".join(
        f"{a.label}={v}" for a, v in zip(axes, combo, strict=True)
    )
    try:
        recipe = Recipe.model_validate(data)
        recipe.validate_for_method()
        # rules across parameters (weights that sum to 0 under normalize...), checked on the
        # values a tensor without overrides gets; plan_merge checks every tensor again
        params, model_params = recipe.resolve("*", None)
        recipe.merge_method.check(params, model_params)
    except ValidationError as exc:
        raise RecipeError(f"{source}: {format_validation(exc)}") from None
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc}") from None
    return recipe


def _set(values: dict[str, Any], method: str, key: str, value: Any) -> dict[str, Any]:
    """``values`` with ``key`` set, and the parameter's other spelling (density / drop_rate) removed."""
    spec = get_method(method).param_for(key)
    out = {k: v for k, v in values.items() if k not in spec.names()}
    out[key] = value
    return out


def _switch_method(data: dict[str, Any], method: str) -> None:
    """Change the method; parameters the new method does not declare are dropped (a TIES cell of a
    DARE-TIES recipe has no ``rescale``), ones it shares are kept."""
    m = get_method(method)
    known = {n for p in m.params for n in p.names()}
    data["method"] = method
    data["parameters"] = {k: v for k, v in data["parameters"].items() if k in known}
    for entry in data["models"]:
        entry["parameters"] = {k: v for k, v in entry["parameters"].items() if k in known}


__all__ = ["Cell", "cell_key", "cell_recipe", "grid_cells"]
