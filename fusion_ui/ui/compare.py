"""Compare tab: the same prompt through the base, every fine-tune and the merge, side by side.

Generation is greedy by default so two runs (and two columns) are comparable; each column
streams as its model writes. The eval panel scores every model on the demo eval sets or an
uploaded JSONL/CSV file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from fusion_ui.engine import GenerationSettings
from fusion_ui.ui.shared import (
    ENGINE_QUEUE,
    MAX_COLUMNS,
    Shared,
    progress_callback,
    require_selection,
    session_of,
    user_errors,
)

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "ui"
# Okabe-Ito, as the delta figures: colour-blind safe.
_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")


def example_prompts() -> list[tuple[str, str]]:
    """(label, prompt) pairs from ``assets/ui/example_prompts.json`` (empty if it is missing)."""
    try:
        data = json.loads((ASSETS / "example_prompts.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    return [(f"{p['skill']} · {p['prompt']}", p["prompt"]) for p in data.get("prompts", [])]


def score_chart(scores: pd.DataFrame, metric: str = "exact_match") -> go.Figure:
    """Grouped bars: one group per skill, one bar per model."""
    fig = go.Figure()
    for k, (model, group) in enumerate(scores.groupby("model", sort=False)):
        fig.add_bar(x=group["skill"], y=100 * group[metric], name=str(model),
                    marker_color=_COLOURS[k % len(_COLOURS)],
                    text=[f"{100 * v:.0f}%" for v in group[metric]], textposition="outside")
    fig.update_layout(
        title={"text": f"{metric.replace('_', ' ')} per skill (%)", "x": 0.01},
        template="plotly_white", barmode="group", height=380, yaxis={"range": [0, 110], "title": "%"},
        margin={"l": 50, "r": 20, "t": 60, "b": 40}, legend={"orientation": "h", "y": -0.15},
    )
    return fig


@dataclass
class CompareTab:
    prompt: gr.Textbox
    generate: gr.Button
    outputs: list[gr.Textbox]
    scores: gr.Dataframe
    chart: gr.Plot
    # (selection, merged recipe) -> updates of ``outputs``: one visible, labelled column per model
    columns: Callable[[dict | None, str | None], list[Any]]


def build(shared: Shared) -> CompareTab:
    engine = shared.engine
    examples = example_prompts()
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            preset = gr.Dropdown(examples, value=None, label="Example prompts (one per demo skill)",
                                 elem_id="example-prompt")
            prompt = gr.Textbox(examples[0][1] if examples else "", label="Prompt", lines=2, elem_id="prompt")
        with gr.Column(scale=2):
            with gr.Row():
                max_tokens = gr.Slider(1, 256, value=24, step=1, label="max new tokens")
                greedy = gr.Checkbox(True, label="greedy (comparable runs)")
            with gr.Row():
                temperature = gr.Slider(0.05, 2.0, value=0.8, step=0.05, label="temperature (sampling)")
                sample_seed = gr.Number(0, precision=0, label="sampling seed")
                stop_nl = gr.Checkbox(True, label="stop at end of line")
    generate = gr.Button("Generate side by side", variant="primary", elem_id="generate")
    with gr.Row(elem_classes="columns"):
        outputs = [
            gr.Textbox(label=f"model {i}", lines=3, interactive=False, visible=False, min_width=180,
                       elem_id=f"column-{i}", elem_classes="gen-column", buttons=["copy"])
            for i in range(MAX_COLUMNS)
        ]

    with gr.Accordion("Score every model on an eval set", open=True):
        with gr.Row(equal_height=False):
            skills = list(engine.demo.eval_sets) if engine.demo else []
            sets = gr.CheckboxGroup(skills, value=skills, label="Demo eval sets", elem_id="eval-sets")
            upload = gr.File(label="…or upload JSONL / CSV (prompt, answer[, skill])",
                             file_types=[".jsonl", ".csv"], type="filepath", height=100)
            per_skill = gr.Slider(1, 200, value=20, step=1, label="items per skill (quick look)")
        score = gr.Button("Score all models", elem_id="score")
        with gr.Row(equal_height=False):
            scores = gr.Dataframe(pd.DataFrame({"model": [], "score (%)": []}), label="Scores (exact match, %)",
                                  interactive=False, elem_id="scores")
            chart = gr.Plot(label="Scores", elem_id="score-chart")

    def columns(selection: dict | None, merged: str | None) -> list[Any]:
        cols = engine.columns(selection, merged)
        return [
            gr.update(visible=True, label=cols[i][0], value="") if i < len(cols) else gr.update(visible=False)
            for i in range(MAX_COLUMNS)
        ]

    @user_errors
    def run(prompt: str, max_new: int, greedy_on: bool, temp: float, seed_value: float, stop: bool,
            selection: dict | None, merged: str | None, request: gr.Request) -> Iterator[list[str]]:
        cols = engine.columns(require_selection(selection), merged)
        settings = GenerationSettings(int(max_new), bool(greedy_on), float(temp), int(seed_value or 0), bool(stop))
        for texts in engine.generate_side_by_side(session_of(request), cols, prompt, settings):
            yield texts + [""] * (MAX_COLUMNS - len(texts))

    @user_errors
    def score_all(chosen: list[str], file: str | None, n: int, selection: dict | None, merged: str | None,
                  request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple[pd.DataFrame, go.Figure]:  # noqa: B008
        cols = engine.columns(require_selection(selection), merged)
        items = engine.eval_items(chosen or [], file)
        results = engine.evaluate(session_of(request), cols, items, per_skill=int(n),
                                  progress=progress_callback(progress, ""))
        table = results.pivot(index="model", columns="skill", values="exact_match")
        table = table.loc[results["model"].unique(), results["skill"].unique()]
        shown = (100 * table).round(1).reset_index()
        return shown, score_chart(results)

    preset.input(lambda p: p, preset, prompt, api_name="use_example", queue=False)
    generate.click(run, [prompt, max_tokens, greedy, temperature, sample_seed, stop_nl, shared.selection,
                         shared.merged], outputs, api_name="generate", **ENGINE_QUEUE)
    prompt.submit(run, [prompt, max_tokens, greedy, temperature, sample_seed, stop_nl, shared.selection,
                        shared.merged], outputs, api_name="generate_on_enter", **ENGINE_QUEUE)
    score.click(score_all, [sets, upload, per_skill, shared.selection, shared.merged], [scores, chart],
                api_name="evaluate", **ENGINE_QUEUE)
    return CompareTab(prompt, generate, outputs, scores, chart, columns)
