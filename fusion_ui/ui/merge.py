"""Merge tab: controls generated from each method's parameter schema, an in-memory preview merge.

No method is named here: the controls are the union of every registered method's parameters
(one control per global parameter, one per fine-tune slot for per-model ones), shown, ranged
and labelled from the chosen method's schema. A new method in ``fusion_ui.methods`` gets its
sliders without UI code.

Every change of a control recomposes the recipe (checked by the engine; a problem shows in the
line under the buttons, not as a toast), refreshes the DARE preview and, with *live* on,
re-merges. **Merge** and **Stop** act on this session's jobs only; the status line always ends
in a final state (merged, stopped or failed).

A method that reads statistics of each model on data (its capabilities say which: Fisher
merging, RegMean) shows *Compute statistics*: one job of the engine's statistics facade
computes them for every fine-tune (or reuses earlier ones of the same model and data) and fills
the per-model folder boxes, so **Merge** just works.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from fusion_ui.app import OUTPUT_DTYPES, Engine, RecipeForm, compose, parse_recipe
from fusion_ui.app.recipe_form import form_of, globs
from fusion_ui.app.statistics import MAX_EXAMPLES, STATS_EXAMPLES, StatisticsResult
from fusion_ui.errors import FusionError
from fusion_ui.recipe import Recipe
from fusion_ui.runtime import JobState
from fusion_ui.ui.shared import (
    JOB_EVENT,
    MAX_MODELS,
    QUICK,
    Shared,
    failed_line,
    follow,
    follow_into,
    message_of,
    require_selection,
    running_line,
    session_of,
    stop_handler,
    stopped_line,
    user_errors,
)

DEFAULT_METHOD = "dare_ties"
BASE_DTYPE = "same as the base"
DTYPES = {BASE_DTYPE: "", **{d: d for d in OUTPUT_DTYPES}}  # label -> output dtype
NO_RAMP = "none"
NOT_MERGED = "Not merged yet. Set the sliders, then **Merge** (in memory; nothing is written)."
ALLOW_LARGE_LABEL = "merge even if a model does not look like a fine-tune of the base"
DEMO_DATA, FILE_DATA = "demo", "file"
DATA_CHOICES = [("the demo's skill examples (each expert on its own skill)", DEMO_DATA),
                ("a file: JSONL or CSV with prompt and answer columns", FILE_DATA)]
STATS_IDLE = ("Each fine-tune needs its statistics on a few examples: **Compute statistics** fills the "
              "folders above (statistics computed before for the same model and data are reused).")
STATS_STOPPED_NOTE = "Folders finished before the stop are kept; none is half-written."


def _params_union(schemas: dict[str, dict[str, Any]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """First-seen spec of every per-model and every global parameter name, over all methods."""
    per_model: dict[str, dict] = {}
    global_: dict[str, dict] = {}
    for schema in schemas.values():
        for p in schema["params"]:
            (per_model if p["per_model"] else global_).setdefault(p["name"], p)
    return per_model, global_


def _switch_on(schema: dict[str, Any], specs: dict[str, dict], values: dict[str, Any]) -> bool:
    """Whether the method's switched parameters act: its base switch is on (from a recipe's
    values, else the switch's default); True for a method with none."""
    if not schema["switched"]:
        return True
    value = values.get(schema["switch"])
    return bool(specs[schema["switch"]]["default"] if value is None else _first(value))


def _control(spec: dict[str, Any], *, elem_id: str) -> gr.components.Component:
    """An input for one parameter, from its kind (float/int slider, checkbox, dropdown)."""
    label, info = spec.get("label") or spec["name"], spec.get("help") or None
    if spec["kind"] == "bool":
        return gr.Checkbox(bool(spec["default"]), label=label, info=info, elem_id=elem_id)
    if spec["kind"] == "choice":
        return gr.Dropdown(list(spec["choices"]), value=spec["default"], label=label, info=info, elem_id=elem_id)
    if spec["kind"] == "path":  # a folder the method reads (data statistics)
        return gr.Textbox(str(spec["default"]), label=label, info=info, elem_id=elem_id, placeholder="folder")
    return gr.Slider(**_range(spec), label=label, info=info, elem_id=elem_id)


