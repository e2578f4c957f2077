"""The app: five tabs assembled into one ``gr.Blocks``, and how it is launched.

Each tab lives in its own module with a ``build`` function; this module only wires the events
that cross tabs (a new model selection updates the Merge sliders, the Compare columns and the
Export tokenizer choices; a recipe from the history goes back into the Merge tab).
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls

import gradio as gr  # noqa: E402

from fusion_ui import __version__  # noqa: E402
from fusion_ui.engine import Engine, make_selection  # noqa: E402
from fusion_ui.ui import compare, deltas, export, merge, models  # noqa: E402
from fusion_ui.ui.shared import ENGINE_QUEUE, Shared, user_errors  # noqa: E402
from fusion_ui.ui.theme import RESTORE_THEME_JS, TOGGLE_DARK_JS, css, fusion_theme, logo_svg  # noqa: E402

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def build_app(engine: Engine) -> gr.Blocks:
    """The whole app around one engine (shared by every browser session)."""
    with gr.Blocks(title="fusion_ui · model merging", analytics_enabled=False) as app:
        with gr.Row(elem_id="app-header"):
            gr.HTML(
                f'<div id="app-header">{logo_svg()}<div><h1>fusion_ui</h1><p>Merge fine-tunes of one base '
                "into one model: DARE, TIES, task arithmetic, SLERP… point, click, compare, export.</p>"
                "</div></div>",
                padding=False,
            )
            toggle = gr.Button("◐ Light / dark", size="sm", elem_id="theme-toggle", scale=0, min_width=130)
        selection = gr.State(None)
        merged = gr.State(None)
        with gr.Tabs(selected="models") as tabs:
            shared = Shared(engine, selection, merged, tabs)
            with gr.Tab("1 · Models", id="models", elem_id="tab-models"):
                models_tab = models.build(shared)
            with gr.Tab("2 · Deltas", id="deltas", elem_id="tab-deltas") as deltas_page:
                deltas_tab = deltas.build(shared)
            with gr.Tab("3 · Merge", id="merge", elem_id="tab-merge"):
                merge_tab = merge.build(shared)
            with gr.Tab("4 · Compare", id="compare", elem_id="tab-compare"):
                compare_tab = compare.build(shared)
            with gr.Tab("5 · Export", id="export", elem_id="tab-export"):
                export_tab = export.build(shared, merge_tab)
        gr.HTML(f'<div id="app-footer">fusion_ui {__version__} · runs locally; models never leave this '
                "machine · <code>python app.py --help</code></div>")

        toggle.click(None, js=TOGGLE_DARK_JS, api_name="toggle_theme", queue=False)

        # -- a new selection flows into every tab -------------------------------------------------

        hidden: dict[str, Any] = {"api_visibility": "undocumented"}  # plumbing between tabs

        def on_selection(method: str, sel: dict | None) -> list[Any]:
            return merge_tab.apply(method, sel, None)

        def quiet_compose(values: dict[Any, Any]) -> Any:
            return merge_tab.compose(values) if values[selection] else ""

        def columns(sel: dict | None, recipe: str | None) -> list[Any]:
            return compare_tab.columns(sel, recipe)

        def propagate(event: Any, suffix: str) -> Any:
            return (
                event.then(on_selection, [merge_tab.method, selection], merge_tab.controls,
                           api_name=f"sliders_for_selection{suffix}", **hidden)
                .then(quiet_compose, merge_tab.form | {selection}, merge_tab.recipe,
                      api_name=f"recipe_for_selection{suffix}", **hidden)
                .then(lambda: None, None, merged, api_name=f"forget_merge{suffix}", **hidden)
                .then(columns, [selection, merged], compare_tab.outputs, api_name=f"columns_for_selection{suffix}", **hidden)
                .then(export.tokenizer_choices, selection, export_tab.tokenizer,
                      api_name=f"tokenizer_choices{suffix}", **hidden)
                .then(merge_tab.preview, merge_tab.form | {selection}, [merge_tab.preview_plot, merge_tab.preview_text],
                      api_name=f"dare_preview_for_selection{suffix}", **hidden, **ENGINE_QUEUE)
            )

        propagate(models_tab.loaded, "")

        @user_errors
        def analyse_on_open(sel: dict | None, metric: str, progress: gr.Progress = gr.Progress()) -> Any:  # noqa: B008
            if not sel:
                return [gr.skip()] * len(deltas_tab.outputs)
            return deltas_tab.run(sel, metric, progress)

        deltas_page.select(analyse_on_open, [selection, deltas_tab.metric], deltas_tab.outputs,
                           api_name="analyze_on_open", **hidden, **ENGINE_QUEUE)
        merged.change(columns, [selection, merged], compare_tab.outputs, api_name="columns_for_merge", **hidden)

        @user_errors
        def startup(base: str, finetunes: str) -> Any:
            if not base.strip() or not finetunes.strip():
                return gr.skip(), gr.skip(), gr.skip()
            return models_tab.load_models(base, finetunes)

        propagate(app.load(startup, [models_tab.base, models_tab.finetunes],
                           [models_tab.table, models_tab.verdict, selection], api_name="startup"), "_startup")

        # -- a recipe from the history goes back into the Merge tab --------------------------------

        @user_errors
        def load_history(entry: float | None) -> list[Any]:
            if entry is None:
                raise gr.Error("Pick a merge in the history table (or type its number) first.")
            text = engine.history_recipe(int(entry))
            recipe = engine.parse_recipe(text)
            if not recipe.base:
                raise gr.Error("This recipe has no base model; the app needs one to preview it.")
            sel = make_selection(recipe.base, [m.model for m in recipe.models])
            return [text, sel, recipe.base, "\n".join(sel["models"]), None]

        @user_errors
        def apply_recipe(text: str, sel: dict | None) -> list[Any]:
            recipe = engine.parse_recipe(text)
            return merge_tab.apply(recipe.method, sel, recipe)

        (
            export_tab.reload.click(load_history, export_tab.history_id,
                                    [merge_tab.recipe, selection, models_tab.base, models_tab.finetunes, merged],
                                    api_name="load_history")
            .success(apply_recipe, [merge_tab.recipe, selection], merge_tab.controls, api_name="apply_recipe")
            .then(columns, [selection, merged], compare_tab.outputs, api_name="columns_for_history", **hidden)
            .then(export.tokenizer_choices, selection, export_tab.tokenizer, api_name="tokenizer_for_history", **hidden)
            .then(lambda: gr.Tabs(selected="merge"), None, tabs, api_name="show_merge_tab", **hidden)
        )
    return app


def listen_problem(host: str, share: bool, auth: str | None) -> str | None:
    """Why the app must not start with these options (None: fine).

    Anyone who can reach the port can read local model folders through the app, so anything
    beyond this machine needs a password.
    """
    if auth is not None and (":" not in auth or not auth.split(":", 1)[0] or not auth.split(":", 1)[1]):
        return "--auth takes user:password, both non-empty"
    if (host not in LOCAL_HOSTS or share) and auth is None:
        where = "with --share" if share else f"on {host}"
        return (f"refusing to serve {where} without a password: anyone who reaches the app can read "
                "model folders on this machine. Add --auth user:password, or use --host 127.0.0.1")
    return None


def launch(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    auth: str | None = None,
    inbrowser: bool = False,
    block: bool = True,
) -> Any:
    """Start the server (offline: system fonts, no analytics, no server-side rendering)."""
    problem = listen_problem(host, share, auth)
    if problem is not None:
        raise SystemExit(f"fusion_ui: {problem}")
    credentials = tuple(auth.split(":", 1)) if auth else None
    app.queue(default_concurrency_limit=4)
    return app.launch(
        server_name=host, server_port=port, share=share, auth=credentials, inbrowser=inbrowser,
        prevent_thread_lock=not block, theme=fusion_theme(), css=css(), js=RESTORE_THEME_JS,
        ssr_mode=False, show_error=True, quiet=not block, footer_links=["api", "settings"],
    )
