"""Compose tab: CALM, two frozen models composed through trained bridges, beside each alone.

The CALM demo pair is preselected (an augmenting m_A that knows string keys, an anchor m_B that
does arithmetic, bridges trained on 20 % of the keys); any anchor, augmenting model and bridges
folder written by ``fusion-ui compose train`` work too. **Score** runs m_A, m_B and CALM on the
demo's held-out sets; **Generate** answers one prompt with each. **Train bridges** trains fresh
bridges for the pair on a composition set (the demo's KV-arithmetic rows preselected) with a live
loss curve and Stop; the folder it writes becomes the bridges scored and generated with.
**What the bridges read** shows, for one prompt and CALM's answer, each bridge's cross-attention
(a heatmap per bridge) and how much it adds per token, beside a diagram of the layers bridged.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd

from fusion_ui.app.compose import (
    DEFAULT_ITEMS,
    READ_PROMPT,
    READ_TOKENS,
    ROLES,
    TRAIN_BATCH,
    TRAIN_LR,
    TRAIN_STEPS,
    BridgesTraining,
    Composition,
)
from fusion_ui.ui.shared import (
    JOB_EVENT,
    QUICK,
    Shared,
    failed_line,
    follow_into,
    message_of,
    session_of,
    stop_handler,
    user_errors,
)

NOTHING_WRITTEN = "Nothing was written: bridges are saved only when their run ends."
MEAN_HEAD = -1  # the heads dropdown's "mean" (over all heads)


def head_choices(heads: int) -> list[tuple[str, int]]:
    return [("mean", MEAN_HEAD)] + [(f"head {h}", h) for h in range(heads)]


def build(shared: Shared) -> None:
    facade = shared.engine.compose
    pair = facade.demo_pair() or Composition("", "", "")
    tasks = list(facade.eval_sets())
    gr.Markdown(
        "**CALM** (Bansal et al. 2024, arXiv 2401.02412) composes two frozen models: small trained bridges let the "
        "anchor m_B read the augmenting model m_A's hidden states. The demo pair: m_A knows what string keys stand "
        "for, m_B does arithmetic and never saw a key; the bridges were trained on 20 % of the keys, and the sets "
        "below use the other 80 %. Train your own bridges below (or with `fusion-ui compose train`).",
        elem_classes="tab-intro")
    with gr.Row():
        anchor = gr.Textbox(pair.anchor, label="anchor m_B", elem_id="compose-anchor", scale=2)
        augment = gr.Textbox(pair.augment, label="augmenting model m_A", elem_id="compose-augment", scale=2)
        bridges = gr.Dropdown(facade.bridges_choices(""), value=pair.bridges or None, allow_custom_value=True,
                              label="bridges folder", info="The demo's, any folder of `fusion-ui compose train`, "
                              "or bridges trained below.", elem_id="compose-bridges", scale=2)
    with gr.Accordion("Train bridges for this pair", open=False, elem_id="compose-training"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                train_data = gr.Textbox(str(facade.demo_training_set() or ""), label="composition set (.jsonl / .csv)",
                                        info="The demo's: KV arithmetic over 20 % of the keys.",
                                        elem_id="compose-train-data")
                with gr.Row():
                    train_pairs = gr.Textbox(facade.demo_pairs(), label="layer pairs m_A:m_B",
                                             info="Empty: the demo bridges' pairs (else the engine's default); drawn below.",
                                             elem_id="compose-train-pairs")
                    train_steps = gr.Number(TRAIN_STEPS, precision=0, minimum=1, label="steps",
                                            elem_id="compose-train-steps")
                    train_lr = gr.Number(TRAIN_LR, label="learning rate", elem_id="compose-train-lr")
                    train_batch = gr.Number(TRAIN_BATCH, precision=0, minimum=1, label="batch size",
                                            elem_id="compose-train-batch")
            with gr.Column(scale=2):
                with gr.Row():
                    train = gr.Button("Train bridges", variant="primary", elem_id="compose-train", scale=3)
                    train_stop = gr.Button("Stop", variant="stop", elem_id="compose-train-stop", scale=1)
                train_status = gr.Markdown("", elem_id="compose-train-status", elem_classes="status")
        with gr.Row(equal_height=False):
            curve = gr.Plot(show_label=False, elem_id="compose-curve", scale=3)
            planned = gr.Plot(facade.planned_layer_diagram(pair.anchor, pair.augment, facade.demo_pairs()),
                              show_label=False, elem_id="compose-train-layers", scale=2)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            chosen = gr.CheckboxGroup(tasks, value=tasks, label="Score on (the CALM demo's held-out sets)",
                                      elem_id="compose-tasks")
            items = gr.Number(DEFAULT_ITEMS, precision=0, minimum=1, label="items per set", elem_id="compose-items")
        with gr.Column(scale=2):
            with gr.Row():
                score = gr.Button("Score m_A, m_B and CALM", variant="primary", elem_id="compose-score", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="compose-stop", scale=1)
            status = gr.Markdown("", elem_id="compose-status", elem_classes="status")
    chart = gr.Plot(show_label=False, elem_id="compose-chart")
    table = gr.Dataframe(pd.DataFrame(), interactive=False, label="Exact match (%)", elem_id="compose-table")
    with gr.Row():
        prompt = gr.Textbox("hpg + amy =", label="prompt", elem_id="compose-prompt", scale=3)
        generate = gr.Button("Generate with each", elem_id="compose-generate", scale=1)
    with gr.Row():
        outputs = [gr.Textbox("", label=role, interactive=False, elem_id=f"compose-out-{role}") for role in ROLES]
    gr.Markdown("### What the bridges read", elem_id="compose-read-heading")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gr.Markdown("For one prompt and CALM's greedy answer: which m_A tokens each anchor token reads through "
                        "each bridge, and how much each bridge adds there. The example is a held-out item (its keys "
                        "were not in the bridges' training set).")
            with gr.Row():
                read_prompt = gr.Textbox(READ_PROMPT, label="prompt", elem_id="compose-read-prompt", scale=3)
                read_tokens = gr.Number(READ_TOKENS, precision=0, minimum=0, label="answer tokens",
                                        elem_id="compose-read-tokens", scale=1)
                read_head = gr.Dropdown(head_choices(facade.bridge_heads(pair.bridges)), value=MEAN_HEAD,
                                        label="heads", elem_id="compose-read-head", scale=1)
            read = gr.Button("Show what the bridges read", variant="primary", elem_id="compose-read")
            read_status = gr.Markdown("", elem_id="compose-read-status", elem_classes="status")
            read_answer = gr.Textbox("", label="CALM's answer", interactive=False, elem_id="compose-read-answer")
        with gr.Column(scale=2):
            layers = gr.Plot(facade.layer_diagram(pair.bridges), show_label=False, elem_id="compose-layers")
    attention = gr.Plot(show_label=False, elem_id="compose-attention")

    @user_errors
    def run_scores(a: str, m: str, b: str, picked: list[str], n: float, request: gr.Request) -> Iterator[dict[Any, Any]]:
        try:
            job = facade.start_scores(session_of(request), Composition(a, m, b), picked or [],
                                      items=int(n or DEFAULT_ITEMS))
        except Exception as exc:  # noqa: BLE001 - shown in the status line, then raised as a message
            yield {status: failed_line(message_of(exc))}
            raise

        def done(scores: pd.DataFrame, view: Any) -> dict[Any, Any]:
            return {status: f'<span class="ok-dot"></span> Scored m_A, m_B and CALM in {view.seconds:.1f} s.',
                    chart: facade.chart(scores), table: facade.table(scores)}

        yield from follow_into(job, status, "scoring", done)

    @user_errors
    def run_generation(a: str, m: str, b: str, text: str, request: gr.Request) -> Iterator[dict[Any, Any]]:
        try:
            job = facade.start_generation(session_of(request), Composition(a, m, b), text)
        except Exception as exc:  # noqa: BLE001
            yield {status: failed_line(message_of(exc))}
            raise

        def done(answers: dict[str, str], view: Any) -> dict[Any, Any]:
            out: dict[Any, Any] = {box: answers[role] for box, role in zip(outputs, ROLES, strict=True)}
            return out | {status: f'<span class="ok-dot"></span> Generated with each in {view.seconds:.1f} s.'}

        yield from follow_into(job, status, "generating", done)

    @user_errors
    def run_reading(a: str, m: str, b: str, text: str, n: float, head: int | None,
                    request: gr.Request) -> Iterator[dict[Any, Any]]:
        try:
            job = facade.start_reading(session_of(request), Composition(a, m, b), text,
                                       max_new_tokens=int(READ_TOKENS if n is None else n))
        except Exception as exc:  # noqa: BLE001
            yield {read_status: failed_line(message_of(exc))}
            raise

        def done(read: Any, view: Any) -> dict[Any, Any]:
            answer = read.reading.answer.strip()
            verdict = "" if read.right is None else " (right)" if read.right else \
                f" (the demo's answer: {html.escape(read.expected or '')})"
            line = (f'<span class="ok-dot"></span> Read {len(read.reading.pairs)} bridges over '
                    f"{len(read.reading.tokens)} tokens in {view.seconds:.1f} s{verdict}.")
            shown = None if head is None or int(head) == MEAN_HEAD else int(head)
            return {read_status: line, read_answer: answer, attention: facade.attention_chart(read, head=shown)}

        yield from follow_into(job, read_status, "reading the bridges", done)

    @user_errors
    def run_training(a: str, m: str, file: str, pairs: str, n: float, rate: float, batch: float,
                     request: gr.Request) -> Iterator[dict[Any, Any]]:
        session = session_of(request)
        try:
            form = BridgesTraining(a, m, data=file or "", pairs=pairs or "", steps=n, lr=rate, batch_size=batch)
            job = facade.start_training(session, form)
        except Exception as exc:  # noqa: BLE001
            yield {train_status: failed_line(message_of(exc))}
            raise

        def done(r: Any, view: Any) -> dict[Any, Any]:
            line = (f'<span class="ok-dot"></span> Trained {r.trainable:,} bridge parameters at pairs {r.pairs} '
                    f"({len(r.losses)} steps, {r.seconds:.1f} s): loss {r.losses[0]:.3f} → {r.losses[-1]:.3f}. "
                    f"Saved to <code>{html.escape(r.folder)}</code>; Score and Generate now use them.")
            return {train_status: line, curve: facade.curve(job),
                    bridges: gr.update(choices=facade.bridges_choices(session), value=r.folder)}

        yield {curve: facade.curve(job)}
        yield from follow_into(job, train_status, "training", done, noun="training",
                               stopped_note=NOTHING_WRITTEN,
                               live=lambda view: {curve: facade.curve(job)})

    @user_errors
    def bridges_changed(folder: str) -> dict[Any, Any]:
        return {layers: facade.layer_diagram(folder),
                read_head: gr.update(choices=head_choices(facade.bridge_heads(folder)), value=MEAN_HEAD)}

    stop_work = stop_handler(shared.engine)

    scoring = score.click(run_scores, [anchor, augment, bridges, chosen, items], [status, chart, table],
                          api_name="compose_scores", **JOB_EVENT)
    generating = generate.click(run_generation, [anchor, augment, bridges, prompt], [status, *outputs],
                                api_name="compose_generate", **JOB_EVENT)
    prompt.submit(run_generation, [anchor, augment, bridges, prompt], [status, *outputs],
                  api_name="compose_generate_enter", **JOB_EVENT)
    reading_inputs = [anchor, augment, bridges, read_prompt, read_tokens, read_head]
    reading_outputs = [read_status, read_answer, attention]
    reading = read.click(run_reading, reading_inputs, reading_outputs, api_name="compose_read", **JOB_EVENT)
    read_prompt.submit(run_reading, reading_inputs, reading_outputs, api_name="compose_read_enter", **JOB_EVENT)
    read_head.input(run_reading, reading_inputs, reading_outputs, api_name="compose_read_head", **JOB_EVENT)
    bridges.change(bridges_changed, bridges, [layers, read_head], api_name="compose_layers", **QUICK)
    # the diagram of the pairs to train redraws as they are typed (or the models change)
    gr.on([train_pairs.change, anchor.change, augment.change], user_errors(facade.planned_layer_diagram),
          [anchor, augment, train_pairs], planned, api_name="compose_train_layers", **QUICK)
    stop.click(stop_work, None, status, api_name="stop_compose", queue=False, cancels=[scoring, generating, reading])
    # Training is not cancelled as an event: Stop cancels its job, and the event then shows the
    # stopped state (the curve as it was, and that nothing was written).
    train.click(run_training, [anchor, augment, train_data, train_pairs, train_steps, train_lr, train_batch],
                [train_status, curve, bridges], api_name="compose_train", **JOB_EVENT)
    stop_training = stop_handler(shared.engine, note=NOTHING_WRITTEN)
    train_stop.click(stop_training, None, train_status, api_name="stop_compose_training", queue=False)
