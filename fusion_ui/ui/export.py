"""Export tab: write the merge to a folder ``transformers`` loads; the history of merges.

The checkpoint is written to a folder and its path shown; it never travels through the browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from fusion_ui.ui.merge import MergeTab
from fusion_ui.ui.shared import ENGINE_QUEUE, Shared, progress_callback, session_of, user_errors

DTYPES = {"as in the recipe": "", "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


@dataclass
class ExportTab:
    folder: gr.Textbox
    tokenizer: gr.Dropdown
    export: gr.Button
    result: gr.Markdown
    card: gr.Markdown
    recipe: gr.Code
    history: gr.Dataframe
    history_id: gr.Number
    reload: gr.Button


def tokenizer_choices(selection: dict | None) -> Any:
    labels = (selection or {}).get("labels", [])
    choices = [("the base's", "base")] + [(f"{lab}'s", f"model:{i}") for i, lab in enumerate(labels)]
    return gr.update(choices=choices, value="base")


def build(shared: Shared, merge: MergeTab) -> ExportTab:
    """The tab; Export first composes the Merge tab's recipe from its controls, then writes it."""
    engine = shared.engine
    gr.Markdown("Write the current recipe (the **Merge** tab's) as a checkpoint folder: sharded "
                "safetensors, config, tokenizer, a model card, the recipe and a mergekit YAML. The write "
                "is atomic: on an error nothing is left half-written.", elem_classes="tab-intro")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            folder = gr.Textbox(str(Path.cwd() / "merged" / "demo-merge"), label="Output folder",
                                elem_id="export-folder")
            with gr.Row():
                dtype = gr.Dropdown(list(DTYPES), value="as in the recipe", label="dtype")
                shard = gr.Textbox("2GB", label="max shard size", info="e.g. 500MB, 2GB, 5GiB")
                tokenizer = gr.Dropdown([("the base's", "base")], value="base", label="tokenizer from")
            with gr.Row():
                mergekit = gr.Checkbox(True, label="also write mergekit_config.yml")
                force = gr.Checkbox(False, label="replace the folder if it exists")
            export = gr.Button("Export", variant="primary", elem_id="export-button")
        with gr.Column(scale=2):
            result = gr.Markdown("Nothing exported yet.", elem_id="export-result", elem_classes="status")
    with gr.Tabs():
        with gr.Tab("Model card"):
            card = gr.Markdown(elem_id="model-card", elem_classes="card-preview")
        with gr.Tab("Recipe"):
            recipe = gr.Code(language="yaml", interactive=False, label="fusion_ui_recipe.yaml")
        with gr.Tab("mergekit"):
            mergekit_yaml = gr.Code(language="yaml", interactive=False, label="mergekit_config.yml")
    gr.Markdown("### History of merges\nEvery merge and export, newest first. Pick one to load its recipe "
                "back into the Merge tab.")
    history = gr.Dataframe(engine.history_table(), interactive=False, max_height=300, elem_id="history")
    with gr.Row():
        history_id = gr.Number(None, label="merge #", precision=0, minimum=1, elem_id="history-id", scale=1)
        reload = gr.Button("Load into the Merge tab", elem_id="history-load", scale=2)

    @user_errors
    def run_export(recipe_yaml: str, out: str, dtype_label: str, shard_size: str, tok: str, write_mk: bool,
                   replace: bool, request: gr.Request, progress: gr.Progress = gr.Progress()) -> list[Any]:  # noqa: B008
        if not (recipe_yaml or "").strip():
            raise gr.Error("There is no recipe yet: load models and set up a merge first.")
        s = engine.export(session_of(request), recipe_yaml, out, dtype=DTYPES.get(dtype_label) or None,
                          max_shard_size=shard_size or "2GB", tokenizer_source=tok or "base",
                          write_mergekit=write_mk, force=replace, progress=progress_callback(progress, "writing"))
        warn = "".join(f"\n- ⚠ {w}" for w in s.warnings[:6])
        text = (f'<span class="ok-dot"></span> **Exported** {s.size_bytes / 2**20:.1f} MiB in {s.seconds:.1f} s to\n\n'
                f"`{s.path}`\n\nfiles: {', '.join(s.files)}\n\nLoad it with "
                f"`AutoModelForCausalLM.from_pretrained({s.path!r})`.{warn}")
        return [text, _strip_front_matter(s.card), s.recipe_yaml, s.mergekit_yaml or "# not expressible in mergekit",
                engine.history_table()]

    def pick(evt: gr.SelectData, table: pd.DataFrame) -> Any:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return int(table.iloc[row]["id"])

    export.click(merge.compose, merge.form | {shared.selection}, merge.recipe, api_name="compose_for_export") \
        .success(run_export, [merge.recipe, folder, dtype, shard, tokenizer, mergekit, force],
                 [result, card, recipe, mergekit_yaml, history], api_name="export", **ENGINE_QUEUE)
    history.select(pick, history, history_id, api_name="pick_history")
    return ExportTab(folder, tokenizer, export, result, card, recipe, history, history_id, reload)


def _strip_front_matter(card: str) -> str:
    """The card without its YAML header (the hub reads it; people do not need to)."""
    if card.startswith("---"):
        end = card.find("\n---", 3)
        if end != -1:
            return card[end + 4 :].lstrip()
    return card
