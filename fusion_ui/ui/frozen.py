"""Frozen LM tab: keep one LM frozen and train only a small part beside it (Levine et al.
2022, arXiv 2204.10019): a soft prompt in front of it, or a recursive LM (a connector between
two passes, or a textual recursion), then compare it with the LM alone, each expert and their
merge.

The demo base is the frozen LM preselected, trained on the demo's three expert skills at once;
picking a recursion method preselects the demo composition ``back: rot13: w =`` instead (to
train on and to score on). **Train** runs as a job: the loss curve grows while it trains, the
status line shows the step, the loss and an ETA, and **Stop** ends it before the next step with
nothing written (the folder appears in the session's workspace only when a run ends). **Score**
and **Generate** run the frozen LM with the trained part and every other model on the same
held-out items (greedy exact match: a textual recursion has no perplexity, and none is shown).
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd

from fusion_ui.app.frozen import (
    DEFAULT_CANDIDATES,
    DEFAULT_ITEMS,
    DEFAULT_LENGTH,
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

NOTHING_WRITTEN = "Nothing was written: a trained part is saved only when its run ends."
SCORE_COLUMNS = ["model", "trained parameters"]


def params_line(trainable: int, frozen: int, what: str) -> str:
    share = 100 * trainable / frozen if frozen else 0.0
    return (
        f"**Trainable:** {trainable:,} parameters ({what}) · **frozen LM:** {frozen:,} parameters, untouched "
        f"(the trainable part is {share:.1f} % of its size)"
    )


def build(shared: Shared) -> None:
    facade = shared.engine.frozen
    methods = facade.methods()
    first_kind = methods[0][1]
    tasks = [(facade.set_label(t), t) for t in facade.score_sets()]
    gr.Markdown(
        "**Frozen LM** (Levine et al. 2022, arXiv 2204.10019): one LM stays frozen and only a small part beside it "
        "learns. **ID-PT** writes a soft prompt per input (a frozen encoder + learned queries); **plain prompt "
        "tuning** learns one prompt for every input. The **recursive LM** runs the LM twice: the **neural** one "
        "adds a trained connector's reading of pass 1's hidden states to pass 2's input; in the **textual** one "
        "pass 1 writes candidate answers and a prompt-tuned pass 2 reads them. Train on the demo's expert skills "
        "or on the composition `back: rot13: w =`, then compare with the LM alone, each expert (a full fine-tune) "
        "and their merge.",
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
                method = gr.Dropdown(
                    methods, value=first_kind, label="method", elem_id="frozen-method", scale=2
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
                lr = gr.Number(
                    facade.default_lr(first_kind), label="learning rate", elem_id="frozen-lr"
                )
            with gr.Row(visible=facade.is_recursive(first_kind)) as textual_row:
                first_pass = gr.Dropdown(
                    facade.first_passes(None),
                    value="",
                    allow_custom_value=True,
                    label="pass 1 (textual recursion)",
                    info="The frozen LM alone, or behind a plain prompt trained here.",
                    elem_id="frozen-first-pass",
                    scale=3,
                )
                candidates = gr.Number(
                    DEFAULT_CANDIDATES,
                    precision=0,
                    minimum=1,
                    label="candidates pass 1 writes",
                    elem_id="frozen-candidates",
                    scale=1,
                )
            sets = gr.CheckboxGroup(
                facade.training_sets(),
                value=facade.default_sets(first_kind),
                label="Train on (demo sets, mixed: the expert skills, the composition back: rot13)",
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
                visible=first_kind == "idpt",
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
                label="trained part (folder: a prompt, a connector or a recursion)",
                info="What Score and Generate run with the frozen LM.",
                elem_id="frozen-prompt-dir",
            )
    curve = gr.Plot(show_label=False, elem_id="frozen-curve")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            chosen = gr.CheckboxGroup(
                tasks,
                value=facade.default_tasks(first_kind),
                label="Score on (the demo's held-out sets; exact match, no perplexity)",
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
    def pick_method(kind: str) -> dict[Any, Any]:
        """A method's own fields, learning rate and default sets (the composition for a recursion);
        a field another method hides is cleared, so it cannot fail a run unseen."""
        return {
            encoder: gr.update(visible=True)
            if kind == "idpt"
            else gr.update(visible=False, value=""),
            length: gr.update(visible=kind != "connector"),
            textual_row: gr.update(visible=kind == "recursive"),
            first_pass: gr.skip() if kind == "recursive" else "",
            lr: facade.default_lr(kind),
            sets: facade.default_sets(kind),
            chosen: facade.default_tasks(kind),
        }

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
        first: str | None,
        count: float,
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
                first_prompt=first or "",
                candidates=count,
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
                params: params_line(r.trainable, r.frozen, r.trains),
                prompt_dir: gr.update(choices=facade.trained(session), value=r.folder),
                first_pass: gr.update(choices=facade.first_passes(session)),
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
    method.change(
        pick_method,
        method,
        [encoder, length, textual_row, first_pass, lr, sets, chosen],
        api_name="frozen_method",
        queue=False,
    )
    train.click(
        run_training,
        [model, method, length, steps, lr, sets, data, encoder, first_pass, candidates],
        [status, curve, params, prompt_dir, first_pass],
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