def _range(spec: dict[str, Any], value: Any = None) -> dict[str, Any]:
    """Slider ends from the spec: its slider range where it has one (the useful values), else
    the allowed range; widened to hold ``value`` (a recipe may give more than the slider shows)."""
    lo, hi = spec.get("slider_range") or (spec["minimum"], spec["maximum"])
    lo = lo if lo is not None else -10.0
    hi = hi if hi is not None else 10.0
    step = 1 if spec["kind"] == "int" else (spec.get("step") or 0.01)
    if hi == spec["maximum"] and not spec.get("max_inclusive", True):
        hi = hi - step  # sliders cannot express an open interval: stop one step short
    if lo == spec["minimum"] and not spec.get("min_inclusive", True):
        lo = lo + step
    value = spec["default"] if value is None else value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = min(lo, value), max(hi, value)
    return {"minimum": lo, "maximum": hi, "step": step, "value": value}


def _update(spec: dict[str, Any], *, visible: bool, value: Any = None) -> Any:
    """Re-label and re-range a control for the chosen method's spec of that parameter."""
    label, info = spec.get("label") or spec["name"], spec.get("help") or None
    value = spec["default"] if value is None else value
    if spec["kind"] == "bool":
        return gr.update(visible=visible, label=label, info=info, value=bool(value))
    if spec["kind"] == "choice":
        return gr.update(visible=visible, label=label, info=info, choices=list(spec["choices"]), value=value)
    if spec["kind"] == "path":
        return gr.update(visible=visible, label=label, info=info, value=str(value))
    return gr.update(visible=visible, label=label, info=info, **_range(spec, value))


@dataclass
class StatsSection:
    """*Compute statistics*, shown for methods that read statistics of each model on data."""

    box: gr.Group
    data: gr.Radio  # DEMO_DATA or FILE_DATA
    path: gr.Textbox  # the file, for FILE_DATA
    examples: gr.Number  # per model
    compute: gr.Button
    stop: gr.Button
    status: gr.Markdown


@dataclass
class MergeTab:
    """The tab's components, and the functions other tabs chain onto events."""

    method: gr.Dropdown
    about: gr.Markdown
    slots: list[gr.Group]
    names: list[gr.Markdown]
    use: list[gr.Checkbox]
    per_model: dict[str, list[Any]]  # parameter name -> one control per slot
    global_: dict[str, Any]  # parameter name -> control
    seed: gr.Number
    include: gr.Textbox
    exclude: gr.Textbox
    ramp_param: gr.Dropdown
    ramp_first: gr.Slider
    ramp_last: gr.Slider
    overrides: gr.Code
    dtype: gr.Dropdown
    as_written: gr.Checkbox
    allow_large: gr.Checkbox
    recipe: gr.Code
    note: gr.Markdown
    live: gr.Checkbox
    merge: gr.Button
    stop: gr.Button
    status: gr.Markdown
    preview_box: gr.Accordion
    preview_model: gr.Dropdown
    preview_plot: gr.Plot
    preview_text: gr.Markdown
    stats: StatsSection
    # Set by build(): compose(values) -> the Recipe the controls describe (raises on a problem);
    # apply(method, selection, recipe) -> {control: update}; refresh(values) -> updates of the
    # recipe box, its note and the DARE preview (other tabs chain them onto their events).
    compose: Callable[[dict[Any, Any]], Recipe] = field(repr=False, default=lambda _: None)  # type: ignore[assignment,return-value]
    apply: Callable[[str, dict | None, Any], dict[Any, Any]] = field(repr=False, default=lambda *_: {})
    refresh: Callable[..., Any] = field(repr=False, default=lambda *_: None)

    @property
    def form(self) -> set[Any]:
        """Every input the recipe is composed from."""
        comps: set[Any] = {self.method, self.seed, self.include, self.exclude, self.ramp_param,
                           self.ramp_first, self.ramp_last, self.overrides, self.dtype, self.as_written,
                           self.preview_model, self.recipe, self.live, self.allow_large}
        comps |= set(self.use) | set(self.global_.values())
        for controls in self.per_model.values():
            comps |= set(controls)
        return comps

    @property
    def controls(self) -> list[Any]:
        """Everything ``apply`` sets."""
        out: list[Any] = [self.method, self.about, self.preview_box, self.stats.box, self.stats.data, *self.slots,
                          *self.names, *self.use]
        for name in sorted(self.per_model):
            out += self.per_model[name]
        out += [self.global_[n] for n in sorted(self.global_)]
        out += [self.seed, self.include, self.exclude, self.ramp_param, self.ramp_first, self.ramp_last,
                self.overrides, self.dtype, self.as_written, self.preview_model]
        return out

    @property
    def preview_outputs(self) -> list[Any]:
        """What a refresh writes: the recipe, its note and the DARE preview."""
        return [self.recipe, self.note, self.preview_model, self.preview_plot, self.preview_text]


