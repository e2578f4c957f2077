"""Merge tab: controls generated from each method's parameter schema, an in-memory preview merge.

No method is named here: the controls are the union of every registered method's parameters
(one control per global parameter, one per fine-tune slot for per-model ones), shown, ranged
and labelled from the chosen method's schema. A new method in ``fusion_ui.methods`` gets its
sliders without UI code.

Every change of a control recomposes the recipe (checked by the engine; a problem shows in the
line under the buttons, not as a toast), refreshes the DARE preview and, with *live* on,
re-merges. **Merge** and **Stop** act on this session's jobs only; the status line always ends
in a final state (merged, stopped or failed).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import yaml

from fusion_ui.engine import Engine
from fusion_ui.errors import FusionError
from fusion_ui.runtime import JobState
from fusion_ui.ui.shared import (
    JOB_EVENT,
    MAX_MODELS,
    QUICK,
    Shared,
    failed_line,
    follow,
    message_of,
    require_selection,
    running_line,
    session_of,
    stop_line,
    stopped_line,
    user_errors,
)

DEFAULT_METHOD = "dare_ties"
DTYPES = {"same as the base": "", "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
NO_RAMP = "none"
NOT_MERGED = "Not merged yet. Set the sliders, then **Merge** (in memory; nothing is written)."
ALLOW_LARGE_LABEL = "merge even if a model does not look like a fine-tune of the base"


def _params_union(schemas: dict[str, dict[str, Any]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """First-seen spec of every per-model and every global parameter name, over all methods."""
    per_model: dict[str, dict] = {}
    global_: dict[str, dict] = {}
    for schema in schemas.values():
        for p in schema["params"]:
            (per_model if p["per_model"] else global_).setdefault(p["name"], p)
    return per_model, global_


def _control(spec: dict[str, Any], *, elem_id: str) -> gr.components.Component:
    """An input for one parameter, from its kind (float/int slider, checkbox, dropdown)."""
    label, info = spec.get("label") or spec["name"], spec.get("help") or None
    if spec["kind"] == "bool":
        return gr.Checkbox(bool(spec["default"]), label=label, info=info, elem_id=elem_id)
    if spec["kind"] == "choice":
        return gr.Dropdown(list(spec["choices"]), value=spec["default"], label=label, info=info, elem_id=elem_id)
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
    return gr.update(visible=visible, label=label, info=info, **_range(spec, value))


def _globs(text: str) -> list[str]:
    return [g.strip() for g in text.replace(",", "\n").splitlines() if g.strip()]


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
    # Set by build(): compose(values) -> recipe YAML (raises on a problem); apply(method,
    # selection, recipe) -> {control: update}; refresh(values) -> updates of the recipe, its
    # note and the DARE preview (other tabs chain them onto their events).
    compose: Callable[[dict[Any, Any]], str] = field(repr=False, default=lambda _: "")
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
        out: list[Any] = [self.method, self.about, self.preview_box, *self.slots, *self.names, *self.use]
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
    engine: Engine = shared.engine
    schemas = engine.method_schemas()
    per_model_specs, global_specs = _params_union(schemas)
    default = schemas[DEFAULT_METHOD] if DEFAULT_METHOD in schemas else next(iter(schemas.values()))
    default_names = {p["name"] for p in default["params"]}

    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            method = gr.Dropdown(
                [(f"{s['title']} ({n})", n) for n, s in schemas.items()], value=default["name"],
                label="Method", elem_id="method",
            )
        with gr.Column(scale=5):
            about = gr.Markdown(_about(default), elem_classes="method-about")

    slots, names, use = [], [], []
    per_model: dict[str, list[Any]] = {n: [] for n in per_model_specs}
    with gr.Row(elem_classes="slots"):
        for i in range(MAX_MODELS):
            with gr.Group(visible=False, elem_classes="slot") as group:
                names.append(gr.Markdown(f"fine-tune {i + 1}", elem_classes="slot-name"))
                use.append(gr.Checkbox(True, label="use in the merge", elem_id=f"use-{i}"))
                for name, spec in per_model_specs.items():
                    ctl = _control(spec, elem_id=f"{name}-{i}")
                    ctl.visible = name in default_names
                    per_model[name].append(ctl)
            slots.append(group)
    global_: dict[str, Any] = {}
    with gr.Row(elem_classes="globals"):
        for name, spec in global_specs.items():
            global_[name] = _control(spec, elem_id=f"param-{name}")
            global_[name].visible = name in default_names
        seed = gr.Number(0, label="seed", precision=0, minimum=0, visible=default["uses_seed"],
                         info="Same seed, same random drops: merges are reproducible.", elem_id="seed")

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

    with gr.Accordion("DARE preview: what the drop does to one tensor's deltas", open=True,
                      visible=engine.previewable(default["name"])) as preview_box:
        with gr.Row():
            preview_model = gr.Dropdown([], label="Fine-tune", scale=1, elem_id="preview-model")
            preview_text = gr.Markdown(elem_classes="preview-text", elem_id="preview-text")
        preview_plot = gr.Plot(label="|δ| before and after drop-and-rescale", show_label=False, elem_id="dare-preview")

    with gr.Accordion("Advanced: layer ramps, include/exclude, overrides, dtype, the recipe", open=False):
        with gr.Row():
            include = gr.Textbox(label="Merge only tensors matching (globs, comma separated)",
                                 placeholder="*.mlp.*, *.self_attn.*", elem_id="include")
            exclude = gr.Textbox(label="Keep from the base (globs)",
                                 placeholder="*embed_tokens*, lm_head.*, *norm*", elem_id="exclude")
        with gr.Row():
            floats = sorted(n for n, s in {**per_model_specs, **global_specs}.items() if s["kind"] == "float")
            ramp_param = gr.Dropdown([NO_RAMP, *floats], value=NO_RAMP, label="Ramp a parameter across layers",
                                     info="Linear from the first layer to the last (for every fine-tune).")
            ramp_first = gr.Slider(-10, 10, value=0.9, step=0.01, label="value at the first layer")
            ramp_last = gr.Slider(-10, 10, value=0.9, step=0.01, label="value at the last layer")
        with gr.Row():
            overrides = gr.Code("", language="yaml", label="Overrides (YAML list)", lines=3,
                                elem_id="overrides")
            dtype = gr.Dropdown(list(DTYPES), value="same as the base", label="Output dtype")
        as_written = gr.Checkbox(False, label="Merge the recipe below as written (ignore the controls above)",
                                 elem_id="as-written")
        recipe = gr.Code("", language="yaml", label="Recipe (what Merge and Export use)", lines=12,
                         interactive=True, elem_id="recipe")

    tab = MergeTab(method, about, slots, names, use, per_model, global_, seed, include, exclude, ramp_param,
                   ramp_first, ramp_last, overrides, dtype, as_written, allow_large, recipe, note, live, merge,
                   stop, status, preview_box, preview_model, preview_plot, preview_text)

    # -- composing the recipe ------------------------------------------------------------------

    def compose(values: dict[Any, Any]) -> str:
        """The recipe YAML from the controls, checked by the engine (raises on a problem)."""
        if values[as_written]:
            return engine.parse_recipe(values[recipe] or "").to_yaml()
        sel = require_selection(values[shared.selection])
        schema = schemas[values[method]]
        specs = {p["name"]: p for p in schema["params"]}
        ramp = values[ramp_param] if values[ramp_param] in specs else None
        ramp_values = [float(values[ramp_first]), float(values[ramp_last])]
        models = []
        for i, ref in enumerate(sel["models"][:MAX_MODELS]):
            if not values[use[i]]:
                continue
            entry: dict[str, Any] = {"model": ref}
            for name, spec in specs.items():
                if spec["per_model"]:
                    entry[name] = ramp_values if name == ramp else _plain(values[per_model[name][i]], spec)
            models.append(entry)
        if not models:
            raise gr.Error("Tick “use in the merge” for at least one fine-tune.")
        parameters = {n: _plain(values[global_[n]], s) for n, s in specs.items() if not s["per_model"]}
        if ramp and not specs[ramp]["per_model"]:
            parameters[ramp] = ramp_values
        try:
            extra = yaml.safe_load(values[overrides] or "") or []
        except yaml.YAMLError as exc:
            raise gr.Error(f"The overrides are not valid YAML: {exc}") from None
        data: dict[str, Any] = {
            "method": values[method],
            "base": sel["base"],
            "models": models,
            "parameters": parameters,
            "seed": _seed(values[seed]),
            "include": _globs(values[include] or ""),
            "exclude": _globs(values[exclude] or ""),
            "overrides": extra,
        }
        if DTYPES.get(values[dtype]):
            data["dtype"] = DTYPES[values[dtype]]
        return engine.parse_recipe(yaml.safe_dump(data, sort_keys=False)).to_yaml()

    tab.compose = compose

    def quiet(values: dict[Any, Any]) -> tuple[str | None, str]:
        """The recipe and its note; a problem goes into the note, never a toast."""
        if not values[shared.selection] and not values[as_written]:
            return None, ""
        try:
            text = compose(values)
        except (FusionError, gr.Error) as exc:
            return None, f'<span class="bad-dot"></span> {html.escape(message_of(exc))}'
        return text, _note(engine.parse_recipe(text))

    def preview_label(values: dict[Any, Any], slot: int | None) -> str | None:
        labels = (values[shared.selection] or {}).get("labels", [])
        if slot is not None and slot < len(labels):
            return labels[slot]
        chosen = values[preview_model]
        return chosen if chosen in labels else next(iter(labels), None)

    def refresh(values: dict[Any, Any], request: gr.Request, slot: int | None = None,
                merge_live: bool = True) -> Iterator[dict[Any, Any]]:
        """Recompose; then the DARE preview and (live) a re-merge, as this session's jobs."""
        text, note_text = quiet(values)
        out: dict[Any, Any] = {note: note_text}
        if text is None:
            yield out
            return
        out[recipe] = text
        session = session_of(request)
        sel = values[shared.selection]
        label = preview_label(values, slot)
        show = engine.previewable(engine.parse_recipe(text).method) and label is not None
        preview_job = engine.start_dare_preview(session, text, label, sel=sel) if show else None
        merge_job = None
        if merge_live and values[live] and sel and engine.live_ok(sel):
            merge_job = engine.start_merge(session, text, allow_large_deltas=bool(values[allow_large]),
                                           record=False, live=True)
        elif merge_live and values[live] and sel:
            out[status] = "Live merging is off for models this large: click **Merge**."
        if preview_job is not None:
            for view in follow(preview_job):
                if view.state.final:
                    if view.state is JobState.FINISHED:
                        fig, words = preview_job.result
                        out |= {preview_model: gr.update(value=label), preview_text: words, preview_plot: fig}
                    elif view.state is JobState.FAILED:
                        out[preview_text] = failed_line(message_of(view.error))
        yield out
        if merge_job is not None:
            yield from _follow_merge(merge_job, live=True)

    tab.refresh = refresh

    # -- merging and stopping ------------------------------------------------------------------

    def _follow_merge(job: Any, *, live: bool) -> Iterator[dict[Any, Any]]:
        verb = "re-merging" if live else "merging"
        for view in follow(job):
            if not view.state.final:
                yield {status: running_line(view, verb)}
                continue
            if view.state is JobState.FINISHED:
                result = job.result
                yield {status: _status(result, job.id, live=live), shared.merged: result.merged}
            elif view.state is JobState.CANCELLED:
                if not _superseded(engine, job):  # a newer merge writes the status itself
                    yield {status: stopped_line(view, "merge") + " The preview holds no merge until you merge "
                           "again.", shared.merged: None}
            else:
                yield {status: failed_line(message_of(view.error)), shared.merged: None}
                if not live:
                    raise gr.Error(message_of(view.error), title="Cannot do that yet")

    @user_errors
    def run_merge(values: dict[Any, Any], request: gr.Request) -> Iterator[dict[Any, Any]]:
        """Merge into this session's preview model (memory only)."""
        try:
            text = compose(values)
        except (FusionError, gr.Error) as exc:
            yield {status: failed_line(message_of(exc)), note: ""}
            raise
        yield {recipe: text, note: _note(engine.parse_recipe(text)),
               status: '<span class="busy-dot"></span> Starting the merge…'}
        job = engine.start_merge(session_of(request), text, allow_large_deltas=bool(values[allow_large]))
        yield from _follow_merge(job, live=False)

    def stop_work(request: gr.Request) -> str:
        session = session_of(request)
        return stop_line(engine.stop(session), engine.last_job(session))

    @user_errors
    def choose_method(name: str, selection: dict | None) -> dict[Any, Any]:
        return apply(name, selection, None, keep_ticks=True)

    def apply(name: str, selection: dict | None, recipe_obj: Any, *, keep_ticks: bool = False) -> dict[Any, Any]:
        """Updates of every control for a method, a selection and optionally a recipe's values.

        ``keep_ticks`` leaves the "use in the merge" boxes as the user set them (a new method);
        a new selection or a recipe sets them.
        """
        schema = schemas[name]
        specs = {p["name"]: p for p in schema["params"]}
        labels = (selection or {}).get("labels", [])
        refs = (selection or {}).get("models", [])
        entries = recipe_obj.models if recipe_obj is not None else []
        rparams = dict(recipe_obj.parameters) if recipe_obj is not None else {}
        ramp_name, ramp_vals = NO_RAMP, None
        out: dict[Any, Any] = {method: gr.update(value=name), about: _about(schema),
                               preview_box: gr.update(visible=engine.previewable(name))}
        used = {e.model for e in entries}
        by_ref = {e.model: dict(e.parameters) for e in entries}
        for i in range(MAX_MODELS):
            out[slots[i]] = gr.update(visible=i < len(labels))
            out[names[i]] = f"**{labels[i]}**" if i < len(labels) else ""
            out[use[i]] = gr.skip() if keep_ticks else gr.update(
                value=(not entries) or (i < len(refs) and refs[i] in used))
        for pname in sorted(per_model_specs):
            spec = specs.get(pname, per_model_specs[pname])
            for i in range(MAX_MODELS):
                value = None
                mine = by_ref.get(refs[i]) if i < len(refs) else None
                if mine is not None:
                    value = _from_recipe(pname, mine, rparams)
                    if isinstance(value, list):
                        ramp_name, ramp_vals, value = pname, value, value[0]
                out[per_model[pname][i]] = _update(spec, visible=pname in specs, value=value)
        for gname in sorted(global_specs):
            spec = specs.get(gname, global_specs[gname])
            value = rparams.get(gname)
            if isinstance(value, list):
                ramp_name, ramp_vals, value = gname, value, value[0]
            out[global_[gname]] = _update(spec, visible=gname in specs, value=value)
        out[seed] = gr.update(visible=schema["uses_seed"], value=recipe_obj.seed if recipe_obj is not None else 0)
        if recipe_obj is not None:
            overrides_yaml = yaml.safe_dump([o.model_dump(exclude_defaults=True) for o in recipe_obj.overrides],
                                            sort_keys=False) if recipe_obj.overrides else ""
            dtype_label = next((k for k, v in DTYPES.items() if v == (recipe_obj.dtype or "")), "same as the base")
            complex_ramp = ramp_vals is not None and len(ramp_vals) != 2
            out |= {include: ", ".join(recipe_obj.include), exclude: ", ".join(recipe_obj.exclude),
                    ramp_param: ramp_name, ramp_first: ramp_vals[0] if ramp_vals else 0.9,
                    ramp_last: ramp_vals[-1] if ramp_vals else 0.9, overrides: overrides_yaml,
                    dtype: dtype_label, as_written: complex_ramp}
        current = labels[0] if labels else None
        out[preview_model] = gr.update(choices=labels, value=current)
        return out

    tab.apply = apply

    # -- events --------------------------------------------------------------------------------

    form = tab.form | {shared.selection}
    hidden: dict[str, Any] = {"api_visibility": "undocumented"}
    refresh_outputs = [*tab.preview_outputs, status, shared.merged]

    def on_slot(i: int | None, *, merge_live: bool = True) -> Callable[..., Iterator[dict[Any, Any]]]:
        def handler(values: dict[Any, Any], request: gr.Request) -> Iterator[dict[Any, Any]]:
            yield from refresh(values, request, slot=i, merge_live=merge_live)

        return handler

    method.input(choose_method, [method, shared.selection], tab.controls, api_name="choose_method", **QUICK) \
        .then(on_slot(None, merge_live=False), form, refresh_outputs, api_name="refresh_after_method",
              **hidden, **JOB_EVENT)
    # The button reads the whole form; scripts use /merge_recipe (fusion_ui.ui.api) instead.
    merging = merge.click(run_merge, form, [recipe, note, status, shared.merged], api_name="merge", **hidden,
                          **JOB_EVENT)
    stop.click(stop_work, None, status, api_name="stop", queue=False, cancels=[merging])
    preview_model.input(on_slot(None, merge_live=False), form, refresh_outputs, api_name="dare_preview",
                        **JOB_EVENT)

    for i in range(MAX_MODELS):
        for ctl in [c[i] for c in per_model.values() if isinstance(c[i], gr.Slider)]:
            ctl.release(on_slot(i), form, refresh_outputs, api_name=f"release_slot_{i}", **hidden, **JOB_EVENT)
        for ctl in [use[i], *(c[i] for c in per_model.values() if not isinstance(c[i], gr.Slider))]:
            ctl.input(on_slot(i), form, refresh_outputs, api_name=f"change_slot_{i}", **hidden, **JOB_EVENT)
    for ctl in [*(c for c in global_.values() if isinstance(c, gr.Slider)), ramp_first, ramp_last]:
        ctl.release(on_slot(None), form, refresh_outputs, api_name="release_global", **hidden, **JOB_EVENT)
    for ctl in [*(c for c in global_.values() if not isinstance(c, gr.Slider)), seed, include, exclude, dtype,
                ramp_param, as_written, overrides]:
        ctl.input(on_slot(None), form, refresh_outputs, api_name="change_global", **hidden, **JOB_EVENT)
    recipe.input(on_slot(None), form, refresh_outputs, api_name="edit_recipe", **hidden, **JOB_EVENT)
    return tab


