"""Deltas tab: where each fine-tune changed its base, by how much, and whether DARE will work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from fusion_ui.app.deltas import DEFAULT_HEATMAP_METRIC
from fusion_ui.runtime import JobState
from fusion_ui.ui.shared import (
    JOB_EVENT,
    QUICK,
    Shared,
    failed_line,
    follow,
    message_of,
    require_selection,
    running_line,
    session_of,
    stop_handler,
    stopped_line,
    user_errors,
)

ALL = "all"

_VERDICT_CLASS = {"safe": "ok", "caution": "warn"}


@dataclass
class DeltasTab:
    analyse: gr.Button
    run: Callable[..., Any]  # analyse_all(selection, metric, request): a generator of the tab's outputs
    outputs: list[Any]
    status: gr.Markdown
    metric: gr.Dropdown
    verdicts: gr.Markdown
    summary: gr.Dataframe
    histogram: gr.Plot


def verdict_cards(summary: Any) -> str:
    """One coloured line per fine-tune: its DARE verdict and why."""
    rows = []
    for _, r in summary.iterrows():
        cls = _VERDICT_CLASS.get(str(r["verdict"]), "bad")
        rows.append(f'<div class="verdict verdict-{cls}"><b>{r["model"]}</b>: DARE {r["verdict"]}. '
                    f'{r["reason"]}</div>')
    return "\n".join(rows)


def build(shared: Shared) -> DeltasTab:
    engine = shared.engine
    gr.Markdown(
        "The task vector δ = θ fine-tune − θ base, tensor by tensor. DARE (drop 90% of δ at random, "
        "rescale the rest) works while |δ| stays mostly below **0.005** and fails above **0.01**: "
        "the dashed and solid lines.", elem_classes="tab-intro",
    )
    with gr.Row():
        analyse = gr.Button("Analyse deltas", variant="primary", elem_id="analyse-deltas", scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id="deltas-stop", scale=1)
    status = gr.Markdown("", elem_id="deltas-status", elem_classes="status")
    verdicts = gr.Markdown(elem_id="dare-verdicts")
    histogram = gr.Plot(label="|δ| histograms, whole model", show_label=False, elem_id="delta-histogram")
    with gr.Row():
        model = gr.Dropdown([], label="Fine-tune", elem_id="delta-model")
        metric = gr.Dropdown([(v, k) for k, v in engine.deltas.heatmap_metrics().items()], value=DEFAULT_HEATMAP_METRIC,
                             label="Heatmap colour")
    with gr.Row(equal_height=False):
        heatmap = gr.Plot(label="layer × module", show_label=False, elem_id="delta-heatmap")
        with gr.Column():
            gr.Markdown("**Where DARE is most at risk** (click a row to drill down)")
            top = gr.Dataframe(interactive=False, max_height=380, elem_id="top-tensors")
    with gr.Row():
        cosine = gr.Plot(label="cosine of task vectors", show_label=False)
        conflict = gr.Plot(label="sign conflicts", show_label=False)
    gr.Markdown("### Drill down")
    with gr.Row():
        tensor = gr.Dropdown([], label="Tensor", allow_custom_value=False, elem_id="delta-tensor")
        layer = gr.Dropdown([(ALL, ALL)], value=ALL, label="…or a layer")
        kind = gr.Dropdown([ALL], value=ALL, label="…and a module kind")
    drill = gr.Plot(label="|δ| histograms of the chosen scope", show_label=False, elem_id="delta-drill")
    summary = gr.Dataframe(label="Verdict per fine-tune", interactive=False, visible=False)

    def overview(sel: dict[str, Any], metric_key: str) -> dict[Any, Any]:
        view = engine.deltas.overview(sel, "", metric_key)
        layers = [(ALL, ALL)] + [(label, str(v)) for label, v in view["layers"]]
        return {
            verdicts: verdict_cards(view["summary"]), summary: view["summary"], histogram: view["histogram"],
            model: gr.update(choices=view["models"], value=view["model"]), heatmap: view["heatmap"],
            top: view["top"], cosine: view["cosine"], conflict: view["conflict"],
            tensor: gr.update(choices=view["tensors"], value=None),
            layer: gr.update(choices=layers, value=ALL), kind: gr.update(choices=[ALL, *view["kinds"]], value=ALL),
        }

    @user_errors
    def analyse_all(selection: dict | None, metric_key: str, request: gr.Request) -> Any:
        """The analysis (a job, unless it is cached), then every figure of the tab."""
        sel = require_selection(selection)
        if engine.deltas.cached_report(sel) is None:
            job = engine.deltas.start(session_of(request), sel, figures_for=metric_key)
            for view in follow(job):
                if not view.state.final:
                    yield {status: running_line(view, "analysing")}
                elif view.state is JobState.CANCELLED:
                    yield {status: stopped_line(view, "analysis")}
                    return
                elif view.state is JobState.FAILED:
                    yield {status: failed_line(message_of(view.error))}
                    raise gr.Error(message_of(view.error), title="Cannot do that yet")
        yield {status: "", **overview(sel, metric_key)}

    def analysed(selection: dict | None) -> dict[str, Any]:
        sel = require_selection(selection)
        if engine.deltas.cached_report(sel) is None:
            raise gr.Error("Click **Analyse deltas** first (the analysis of these models is not in memory).")
        return sel

    @user_errors
    def model_view(selection: dict | None, label: str, metric_key: str) -> list[Any]:
        view = engine.deltas.overview(analysed(selection), label, metric_key)
        return [view["heatmap"], view["top"], gr.update(choices=view["tensors"])]

    @user_errors
    def drilldown(selection: dict | None, name: str | None, layer_key: str, kind_key: str) -> Any:
        sel = analysed(selection)
        if name:
            return engine.deltas.drilldown(sel, tensor=name)
        return engine.deltas.drilldown(
            sel, layer=None if layer_key in (ALL, None) else int(layer_key),
            kind=None if kind_key in (ALL, None) else kind_key,
        )

    def pick_row(evt: gr.SelectData, table: Any) -> Any:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return table.iloc[row]["tensor"]

    stop_work = stop_handler(engine)

    outputs = [status, verdicts, summary, histogram, model, heatmap, top, cosine, conflict, tensor, layer, kind]
    analysing = analyse.click(analyse_all, [shared.selection, metric], outputs, api_name="analyze_deltas",
                              **JOB_EVENT)
    stop.click(stop_work, None, status, api_name="stop_deltas", queue=False, cancels=[analysing])
    # Views of a report already in memory: no job, no queue behind other work.
    for trigger in (model.input, metric.input):
        trigger(model_view, [shared.selection, model, metric], [heatmap, top, tensor],
                api_name="delta_model_view", **QUICK)
    top.select(pick_row, top, tensor, api_name="pick_tensor", **QUICK).then(
        drilldown, [shared.selection, tensor, layer, kind], drill, api_name="drilldown_tensor", **QUICK)
    tensor.input(drilldown, [shared.selection, tensor, layer, kind], drill, api_name="drilldown", **QUICK)
    for ctl in (layer, kind):
        ctl.input(lambda: None, None, tensor, api_name="clear_tensor", queue=False).then(
            drilldown, [shared.selection, tensor, layer, kind], drill, api_name="drilldown_scope", **QUICK)
    return DeltasTab(analyse, analyse_all, outputs, status, metric, verdicts, summary, histogram)