def build(shared: Shared) -> MergeTab:
    """The tab: its components, the handlers that read and write them, and the events between."""
    schemas = shared.engine.merges.method_schemas()
    tab = _layout(shared.engine, schemas)
    handlers = MergeHandlers(shared, tab, schemas)
    tab.compose, tab.apply, tab.refresh = handlers.compose_recipe, handlers.apply, handlers.refresh
    _wire(shared, tab, handlers)
    return tab


# -- the layout: one builder per part of the tab --------------------------------------------------


def _layout(engine: Engine, schemas: dict[str, dict[str, Any]]) -> MergeTab:
    per_model_specs, global_specs = _params_union(schemas)
    default = schemas[DEFAULT_METHOD] if DEFAULT_METHOD in schemas else next(iter(schemas.values()))
    shown = {p["name"] for p in default["params"]}
    method, about = _method_row(schemas, default)
    slots, names, use, per_model = _slot_cards(per_model_specs, shown)
    stats = _stats_section(engine.statistics.kind_of(default["name"]) is not None)
    global_, seed = _global_row(global_specs, shown, default)
    merge, stop, live, note, status, allow_large = _actions()
    preview_box, preview_model, preview_text, preview_plot = _preview_box(engine.merges.previewable(default["name"]))
    include, exclude, ramp_param, ramp_first, ramp_last, overrides, dtype, as_written, recipe = _advanced(
        {**per_model_specs, **global_specs})
    return MergeTab(
        method=method, about=about, slots=slots, names=names, use=use, per_model=per_model, global_=global_,
        seed=seed, include=include, exclude=exclude, ramp_param=ramp_param, ramp_first=ramp_first,
        ramp_last=ramp_last, overrides=overrides, dtype=dtype, as_written=as_written, allow_large=allow_large,
        recipe=recipe, note=note, live=live, merge=merge, stop=stop, status=status, preview_box=preview_box,
        preview_model=preview_model, preview_plot=preview_plot, preview_text=preview_text, stats=stats,
    )


def _method_row(schemas: dict[str, dict[str, Any]], default: dict[str, Any]) -> tuple[gr.Dropdown, gr.Markdown]:
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            method = gr.Dropdown([(f"{s['title']} ({n})", n) for n, s in schemas.items()], value=default["name"],
                                 label="Method", elem_id="method")
        with gr.Column(scale=5):
            about = gr.Markdown(_about(default), elem_classes="method-about")
    return method, about


def _slot_cards(specs: dict[str, dict], shown: set[str]) -> tuple[list, list, list, dict[str, list]]:
    """One card per fine-tune slot: its name, "use in the merge", a control per per-model parameter."""
    slots, names, use = [], [], []
    per_model: dict[str, list[Any]] = {n: [] for n in specs}
    with gr.Row(elem_classes="slots"):
        for i in range(MAX_MODELS):
            with gr.Group(visible=False, elem_classes="slot") as group:
                names.append(gr.Markdown(f"fine-tune {i + 1}", elem_classes="slot-name"))
                use.append(gr.Checkbox(True, label="use in the merge", elem_id=f"use-{i}"))
                for name, spec in specs.items():
                    ctl = _control(spec, elem_id=f"{name}-{i}")
                    ctl.visible = name in shown
                    per_model[name].append(ctl)
            slots.append(group)
    return slots, names, use, per_model


