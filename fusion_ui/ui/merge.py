"""Merge tab: controls generated from each method's parameter schema, an in-memory preview merge.

No method is named here: the controls are the union of every registered method's parameters
(one control per global parameter, one per fine-tune slot for per-model ones), shown, ranged
and labelled from the chosen method's schema. A new method in ``fusion_ui.methods`` gets its
sliders without UI code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import yaml

from fusion_ui.engine import Engine
from fusion_ui.ui.shared import (
    ENGINE_QUEUE,
    MAX_MODELS,
    Shared,
    progress_callback,
    require_selection,
    session_of,
    user_errors,
)

DEFAULT_METHOD = "dare_ties"
DTYPES = {"same as the base": "", "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
NO_RAMP = "none"


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


def _range(spec: dict[str, Any]) -> dict[str, Any]:
    lo = spec["minimum"] if spec["minimum"] is not None else -10.0
    hi = spec["maximum"] if spec["maximum"] is not None else 10.0
    step = 1 if spec["kind"] == "int" else (spec.get("step") or 0.01)
    if not spec.get("max_inclusive", True):
        hi = hi - step  # sliders cannot express an open interval: stop one step short
    if not spec.get("min_inclusive", True):
        lo = lo + step
    return {"minimum": lo, "maximum": hi, "step": step, "value": spec["default"]}


def _update(spec: dict[str, Any], *, visible: bool, value: Any = None) -> Any:
    """Re-label and re-range a control for the chosen method's spec of that parameter."""
    label, info = spec.get("label") or spec["name"], spec.get("help") or None
    value = spec["default"] if value is None else value
    if spec["kind"] == "bool":
        return gr.update(visible=visible, label=label, info=info, value=bool(value))
    if spec["kind"] == "choice":
        return gr.update(visible=visible, label=label, info=info, choices=list(spec["choices"]), value=value)
    return gr.update(visible=visible, label=label, info=info, **{**_range(spec), "value": value})


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
    recipe: gr.Code
    live: gr.Checkbox
    merge: gr.Button
    stop: gr.Button
    status: gr.Markdown
    preview_model: gr.Dropdown
    preview_plot: gr.Plot
    preview_text: gr.Markdown
    # Set by build(): compose(values) -> recipe YAML; apply(method, selection, recipe) -> updates
    # of ``controls`` (other tabs chain them onto their events).
    compose: Callable[[dict[Any, Any]], Any] = field(repr=False, default=lambda _: None)
    apply: Callable[[str, dict | None, Any], list[Any]] = field(repr=False, default=lambda *_: [])
    preview: Callable[[dict[Any, Any]], Any] = field(repr=False, default=lambda _: None)  # DARE preview

    @property
    def form(self) -> set[Any]:
        """Every input the recipe is composed from."""
        comps: set[Any] = {self.method, self.seed, self.include, self.exclude, self.ramp_param,
                           self.ramp_first, self.ramp_last, self.overrides, self.dtype, self.as_written,
                           self.preview_model}
        comps |= set(self.use) | set(self.global_.values())
        for controls in self.per_model.values():
            comps |= set(controls)
        return comps

    @property
    def controls(self) -> list[Any]:
        """Everything ``apply`` sets, in a fixed order."""
        out: list[Any] = [self.method, self.about, *self.slots, *self.names, *self.use]
        for name in sorted(self.per_model):
            out += self.per_model[name]
        out += [self.global_[n] for n in sorted(self.global_)]
        out += [self.seed, self.include, self.exclude, self.ramp_param, self.ramp_first, self.ramp_last,
                self.overrides, self.dtype, self.as_written, self.preview_model]
        return out


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
    status = gr.Markdown("Not merged yet. Set the sliders, then **Merge** (in memory; nothing is written).",
                         elem_id="merge-status", elem_classes="status")

    with gr.Accordion("DARE preview: what the drop does to one tensor's deltas", open=True):
        with gr.Row():
            preview_model = gr.Dropdown([], label="Fine-tune", scale=1, elem_id="preview-model")
            preview_text = gr.Markdown(elem_classes="preview-text")
        preview_plot = gr.Plot(label="|δ| before and after drop-and-rescale", elem_id="dare-preview")

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
        as_written = gr.Checkbox(False, label="Merge the recipe below as written (ignore the controls above)")
        recipe = gr.Code("", language="yaml", label="Recipe (what Merge and Export use)", lines=12,
                         interactive=True, elem_id="recipe")

    tab = MergeTab(method, about, slots, names, use, per_model, global_, seed, include, exclude, ramp_param,
                   ramp_first, ramp_last, overrides, dtype, as_written, recipe, live, merge, stop, status,
                   preview_model, preview_plot, preview_text)

    # -- handlers ------------------------------------------------------------------------------

    @user_errors
    def compose(values: dict[Any, Any]) -> Any:
        """The recipe YAML from the controls (validated by the engine)."""
        if values[as_written]:
            return gr.skip()
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
            raise gr.Error("Tick \"use in the merge\" for at least one fine-tune.")
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
            "seed": int(values[seed] or 0),
            "include": _globs(values[include] or ""),
            "exclude": _globs(values[exclude] or ""),
            "overrides": extra,
        }
        if DTYPES.get(values[dtype]):
            data["dtype"] = DTYPES[values[dtype]]
        return engine.parse_recipe(yaml.safe_dump(data, sort_keys=False)).to_yaml()

    tab.compose = compose

    @user_errors
    def run_merge(recipe_yaml: str, request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:  # noqa: B008
        """Merge into this session's preview model (memory only)."""
        if not recipe_yaml.strip():
            raise gr.Error("There is no recipe yet: load models in the Models tab first.")
        result = engine.merge_preview(session_of(request), recipe_yaml,
                                      progress=progress_callback(progress, "merging"))
        return _status(result), result.recipe_yaml

    @user_errors
    def live_merge(recipe_yaml: str, live_on: bool, selection: dict | None, request: gr.Request) -> Any:
        if not live_on:
            return gr.skip(), gr.skip()
        if not engine.live_ok(selection):
            return "Live merging is off for models this large: click **Merge**.", gr.skip()
        result = engine.merge_preview(session_of(request), recipe_yaml)
        return _status(result, live=True), result.recipe_yaml

    def stop_work(request: gr.Request) -> str:
        stopped = engine.cancel(session_of(request))
        return "Stopping at the next tensor…" if stopped else "Nothing is running."

    @user_errors
    def dare_preview(values: dict[Any, Any]) -> tuple[Any, str]:
        labels = (values[shared.selection] or {}).get("labels", [])
        return _preview(values, values[preview_model] or next(iter(labels), None))

    def _preview(values: dict[Any, Any], label: str | None) -> tuple[Any, str]:
        sel = values[shared.selection]
        schema = schemas[values[method]]
        if not sel or not label or label not in sel["labels"] or not _is_dare(schema):
            return gr.skip(), "The preview shows DARE methods' random drop (pick a DARE method)."
        i = sel["labels"].index(label)
        rescale = values[global_["rescale"]] if "rescale" in global_ else "inverse"
        fig, text = engine.dare_preview(sel, i, drop_rate=float(values[per_model["drop_rate"][i]]),
                                        seed=int(values[seed] or 0), rescale=rescale)
        return fig, text

    tab.preview = dare_preview

    def slot_preview(i: int) -> Callable[[dict[Any, Any]], Any]:
        @user_errors
        def handler(values: dict[Any, Any]) -> tuple[Any, Any, str]:
            sel = values[shared.selection]
            if not sel or i >= len(sel["labels"]):
                return gr.skip(), gr.skip(), gr.skip()
            fig, text = _preview(values, sel["labels"][i])
            return sel["labels"][i], fig, text

        return handler

    @user_errors
    def choose_method(name: str, selection: dict | None) -> list[Any]:
        return apply(name, selection, None)

    def apply(name: str, selection: dict | None, recipe: Any) -> list[Any]:
        """Updates of every control for a method, a selection and optionally a recipe's values."""
        schema = schemas[name]
        specs = {p["name"]: p for p in schema["params"]}
        labels = (selection or {}).get("labels", [])
        entries = recipe.models if recipe is not None else []
        rparams = dict(recipe.parameters) if recipe is not None else {}
        ramp_name, ramp_vals = NO_RAMP, None
        out: list[Any] = [gr.update(value=name), _about(schema)]
        out += [gr.update(visible=i < len(labels)) for i in range(MAX_MODELS)]
        out += [f"**{labels[i]}**" if i < len(labels) else "" for i in range(MAX_MODELS)]
        used = {e.model for e in entries}
        refs = (selection or {}).get("models", [])
        out += [gr.update(value=(not entries) or (i < len(refs) and refs[i] in used)) for i in range(MAX_MODELS)]
        by_ref = {e.model: dict(e.parameters) for e in entries}
        for pname in sorted(per_model_specs):
            spec = specs.get(pname, per_model_specs[pname])
            for i in range(MAX_MODELS):
                value = None
                mine = by_ref.get(refs[i]) if i < len(refs) else None
                if mine is not None:
                    value = _from_recipe(pname, mine, rparams)
                    if isinstance(value, list):
                        ramp_name, ramp_vals, value = pname, value, value[0]
                out.append(_update(spec, visible=pname in specs, value=value))
        for gname in sorted(global_specs):
            spec = specs.get(gname, global_specs[gname])
            value = rparams.get(gname)
            if isinstance(value, list):
                ramp_name, ramp_vals, value = gname, value, value[0]
            out.append(_update(spec, visible=gname in specs, value=value))
        out.append(gr.update(visible=schema["uses_seed"], value=recipe.seed if recipe is not None else 0))
        if recipe is not None:
            overrides_yaml = yaml.safe_dump([o.model_dump(exclude_defaults=True) for o in recipe.overrides],
                                            sort_keys=False) if recipe.overrides else ""
            dtype_label = next((k for k, v in DTYPES.items() if v == (recipe.dtype or "")), "same as the base")
            complex_ramp = ramp_vals is not None and len(ramp_vals) != 2
            out += [", ".join(recipe.include), ", ".join(recipe.exclude), ramp_name,
                    ramp_vals[0] if ramp_vals else 0.9, ramp_vals[-1] if ramp_vals else 0.9,
                    overrides_yaml, dtype_label, complex_ramp]
        else:
            out += [gr.skip()] * 8
        out.append(gr.update(choices=labels, value=labels[0] if labels else None))
        return out

    tab.apply = apply

    # -- events --------------------------------------------------------------------------------

    method.input(choose_method, [method, shared.selection], tab.controls, api_name="choose_method") \
        .then(compose, tab.form | {shared.selection}, recipe, api_name="compose_after_method", api_visibility="undocumented") \
        .then(dare_preview, tab.form | {shared.selection}, [preview_plot, preview_text],
              api_name="dare_preview_after_method", api_visibility="undocumented", **ENGINE_QUEUE)
    merged = merge.click(compose, tab.form | {shared.selection}, recipe, api_name="compose_recipe")
    merged.success(run_merge, recipe, [status, shared.merged], api_name="merge", **ENGINE_QUEUE)
    stop.click(stop_work, None, status, api_name="stop", queue=False)
    inputs = tab.form | {shared.selection}
    preview_model.input(dare_preview, inputs, [preview_plot, preview_text], api_name="dare_preview",
                        **ENGINE_QUEUE)
    releasable = [c for cs in per_model.values() for c in cs] + [
        c for c in global_.values() if isinstance(c, gr.Slider)]
    for k, ctl in enumerate(releasable):
        ctl.release(compose, inputs, recipe, api_name=f"compose_on_release_{k}", api_visibility="undocumented", show_progress="hidden") \
            .success(live_merge, [recipe, live, shared.selection], [status, shared.merged],
                  api_name=f"live_merge_{k}", api_visibility="undocumented", **ENGINE_QUEUE)
    for i, ctl in enumerate(per_model.get("drop_rate", [])):
        ctl.release(slot_preview(i), inputs, [preview_model, preview_plot, preview_text],
                    api_name=f"dare_preview_slot_{i}", api_visibility="undocumented", **ENGINE_QUEUE)
    for ctl in [*use, *(c for c in global_.values() if not isinstance(c, gr.Slider)), seed, include, exclude,
                dtype, ramp_param]:
        ctl.input(compose, inputs, recipe, api_name="compose_on_input", api_visibility="undocumented", show_progress="hidden")
    return tab


def _about(schema: dict[str, Any]) -> str:
    needs = "needs the base" if schema["needs_base"] else "base optional"
    count = f"{schema['min_models']}" + (f"–{schema['max_models']}" if schema["max_models"] else "+")
    ref = f" · {schema['reference']}" if schema.get("reference") else ""
    return f"**{schema['title']}** — {schema['summary']}  \n<small>{needs} · {count} fine-tunes{ref}</small>"


def _is_dare(schema: dict[str, Any]) -> bool:
    """Methods whose per-model ``drop_rate`` is a random drop (the preview shows exactly that)."""
    return schema["uses_seed"] and any(p["name"] == "drop_rate" for p in schema["params"])


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


def _status(result: Any, *, live: bool = False) -> str:
    warn = "".join(f"\n- ⚠ {w}" for w in result.warnings[:6])
    how = "Live re-merge" if live else "Merged"
    return (f'<span class="ok-dot"></span> **{how}** {result.tensors} tensors in {result.seconds:.1f} s, '
            f"in memory. The **Compare** tab now has a *merge* column.{warn}")
