"""Models tab: choose a base and its fine-tunes, see what they are and whether they merge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from fusion_ui.app import check_ref
from fusion_ui.errors import FusionError
from fusion_ui.ui.shared import QUICK, Shared, message_of, user_errors

CUSTOM = "Custom (type below)"
_ICON = {"error": "✖", "warning": "⚠", "info": "ℹ"}
_VERDICT = {
    "compatible": ("ok", "Compatible: every tensor lines up; go to <b>Merge</b>."),
    "compatible with adjustments": ("warn", "Compatible with adjustments (see below); merging works."),
    "incompatible": ("bad", "Incompatible: these models cannot be merged tensor by tensor."),
}


@dataclass
class ModelsTab:
    preset: gr.Dropdown
    base: gr.Textbox
    finetunes: gr.Textbox
    load: gr.Button
    table: gr.Dataframe
    verdict: gr.Markdown
    loaded: Any  # the "load" event; other tabs chain their updates on it with .success
    load_models: Callable[[str, str], tuple[pd.DataFrame, str, dict[str, Any] | None]]
    preset_choices: Callable[[], Any]  # an update of the "Start from" choices (recent selections)


def validation_markdown(base: str, finetunes: str) -> str:
    """One line per typed model: whether it looks usable (no weights read)."""
    lines = []
    for role, ref in [("base", base), *[("fine-tune", r) for r in finetunes.splitlines()]]:
        if not ref.strip():
            continue
        ok, msg = check_ref(ref)
        lines.append(f"{'✔' if ok else '✖'} {role}: {msg}")
    return "\n\n".join(lines) or "Type a folder path or a hub id `org/name`."


def verdict_markdown(verdict: str, findings: list[dict[str, str]]) -> str:
    cls, text = _VERDICT.get(verdict, ("warn", verdict))
    lines = [f'<div class="verdict verdict-{cls}">{text}</div>', ""]
    for f in findings[:25]:
        lines.append(f"- {_ICON.get(f['severity'], '')} **{f['severity']}** `{f['model']}`: {f['message']}")
    if len(findings) > 25:
        lines.append(f"- … and {len(findings) - 25} more")
    return "\n".join(lines)


def build(shared: Shared) -> ModelsTab:
    engine = shared.engine
    presets = engine.models.presets()
    first = next(iter(presets.values()), None)
    gr.Markdown(
        "Pick the **base** model and the **fine-tunes** made from it: the built-in demo family, "
        "local folders (config.json + safetensors), or hub ids `org/name` when you are online.",
        elem_classes="tab-intro",
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            preset = gr.Dropdown(
                [*presets, CUSTOM], value=next(iter(presets), CUSTOM), label="Start from",
                info="The built-in demo family, or one of your recent choices.", interactive=True,
                elem_id="preset",
            )
            base = gr.Textbox(
                first["base"] if first else "", label="Base model", placeholder="/path/to/base or org/name",
                elem_id="base-model",
            )
            finetunes = gr.Textbox(
                "\n".join(first["models"]) if first else "", lines=4, max_lines=12,
                label="Fine-tunes (one per line)", placeholder="/path/to/fine-tune\norg/another-fine-tune",
                elem_id="finetunes",
            )
            load = gr.Button("Load & check models", variant="primary", elem_id="load-models")
        with gr.Column(scale=2):
            check = gr.Markdown(validation_markdown(base.value or "", finetunes.value or ""), elem_classes="checklist")
    verdict = gr.Markdown(elem_id="verdict")
    table = gr.Dataframe(pd.DataFrame({"role": [], "model": []}), label="Models", interactive=False, wrap=True, elem_id="models-table")

    @user_errors
    def use_preset(evt: gr.SelectData) -> tuple[Any, Any]:
        sel = engine.models.presets().get(str(evt.value))
        if sel is None:
            return gr.skip(), gr.skip()
        return sel["base"], "\n".join(sel["models"])

    def preset_choices() -> Any:
        return gr.update(choices=[*engine.models.presets(), CUSTOM])

    def load_models(base: str, finetunes: str) -> tuple[pd.DataFrame, str, dict[str, Any] | None]:
        sel = engine.models.select(base, finetunes)
        result = engine.models.inspect(sel)
        ok = result.verdict != "incompatible"
        return result.table, verdict_markdown(result.verdict, result.findings), sel if ok else None

    @user_errors
    def load_clicked(base: str, finetunes: str) -> Any:
        """Load and check; on a failure the banner says so and the models loaded before stay."""
        try:
            table_value, verdict_text, sel = load_models(base, finetunes)
        except FusionError as exc:
            yield {verdict: failed_verdict(message_of(exc))}
            raise
        yield {table: table_value, verdict: verdict_text, shared.selection: sel, preset: preset_choices()}

    preset.select(use_preset, None, [base, finetunes], api_name="use_preset", **QUICK)
    for box in (base, finetunes):
        box.change(validation_markdown, [base, finetunes], check, api_name="validate_models", queue=False,
                   show_progress="hidden", trigger_mode="always_last")
    loaded = load.click(load_clicked, [base, finetunes], [table, verdict, shared.selection, preset],
                        api_name="load_models", **QUICK)
    return ModelsTab(preset, base, finetunes, load, table, verdict, loaded, load_models, preset_choices)


def failed_verdict(message: str) -> str:
    """The banner after a failed load: what went wrong, and that nothing changed."""
    import html

    return (f'<div class="verdict verdict-bad">Could not load these models: {html.escape(message)}</div>\n\n'
            "The models loaded before (if any) are still the ones in use.")