def _stats_section(visible: bool) -> StatsSection:
    with gr.Group(visible=visible, elem_id="stats-section", elem_classes="stats-section") as box:
        gr.Markdown("**Compute statistics** of every fine-tune on a data set (the method weighs each model by them)")
        with gr.Row(equal_height=False):
            data = gr.Radio(DATA_CHOICES, value=DEMO_DATA, label="Data", elem_id="stats-data", scale=3)
            path = gr.Textbox(label="data file (for “a file”)", placeholder="/path/to/examples.jsonl",
                              elem_id="stats-path", scale=3,
                              info="Rows of prompt and answer; the answer tokens are scored (Fisher).")
            examples = gr.Number(STATS_EXAMPLES, label="examples per model", precision=0, minimum=1,
                                 maximum=MAX_EXAMPLES, elem_id="stats-examples", scale=1,
                                 info="The first N rows (a few hundred is plenty).")
        with gr.Row():
            compute = gr.Button("Compute statistics", variant="secondary", elem_id="stats-compute", scale=3)
            stop = gr.Button("Stop", variant="stop", elem_id="stats-stop", scale=1)
        status = gr.Markdown(STATS_IDLE, elem_id="stats-status", elem_classes="status")
    return StatsSection(box, data, path, examples, compute, stop, status)


def _global_row(specs: dict[str, dict], shown: set[str], default: dict[str, Any]) -> tuple[dict[str, Any], gr.Number]:
    global_: dict[str, Any] = {}
    with gr.Row(elem_classes="globals"):
        for name, spec in specs.items():
            global_[name] = _control(spec, elem_id=f"param-{name}")
            global_[name].visible = name in shown
        seed = gr.Number(0, label="seed", precision=0, minimum=0, visible=default["uses_seed"],
                         info="Same seed, same random drops: merges are reproducible.", elem_id="seed")
    return global_, seed


def _actions() -> tuple[gr.Button, gr.Button, gr.Checkbox, gr.Markdown, gr.Markdown, gr.Checkbox]:
    with gr.Row():
        merge = gr.Button("Merge", variant="primary", elem_id="merge-button", scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=1)
        live = gr.Checkbox(False, label="live: re-merge when a slider is released (small models only)",
                           elem_id="live", scale=3)
    note = gr.Markdown("", elem_id="recipe-note", elem_classes="recipe-note")
    status = gr.Markdown(NOT_MERGED, elem_id="merge-status", elem_classes="status")
    allow_large = gr.Checkbox(
        False, label=ALLOW_LARGE_LABEL, elem_id="allow-large-deltas",
        info="Only if you know these models share this base: merging a model that is not a fine-tune "
             "of it gives weights that produce noise. Applies to Merge and Export.",
    )
    return merge, stop, live, note, status, allow_large


def _preview_box(visible: bool) -> tuple[gr.Accordion, gr.Dropdown, gr.Markdown, gr.Plot]:
    with gr.Accordion("DARE preview: what the drop does to one tensor's deltas", open=True,
                      visible=visible) as box:
        with gr.Row():
            model = gr.Dropdown([], label="Fine-tune", scale=1, elem_id="preview-model")
            text = gr.Markdown(elem_classes="preview-text", elem_id="preview-text")
        plot = gr.Plot(label="|δ| before and after drop-and-rescale", show_label=False, elem_id="dare-preview")
    return box, model, text, plot


def _advanced(specs: dict[str, dict]) -> tuple[Any, ...]:
    """include, exclude, ramp parameter, ramp first, ramp last, overrides, dtype, as written, recipe box."""
    with gr.Accordion("Advanced: layer ramps, include/exclude, overrides, dtype, the recipe", open=False):
        with gr.Row():
            include = gr.Textbox(label="Merge only tensors matching (globs, comma separated)",
                                 placeholder="*.mlp.*, *.self_attn.*", elem_id="include")
            exclude = gr.Textbox(label="Keep from the base (globs)",
                                 placeholder="*embed_tokens*, lm_head.*, *norm*", elem_id="exclude")
        with gr.Row():
            floats = sorted(n for n, s in specs.items() if s["kind"] == "float")
            ramp_param = gr.Dropdown([NO_RAMP, *floats], value=NO_RAMP, label="Ramp a parameter across layers",
                                     info="Linear from the first layer to the last (for every fine-tune).")
            ramp_first = gr.Slider(-10, 10, value=0.9, step=0.01, label="value at the first layer")
            ramp_last = gr.Slider(-10, 10, value=0.9, step=0.01, label="value at the last layer")
        with gr.Row():
            overrides = gr.Code("", language="yaml", label="Overrides (YAML list)", lines=3, elem_id="overrides")
            dtype = gr.Dropdown(list(DTYPES), value=BASE_DTYPE, label="Output dtype")
        as_written = gr.Checkbox(False, label="Merge the recipe below as written (ignore the controls above)",
                                 elem_id="as-written")
        recipe = gr.Code("", language="yaml", label="Recipe (what Merge and Export use)", lines=12,
                         interactive=True, elem_id="recipe")
    return include, exclude, ramp_param, ramp_first, ramp_last, overrides, dtype, as_written, recipe


