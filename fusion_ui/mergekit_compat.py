"""Reading mergekit YAML configs as fusion_ui recipes, and writing recipes as mergekit YAML.

mergekit and fusion_ui define the shared methods the same way, with these differences, which
the exported file states in comments:

- DARE / DELLA rescale: the DARE paper multiplies survivors by 1/(1-p) (fusion_ui's default,
  ``rescale: inverse``); mergekit rescales to the L1 norm of the unpruned delta
  (``rescale: true``, fusion_ui's ``rescale: l1``). Imports keep mergekit's behaviour.
- Random masks: both draw Bernoulli masks, from different generators; fusion_ui's are seeded
  per (seed, tensor, model), mergekit's are not reproducible. DARE results therefore agree in
  distribution, not bit for bit.
- Precision: fusion_ui computes in float32 and casts at the end; mergekit computes in the
  models' dtype (often bfloat16), so deterministic methods differ by rounding.
- Defaults: mergekit's ``density`` defaults to 1 (nothing dropped) and ``normalize`` to its
  per-method default; imports write them out explicitly, since fusion_ui's defaults follow the
  papers (TIES density 0.2, DARE p = 0.9, TIES-family normalize on).
- Names: mergekit's ``della`` (with sign consensus) is fusion_ui's ``della_ties``, and
  mergekit's ``della_linear`` is fusion_ui's ``della``. mergekit calls every kept share
  ``density``; fusion_ui's DARE methods declare ``drop_rate`` with ``density`` as its complement
  (``ParamSpec.complement``), so the conversion asks the method's parameters, not its name.
- Kept counts: TIES' trim and breadcrumbs keep round(density·n) elements in fusion_ui and
  ⌊density·n⌋ in mergekit (and PEFT); imports floor (``count_rounding: floor``).
- Model Stock: fusion_ui keeps the base (t = 0) where the fine-tunes' mean cosine is negative;
  mergekit extrapolates, and imports do (``clamp_negative: false``). ``filter_wise`` is the same.
- Filter lists: read as mergekit does (first match wins, ``"*"`` or no filter is a catch-all,
  no catch-all falls through to the next level); keys that would change mergekit's output and
  that fusion_ui does not do yet are refused by name, never dropped.
- Slices (``slices:``, frankenmerges): read as mergekit does: each source's ``layer_range`` is
  [first, end), embeddings come from the first slice's sources and the final norm and head from
  the last slice's, ramps run over each slice's layers, and a source's parameters win over its
  slice's, which win over the global ones (``fusion_ui.recipe`` documents the native form, which
  is the same). ``passthrough`` copies its one source's tensors, times ``scale``.
- SCE: fusion_ui's ``sce`` is mergekit's (``fusion_ui/methods/sce.py`` names its two
  differences on purpose: a tensor whose top-k count rounds to 0 keeps one element, and ties
  at the k-th variance follow one stated rule).

This module turns a mergekit config into plain fusion_ui recipe data, which
:func:`fusion_ui.recipe.recipe_from_dict` validates; it does not import :mod:`fusion_ui.recipe`
(which imports it), so :func:`recipe_to_mergekit` takes any recipe-shaped object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from fusion_ui.errors import RecipeError
from fusion_ui.methods import MergeMethod, get_method
from fusion_ui.methods.params import ParamSpec, complement_value

if TYPE_CHECKING:  # duck-typed at run time: recipe.py imports this module
    from fusion_ui.recipe import Recipe

# mergekit spells every kept share (TIES' top-k, DARE's 1 - p, DELLA's mean) this way
_MK_DENSITY = "density"

# mergekit name -> fusion_ui name
_FROM_MERGEKIT = {
    "linear": "linear",
    "task_arithmetic": "task_arithmetic",
    "ties": "ties",
    "dare_linear": "dare_linear",
    "dare_ties": "dare_ties",
    "breadcrumbs": "breadcrumbs",
    "breadcrumbs_ties": "breadcrumbs_ties",
    "della": "della_ties",
    "della_linear": "della",
    "slerp": "slerp",
    "model_stock": "model_stock",
    "sce": "sce",
    "passthrough": "passthrough",
}
_TO_MERGEKIT = {v: k for k, v in _FROM_MERGEKIT.items()}

# mergekit's per-method defaults (mergekit 0.1.x registry), made explicit on import.
_MK_NORMALIZE = {
    "linear": True, "task_arithmetic": False, "ties": True, "dare_linear": False,
    "dare_ties": False, "breadcrumbs": False, "breadcrumbs_ties": False,
    "della": True, "della_linear": False,
}
_MK_RESCALES = {"dare_linear", "dare_ties", "della", "della_linear"}
# Differences in a method's own definition, stated in every export of it.
_MK_METHOD_NOTES = {
    "sce": "sce: where select_topk keeps ⌊n·select_topk⌋ = 0 elements of a tensor, fusion_ui keeps its "
           "most-varying one and mergekit none (the tensor stays the base's)",
}
# Plain-sum methods where mergekit divides by 1 when the weights cancel (its linear divides by 0).
_MK_SUMS = {"task_arithmetic", "dare_linear", "breadcrumbs", "della_linear"}
# Methods whose kept-element counts mergekit floors (⌊density·n⌋; fusion_ui rounds by default).
_MK_FLOOR_COUNTS = {"ties", "breadcrumbs", "breadcrumbs_ties"}
# Methods whose mergekit definition reads no per-model weight (a weight given is ignored there).
_MK_UNWEIGHTED = {"model_stock"}
# Top-level keys that change mergekit's output and that fusion_ui does not do yet: refused, never
# ignored (the output would silently differ).
_MK_REFUSED = {
    "chat_template": "the output's tokenizer_config.json is the copied tokenizer's; set the template there",
}
_MK_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
              "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def is_mergekit_config(data: dict[str, Any]) -> bool:
    """mergekit configs say ``merge_method``; ours say ``method``."""
    return "merge_method" in data and "method" not in data


def recipe_from_mergekit(data: dict[str, Any]) -> dict[str, Any]:
    """Plain fusion_ui recipe data equivalent to a mergekit config, with mergekit's defaults
    applied; :func:`fusion_ui.recipe.recipe_from_dict` validates it into a ``Recipe``."""
    mk_method = data.get("merge_method")
    if mk_method not in _FROM_MERGEKIT:
        raise RecipeError(
            f"mergekit method {mk_method!r} is not supported by fusion_ui; supported: "
            f"{', '.join(_FROM_MERGEKIT)}"
        )
    if data.get("slices") is not None and data.get("models") is not None:
        raise RecipeError("mergekit config gives both `models:` and `slices:`; give one of them")
    if "modules" in data:
        raise RecipeError("mergekit `modules:` (a separate merge per sub-model) is not supported; give "
                          "one `models:` list for the whole model")
    for key, why in _MK_REFUSED.items():
        if data.get(key) is not None:
            raise RecipeError(f"mergekit `{key}:` is not supported yet ({why}); remove it")
    tokenizer_block = _mapping(data.get("tokenizer"), "tokenizer")
    for key in tokenizer_block:
        if key != "source":
            raise RecipeError(
                f"mergekit `tokenizer.{key}:` is not supported yet (fusion_ui copies one model's "
                "tokenizer: `tokenizer: {source: base}` or a model); remove it"
            )
    method_name = _FROM_MERGEKIT[mk_method]
    method = get_method(method_name)
    base = _model_ref(data["base_model"]) if data.get("base_model") else None
    entries = [_model_entry(i, e) for i, e in enumerate(_list(data.get("models"), "models"))]
    overrides: list[dict[str, Any]] = []
    g_params: dict[str, Any] = {}
    for key, value in _mapping(data.get("parameters"), "parameters").items():
        if key == "int8_mask":
            continue  # mergekit's storage of masks: no effect on the values
        value = _value(key, value, overrides, None)
        if value is not _UNSET:
            g_params[key] = value

    if data.get("slices") is not None:
        recipe_data = {
            "method": method_name, "base": base, "parameters": g_params, "overrides": overrides,
            "slices": _slices(mk_method, method, base, _list(data.get("slices"), "slices"), g_params),
        }
        if mk_method == "slerp" and not _sets(recipe_data, "t"):
            raise RecipeError("mergekit slerp needs the parameter t")
        return _common_keys(recipe_data, data, tokenizer_block, mk_method, method, g_params)
    if method_name == "passthrough" and len(entries) != 1:
        raise RecipeError(f"mergekit passthrough takes exactly one model (or `slices:`), got {len(entries)}")

    models: list[dict[str, Any]] = []
    for ref, params in entries:
        if method_name == "slerp":
            continue  # slerp's endpoints are base_model and the other model, handled below
        if base is not None and ref == base and method_name != "linear":
            continue  # mergekit lists the base among the models; it is not a fine-tune here
        models.append({"model": ref, "raw": params})

    if method_name == "slerp":
        others = [r for r, _ in entries if r != base]
        if base is None or len(others) != 1:
            raise RecipeError("mergekit slerp needs base_model and exactly one other model")
        recipe_models: list[dict[str, Any]] = [{"model": base}, {"model": others[0]}]
        if "t" not in g_params:
            raise RecipeError("mergekit slerp needs the parameter t")
    else:
        global_density = g_params.pop(_MK_DENSITY, 1.0)  # mergekit's default: keep everything
        recipe_models = [
            _zero_density_as_base(method, base, m["model"], _model_params(
                mk_method, method, m["model"], m["raw"], overrides, i, g_params, global_density,
                "weight" in g_params))
            for i, m in enumerate(models)
        ]
    recipe_data: dict[str, Any] = {
        "method": method_name,
        "base": base,
        "models": recipe_models,
        "parameters": g_params,
        "overrides": overrides,
    }
    return _common_keys(recipe_data, data, tokenizer_block, mk_method, method, g_params)


def _model_params(
    mk_method: str, method: MergeMethod, ref: str, raw: dict[str, Any], overrides: list[dict[str, Any]],
    index: int, g_params: dict[str, Any], density: Any, weight_given: bool,
) -> dict[str, Any]:
    """One model's (or slice source's) mergekit parameters as ours; filter lists become
    ``overrides`` keyed by ``index``, mergekit's ``density`` our share parameter."""
    share = _share_param(method)  # the per-model parameter mergekit's `density` sets, if any
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "lambda":  # della's per-model lambda: mergekit applies the first one
            g_params.setdefault("lambda", value)
            continue
        if key == "weight" and mk_method in _MK_UNWEIGHTED:
            continue  # mergekit reads no weight for this method (its own tests give one)
        value = _value(key, value, overrides, index)
        if value is not _UNSET:
            params[key] = value
    if any(p.name == "weight" for p in method.model_params()) and "weight" not in params and not weight_given:
        raise RecipeError(f"mergekit requires a weight for model {ref!r}")
    density = params.pop(_MK_DENSITY, density)
    if share is not None:  # otherwise mergekit accepts `density` and ignores it
        params[share.name] = density if share.name == _MK_DENSITY else complement_value(density)
    return params


