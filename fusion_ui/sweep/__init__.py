"""Sweeps: a grid of merges around a base recipe, each merged in memory and scored, as a table.

A sweep file names a base recipe, one to three axes (a method parameter, global or per model;
the method; the seed) with their values, an eval set and a metric (:mod:`.spec`). Each cell is
one full recipe (:mod:`.cells`), merged into one loaded model of the base and evaluated
(:mod:`.runner`); rows go to a CSV as cells finish, which a later run resumes from
(:mod:`.results`, :mod:`.run`). Ray runs cells on many machines (:mod:`.ray_executor`, the
``ray`` extra). The best cell, or the Pareto front over two skills, comes back as recipes
(:mod:`.best`)::

    from fusion_ui.sweep import load_sweep, run_sweep
    result = run_sweep(load_sweep("sweep.yaml"))       # or ray="auto"
    result.table                                       # one row per cell
    print(result.best_recipe().to_yaml())              # for `fusion-ui merge`

lm-eval-harness tasks as the cell's eval are not supported yet: cells use the quick evals of
:mod:`fusion_ui.evals` (JSONL/CSV sets, exact match or contains).
"""

from __future__ import annotations

from fusion_ui.sweep.best import best_recipe, best_row, pareto_front, recipe_of
from fusion_ui.sweep.cells import Cell, cell_key, cell_recipe, grid_cells
from fusion_ui.sweep.results import TIME_COLUMNS, ResultsFile
from fusion_ui.sweep.run import Eta, SweepResult, local_cells, run_sweep
from fusion_ui.sweep.runner import CellResult, CellRunner
from fusion_ui.sweep.spec import (
    MAX_AXES,
    Axis,
    EvalSpec,
    Sweep,
    SweepError,
    SweepSpec,
    load_sweep,
    sweep_from_dict,
)

__all__ = [
    "MAX_AXES",
    "TIME_COLUMNS",
    "Axis",
    "Cell",
    "CellResult",
    "CellRunner",
    "Eta",
    "EvalSpec",
    "ResultsFile",
    "Sweep",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "best_recipe",
    "best_row",
    "cell_key",
    "cell_recipe",
    "grid_cells",
    "load_sweep",
    "local_cells",
    "pareto_front",
    "recipe_of",
    "run_sweep",
    "sweep_from_dict",
]