# -- the handlers ----------------------------------------------------------------------------------


class MergeHandlers:
    """What the tab's events do: compose the recipe, preview, merge, stop, show a method or a recipe."""

    def __init__(self, shared: Shared, tab: MergeTab, schemas: dict[str, dict[str, Any]]) -> None:
        self.shared, self.tab, self.schemas = shared, tab, schemas
        self.merges = shared.engine.merges
        self.per_model_specs, self.global_specs = _params_union(schemas)

    def compose_recipe(self, values: dict[Any, Any]) -> Recipe:
        """The recipe the controls describe (or the recipe box, as written), validated once."""
        t = self.tab
        if values[t.as_written]:
            return parse_recipe(values[t.recipe] or "")
        sel = require_selection(values[self.shared.selection])
        n = min(len(sel["models"]), MAX_MODELS)
        ramp = (values[t.ramp_param], float(values[t.ramp_first]), float(values[t.ramp_last])) \
            if values[t.ramp_param] != NO_RAMP else None
        return compose(RecipeForm(
            method=values[t.method], base=sel["base"], models=sel["models"][:n],
            use=[bool(values[t.use[i]]) for i in range(n)],
            per_model={name: [values[ctl] for ctl in ctls[:n]] for name, ctls in t.per_model.items()},
            globals={name: values[ctl] for name, ctl in t.global_.items()},
            seed=values[t.seed], include=globs(values[t.include]), exclude=globs(values[t.exclude]), ramp=ramp,
            overrides=values[t.overrides] or "", dtype=DTYPES.get(values[t.dtype]) or None,
        ))

    def quiet(self, values: dict[Any, Any]) -> tuple[Recipe | None, str]:
        """The recipe and its note; a problem goes into the note, never a toast."""
        if not values[self.shared.selection] and not values[self.tab.as_written]:
            return None, ""
        try:
            composed = self.compose_recipe(values)
        except (FusionError, gr.Error) as exc:
            return None, f'<span class="bad-dot"></span> {html.escape(message_of(exc))}'
        return composed, _note(composed)

    def preview_label(self, values: dict[Any, Any], slot: int | None) -> str | None:
        labels = (values[self.shared.selection] or {}).get("labels", [])
        if slot is not None and slot < len(labels):
            return labels[slot]
        chosen = values[self.tab.preview_model]
        return chosen if chosen in labels else next(iter(labels), None)

    def refresh(self, values: dict[Any, Any], request: gr.Request, slot: int | None = None,
                merge_live: bool = True) -> Iterator[dict[Any, Any]]:
        """Recompose; then the DARE preview and (live) a re-merge, as this session's jobs."""
        t, merges = self.tab, self.merges
        composed, note_text = self.quiet(values)
        out: dict[Any, Any] = {t.note: note_text}
        if composed is None:
            yield out
            return
        if not values[t.as_written]:
            out[t.recipe] = composed.to_yaml()
        session = session_of(request)
        sel = values[self.shared.selection]
        label = self.preview_label(values, slot)
        show = merges.previewable(composed.method) and label is not None
        preview_job = merges.start_dare_preview(session, composed, label, sel=sel) if show else None
        merge_job = None
        if merge_live and values[t.live] and sel and self.shared.engine.context.live_ok(sel):
            merge_job = merges.start(session, composed, allow_large_deltas=bool(values[t.allow_large]),
                                     record=False, live=True)
        elif merge_live and values[t.live] and sel:
            out[t.status] = "Live merging is off for models this large: click **Merge**."
        if preview_job is not None:
            for view in follow(preview_job):
                if view.state is JobState.FINISHED:
                    fig, words = preview_job.result
                    out |= {t.preview_model: gr.update(value=label), t.preview_text: words, t.preview_plot: fig}
                elif view.state is JobState.FAILED:
                    out[t.preview_text] = failed_line(message_of(view.error))
        yield out
        if merge_job is not None:
            yield from self.follow_merge(merge_job, live=True)

    def follow_merge(self, job: Any, *, live: bool) -> Iterator[dict[Any, Any]]:
        status, merged = self.tab.status, self.shared.merged
        verb = "re-merging" if live else "merging"
        for view in follow(job):
            if not view.state.final:
                yield {status: running_line(view, verb)}
            elif view.state is JobState.FINISHED:
                result = job.result
                yield {status: _status(result, job.id, live=live), merged: result.merged}
            elif view.state is JobState.CANCELLED:
                if not _superseded(self.shared.engine, job):  # a newer merge writes the status itself
                    yield {status: stopped_line(view, "merge") + " The preview holds no merge until you merge "
                           "again.", merged: None}
            else:
                yield {status: failed_line(message_of(view.error)), merged: None}
                if not live:
                    raise gr.Error(message_of(view.error), title="Cannot do that yet")

    @user_errors
    def run_merge(self, values: dict[Any, Any], request: gr.Request) -> Iterator[dict[Any, Any]]:
        """Merge into this session's preview model (memory only)."""
        t = self.tab
        try:
            composed = self.compose_recipe(values)
        except (FusionError, gr.Error) as exc:
            yield {t.status: failed_line(message_of(exc)), t.note: ""}
            raise
        yield {t.recipe: composed.to_yaml(), t.note: _note(composed),
               t.status: '<span class="busy-dot"></span> Starting the merge…'}
        job = self.merges.start(session_of(request), composed, allow_large_deltas=bool(values[t.allow_large]))
        yield from self.follow_merge(job, live=False)


    @user_errors
    def compute_statistics(self, method: str, data: str, path: str, examples: Any, selection: dict | None,
                           request: gr.Request) -> Iterator[dict[Any, Any]]:
        """Statistics of every fine-tune of the selection for ``method``, into their folder boxes."""
        sel = require_selection(selection)
        models = sel["models"][:MAX_MODELS]
        st = self.tab.stats
        job = self.shared.engine.statistics.start(session_of(request), method, models,
                                                  data=None if data == DEMO_DATA else path, examples=examples)

        def done(result: StatisticsResult, view: Any) -> dict[Any, Any]:
            out: dict[Any, Any] = {st.status: f'<span class="ok-dot"></span> {html.escape(result.summary())}: '
                                              "the folders are filled in; **Merge** reads them."}
            folders = result.folders()
            for i, ref in enumerate(models):
                if ref in folders:
                    out[self.tab.per_model[result.kind][i]] = folders[ref]
            return out

        yield from follow_into(job, st.status, "computing statistics", done, noun="statistics pass",
                               stopped_note=STATS_STOPPED_NOTE)

    @user_errors
    def choose_method(self, name: str, selection: dict | None) -> dict[Any, Any]:
        return self.apply(name, selection, None, keep_ticks=True)

    def apply(self, name: str, selection: dict | None, recipe_obj: Recipe | None, *,
              keep_ticks: bool = False) -> dict[Any, Any]:
        """Updates of every control for a method, a selection and optionally a recipe's values
        (read by the engine's :func:`~fusion_ui.app.recipe_form.form_of`).

        ``keep_ticks`` leaves the "use in the merge" boxes as the user set them (a new method);
        a new selection or a recipe sets them.
        """
        t = self.tab
        schema = self.schemas[name]
        specs = {p["name"]: p for p in schema["params"]}
        labels = (selection or {}).get("labels", [])
        refs = (selection or {}).get("models", [])[:MAX_MODELS]
        form, exact = form_of(recipe_obj, refs) if recipe_obj is not None else (None, True)
        statistics = self.shared.engine.statistics
        switched = set(schema["switched"])
        on = _switch_on(schema, specs, form.globals if form is not None else {})
        out: dict[Any, Any] = {t.method: gr.update(value=name), t.about: _about(schema),
                               t.preview_box: gr.update(visible=self.merges.previewable(name) and on),
                               t.stats.box: gr.update(visible=statistics.kind_of(name) is not None)}
        if keep_ticks:
            out[t.stats.data] = gr.skip()
        else:  # a new selection: the demo's examples when every fine-tune is a demo expert
            out[t.stats.data] = DEMO_DATA if statistics.demo_data_fits(refs) else FILE_DATA
        for i in range(MAX_MODELS):
            out[t.slots[i]] = gr.update(visible=i < len(labels))
            out[t.names[i]] = f"**{labels[i]}**" if i < len(labels) else ""
            if keep_ticks:
                out[t.use[i]] = gr.skip()
            else:
                out[t.use[i]] = gr.update(value=form is None or (i < len(form.use) and form.use[i]))
        for pname in sorted(self.per_model_specs):
            spec = specs.get(pname, self.per_model_specs[pname])
            values = form.per_model.get(pname, []) if form is not None else []
            for i in range(MAX_MODELS):
                value = values[i] if i < len(values) else None
                out[t.per_model[pname][i]] = _update(spec, visible=pname in specs and (on or pname not in switched),
                                                     value=_first(value))
        for gname in sorted(self.global_specs):
            spec = specs.get(gname, self.global_specs[gname])
            value = form.globals.get(gname) if form is not None else None
            out[t.global_[gname]] = _update(spec, visible=gname in specs and (on or gname not in switched),
                                            value=_first(value))
        out[t.seed] = gr.update(visible=schema["uses_seed"] and on, value=form.seed if form is not None else 0)
        if form is not None:
            ramp_name, first, last = form.ramp if form.ramp is not None else (NO_RAMP, 0.9, 0.9)
            dtype_label = next((k for k, v in DTYPES.items() if v == (form.dtype or "")), BASE_DTYPE)
            out |= {t.include: ", ".join(form.include), t.exclude: ", ".join(form.exclude), t.ramp_param: ramp_name,
                    t.ramp_first: first, t.ramp_last: last, t.overrides: form.overrides, t.dtype: dtype_label,
                    t.as_written: not exact}
        out[t.preview_model] = gr.update(choices=labels, value=labels[0] if labels else None)
        return out

    @user_errors
    def toggle_switch(self, name: str, on: bool) -> dict[Any, Any]:
        """Show the controls that act only while the method's switch is on (DARE's drop rate,
        rescale, seed and preview in front of Fisher / RegMean), hide them while it is off."""
        t, schema = self.tab, self.schemas[name]
        out: dict[Any, Any] = {}
        for pname in schema["switched"]:
            for ctl in [*t.per_model.get(pname, []), *([t.global_[pname]] if pname in t.global_ else [])]:
                out[ctl] = gr.update(visible=bool(on))
        if schema["switched"]:
            out[t.seed] = gr.update(visible=schema["uses_seed"] and bool(on))
            out[t.preview_box] = gr.update(visible=self.merges.previewable(name) and bool(on))
        return out

    def on_slot(self, i: int | None, *, merge_live: bool = True) -> Callable[..., Iterator[dict[Any, Any]]]:
        """The handler of a control of slot ``i`` (None: a global control): refresh, previewing that slot."""
        def handler(values: dict[Any, Any], request: gr.Request) -> Iterator[dict[Any, Any]]:
            yield from self.refresh(values, request, slot=i, merge_live=merge_live)

        return handler


