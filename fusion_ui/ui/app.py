"""The app: its tabs assembled into one ``gr.Blocks``, and how it is launched.

Each tab lives in its own module with a ``build`` function; this module only wires the events
that cross tabs (a new model selection updates the Merge sliders, the Compare columns and the
Export tokenizer choices; a recipe from the history goes back into the Merge tab), what a page
load restores, and what a closed page frees.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry calls

import gradio as gr  # noqa: E402
import plotly.graph_objects as go  # noqa: E402

from fusion_ui import __version__  # noqa: E402
from fusion_ui.app import Engine, MergeRef, make_selection, parse_recipe  # noqa: E402
from fusion_ui.errors import FusionError  # noqa: E402
from fusion_ui.ui import (  # noqa: E402
    api,
    cocktail,
    compare,
    compose,
    deltas,
    export,
    frozen,
    merge,
    models,
    sweep,
)
from fusion_ui.ui.login import LoginThrottle  # noqa: E402
from fusion_ui.ui.shared import JOB_EVENT, QUICK, Shared, session_of, user_errors  # noqa: E402
from fusion_ui.ui.theme import RESTORE_THEME_JS, TOGGLE_DARK_JS, css, fusion_theme, logo_svg  # noqa: E402

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
RESTORED = ("Restored this browser's last recipe. Its merge is rebuilt in memory when the **Compare** tab "
            "needs it, or click **Merge**.")


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
        # What a reload of the page brings back (kept in this browser's local storage).
        saved = gr.BrowserState({}, storage_key="fusion-ui-last-session")
        with gr.Tabs(selected="models") as tabs:
            shared = Shared(engine, selection, merged, tabs)
            with gr.Tab("1 · Models", id="models", elem_id="tab-models"):
                models_tab = models.build(shared)
            with gr.Tab("2 · Deltas", id="deltas", elem_id="tab-deltas") as deltas_page:
                deltas_tab = deltas.build(shared)
            with gr.Tab("3 · Merge", id="merge", elem_id="tab-merge"):
                merge_tab = merge.build(shared)
            with gr.Tab("4 · Cocktail", id="cocktail", elem_id="tab-cocktail"):
                cocktail_tab = cocktail.build(shared, merge_tab)
            with gr.Tab("5 · Sweep", id="sweep", elem_id="tab-sweep"):
                sweep.build(shared, merge_tab)
            with gr.Tab("6 · Compare", id="compare", elem_id="tab-compare"):
                compare_tab = compare.build(shared)
            with gr.Tab("7 · Export", id="export", elem_id="tab-export"):
                export_tab = export.build(shared, merge_tab)
            with gr.Tab("8 · Compose", id="compose", elem_id="tab-compose"):
                compose.build(shared)
            with gr.Tab("9 · Frozen LM", id="frozen", elem_id="tab-frozen"):
                frozen.build(shared)
        gr.HTML(f'<div id="app-footer">fusion_ui {__version__} · runs locally; models never leave this '
                "machine · <code>python app.py --help</code></div>")
        # An empty, unseen plot on the first page: the browser loads and compiles plotly.js while
        # the Models tab is read, not when the Deltas tab first draws (seconds on two busy cores).
        gr.Plot(go.Figure(), show_label=False, container=False, elem_classes="plotly-preload")

        toggle.click(None, js=TOGGLE_DARK_JS, api_name="toggle_theme", queue=False)
        hidden: dict[str, Any] = {"api_visibility": "undocumented"}  # plumbing between tabs

        # -- a new selection flows into every tab -------------------------------------------------

        def for_selection(method: str, sel: dict | None, recipe: Any = None) -> dict[Any, Any]:
            """Every tab's updates for a selection (and optionally a recipe to show)."""
            out = merge_tab.apply(method, sel, recipe)
            out |= dict(zip(compare_tab.outputs, compare_tab.columns(sel, None), strict=True))
            out[export_tab.tokenizer] = export.tokenizer_choices(sel)
            out[cocktail_tab.candidates] = cocktail_tab.candidate_choices(sel)
            out[merged] = None
            return out

        def refresh_merge(values: dict[Any, Any], request: gr.Request) -> Any:
            yield from merge_tab.refresh(values, request, merge_live=False)

        selection_outputs = [*merge_tab.controls, *compare_tab.outputs, export_tab.tokenizer, cocktail_tab.candidates,
                             merged]
        refresh_outputs = [*merge_tab.preview_outputs, merge_tab.status, merged]
        merge_form = merge_tab.form | {selection}

        def prefetch(sel: dict | None, request: gr.Request) -> None:
            engine.prefetch(session_of(request), sel)

        models_tab.loaded.success(
            lambda method, sel: for_selection(method, sel), [merge_tab.method, selection], selection_outputs,
            api_name="selection_to_tabs", **hidden, **QUICK,
        ).then(prefetch, selection, None, api_name="prefetch_deltas", **hidden, **QUICK) \
            .then(refresh_merge, merge_form, refresh_outputs, api_name="refresh_for_selection", **hidden, **JOB_EVENT)

        @user_errors
        def analyse_on_open(sel: dict | None, metric: str, request: gr.Request) -> Any:
            if not sel:
                return
            yield from deltas_tab.run(sel, metric, request)

        deltas_page.select(analyse_on_open, [selection, deltas_tab.metric], deltas_tab.outputs,
                           api_name="analyze_on_open", **hidden, **JOB_EVENT)

        def after_merge(sel: dict | None, state: Any) -> dict[Any, Any]:
            out = dict(zip(compare_tab.outputs, compare_tab.columns(sel, state), strict=True))
            return out | export_tab.history_updates(engine)

        merged.change(after_merge, [selection, merged], [*compare_tab.outputs, export_tab.history,
                                                         export_tab.history_pick],
                      api_name="columns_for_merge", **hidden, **QUICK)

        # -- a page load: the last session of this browser, or the demo family --------------------

        @user_errors
        def startup(base: str, finetunes: str, last: dict | None, method: str) -> dict[Any, Any]:
            out: dict[Any, Any] = {models_tab.preset: models_tab.preset_choices(),
                                   **export_tab.history_updates(engine)}
            last = last if isinstance(last, dict) else {}
            # This browser's last models first; if they are gone, the form as the page built it.
            tries = [(str(last["base"]), str(last["finetunes"]))] if last.get("base") and last.get("finetunes") else []
            tries.append((base, finetunes))
            for k, (base, finetunes) in enumerate(tries):
                if not base.strip() or not finetunes.strip():
                    return out
                try:
                    table, verdict, sel = models_tab.load_models(base, finetunes)
                    break
                except FusionError:
                    if k == len(tries) - 1:
                        raise
                    last = {}
            out |= {models_tab.base: base, models_tab.finetunes: finetunes, models_tab.table: table,
                    models_tab.verdict: verdict, selection: sel}
            recipe = _restorable(last.get("recipe"), sel)
            out |= for_selection(recipe.method if recipe else method, sel, recipe)
            if recipe is not None:
                out |= {merge_tab.recipe: recipe.to_yaml(), merge_tab.status: RESTORED}
                saved_merge = last.get("merged") if isinstance(last.get("merged"), dict) else {}
                merge_recipe = _restorable(saved_merge.get("recipe"), sel)
                if merge_recipe is not None:
                    out[merged] = MergeRef(merge_recipe, bool(saved_merge.get("allow_large_deltas")))
            return out

        startup_outputs = [models_tab.preset, export_tab.history, export_tab.history_pick, models_tab.base,
                           models_tab.finetunes, models_tab.table, models_tab.verdict, selection,
                           merge_tab.recipe, merge_tab.status, *selection_outputs]
        app.load(startup, [models_tab.base, models_tab.finetunes, saved, merge_tab.method], startup_outputs,
                 api_name="startup", **QUICK) \
            .then(prefetch, selection, None, api_name="prefetch_deltas_on_start", **hidden, **QUICK) \
            .then(refresh_merge, merge_form, refresh_outputs, api_name="refresh_on_start", **hidden, **JOB_EVENT)

        def remember(recipe_text: str, state: MergeRef | None, sel: dict | None) -> dict[str, Any]:
            """What a reload brings back, as JSON in the browser's local storage."""
            if not sel:
                return gr.skip()
            merge = None if state is None else {"recipe": state.recipe.to_yaml(),
                                                 "allow_large_deltas": state.allow_large_deltas}
            return {"base": sel["base"], "finetunes": "\n".join(sel["models"]), "recipe": recipe_text,
                    "merged": merge}

        for trigger in (merge_tab.recipe.change, merged.change):
            trigger(remember, [merge_tab.recipe, merged, selection], saved, api_name="remember", queue=False,
                    **hidden, **QUICK)

        # -- a recipe from the history goes back into the Merge tab --------------------------------

        @user_errors
        def load_history(entry: Any) -> dict[Any, Any]:
            if entry is None or entry == "":
                raise gr.Error("Pick a merge from the history first.")
            try:
                entry_id = int(str(entry).lstrip("#").split()[0])
            except (ValueError, IndexError):
                raise gr.Error(f"{entry!r} is not a merge of the history: pick one from the list.") from None
            text = engine.exports.history_recipe(entry_id)
            recipe = parse_recipe(text)
            if not recipe.base:
                raise gr.Error("This recipe has no base model; the app needs one to preview it.")
            sel = make_selection(recipe.base, [m.model for m in recipe.models], limits=engine.limits)
            out = for_selection(recipe.method, sel, recipe)
            return out | {merge_tab.recipe: text, selection: sel, models_tab.base: recipe.base,
                          models_tab.finetunes: "\n".join(sel["models"]), tabs: gr.Tabs(selected="merge")}

        export_tab.reload.click(
            load_history, export_tab.history_pick,
            [*selection_outputs, merge_tab.recipe, selection, models_tab.base, models_tab.finetunes, tabs],
            api_name="load_history", **QUICK,
        ).success(refresh_merge, merge_form, refresh_outputs, api_name="refresh_for_history", **hidden,
                  **JOB_EVENT)

        # -- a closed page frees what it held ------------------------------------------------------

        def end_session(request: gr.Request) -> None:
            engine.end_session(session_of(request))

        app.unload(end_session)
        api.register(engine)
    return app


def _restorable(text: Any, sel: dict[str, Any]) -> Any:
    """The saved recipe, if it still parses and merges models of this selection (else None)."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        recipe = parse_recipe(text)
    except FusionError:
        return None
    if recipe.base != sel["base"] or not {m.model for m in recipe.models} <= set(sel["models"]):
        return None
    return recipe


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
    login: LoginThrottle | None = None,
) -> Any:
    """Start the server (offline: system fonts, no analytics, no server-side rendering).

    With ``auth``, logins go through a :class:`LoginThrottle` (``login`` to pass your own).
    """
    problem = listen_problem(host, share, auth)
    if problem is not None:
        raise SystemExit(f"fusion_ui: {problem}")
    if auth and login is None:
        user, password = auth.split(":", 1)
        login = LoginThrottle(user, password)
    app.queue(default_concurrency_limit=4)
    return app.launch(
        server_name=host, server_port=port, share=share, auth=login, inbrowser=inbrowser,
        prevent_thread_lock=not block, theme=fusion_theme(), css=css(), js=RESTORE_THEME_JS,
        ssr_mode=False, show_error=True, quiet=not block, footer_links=["api", "settings"],
    )