def _zero_density_as_base(
    method: MergeMethod, base: str | None, ref: str, params: dict[str, Any]
) -> dict[str, Any]:
    """One model's recipe entry; a model at mergekit ``density: 0`` becomes the base, kept.

    mergekit sparsifies a delta at density 0 to all zeros (every sparsification method: top-k,
    Bernoulli, breadcrumbs, DELLA), so that model contributes a zero delta while its weight
    still counts where weights are normalised. Our primitives keep a share in (0, 1]; the exact
    equivalent is the base itself as that model (δ = θ0 − θ0 = 0) with nothing dropped."""
    share = _share_param(method)
    if share is None or base is None:
        return {"model": ref, **params}
    keep_all = 1.0 if share.name == _MK_DENSITY else 0.0
    value = params.get(share.name)
    zero = 0.0 if share.name == _MK_DENSITY else 1.0  # density 0 is drop rate 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != zero:
        return {"model": ref, **params}
    return {"model": base, **params, share.name: keep_all}


def _slices(
    mk_method: str, method: MergeMethod, base: str | None, slices: list[Any], g_params: dict[str, Any]
) -> list[dict[str, Any]]:
    """mergekit ``slices:`` as ours: each slice's sources (with ``layer_range``), its own
    parameters and the overrides its filter lists make (``models:`` keyed by source index)."""
    if not slices:
        raise RecipeError("mergekit `slices:` is empty; give at least one slice with its `sources:`")
    global_density = g_params.pop(_MK_DENSITY, 1.0)
    out = []
    for i, sl in enumerate(slices):
        where = f"slices[{i}]"
        sl = _mapping(sl, where)
        for key in sl:
            if key == "base_model" and sl[key] is not None and _model_ref(sl[key]) != base:
                raise RecipeError(f"mergekit `{where}.base_model:` (a base per slice) is not supported yet; "
                                  "give one `base_model:` for the whole config")
            if key == "residual_weight" and sl[key] is not None:
                raise RecipeError(f"mergekit `{where}.residual_weight:` is not supported yet; remove it")
            if key not in ("sources", "parameters", "base_model", "residual_weight"):
                raise RecipeError(f"mergekit `{where}.{key}:` is not a slice key (sources, parameters)")
        overrides: list[dict[str, Any]] = []
        s_params: dict[str, Any] = {}
        for key, value in _mapping(sl.get("parameters"), f"{where}.parameters").items():
            if key == "int8_mask":
                continue
            value = _value(key, value, overrides, None)
            if value is not _UNSET:
                s_params[key] = value
        density = s_params.pop(_MK_DENSITY, global_density)
        sources = []
        raw_sources = _list(sl.get("sources"), f"{where}.sources")
        if not raw_sources:
            raise RecipeError(f"mergekit `{where}.sources:` is empty; give each source's model and layer_range")
        for k, src in enumerate(raw_sources):
            swhere = f"{where}.sources[{k}]"
            src = _mapping(src, swhere)
            for key in src:
                if key not in ("model", "layer_range", "parameters"):
                    raise RecipeError(f"mergekit `{swhere}.{key}:` is not a source key (model, layer_range, parameters)")
            if "model" not in src:
                raise RecipeError(f"mergekit `{swhere}` has no `model:`")
            lr = src.get("layer_range")
            if not (isinstance(lr, list) and len(lr) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                    for x in lr)):
                raise RecipeError(f"mergekit `{swhere}.layer_range:` must be [first, end] (two whole "
                                  f"numbers), got {lr!r}")
            ref = _model_ref(src["model"])
            raw = dict(_mapping(src.get("parameters"), f"{swhere}.parameters"))
            if method.needs_base and ref == base:  # θ0's layers: no per-model values of a fine-tune
                raw = {}
            params = _model_params(mk_method, method, ref, raw, overrides, k, g_params, density,
                                   "weight" in g_params or "weight" in s_params or (method.needs_base and ref == base))
            sources.append({"model": ref, "layer_range": lr, **params})
        if mk_method == "slerp" and (base is None or base not in [s["model"] for s in sources]):
            raise RecipeError(f"mergekit slerp needs base_model among each slice's sources; {where} does not have it")
        out.append({"sources": sources, "parameters": s_params, "overrides": overrides})
    return out


