"""Cocktail tab: LM-Cocktail's merge weights picked by a few examples of the target task.

Pick the candidates (the fine-tune, its base, other fine-tunes), give a handful of examples,
and compute each candidate's loss on them (a job, one model at a time). The weights
``softmax(−loss / T)`` follow the temperature and base-floor sliders at once (no model run);
edit them in the table if you like, then **Merge with these weights**: the merge is the
session's preview (the Compare tab gets its column) and the Merge tab holds its recipe, so
Export writes it with where its weights came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from fusion_ui.app.cocktail import ARROW, DEFAULT_TEMPERATURE
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

TABLE_COLUMNS = ["candidate", "loss (nats/token)", "weight"]
SHOWN_DIGITS = 4  # decimals of the weights in the table


def _as_shown(table_weights: list[Any], computed: tuple[float, ...]) -> bool:
    """Whether the table still shows the computed weights (rounded), i.e. the user edited none."""
    try:
        return all(float(a) == round(b, SHOWN_DIGITS) for a, b in zip(table_weights, computed, strict=True))
    except (TypeError, ValueError):
        return False


@dataclass
class CocktailTab:
    candidates: gr.CheckboxGroup
    status: gr.Markdown
    chart: gr.Plot
    table: gr.Dataframe
    result: gr.State

    def candidate_choices(self, selection: dict | None) -> Any:
        """The candidates of a selection (its base and fine-tunes), all picked."""
        if not selection:
            return gr.update(choices=[], value=[])
        choices = [("base", selection["base"])] + list(zip(selection["labels"], selection["models"], strict=True))
        return gr.update(choices=choices, value=[ref for _, ref in choices])


def build(shared: Shared, merge: MergeTab) -> CocktailTab:
    facade = shared.engine.cocktail
    demo_sets = list(facade.demo_examples())
    # the forgetful demo expert's skill first: the set that shows what LM-Cocktail is for
    first_set = "upper_5" if "upper_5" in demo_sets else (demo_sets[0] if demo_sets else "")
    gr.Markdown(
        "**LM-Cocktail** (Xiao et al. 2023, arXiv 2311.13534): a few examples of the task you care about pick the "
        "merge weights. Each candidate's loss on them (answer tokens only) gives `w = softmax(−loss / T)`; the merge "
        "keeps the fine-tune's skill while the base's weight brings back what fine-tuning made it forget. Causal "
        "language models only (the paper's encoder case is not supported yet).", elem_classes="tab-intro")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            candidates = gr.CheckboxGroup([], label="Candidates", elem_id="cocktail-candidates",
                                          info="The fine-tune, its base, and any other fine-tunes of that base.")
            demo = gr.Dropdown([("none", ""), *((name, name) for name in demo_sets)],
                               value=first_set, label="Demo examples",
                               elem_id="cocktail-demo", info="Shipped with the demo family.")
            typed = gr.Code("", language=None, lines=5, label=f"…or type examples, one per line: `prompt {ARROW} answer` "
                            "or a JSON object with prompt and answer", elem_id="cocktail-examples")
            upload = gr.File(label="…or upload JSONL / CSV (prompt, answer)", file_types=[".jsonl", ".csv"],
                             type="filepath", height=130)
        with gr.Column(scale=2):
            temperature = gr.Slider(0.1, 20, value=DEFAULT_TEMPERATURE, step=0.1, label="temperature T",
                                    info="Higher spreads the weights; lower gives nearly all to the best candidate.",
                                    elem_id="cocktail-temperature")
            floor = gr.Slider(0, 0.9, value=0.0, step=0.01, label="base floor",
                              info="The base's weight is at least this (the others share the rest).",
                              elem_id="cocktail-floor")
            with gr.Row():
                compute = gr.Button("Compute losses", variant="primary", elem_id="cocktail-compute", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="cocktail-stop", scale=1)
            status = gr.Markdown("", elem_id="cocktail-status", elem_classes="status")
    chart = gr.Plot(show_label=False, elem_id="cocktail-chart")
    table = gr.Dataframe(pd.DataFrame(columns=TABLE_COLUMNS), interactive=True, static_columns=[0, 1],
                         label="Weights (edit them before merging if you like)", elem_id="cocktail-table")
    use = gr.Button("Merge with these weights", variant="primary", elem_id="cocktail-merge")
    result = gr.State(None)
    tab = CocktailTab(candidates, status, chart, table, result)

    def shown(r: Any) -> dict[Any, Any]:
        frame = pd.DataFrame({TABLE_COLUMNS[0]: list(r.labels), TABLE_COLUMNS[1]: [float(f"{v:.4g}") for v in r.losses],
                              TABLE_COLUMNS[2]: [round(w, SHOWN_DIGITS) for w in r.weights]})
        return {chart: facade.chart(r), table: frame, result: r}

    @user_errors
    def run(sel: dict | None, chosen: list[str], demo_name: str, text: str, file: str | None, t: float,
            base_floor: float, request: gr.Request) -> Iterator[dict[Any, Any]]:
        try:
            sel = require_selection(sel)
            examples = facade.examples(text, file, demo_name or None)
            refs = [ref for ref in [sel["base"], *sel["models"]] if ref in (chosen or [])]
            base = sel["base"] if sel["base"] in refs else None
            job = facade.start(session_of(request), refs, examples, temperature=t, base=base, base_floor=base_floor)
        except Exception as exc:  # noqa: BLE001 - shown in the status line, then raised as a message
            yield {status: failed_line(message_of(exc))}
            raise
        def done(r: Any, view: Any) -> dict[Any, Any]:
            warn = "".join(f"\n- ⚠ {w}" for w in r.warnings[:4])
            return {status: f'<span class="ok-dot"></span> Losses of {len(r.candidates)} candidates on '
                            f"{r.n_examples} examples in {view.seconds:.1f} s.{warn}", **shown(r)}

        yield from follow_into(job, status, "scoring the candidates", done, noun="scoring")

    @user_errors
    def reweight(r: Any, t: float, base_floor: float) -> dict[Any, Any]:
        if r is None:
            return {}
        return shown(facade.reweight(r, t, base_floor))

    @user_errors
    def merge_weights(r: Any, frame: pd.DataFrame, sel: dict | None, request: gr.Request) -> Iterator[dict[Any, Any]]:
        if r is None:
            raise gr.Error("Compute the losses first: the weights come from them.")
        weights = list(frame[TABLE_COLUMNS[2]]) if frame is not None and len(frame) == len(r.labels) else None
        if weights is not None and _as_shown(weights, r.weights):
            weights = None  # not edited: merge the computed weights, not their rounding in the table
        try:
            recipe = facade.recipe(r, weights)
            job = shared.engine.merges.start(session_of(request), recipe)
        except Exception as exc:  # noqa: BLE001
            yield {status: failed_line(message_of(exc))}
            raise
        def done(merged: Any, view: Any) -> dict[Any, Any]:
            # The Merge tab holds the recipe as written (with where its weights came from):
            # Export writes it, and Compare shows the merge.
            return {status: f'<span class="ok-dot"></span> **Merged** the cocktail ({merged.tensors} tensors in '
                            f"{merged.seconds:.1f} s): the **Compare** tab has its column, **Export** writes it.",
                    shared.merged: merged.merged, merge.recipe: recipe.to_yaml(), merge.as_written: True,
                    merge.status: '<span class="ok-dot"></span> The LM-Cocktail merge (from the Cocktail tab) is '
                                  "in memory; its recipe is below under Advanced, merged as written."}

        yield from follow_into(job, status, "merging", done, noun="merge")

    stop_work = stop_handler(shared.engine)

    hidden: dict[str, Any] = {"api_visibility": "undocumented"}
    computing = compute.click(run, [shared.selection, candidates, demo, typed, upload, temperature, floor],
                              [status, chart, table, result], api_name="cocktail_losses", **JOB_EVENT)
    stop.click(stop_work, None, status, api_name="stop_cocktail", queue=False, cancels=[computing])
    for slider in (temperature, floor):
        slider.release(reweight, [result, temperature, floor], [chart, table, result],
                       api_name="cocktail_reweight", **hidden, **QUICK)
    use.click(merge_weights, [result, table, shared.selection],
              [status, shared.merged, merge.recipe, merge.as_written, merge.status],
              api_name="cocktail_merge", **JOB_EVENT)
    return tab
