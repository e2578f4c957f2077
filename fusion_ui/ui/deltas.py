"""Deltas tab: where each fine-tune changed its base, by how much, and whether DARE will work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from fusion_ui.ui.shared import (
    ENGINE_QUEUE,
    Shared,
    progress_callback,
    require_selection,
    user_errors,
)

ALL = "all"

_VERDICT_CLASS = {"safe": "ok", "caution": "warn"}


@dataclass
class DeltasTab:
    analyse: gr.Button
    run: Callable[..., list[Any]]  # analyse_all(selection, metric): every output of the tab
    outputs: list[Any]
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
    analyse = gr.Button("Analyse deltas", variant="primary", elem_id="analyse-deltas")
    verdicts = gr.Markdown(elem_id="dare-verdicts")
    histogram = gr.Plot(label="|δ| histograms, whole model", elem_id="delta-histogram")
    with gr.Row():
        model = gr.Dropdown([], label="Fine-tune", elem_id="delta-model")
        metric = gr.Dropdown([(v, k) for k, v in engine.heatmap_metrics().items()], value="median_abs",
                             label="Heatmap colour")
    with gr.Row(equal_height=False):
        heatmap = gr.Plot(label="layer × module", elem_id="delta-heatmap")
        with gr.Column():
            gr.Markdown("**Where DARE is most at risk** (click a row to drill down)")
            top = gr.Dataframe(interactive=False, max_height=380, elem_id="top-tensors")
    with gr.Row():
        cosine = gr.Plot(label="cosine of task vectors")
        conflict = gr.Plot(label="sign conflicts")
    gr.Markdown("### Drill down")
    with gr.Row():
        tensor = gr.Dropdown([], label="Tensor", allow_custom_value=False, elem_id="delta-tensor")
        layer = gr.Dropdown([(ALL, ALL)], value=ALL, label="…or a layer")
        kind = gr.Dropdown([ALL], value=ALL, label="…and a module kind")
    drill = gr.Plot(label="|δ| histograms of the chosen scope", elem_id="delta-drill")
    summary = gr.Dataframe(label="Verdict per fine-tune", interactive=False, visible=False)

    @user_errors
    def analyse_all(selection: dict | None, metric_key: str, progress: gr.Progress = gr.Progress()) -> list[Any]:  # noqa: B008
        sel = require_selection(selection)
        view = engine.delta_overview(sel, "", metric_key, progress=progress_callback(progress, "analysing"))
        layers = [(ALL, ALL)] + [(label, str(v)) for label, v in view["layers"]]
        return [
            verdict_cards(view["summary"]), view["summary"], view["histogram"],
            gr.update(choices=view["models"], value=view["model"]), view["heatmap"], view["top"],
            view["cosine"], view["conflict"], gr.update(choices=view["tensors"], value=None),
            gr.update(choices=layers, value=ALL), gr.update(choices=[ALL, *view["kinds"]], value=ALL),
        ]

    @user_errors
    def model_view(selection: dict | None, label: str, metric_key: str) -> list[Any]:
        view = engine.delta_overview(require_selection(selection), label, metric_key)
        return [view["heatmap"], view["top"], gr.update(choices=view["tensors"])]

    @user_errors
    def drilldown(selection: dict | None, name: str | None, layer_key: str, kind_key: str) -> Any:
        sel = require_selection(selection)
        if name:
            return engine.delta_drilldown(sel, tensor=name)
        return engine.delta_drilldown(
            sel, layer=None if layer_key in (ALL, None) else int(layer_key),
            kind=None if kind_key in (ALL, None) else kind_key,
        )

    def pick_row(evt: gr.SelectData, table: Any) -> Any:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return table.iloc[row]["tensor"]

    outputs = [verdicts, summary, histogram, model, heatmap, top, cosine, conflict, tensor, layer, kind]
    analyse.click(analyse_all, [shared.selection, metric], outputs, api_name="analyze_deltas", **ENGINE_QUEUE)
    for trigger in (model.input, metric.input):
        trigger(model_view, [shared.selection, model, metric], [heatmap, top, tensor],
                api_name="delta_model_view", **ENGINE_QUEUE)
    top.select(pick_row, top, tensor, api_name="pick_tensor").then(
        drilldown, [shared.selection, tensor, layer, kind], drill, api_name="drilldown_tensor", **ENGINE_QUEUE)
    tensor.input(drilldown, [shared.selection, tensor, layer, kind], drill, api_name="drilldown",
                 **ENGINE_QUEUE)
    for ctl in (layer, kind):
        ctl.input(lambda: None, None, tensor, api_name="clear_tensor", queue=False).then(
            drilldown, [shared.selection, tensor, layer, kind], drill, api_name="drilldown_scope",
            **ENGINE_QUEUE)
    return DeltasTab(analyse, analyse_all, outputs, metric, verdicts, summary, histogram)