def _sets(recipe_data: dict[str, Any], key: str) -> bool:
    """Whether converted slices data sets ``key`` anywhere (globally, per slice, in an override)."""
    levels = [recipe_data["parameters"], *(o["parameters"] for o in recipe_data["overrides"])]
    for sl in recipe_data["slices"]:
        levels += [sl["parameters"], *(o["parameters"] for o in sl["overrides"])]
    return any(key in values for values in levels)


def _common_keys(
    recipe_data: dict[str, Any], data: dict[str, Any], tokenizer_block: dict[str, Any], mk_method: str,
    method: MergeMethod, g_params: dict[str, Any],
) -> dict[str, Any]:
    """mergekit's per-method defaults, dtype and tokenizer, added to converted recipe data."""
    if mk_method in _MK_NORMALIZE:
        g_params.setdefault("normalize", _MK_NORMALIZE[mk_method])
    if mk_method in _MK_SUMS and g_params.get("normalize") is True and _weights_cancel(recipe_data, g_params):
        # mergekit divides a sum whose weights cancel by 1 instead of refusing: the plain sum
        g_params["normalize"] = False
    if mk_method == "model_stock":
        g_params.setdefault("clamp_negative", False)  # mergekit extrapolates on negative cosines
    if mk_method in _MK_FLOOR_COUNTS:
        g_params.setdefault("count_rounding", "floor")  # mergekit keeps ⌊density·n⌋ elements
    rescale = method.capabilities.rescale
    if mk_method in _MK_RESCALES and rescale is not None:  # mergekit: a bool, L1 when true
        g_params[rescale] = "l1" if g_params.pop("rescale", True) else "none"
    # mergekit computes in `dtype` and writes `out_dtype` (default: `dtype`); fusion_ui computes
    # in float32 and writes the recipe's dtype
    dtype = data.get("out_dtype") or data.get("dtype")
    tokenizer = tokenizer_block.get("source", data.get("tokenizer_source"))
    if dtype:
        if dtype not in _MK_DTYPES:
            raise RecipeError(f"mergekit dtype {dtype!r} is not supported; use float32, float16 or bfloat16")
        recipe_data["dtype"] = _MK_DTYPES[dtype]
    if tokenizer and tokenizer != "base":
        if tokenizer == "union":
            raise RecipeError("mergekit tokenizer_source: union is not supported; use base or a model")
        recipe_data["tokenizer_source"] = _model_ref(tokenizer)
    return recipe_data