# -- the events ------------------------------------------------------------------------------------


def _wire(shared: Shared, t: MergeTab, h: MergeHandlers) -> None:
    form = t.form | {shared.selection}
    hidden: dict[str, Any] = {"api_visibility": "undocumented"}
    refresh_outputs = [*t.preview_outputs, t.status, shared.merged]

    t.method.input(h.choose_method, [t.method, shared.selection], t.controls, api_name="choose_method", **QUICK) \
        .then(h.on_slot(None, merge_live=False), form, refresh_outputs, api_name="refresh_after_method",
              **hidden, **JOB_EVENT)
    # The button reads the whole form; scripts use /merge_recipe (fusion_ui.ui.api) instead.
    merging = t.merge.click(h.run_merge, form, [t.recipe, t.note, t.status, shared.merged], api_name="merge",
                            **hidden, **JOB_EVENT)
    t.stop.click(stop_handler(shared.engine), None, t.status, api_name="stop", queue=False, cancels=[merging])
    t.preview_model.input(h.on_slot(None, merge_live=False), form, refresh_outputs, api_name="dare_preview",
                          **JOB_EVENT)
    for i in range(MAX_MODELS):
        for ctl in [c[i] for c in t.per_model.values() if isinstance(c[i], gr.Slider)]:
            ctl.release(h.on_slot(i), form, refresh_outputs, api_name=f"release_slot_{i}", **hidden, **JOB_EVENT)
        for ctl in [t.use[i], *(c[i] for c in t.per_model.values() if not isinstance(c[i], gr.Slider))]:
            ctl.input(h.on_slot(i), form, refresh_outputs, api_name=f"change_slot_{i}", **hidden, **JOB_EVENT)
    for ctl in [*(c for c in t.global_.values() if isinstance(c, gr.Slider)), t.ramp_first, t.ramp_last]:
        ctl.release(h.on_slot(None), form, refresh_outputs, api_name="release_global", **hidden, **JOB_EVENT)
    for ctl in [*(c for c in t.global_.values() if not isinstance(c, gr.Slider)), t.seed, t.include, t.exclude,
                t.dtype, t.ramp_param, t.as_written, t.overrides]:
        ctl.input(h.on_slot(None), form, refresh_outputs, api_name="change_global", **hidden, **JOB_EVENT)
    t.recipe.input(h.on_slot(None), form, refresh_outputs, api_name="edit_recipe", **hidden, **JOB_EVENT)
    switched = sorted({p for schema in h.schemas.values() for p in schema["switched"]})
    gated = [*(c for p in switched for c in t.per_model.get(p, [])),
             *(t.global_[p] for p in switched if p in t.global_), t.seed, t.preview_box]
    for switch in sorted({s["switch"] for s in h.schemas.values() if s["switched"]}):
        t.global_[switch].input(h.toggle_switch, [t.method, t.global_[switch]], gated, api_name="toggle_switch",
                                **hidden, **QUICK)

    st = t.stats
    folder_boxes = [box for name in sorted(t.per_model) for box in t.per_model[name]
                    if h.per_model_specs[name]["kind"] == "path"]
    computing = st.compute.click(h.compute_statistics, [t.method, st.data, st.path, st.examples, shared.selection],
                                 [st.status, *folder_boxes], api_name="compute_statistics", **JOB_EVENT)
    computing.success(h.on_slot(None, merge_live=False), form, refresh_outputs, api_name="refresh_after_statistics",
                      **hidden, **JOB_EVENT)
    st.stop.click(stop_handler(shared.engine, note=STATS_STOPPED_NOTE), None, st.status, api_name="stop_statistics",
                  queue=False, cancels=[computing])


