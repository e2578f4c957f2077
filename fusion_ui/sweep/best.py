"""The cell a sweep recommends: the best by one metric, or the Pareto front over two skills, as
recipes the Merge tab and ``fusion-ui merge`` take as they are."""

from __future__ import annotations

import pandas as pd

from fusion_ui.recipe import Recipe
from fusion_ui.sweep.cells import grid_cells
from fusion_ui.sweep.spec import Sweep, SweepError


def best_row(table: pd.DataFrame, by: str = "mean") -> pd.Series:
    """The row with the highest ``by`` (``mean`` or a skill); ties go to the first in grid order."""
    _require(table, [by])
    if table.empty:
        raise SweepError("the sweep has no finished cell yet: nothing to choose from")
    return table.loc[table[by].astype(float).idxmax()]


def pareto_front(table: pd.DataFrame, skills: tuple[str, str] | list[str]) -> pd.DataFrame:
    """The cells no other cell beats on both skills (at least as good on both, better on one),
    best on the first skill first. Cells with equal scores on both are all kept."""
    a, b = skills
    _require(table, [a, b])
    x = table[a].astype(float).to_numpy()
    y = table[b].astype(float).to_numpy()
    keep = [
        not any(
            (x[j] >= x[i] and y[j] >= y[i]) and (x[j] > x[i] or y[j] > y[i]) for j in range(len(x))
        )
        for i in range(len(x))
    ]
    front = table[keep]
    return front.sort_values([a, b], ascending=False, kind="stable")


def recipe_of(sweep: Sweep, row: pd.Series | str) -> Recipe:
    """The full recipe of a cell, from its row in the table (or its key)."""
    key = row if isinstance(row, str) else str(row["cell"])
    for cell in grid_cells(sweep):
        if cell.key == key:
            return cell.recipe
    raise SweepError(f"no cell {key} in this sweep's grid; was the table made by another sweep?")


def best_recipe(sweep: Sweep, table: pd.DataFrame, *, by: str | None = None) -> Recipe:
    """The recipe of the best cell by ``by`` (default: the sweep's ``best.by``)."""
    return recipe_of(sweep, best_row(table, by or sweep.spec.best.by))


def _require(table: pd.DataFrame, names: list[str]) -> None:
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise SweepError(
            f"the results have no column {', '.join(missing)}; choose by mean or a skill of "
            f"the eval sets"
        )


__all__ = ["best_recipe", "best_row", "pareto_front", "recipe_of"]
