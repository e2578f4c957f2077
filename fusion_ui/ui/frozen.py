"""Frozen LM tab: keep one LM frozen and train only a soft prompt in front of it (Levine et al.
2022, arXiv 2204.10019), then compare it with the LM alone, each expert and their merge.

The demo base is the frozen LM preselected, trained on the demo's three expert skills at once.
**Train** runs as a job: the loss curve grows while it trains, the status line shows the step,
the loss and an ETA, and **Stop** ends it before the next step with nothing written (the prompt
folder appears in the session's workspace only when a run ends). **Score** and **Generate** put
the trained prompt in front of the frozen LM and run every model on the same held-out items.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd

from fusion_ui.app.frozen import (
    DEFAULT_ITEMS,
    DEFAULT_LENGTH,
    DEFAULT_LR,
    DEFAULT_STEPS,
    FrozenTraining,
)
from fusion_ui.ui.shared import (
    JOB_EVENT,
    Shared,
    failed_line,
    follow_into,
    message_of,
    session_of,
    stop_handler,
    user_errors,
)

NOTHING_WRITTEN = "Nothing was written: a prompt is saved only when its run ends."
SCORE_COLUMNS = ["model", "trained parameters"]


def params_line(trainable: int, frozen: int, kind: str) -> str:
    share = 100 * trainable / frozen if frozen else 0.0
    what = "the prompt generator" if kind == "idpt" else "the prompt"
    return (
        f"**Trainable:** {trainable:,} parameters ({what}) · **frozen LM:** {frozen:,} parameters, untouched "
        f"(the trainable part is {share:.1f} % of its size)"
    )


def build(shared: Shared) -> None:
    facade = shared.engine.frozen
    skills = facade.demo_skills()
    tasks = list(facade.eval_sets())
    gr.Markdown(
        "**Frozen LM** (Levine et al. 2022, arXiv 2204.10019): one LM stays frozen and only a small prompt in front "
        "of it learns. **ID-PT** writes a soft prompt per input (a frozen encoder + learned queries); **plain prompt "
        "tuning** learns one prompt for every input. Train on the demo's three expert skills at once, then compare "
        "the frozen LM + prompt with the LM alone, each expert (a full fine-tune) and their merge.",
        elem_classes="tab-intro",
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row():
                model = gr.Textbox(
                    facade.demo_model(),
                    label="frozen LM (folder or hub id)",
                    elem_id="frozen-model",
                    scale=3,
                )
                methods = facade.methods()
                method = gr.Dropdown(
                    methods, value=methods[0][1], label="method", elem_id="frozen-method", scale=2
                )
            with gr.Row():
                length = gr.Number(
                    DEFAULT_LENGTH,
                    precision=0,
                    minimum=1,
                    label="prompt length (vectors)",
                    elem_id="frozen-length",
                )
                steps = gr.Number(
                    DEFAULT_STEPS, precision=0, minimum=1, label="steps", elem_id="frozen-steps"
                )
                lr = gr.Number(DEFAULT_LR, label="learning rate", elem_id="frozen-lr")
            sets = gr.CheckboxGroup(
                skills,
                value=skills,
                label="Train on (the demo's expert skills, mixed)",
                elem_id="frozen-sets",
            )
            data = gr.Textbox(
                "",
                label="…and/or a JSONL / CSV file on this machine (prompt, answer, skill)",
                placeholder="/path/to/train.jsonl",
                elem_id="frozen-data",
            )
            encoder = gr.Textbox(
                "",
                label="ID-PT encoder (empty: the frozen LM reads its own input)",
                elem_id="frozen-encoder",
            )
        with gr.Column(scale=2):
            with gr.Row():
                train = gr.Button("Train", variant="primary", elem_id="frozen-train", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="frozen-stop", scale=1)
            status = gr.Markdown("", elem_id="frozen-status", elem_classes="status")
            params = gr.Markdown("", elem_id="frozen-params")
            prompt_dir = gr.Dropdown(
                [],
                value=None,
                allow_custom_value=True,
                label="trained prompt (folder)",
                info="What Score and Generate put in front of the frozen LM.",
                elem_id="frozen-prompt-dir",
            )
    curve = gr.Plot(show_label=False, elem_id="frozen-curve")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            chosen = gr.CheckboxGroup(
                tasks,
                value=tasks,
                label="Score on (the demo's held-out sets)",
                elem_id="frozen-tasks",
            )
        with gr.Column(scale=2):
            items = gr.Number(
                DEFAULT_ITEMS, precision=0, minimum=1, label="items per set", elem_id="frozen-items"
            )
            score = gr.Button("Score side by side", variant="primary", elem_id="frozen-score")
    chart = gr.Plot(show_label=False, elem_id="frozen-chart")
    table = gr.Dataframe(
        pd.DataFrame(columns=SCORE_COLUMNS),
        interactive=False,
        label="Exact match (%) and what each model trained",
        elem_id="frozen-table",
    )
    with gr.Row():
        prompt = gr.Textbox("mirror: hello =", label="prompt", elem_id="frozen-prompt", scale=3)
        generate = gr.Button("Generate with each", elem_id="frozen-generate", scale=1)
    answers = gr.Dataframe(
        pd.DataFrame(columns=["model", "answer"]),
        interactive=False,
        label="Answers",
        elem_id="frozen-answers",
    )

    @user_errors
    def run_training(
        lm: str,
        kind: str,
        k: float,
        n: float,
        rate: float,
        picked: list[str],
        file: str,
        enc: str,
        request: gr.Request,
    ) -> Iterator[dict[Any, Any]]:
        session = session_of(request)
        try:
            form = FrozenTraining(
                model=lm,
                kind=kind,
                sets=tuple(picked or ()),
                data=file or "",
                length=k,
                steps=n,
                lr=rate,
                encoder=enc or "",
            )
            job = facade.start_training(session, form)
        except Exception as exc:  # noqa: BLE001 - shown in the status line, then raised as a message
            yield {status: failed_line(message_of(exc))}
            raise

        def done(r: Any, view: Any) -> dict[Any, Any]:
            line = (
                f'<span class="ok-dot"></span> Trained {len(r.losses)} steps in {r.seconds:.1f} s: loss '
                f"{r.losses[0]:.3f} → {r.losses[-1]:.3f}. Saved to <code>{html.escape(r.folder)}</code>."
            )
            return {
                status: line,
                curve: facade.curve(job),
                params: params_line(r.trainable, r.frozen, r.kind),
                prompt_dir: gr.update(choices=facade.trained(session), value=r.folder),
            }

        yield {curve: facade.curve(job), params: ""}
        yield from follow_into(
            job,
            status,
            "training",
            done,
            noun="training",
            stopped_note=NOTHING_WRITTEN,
            live=lambda view: {curve: facade.curve(job)},
        )

    @user_errors
    def run_scores(
        lm: str, folder: str | None, picked: list[str], n: float, request: gr.Request
    ) -> Iterator[dict[Any, Any]]:
        try:
            job = facade.start_scores(
                session_of(request), lm, folder or "", picked or [], items=int(n or DEFAULT_ITEMS)
            )
        except Exception as exc:  # noqa: BLE001
            yield {status: failed_line(message_of(exc))}
            raise

        def done(scores: pd.DataFrame, view: Any) -> dict[Any, Any]:
            return {
                status: f'<span class="ok-dot"></span> Scored side by side in {view.seconds:.1f} s.',
                chart: facade.chart(scores),
                table: facade.table(scores, folder or ""),
            }

        yield from follow_into(job, status, "scoring", done)

    @user_errors
    def run_generation(
        lm: str, folder: str | None, text: str, request: gr.Request
    ) -> Iterator[dict[Any, Any]]:
        try:
            job = facade.start_generation(session_of(request), lm, folder or "", text)
        except Exception as exc:  # noqa: BLE001
            yield {status: failed_line(message_of(exc))}
            raise

        def done(out: dict[str, str], view: Any) -> dict[Any, Any]:
            frame = pd.DataFrame({"model": list(out), "answer": list(out.values())})
            return {
                answers: frame,
                status: f'<span class="ok-dot"></span> Generated with each in {view.seconds:.1f} s.',
            }

        yield from follow_into(job, status, "generating", done)

    stop_work = stop_handler(shared.engine, note=NOTHING_WRITTEN)
    # Training is not cancelled as an event: Stop cancels its job, and the event then shows the
    # stopped state (the curve as it was, and that nothing was written).
    train.click(
        run_training,
        [model, method, length, steps, lr, sets, data, encoder],
        [status, curve, params, prompt_dir],
        api_name="frozen_train",
        **JOB_EVENT,
    )
    scoring = score.click(
        run_scores,
        [model, prompt_dir, chosen, items],
        [status, chart, table],
        api_name="frozen_scores",
        **JOB_EVENT,
    )
    generating = generate.click(
        run_generation,
        [model, prompt_dir, prompt],
        [status, answers],
        api_name="frozen_generate",
        **JOB_EVENT,
    )
    prompt.submit(
        run_generation,
        [model, prompt_dir, prompt],
        [status, answers],
        api_name="frozen_generate_enter",
        **JOB_EVENT,
    )
    stop.click(
        stop_work, None, status, api_name="stop_frozen", queue=False, cancels=[scoring, generating]
    )