def _weights_cancel(recipe_data: dict[str, Any], g_params: dict[str, Any]) -> bool:
    """Whether a ``models:`` recipe's weights are plain numbers (no ramp, no filter) summing to 0."""
    if "models" not in recipe_data or any("weight" in str(o) for o in recipe_data["overrides"]):
        return False
    weights = [entry.get("weight", g_params.get("weight")) for entry in recipe_data["models"]]
    if not weights or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        return False
    return abs(sum(weights)) < 1e-8


def _share_param(method: MergeMethod) -> ParamSpec | None:
    """The per-model parameter that mergekit's ``density`` sets: named so, or its complement."""
    return next((p for p in method.model_params() if _MK_DENSITY in p.names()), None)


def recipe_to_mergekit(recipe: Recipe) -> tuple[str | None, list[str]]:
    """mergekit YAML equivalent to ``recipe`` (None if there is none), and the differences.

    ``recipe`` is a :class:`fusion_ui.recipe.Recipe` (or anything with its attributes).
    """
    notes: list[str] = []
    mk_method = _TO_MERGEKIT.get(recipe.method)
    if mk_method is None:
        return None, [f"mergekit has no {recipe.method!r} method"]
    method = get_method(recipe.method)
    caps = method.capabilities
    g = dict(recipe.parameters)
    out: dict[str, Any] = {"merge_method": mk_method}
    if recipe.base and method.needs_base:
        # mergekit merges a linear config's base_model as one more model (and wants its weight)
        out["base_model"] = recipe.base
    slices = getattr(recipe, "slices", None)
    if slices:
        if mk_method == "slerp":
            out["base_model"] = recipe.base or slices[0].sources[0].model
        out["slices"] = [_slice_to_mergekit(method, sl) for sl in slices]
        if any(sl.overrides for sl in slices):
            notes.append("per-slice overrides (mergekit's per-slice filter lists) are not exported")
    elif mk_method == "slerp":
        out["base_model"] = recipe.models[0].model
        out["models"] = [{"model": recipe.models[0].model}, {"model": recipe.models[1].model}]
    else:
        models = []
        for entry in recipe.models:
            params = {}
            for spec in method.model_params():
                value = _first_set(spec, entry.parameters, g)
                if spec.name != _MK_DENSITY and spec.complement == _MK_DENSITY:
                    params[_MK_DENSITY] = complement_value(value)  # mergekit keeps shares
                else:
                    params[spec.name] = value
            models.append({"model": entry.model, "parameters": params} if params else {"model": entry.model})
            if recipe.base is not None and entry.model == recipe.base:
                notes.append(
                    f"{entry.model} is both the base and a model (a zero delta, as a mergekit "
                    "`density: 0` imports); mergekit reads a listed base as the base only, so where "
                    "weights are normalised its result differs"
                )
        out["models"] = models
    gparams: dict[str, Any] = {}
    for spec in method.global_params():
        value = g.get(spec.name, spec.default)
        if spec.name == caps.rescale:
            if value == "inverse":
                notes.append(
                    "rescale: fusion_ui multiplies DARE survivors by 1/(1-p) (the paper); mergekit can "
                    "only match the L1 norm (rescale: true), so results differ slightly"
                )
            gparams["rescale"] = value != "none"
        elif spec.name == "count_rounding":
            if value != "floor":
                notes.append(
                    f"{method.name}: fusion_ui keeps round(density·n) elements of each delta, mergekit "
                    "⌊density·n⌋ (count_rounding: floor matches it), so a few boundary elements differ"
                )
        elif method.name == "model_stock" and spec.name == "clamp_negative":
            if value:
                notes.append(
                    "model_stock: fusion_ui sets t = 0 where the fine-tunes' mean cosine is negative; "
                    "mergekit extrapolates (t < 0), so those tensors differ (clamp_negative: false matches it)"
                )
        elif spec.name == caps.base_switch:
            if value:
                notes.append(
                    f"{method.name} of task vectors ({spec.name}) has no mergekit equivalent; exported "
                    f"as plain {mk_method}"
                )
        else:
            gparams[spec.name] = value
    as_filters = _overrides_as_filters(recipe.overrides, {p.name for p in method.global_params()})
    if as_filters is not None:
        for key, entries in as_filters.items():
            if key in gparams:
                gparams[key] = [*entries, {"value": gparams[key]}]
    if gparams:
        out["parameters"] = gparams
    out["dtype"] = recipe.dtype or "bfloat16"
    if recipe.dtype is None:
        notes.append("dtype: fusion_ui keeps the base's dtype; set it explicitly in mergekit if it is not bfloat16")
    if recipe.tokenizer_source != "base":
        tok = recipe.tokenizer_source
        out["tokenizer_source"] = (
            recipe.models[recipe.model_index(tok[len("model:"):])].model if tok.startswith("model:") else tok
        )
    if method.name in _MK_METHOD_NOTES:
        notes.append(_MK_METHOD_NOTES[method.name])
    if method.uses_seed:
        notes.append(f"random masks: fusion_ui seeds them (seed {recipe.seed}); mergekit's differ on every run")
    if recipe.include or recipe.exclude:
        notes.append("include/exclude patterns (tensors kept from the base) have no mergekit equivalent")
    if recipe.overrides and as_filters is None:
        notes.append("per-pattern/per-layer overrides have no exact mergekit equivalent; not exported")
    provenance = _weights_from_comments(getattr(recipe, "weights_from", None))
    if provenance:
        notes.append("weights_from (where the weights came from) has no mergekit key: written as "
                      "`# weights from:` comments, and not read back on import")
    notes.append("fusion_ui computes in float32; mergekit in the models' dtype, so results differ by rounding")
    header = "".join(f"# note: {n}\n" for n in notes)
    text = "# mergekit config equivalent to this fusion_ui recipe (written by fusion_ui)\n" + header + provenance
    return text + yaml.safe_dump(out, sort_keys=False), notes


