"""Compare tab: the same prompt through the base, every fine-tune and the merge, side by side.

Generation is greedy by default so two runs (and two columns) are comparable; each column
streams as its model writes. The eval panel scores every model on the demo eval sets or an
uploaded JSONL/CSV file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from fusion_ui.app import GenerationSettings
from fusion_ui.figures import score_chart
from fusion_ui.resources import ui_text
from fusion_ui.runtime import JobState
from fusion_ui.ui.shared import (
    JOB_EVENT,
    MAX_COLUMNS,
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


def example_prompts() -> list[tuple[str, str]]:
    """(label, prompt) pairs from the shipped ``example_prompts.json`` (empty if it is missing)."""
    try:
        data = json.loads(ui_text("example_prompts.json") or "{}")
    except json.JSONDecodeError:
        return []
    return [(f"{p['skill']} · {p['prompt']}", p["prompt"]) for p in data.get("prompts", [])]


@dataclass
class CompareTab:
    prompt: gr.Textbox
    generate: gr.Button
    outputs: list[gr.Textbox]
    status: gr.Markdown
    scores: gr.Dataframe
    chart: gr.Plot
    # (selection, merged) -> updates of ``outputs``: one visible, labelled column per model
    columns: Callable[[dict | None, Any], list[Any]]


def build(shared: Shared) -> CompareTab:
    engine = shared.engine
    examples = example_prompts()
    limits = engine.limits
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            preset = gr.Dropdown(examples, value=None, label="Example prompts (one per demo skill)",
                                 elem_id="example-prompt")
            prompt = gr.Textbox(examples[0][1] if examples else "", label="Prompt (Enter generates, Shift+Enter "
                                "adds a line)", lines=1, max_lines=8, elem_id="prompt")
        with gr.Column(scale=2):
            with gr.Row():
                max_tokens = gr.Slider(1, limits.max_new_tokens, value=24, step=1, label="max new tokens")
                greedy = gr.Checkbox(True, label="greedy (comparable runs)")
            with gr.Row():
                temperature = gr.Slider(0.05, 2.0, value=0.8, step=0.05, label="temperature (sampling)")
                sample_seed = gr.Number(0, precision=0, minimum=0, label="sampling seed")
                stop_nl = gr.Checkbox(True, label="stop at end of line")
    with gr.Row():
        generate = gr.Button("Generate side by side", variant="primary", elem_id="generate", scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id="compare-stop", scale=1)
    status = gr.Markdown("", elem_id="compare-status", elem_classes="status")
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
            chart = gr.Plot(label="Scores", show_label=False, elem_id="score-chart")

    def columns(selection: dict | None, merged: Any) -> list[Any]:
        cols = engine.compare.columns(selection, merged)
        return [
            gr.update(visible=True, label=cols[i].label, value="") if i < len(cols) else gr.update(visible=False)
            for i in range(MAX_COLUMNS)
        ]

    @user_errors
    def run(prompt_text: str, max_new: float, greedy_on: bool, temp: float, seed_value: float, stop_at_nl: bool,
            selection: dict | None, merged: Any, request: gr.Request) -> Iterator[list[Any]]:
        session = session_of(request)
        cols = engine.compare.columns(require_selection(selection), merged or engine.merges.session_merge(session))
        try:
            settings = GenerationSettings.checked(max_new, greedy_on, temp, seed_value, stop_at_nl,
                                                  limits=limits)
            job = engine.compare.start_generation(session, cols, prompt_text, settings)
        except Exception as exc:  # noqa: BLE001 - shown in the status line, then raised as a message
            yield [failed_line(message_of(exc)), *[gr.skip()] * MAX_COLUMNS]
            raise
        texts = [""] * len(cols)
        seen = 0
        for view in follow(job, every=0.2):
            pieces = job.items(seen)
            seen += len(pieces)
            for i, piece in pieces:
                texts[i] += piece
            padded = texts + [""] * (MAX_COLUMNS - len(texts))
            if not view.state.final:
                yield [running_line(view, "generating"), *padded]
            elif view.state is JobState.FINISHED:
                yield [f'<span class="ok-dot"></span> Generated with {len(cols)} models in {view.seconds:.1f} s.',
                       *padded]
            elif view.state is JobState.CANCELLED:
                yield [stopped_line(view, "generation"), *padded]
            else:
                yield [failed_line(message_of(view.error)), *padded]
                raise gr.Error(message_of(view.error), title="Cannot do that yet")

    @user_errors
    def score_all(chosen: list[str], file: str | None, n: float, selection: dict | None, merged: Any,
                  request: gr.Request) -> Iterator[dict[Any, Any]]:
        session = session_of(request)
        try:
            cols = engine.compare.columns(require_selection(selection), merged or engine.merges.session_merge(session))
            items = engine.compare.eval_items(chosen or [], file)
            job = engine.compare.start_evaluation(session, cols, items, per_skill=int(n))
        except Exception as exc:  # noqa: BLE001 - shown in the status line, then raised as a message
            yield {status: failed_line(message_of(exc))}
            raise
        for view in follow(job):
            if not view.state.final:
                yield {status: running_line(view, "scoring")}
            elif view.state is JobState.FINISHED:
                results = job.result
                table = results.pivot(index="model", columns="skill", values="exact_match")
                table = table.loc[results["model"].unique(), results["skill"].unique()]
                shown = (100 * table).round(1).reset_index()
                yield {status: f'<span class="ok-dot"></span> Scored {len(cols)} models in {view.seconds:.1f} s.',
                       scores: shown, chart: score_chart(results)}
            elif view.state is JobState.CANCELLED:
                yield {status: stopped_line(view, "scoring")}
            else:
                yield {status: failed_line(message_of(view.error))}
                raise gr.Error(message_of(view.error), title="Cannot do that yet")

    stop_work = stop_handler(engine)

    gen_inputs = [prompt, max_tokens, greedy, temperature, sample_seed, stop_nl, shared.selection, shared.merged]
    preset.input(lambda p: p, preset, prompt, api_name="use_example", queue=False)
    generating = generate.click(run, gen_inputs, [status, *outputs], api_name="generate", **JOB_EVENT)
    submitted = prompt.submit(run, gen_inputs, [status, *outputs], api_name="generate_on_enter", **JOB_EVENT)
    scoring = score.click(score_all, [sets, upload, per_skill, shared.selection, shared.merged],
                          [status, scores, chart], api_name="evaluate", **JOB_EVENT)
    stop.click(stop_work, None, status, api_name="stop_compare", queue=False,
               cancels=[generating, submitted, scoring])
    return CompareTab(prompt, generate, outputs, status, scores, chart, columns)