def _superseded(engine: Engine, job: Any) -> bool:
    """Whether a cancelled merge was replaced by a newer one of the same session."""
    return any(j.kind == "merge" and j.id > job.id for j in engine.jobs.jobs(job.session))


def _about(schema: dict[str, Any]) -> str:
    caps = schema["capabilities"]
    needs = {"required": "needs the base", "unused": "no base used",
             "optional": f"base used with {caps['base_switch']}"}[caps["base"]]
    count = f"{schema['min_models']}" + (f"–{schema['max_models']}" if schema["max_models"] else "+")
    ref = f" · {schema['reference']}" if schema.get("reference") else ""
    return f"**{schema['title']}** — {schema['summary']}  \n<small>{needs} · {count} fine-tunes{ref}</small>"


def _note(recipe: Any) -> str:
    n = len(recipe.models)
    return (f'<span class="ok-dot"></span> Recipe ready: <code>{recipe.method}</code> of {n} '
            f"fine-tune{'s' if n != 1 else ''}, seed {recipe.seed}.")


def _first(value: Any) -> Any:
    """A control's value: a ramp shows its first anchor (the ramp controls show the rest)."""
    return value[0] if isinstance(value, list) else value


def _status(result: Any, number: int, *, live: bool = False) -> str:
    warn = "".join(f"\n- ⚠ {html.escape(w)}" for w in result.warnings[:6])
    how = "Live re-merge" if live else "Merged"
    return (f'<span class="ok-dot"></span> **{how}** (#{number}): {result.tensors} tensors in '
            f"{result.seconds:.2f} s, in memory. The **Compare** tab now has a *merge* column.{warn}")