def _superseded(engine: Engine, job: Any) -> bool:
    """Whether a cancelled merge was replaced by a newer one of the same session."""
    return any(j.kind == "merge" and j.id > job.id for j in engine.jobs.jobs(job.session))


def _about(schema: dict[str, Any]) -> str:
    needs = "needs the base" if schema["needs_base"] else "base optional"
    count = f"{schema['min_models']}" + (f"–{schema['max_models']}" if schema["max_models"] else "+")
    ref = f" · {schema['reference']}" if schema.get("reference") else ""
    return f"**{schema['title']}** — {schema['summary']}  \n<small>{needs} · {count} fine-tunes{ref}</small>"


def _note(recipe: Any) -> str:
    n = len(recipe.models)
    return (f'<span class="ok-dot"></span> Recipe ready: <code>{recipe.method}</code> of {n} '
            f"fine-tune{'s' if n != 1 else ''}, seed {recipe.seed}.")


def _seed(value: Any) -> int:
    try:
        f = float(value or 0)
    except (TypeError, ValueError):
        raise gr.Error(f"The seed must be a whole number, got {value!r}.") from None
    if f != f or f in (float("inf"), float("-inf")) or f != int(f):
        raise gr.Error(f"The seed must be a whole number, got {value!r}.")
    return int(f)


def _plain(value: Any, spec: dict[str, Any]) -> Any:
    if spec["kind"] == "int":
        return int(value)
    if spec["kind"] == "float":
        return float(value)
    return value


def _from_recipe(name: str, entry: dict[str, Any], parameters: dict[str, Any]) -> Any:
    """A per-model value as the recipe gives it (``density`` read as ``1 - drop_rate``)."""
    if name in entry:
        return entry[name]
    if name == "drop_rate" and "density" in entry and not isinstance(entry["density"], list):
        return 1.0 - float(entry["density"])
    return parameters.get(name)


def _status(result: Any, number: int, *, live: bool = False) -> str:
    warn = "".join(f"\n- ⚠ {html.escape(w)}" for w in result.warnings[:6])
    how = "Live re-merge" if live else "Merged"
    return (f'<span class="ok-dot"></span> **{how}** (#{number}): {result.tensors} tensors in '
            f"{result.seconds:.2f} s, in memory. The **Compare** tab now has a *merge* column.{warn}")
