"""Export tab: write the merge to a folder ``transformers`` loads; the history of merges.

The checkpoint is written to a folder under the app's export root and its path shown; it
never travels through the browser. Replacing a folder is only ever allowed for one an earlier
export wrote.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from fusion_ui.app import OUTPUT_DTYPES
from fusion_ui.runtime import JobState
from fusion_ui.ui.merge import MergeTab
from fusion_ui.ui.shared import (
    JOB_EVENT,
    Shared,
    failed_line,
    follow,
    message_of,
    running_line,
    session_of,
    stop_handler,
    stopped_line,
    user_errors,
)

DTYPES = {"as in the recipe": "", **{d: d for d in OUTPUT_DTYPES}}  # label -> output dtype
REPLACE_LABEL = "replace the folder if it exists"
NOTHING_YET = "Nothing exported yet."


@dataclass
class ExportTab:
    folder: gr.Textbox
    tokenizer: gr.Dropdown
    export: gr.Button
    result: gr.Markdown
    card: gr.Markdown
    recipe: gr.Code
    history: gr.Dataframe
    history_pick: gr.Dropdown
    reload: gr.Button

    def history_updates(self, engine: Any) -> dict[Any, Any]:
        """The history table and its picker as they are now (after a merge, an export, a page load)."""
        return {self.history: engine.exports.history_table(),
                self.history_pick: gr.update(choices=engine.exports.history_choices(), value=None)}


def tokenizer_choices(selection: dict | None) -> Any:
    labels = (selection or {}).get("labels", [])
    choices = [("the base's", "base")] + [(f"{lab}'s", f"model:{i}") for i, lab in enumerate(labels)]
    return gr.update(choices=choices, value="base")


def build(shared: Shared, merge: MergeTab) -> ExportTab:
    """The tab; Export first composes the Merge tab's recipe from its controls, then writes it."""
    engine = shared.engine
    root = engine.exports.root
    gr.Markdown("Write the current recipe (the **Merge** tab's) as a checkpoint folder: sharded "
                "safetensors, config, tokenizer, a model card, the recipe and a mergekit YAML. The write "
                f"is atomic: on an error nothing is left half-written. Exports go under `{root}` "
                "(`--export-root DIR` changes it).", elem_classes="tab-intro")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            folder = gr.Textbox("demo-merge", label="Output folder", elem_id="export-folder",
                                info=f"A name under {root} (or a path inside it).")
            with gr.Row():
                dtype = gr.Dropdown(list(DTYPES), value="as in the recipe", label="dtype")
                shard = gr.Textbox("2GB", label="max shard size", info="e.g. 500MB, 2GB, 5GiB")
                tokenizer = gr.Dropdown([("the base's", "base")], value="base", label="tokenizer from")
            with gr.Row():
                mergekit = gr.Checkbox(True, label="also write mergekit_config.yml")
                force = gr.Checkbox(False, label=REPLACE_LABEL, elem_id="export-replace",
                                    info="Only a folder an earlier export wrote (it holds fusion_ui_recipe.yaml).")
            with gr.Row():
                export = gr.Button("Export", variant="primary", elem_id="export-button", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="export-stop", scale=1)
        with gr.Column(scale=2):
            result = gr.Markdown(NOTHING_YET, elem_id="export-result", elem_classes="status")
    with gr.Tabs():
        with gr.Tab("Model card"):
            card = gr.Markdown(elem_id="model-card", elem_classes="card-preview")
        with gr.Tab("Recipe"):
            recipe = gr.Code(language="yaml", interactive=False, label="fusion_ui_recipe.yaml")
        with gr.Tab("mergekit"):
            mergekit_yaml = gr.Code(language="yaml", interactive=False, label="mergekit_config.yml")
    gr.Markdown("### History of merges\nThe merges you asked for and every export, newest first. Pick one to "
                "load its recipe back into the Merge tab.")
    history = gr.Dataframe(engine.exports.history_table(), interactive=False, max_height=300, elem_id="history")
    with gr.Row():
        # Choices are filled per page (the history grows while the app runs): any value is let through
        # here and checked against the history when loaded.
        history_pick = gr.Dropdown(engine.exports.history_choices(), value=None, label="merge", scale=3,
                                   allow_custom_value=True, elem_id="history-pick")
        reload = gr.Button("Load into the Merge tab", elem_id="history-load", scale=1)
    tab = ExportTab(folder, tokenizer, export, result, card, recipe, history, history_pick, reload)

    @user_errors
    def run_export(values: dict[Any, Any], request: gr.Request) -> Iterator[dict[Any, Any]]:
        try:
            composed = merge.compose(values)
            job = engine.exports.start(
                session_of(request), composed, values[folder], dtype=DTYPES.get(values[dtype]) or None,
                max_shard_size=values[shard] or "2GB", tokenizer_source=values[tokenizer] or "base",
                write_mergekit=bool(values[mergekit]), force=bool(values[force]),
                allow_large_deltas=bool(values[merge.allow_large]),
            )
        except Exception as exc:  # noqa: BLE001 - shown in the status line, then raised as a message
            yield {result: failed_line(message_of(exc))}
            raise
        yield {merge.recipe: composed.to_yaml()}
        for view in follow(job):
            if not view.state.final:
                yield {result: running_line(view, "writing")}
            elif view.state is JobState.FINISHED:
                s = job.result
                warn = "".join(f"\n- ⚠ {html.escape(w)}" for w in s.warnings[:6])
                text = (f'<span class="ok-dot"></span> **Exported** {s.size_bytes / 2**20:.1f} MiB in '
                        f"{s.seconds:.1f} s to\n\n`{s.path}`\n\nfiles: {', '.join(s.files)}\n\nLoad it with "
                        f"`AutoModelForCausalLM.from_pretrained({s.path!r})`.{warn}")
                yield {result: text, card: _strip_front_matter(s.card), recipe: s.recipe_yaml,
                       mergekit_yaml: s.mergekit_yaml or "# not expressible in mergekit",
                       **tab.history_updates(engine)}
            elif view.state is JobState.CANCELLED:
                yield {result: stopped_line(view, "export") + " Nothing was written."}
            else:
                yield {result: failed_line(message_of(view.error)) + " Nothing was written."}
                raise gr.Error(message_of(view.error), title="Cannot do that yet")

    stop_work = stop_handler(engine)

    form = merge.form | {shared.selection, folder, dtype, shard, tokenizer, mergekit, force}
    outputs = [result, card, recipe, mergekit_yaml, history, history_pick, merge.recipe]
    # The button reads the whole form; scripts use /export_recipe (fusion_ui.ui.api) instead.
    exporting = export.click(run_export, form, outputs, api_name="export", api_visibility="undocumented",
                             **JOB_EVENT)
    stop.click(stop_work, None, result, api_name="stop_export", queue=False, cancels=[exporting])
    return tab


def _strip_front_matter(card: str) -> str:
    """The card without its YAML header (the hub reads it; people do not need to)."""
    if card.startswith("---"):
        end = card.find("\n---", 3)
        if end != -1:
            return card[end + 4 :].lstrip()
    return card
