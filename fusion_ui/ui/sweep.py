"""Sweep tab: let the data pick the merge's parameters.

Around the Merge tab's recipe, pick one or two of its method's parameters (or the seed) and
their values, and the demo skills to score; **Run** merges every cell in memory and scores it
(a job, with progress and **Stop**). One axis draws a line per skill, two a heatmap of the mean;
the table lists every cell, **Use in Merge** sends the best cell (or any row) back to the Merge
tab, and the CSV can be downloaded. Where the app was started with ``--ray``, the cells can run
on that Ray cluster. Larger sweeps, three axes and resuming: ``fusion-ui sweep``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from fusion_ui.app.sweeps import DEFAULT_ITEMS, MAX_APP_CELLS, AxisChoice
from fusion_ui.ui.merge import MergeTab
from fusion_ui.ui.shared import (
    JOB_EVENT,
    QUICK,
    Shared,
    failed_line,
    follow_into,
    message_of,
    require_selection,
    session_of,
    stop_handler,
    user_errors,
)

NO_AXIS = "(none)"
DEFAULT_VALUES = {"drop_rate": "0.5, 0.7, 0.9, 0.99", "density": "0.1, 0.3, 0.5", "lambda": "1, 1.5, 2",
                  "weight": "0.5, 1, 1.5", "seed": "0, 1, 2", "t": "0:1:5"}


@dataclass
class SweepTab:
    first: gr.Dropdown
    second: gr.Dropdown

    def axis_updates(self, parameters: list[str]) -> dict[Any, Any]:
        """Axis choices for a method's parameters (the first axis on its most telling one)."""
        first = next((p for p in ("drop_rate", "density", "t", "lambda") if p in parameters), parameters[0])
        second = "lambda" if "lambda" in parameters and first != "lambda" else NO_AXIS
        return {self.first: gr.update(choices=parameters, value=first),
                self.second: gr.update(choices=[NO_AXIS, *parameters], value=second)}


def build(shared: Shared, merge: MergeTab) -> SweepTab:
    facade = shared.engine.sweeps
    skills = facade.eval_skills()
    gr.Markdown(
        "**Sweeps** merge a grid of settings around the Merge tab's recipe, in memory, and score each on the demo's "
        "held-out sets: the data picks the drop rate, density, λ or weights. Values: `0.5, 0.9` or `start:stop:count`. "
        f"Up to 2 axes and {MAX_APP_CELLS} cells here; `fusion-ui sweep` runs sweep files (3 axes, resumable, on Ray).",
        elem_classes="tab-intro")
    parameters = facade.axis_parameters("dare_ties")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row():
                first = gr.Dropdown(parameters, value="drop_rate", label="Axis 1", elem_id="sweep-axis-1", scale=1)
                first_values = gr.Textbox(DEFAULT_VALUES["drop_rate"], label="values", elem_id="sweep-values-1", scale=2)
            with gr.Row():
                second = gr.Dropdown([NO_AXIS, *parameters], value="lambda", label="Axis 2", elem_id="sweep-axis-2",
                                     scale=1)
                second_values = gr.Textbox(DEFAULT_VALUES["lambda"], label="values", elem_id="sweep-values-2", scale=2)
        with gr.Column(scale=2):
            chosen = gr.CheckboxGroup(skills, value=[s for s in skills if s != "general"] or skills,
                                      label="Score on (demo eval sets)", elem_id="sweep-skills")
            items = gr.Number(DEFAULT_ITEMS, precision=0, minimum=1, label="items per skill and cell",
                              elem_id="sweep-items")
            ray = facade.ray_address
            on_ray = gr.Checkbox(False, label=f"run the cells on Ray ({ray})" if ray else "run the cells on Ray",
                                 info=None if ray else "start the app with --ray local, auto or HEAD:6379 to use it",
                                 interactive=ray is not None, elem_id="sweep-ray")
            with gr.Row():
                run_button = gr.Button("Run sweep", variant="primary", elem_id="sweep-run", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="sweep-stop", scale=1)
    status = gr.Markdown("", elem_id="sweep-status", elem_classes="status")
    chart = gr.Plot(show_label=False, elem_id="sweep-chart")
    table = gr.Dataframe(pd.DataFrame(), interactive=False, label="Cells (scores in %)", elem_id="sweep-table")
    with gr.Row():
        row = gr.Number(None, precision=0, label="row (empty or 0: the best cell by the mean)",
                        elem_id="sweep-row", scale=1)
        use = gr.Button("Use in Merge", elem_id="sweep-use", scale=1)
        csv = gr.File(label="results CSV", elem_id="sweep-csv", scale=2, interactive=False)
    result = gr.State(None)
    tab = SweepTab(first, second)

    @user_errors
    def run(values: dict[Any, Any], request: gr.Request) -> Iterator[dict[Any, Any]]:
        try:
            require_selection(values[shared.selection])
            recipe = merge.compose(values)
            axes = [AxisChoice(values[first], values[first_values])]
            if values[second] and values[second] != NO_AXIS:
                axes.append(AxisChoice(values[second], values[second_values]))
            job = facade.start(session_of(request), recipe, axes, skills=values[chosen] or [],
                               items_per_skill=int(values[items] or DEFAULT_ITEMS), on_ray=bool(values[on_ray]))
        except Exception as exc:  # noqa: BLE001 - shown in the status line, then raised as a message
            yield {status: failed_line(message_of(exc))}
            raise
        def done(r: Any, view: Any) -> dict[Any, Any]:
            return {status: f'<span class="ok-dot"></span> **{r.ran} cells** merged and scored in {r.seconds:.1f} s. '
                            "**Use in Merge** takes the best cell (or the row you give).",
                    chart: facade.chart(r), table: facade.table(r), result: r, csv: str(facade.csv_path(r))}

        yield from follow_into(job, status, "sweeping", done, noun="sweep")

    @user_errors
    def use_cell(r: Any, number: float | None, sel: dict | None) -> dict[Any, Any]:
        if r is None:
            raise gr.Error("Run a sweep first: its cells are the recipes to pick from.")
        recipe = facade.cell_recipe(r, None if not number or number < 1 else int(number) - 1)
        out = merge.apply(recipe.method, require_selection(sel), recipe)
        return out | {merge.recipe: recipe.to_yaml(), shared.tabs: gr.Tabs(selected="merge"),
                      merge.status: f'<span class="ok-dot"></span> From the sweep: **{recipe.name}**. '
                                    "Click **Merge** to build it."}

    stop_work = stop_handler(shared.engine)

    def follow_method(method: str) -> dict[Any, Any]:
        return tab.axis_updates(facade.axis_parameters(method))

    def default_values(parameter: str) -> str:
        return DEFAULT_VALUES.get(parameter, "")

    hidden: dict[str, Any] = {"api_visibility": "undocumented"}
    inputs = merge.form | {shared.selection, first, first_values, second, second_values, chosen, items, on_ray}
    running = run_button.click(run, inputs, [status, chart, table, result, csv], api_name="run_sweep", **JOB_EVENT)
    stop.click(stop_work, None, status, api_name="stop_sweep", queue=False, cancels=[running])
    use.click(use_cell, [result, row, shared.selection], [*merge.controls, merge.recipe, shared.tabs, merge.status],
              api_name="sweep_use_cell", **QUICK)
    merge.method.change(follow_method, merge.method, [first, second], api_name="sweep_axes", **hidden, **QUICK)
    first.input(default_values, first, first_values, api_name="sweep_values_1", **hidden, **QUICK)
    second.input(default_values, second, second_values, api_name="sweep_values_2", **hidden, **QUICK)
    return tab