def _overrides_as_filters(overrides: list[Any], global_names: set[str]) -> dict[str, list[dict[str, Any]]] | None:
    """Overrides that are mergekit filter lists (``*text*`` patterns of global values, no layer
    range), as those lists (first match wins there, the last here); None if any is not."""
    lists: dict[str, list[dict[str, Any]]] = {}
    for ov in overrides:
        pattern = ov.match[0] if len(ov.match) == 1 else ""
        text = pattern[1:-1]
        if (ov.layers is not None or ov.models or len(pattern) < 3 or not pattern.startswith("*")
                or not pattern.endswith("*") or any(c in text for c in "*?[]")
                or pattern.startswith("re:") or not set(ov.parameters) <= global_names):
            return None
    for ov in reversed(overrides):
        for key, value in ov.parameters.items():
            lists.setdefault(key, []).append({"filter": ov.match[0][1:-1], "value": value})
    return lists


def _slice_to_mergekit(method: MergeMethod, sl: Any) -> dict[str, Any]:
    """One slice as mergekit writes it: sources with layer_range, values given (shares as density)."""
    def given(values: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for spec in method.params:
            value = spec.value_in(values)
            if value is None:
                continue
            if spec.name != _MK_DENSITY and spec.complement == _MK_DENSITY:
                out[_MK_DENSITY] = complement_value(value)
            else:
                out[spec.name] = value
        return out

    sources = []
    for src in sl.sources:
        entry: dict[str, Any] = {"model": src.model, "layer_range": list(src.layer_range)}
        if given(src.parameters):
            entry["parameters"] = given(src.parameters)
        sources.append(entry)
    out: dict[str, Any] = {"sources": sources}
    if given(sl.parameters):
        out["parameters"] = given(sl.parameters)
    return out


def _weights_from_comments(source: Any) -> str:
    """A recipe's ``weights_from:`` record as YAML comment lines (mergekit has no such key)."""
    if source is None:
        return ""
    floor = f", base floor {source.base_floor:g}" if source.base_floor else ""
    lines = [
        f"LM-Cocktail: softmax(-loss / T), T = {source.temperature:g}{floor}, from {source.examples} "
        f"example(s), sha256 {source.examples_sha256}",
        *(f"{c.label}: loss {c.loss:.6g} -> weight {c.weight:.6g}" for c in source.candidates),
    ]
    return "".join(f"# weights from: {line}\n" for line in lines)


def _list(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecipeError(f"mergekit `{key}:` must be a list, got {type(value).__name__}")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"mergekit `{where}` must be a mapping of names to values, got {value!r}")
    return value


def _model_entry(i: int, entry: Any) -> tuple[str, dict[str, Any]]:
    """One ``models:`` entry: ``- model: ref`` (with optional ``parameters:``) or a bare ref."""
    if not isinstance(entry, dict):
        return _model_ref(entry), {}
    if "model" not in entry:
        raise RecipeError(
            f"mergekit models[{i}] ({entry!r}) has no `model:` key; write each entry as "
            f"`- model: org/name` with its `parameters:` below it"
        )
    return _model_ref(entry["model"]), dict(_mapping(entry.get("parameters"), f"models[{i}].parameters"))


def _model_ref(value: Any) -> str:
    if isinstance(value, dict):  # mergekit's long form {model: {path: ...}} or {path: ...}
        inner = value.get("model", value)
        value = inner.get("path") if isinstance(inner, dict) else inner
    if not isinstance(value, str):
        raise RecipeError(f"cannot read mergekit model reference {value!r}")
    if "+" in value:
        raise RecipeError(f"mergekit LoRA references ({value}) are not supported: merge the LoRA first")
    return value


def _first_set(spec: ParamSpec, *layers: dict[str, Any]) -> Any:
    """The value of ``spec`` in the first of ``layers`` that sets it (under either spelling),
    else its default."""
    for values in layers:
        value = spec.value_in(values)
        if value is not None:
            return value
    return spec.default


_UNSET = object()  # a filter list without a catch-all: this level sets nothing for other tensors


def _value(key: str, value: Any, overrides: list[dict[str, Any]], model: int | None) -> Any:
    """mergekit scalar, gradient list, or conditional ``[{filter, value}]`` list -> our value.

    mergekit reads a filter list top down and takes the first entry whose ``filter`` is a
    substring of the tensor name, or is missing or ``"*"`` (a catch-all: entries after it are
    never reached); where none matches, the next level decides (the global parameter, then the
    default): :data:`_UNSET` here. Ours: overrides, where the last match wins, so the entries
    are added bottom up.
    """
    if isinstance(value, dict) and "value" in value:
        value = [value]  # mergekit also takes one conditional entry on its own
    if not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        return value
    for cond in value:
        if "value" not in cond:
            raise RecipeError(
                f"mergekit parameter {key!r}: each entry of a filter list needs a `value:` "
                f"(got {cond!r})"
            )
    catch_all = next(
        (j for j, c in enumerate(value) if c.get("filter") is None or c.get("filter") == "*"), None
    )
    reached = value if catch_all is None else value[: catch_all + 1]
    for cond in reversed(reached[: len(reached) if catch_all is None else catch_all]):
        params = {key: cond["value"]}
        overrides.append({
            "match": [f"*{cond['filter']}*"],
            "parameters": params if model is None else {},
            "models": {} if model is None else {model: params},
        })
    return _UNSET if catch_all is None else reached[catch_all]["value"]
