"""The Sweep tab's facade: a grid of merges around the Merge tab's recipe, scored on eval sets.

One or two axes over the recipe's method parameters (global, or every model's per-model value)
or its seed, each with typed values; each cell is merged in memory and scored by
:func:`fusion_ui.sweep.run_sweep`, as a job of the session, into a results CSV under the app's
state folder. The table becomes a heatmap (two axes) or one line per skill (one axis), and any
cell's recipe goes back to the Merge tab.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from fusion_ui import figures
from fusion_ui.app.context import AppContext
from fusion_ui.errors import InputError
from fusion_ui.methods import METHODS
from fusion_ui.recipe import Recipe
from fusion_ui.runtime.jobs import Job, JobContext
from fusion_ui.sweep import SweepResult, recipe_of, run_sweep, sweep_from_dict

MAX_APP_AXES = 2  # what a heatmap shows; sweep files take 3
MAX_APP_CELLS = 400  # cells per sweep from the app (a 20 x 20 grid); larger ones: fusion-ui sweep
DEFAULT_ITEMS = 20  # eval items per skill and cell
SEED_AXIS = "seed"


@dataclass(frozen=True)
class AxisChoice:
    """One axis a user types: a parameter (or ``seed``) and its values as text."""

    parameter: str
    values: str  # "0.1, 0.5, 0.9" or "0:0.9:10" (start:stop:count)


class SweepFacade:
    def __init__(self, context: AppContext) -> None:
        self.context = context

    @staticmethod
    def axis_parameters(method: str) -> list[str]:
        """The numeric parameters of ``method`` an axis may sweep (global ones, then per-model
        ones, which set every model's value), and the seed."""
        m = METHODS.get(method)
        if m is None:
            return [SEED_AXIS]
        specs = [*m.global_params(), *m.model_params()]
        return [s.name for s in specs if s.kind in ("float", "int")] + [SEED_AXIS]

    def eval_skills(self) -> list[str]:
        """The skills of the demo's eval sets (what a cell is scored on)."""
        demo = self.context.demo
        return sorted(demo.eval_sets) if demo is not None else []

    @property
    def ray_address(self) -> str | None:
        """The Ray cluster this app may send cells to (``fusion-ui app --ray``), or None."""
        return self.context.ray

    def start(self, session: str, recipe: Recipe, axes: Sequence[AxisChoice], *, skills: Sequence[str],
              items_per_skill: int = DEFAULT_ITEMS, on_ray: bool = False) -> Job[SweepResult]:
        """Run the grid as a job of the session; checked (every cell's recipe) before it starts.

        ``on_ray``: the cells go to the app's Ray cluster as Ray tasks (one actor per worker that
        keeps its model loaded), with the same results; only where the app was started with one.
        """
        if on_ray and self.ray_address is None:
            raise InputError("this app was started without a Ray cluster; start it with "
                             "`fusion-ui app --ray local` (or auto, or the head's address) to run sweeps on Ray")
        ray = self.ray_address if on_ray else None
        sweep = self.sweep_of(recipe, axes, skills=skills, items_per_skill=items_per_skill)
        digest = hashlib.sha256(session.encode()).hexdigest()[:12]
        out = self.context.state_dir / "sweeps" / f"{digest}-{time.strftime('%Y%m%d-%H%M%S')}"

        def run(ctx: JobContext) -> SweepResult:
            # One thread: the demo's small models generate fastest on it, and the page stays responsive
            # (Ray workers take one CPU each).
            return run_sweep(sweep, out=out, device=self.context.device, progress=ctx.progress,
                             cancel=ctx.cancel, threads=None if ray else 1, ray=ray)

        return self.context.submit(session, "sweep", run, label="sweep")

    def sweep_of(self, recipe: Recipe, axes: Sequence[AxisChoice], *, skills: Sequence[str],
                 items_per_skill: int = DEFAULT_ITEMS) -> Any:
        """The validated sweep of these choices (a :class:`fusion_ui.sweep.Sweep`)."""
        demo = self.context.demo
        if demo is None or not demo.eval_sets:
            raise InputError("sweeps in the app score the cells on the demo family's eval sets, and none "
                             "are there; run `fusion-ui sweep` with your own eval files instead")
        chosen = [a for a in axes if a.parameter]
        if not 1 <= len(chosen) <= MAX_APP_AXES:
            raise InputError(f"pick one or two axes to sweep (the app shows up to {MAX_APP_AXES}); "
                             "a sweep file takes three (fusion-ui sweep)")
        if len({a.parameter for a in chosen}) != len(chosen):
            raise InputError("the two axes sweep the same parameter; pick two different ones")
        known = self.eval_skills()
        wanted = [s for s in skills if s]
        unknown = [s for s in wanted if s not in known]
        if not wanted or unknown:
            raise InputError(f"pick the skills to score from the demo's sets: {', '.join(known)}")
        if not (isinstance(items_per_skill, (int, float)) and 1 <= int(items_per_skill) <= self.context.limits.max_eval_items):
            raise InputError(f"items per skill must be from 1 to {self.context.limits.max_eval_items}")
        spec_axes = [{"parameter": a.parameter, "values": parse_values(a.values, a.parameter)} for a in chosen]
        cells = math.prod(len(a["values"]) for a in spec_axes)
        if cells > MAX_APP_CELLS:
            raise InputError(f"{cells} cells; the app runs up to {MAX_APP_CELLS} per sweep. Use fewer values, "
                             "or run it from a sweep file with fusion-ui sweep (resumable, Ray)")
        data = {
            "name": recipe.name or f"{recipe.method} sweep",
            "recipe": recipe.model_dump(mode="json", exclude_none=True),
            "axes": spec_axes,
            "eval": {"sets": [str(demo.root / "evals")], "skills": wanted, "items_per_skill": int(items_per_skill),
                     "metric": "exact_match"},
            "best": {"by": "mean"},
        }
        return sweep_from_dict(data)

    @staticmethod
    def table(result: SweepResult) -> pd.DataFrame:
        """The results as shown: the axes, each skill's score (%) and the mean, per cell."""
        axes = [a.label for a in result.sweep.axes]
        skills = list(result.sweep.skills)
        frame = result.table[[*axes, *skills, "mean"]].copy()
        frame[[*skills, "mean"]] = (100 * frame[[*skills, "mean"]]).round(1)
        return frame

    @staticmethod
    def chart(result: SweepResult) -> go.Figure:
        axes = [a.label for a in result.sweep.axes]
        return figures.sweep_chart(result.table, axes, list(result.sweep.skills), title=result.sweep.name)

    @staticmethod
    def cell_recipe(result: SweepResult, row: int | None = None) -> Recipe:
        """The recipe of a row of the table (default: the best cell by the mean)."""
        if row is None:
            return result.best_recipe()
        if not 0 <= row < len(result.table):
            raise InputError(f"no row {row + 1} in the sweep's table")
        return recipe_of(result.sweep, result.table.iloc[row])

    @staticmethod
    def csv_path(result: SweepResult) -> Path:
        return result.path


def parse_values(text: str, parameter: str) -> list[float | int]:
    """Values typed for an axis: ``0.1, 0.5, 0.9`` or ``start:stop:count`` (both ends included)."""
    text = (text or "").strip()
    if not text:
        raise InputError(f"give values for {parameter}: e.g. `0.1, 0.5, 0.9` or `0:0.9:10`")
    try:
        if ":" in text:
            parts = [p.strip() for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
            if not 1 <= count <= MAX_APP_CELLS:
                raise InputError(f"{parameter}: the count must be from 1 to {MAX_APP_CELLS}")
            if count == 1:
                values = [start]
            else:
                values = [round(start + k * (stop - start) / (count - 1), 12) for k in range(count)]
        else:
            values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{parameter}: `{text[:60]}` is neither numbers separated by commas nor "
                         "start:stop:count") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"{parameter}: give finite numbers")
    if parameter == SEED_AXIS:
        if not all(v == int(v) and v >= 0 for v in values):
            raise InputError("seeds are whole numbers of 0 or more")
        return [int(v) for v in values]
    return values


__all__ = ["DEFAULT_ITEMS", "MAX_APP_AXES", "MAX_APP_CELLS", "AxisChoice", "SweepFacade", "parse_values"]
