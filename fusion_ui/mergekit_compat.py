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
  mergekit's ``della_linear`` is fusion_ui's ``della``.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from fusion_ui.errors import RecipeError
from fusion_ui.recipe import Override, Recipe, format_validation

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
}
_TO_MERGEKIT = {v: k for k, v in _FROM_MERGEKIT.items()}

# mergekit's per-method defaults (mergekit 0.1.x registry), made explicit on import.
_MK_NORMALIZE = {
    "linear": True, "task_arithmetic": False, "ties": True, "dare_linear": False,
    "dare_ties": False, "breadcrumbs": False, "breadcrumbs_ties": False,
    "della": True, "della_linear": False,
}
_MK_RESCALES = {"dare_linear", "dare_ties", "della", "della_linear"}
_MK_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
              "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def is_mergekit_config(data: dict[str, Any]) -> bool:
    """mergekit configs say ``merge_method``; ours say ``method``."""
    return "merge_method" in data and "method" not in data


def recipe_from_mergekit(data: dict[str, Any]) -> Recipe:
    """A fusion_ui recipe equivalent to a mergekit config, with mergekit's defaults applied."""
    mk_method = data.get("merge_method")
    if mk_method not in _FROM_MERGEKIT:
        raise RecipeError(
            f"mergekit method {mk_method!r} is not supported by fusion_ui; supported: "
            f"{', '.join(_FROM_MERGEKIT)}"
        )
    if "slices" in data:
        raise RecipeError("mergekit `slices:` (layer stacking / passthrough) is not supported; use `models:`")
    method = _FROM_MERGEKIT[mk_method]
    base = _model_ref(data["base_model"]) if data.get("base_model") else None
    entries = [_model_entry(i, e) for i, e in enumerate(_list(data.get("models"), "models"))]
    overrides: list[Override] = []
    g_params: dict[str, Any] = {}
    for key, value in _mapping(data.get("parameters"), "parameters").items():
        if key in ("int8_mask", "filter_wise"):
            continue  # memory/shape options with no effect on fusion_ui's float32 results
        g_params[key] = _value(key, value, overrides, None)

    models: list[dict[str, Any]] = []
    for ref, params in entries:
        if method == "slerp":
            continue  # slerp's endpoints are base_model and the other model, handled below
        if base is not None and ref == base and method != "linear":
            continue  # mergekit lists the base among the models; it is not a fine-tune here
        models.append({"model": ref, "raw": params})

    if method == "slerp":
        others = [r for r, _ in entries if r != base]
        if base is None or len(others) != 1:
            raise RecipeError("mergekit slerp needs base_model and exactly one other model")
        recipe_models: list[dict[str, Any]] = [{"model": base}, {"model": others[0]}]
        if "t" not in g_params:
            raise RecipeError("mergekit slerp needs the parameter t")
    else:
        sparsifying = method not in ("linear", "task_arithmetic", "model_stock")
        global_density = g_params.pop("density", 1.0)  # mergekit's default: keep everything
        recipe_models = []
        for i, m in enumerate(models):
            params: dict[str, Any] = {}
            for key, value in m["raw"].items():
                if key == "lambda":  # della's per-model lambda: mergekit applies the first one
                    g_params.setdefault("lambda", value)
                    continue
                params[key] = _value(key, value, overrides, i)
            if method != "model_stock":
                if "weight" not in params and "weight" not in g_params:
                    raise RecipeError(f"mergekit requires a weight for model {m['model']!r}")
            if sparsifying:
                params.setdefault("density", global_density)
            else:
                params.pop("density", None)  # mergekit accepts and ignores it here
            recipe_models.append({"model": m["model"], **params})

    if mk_method in _MK_NORMALIZE:
        g_params.setdefault("normalize", _MK_NORMALIZE[mk_method])
    if mk_method in _MK_RESCALES:
        g_params["rescale"] = "l1" if g_params.pop("rescale", True) else "none"
    if mk_method in ("dare_linear", "dare_ties"):
        for m in recipe_models:
            if "density" in m:
                m["drop_rate"] = _complement(m.pop("density"))
    dtype = data.get("dtype") or data.get("out_dtype")
    tokenizer = data.get("tokenizer_source")
    if isinstance(data.get("tokenizer"), dict):
        tokenizer = data["tokenizer"].get("source", tokenizer)
    recipe_data: dict[str, Any] = {
        "method": method,
        "base": base,
        "models": recipe_models,
        "parameters": g_params,
        "overrides": overrides,
    }
    if dtype:
        if dtype not in _MK_DTYPES:
            raise RecipeError(f"mergekit dtype {dtype!r} is not supported; use float32, float16 or bfloat16")
        recipe_data["dtype"] = _MK_DTYPES[dtype]
    if tokenizer and tokenizer != "base":
        if tokenizer == "union":
            raise RecipeError("mergekit tokenizer_source: union is not supported; use base or a model")
        recipe_data["tokenizer_source"] = _model_ref(tokenizer)
    try:
        return Recipe.model_validate(recipe_data)
    except ValidationError as exc:  # report in mergekit terms, on one line
        raise RecipeError(f"mergekit config could not be converted: {format_validation(exc)}") from None


def recipe_to_mergekit(recipe: Recipe) -> tuple[str | None, list[str]]:
    """mergekit YAML equivalent to ``recipe`` (None if there is none), and the differences."""
    notes: list[str] = []
    mk_method = _TO_MERGEKIT.get(recipe.method)
    if mk_method is None:
        return None, [f"mergekit has no {recipe.method!r} method"]
    method = recipe.merge_method
    g = dict(recipe.parameters)
    out: dict[str, Any] = {"merge_method": mk_method}
    if recipe.base and method.needs_base:
        # mergekit merges a linear config's base_model as one more model (and wants its weight)
        out["base_model"] = recipe.base
    per_model_names = {p.name for p in method.model_params()}
    if mk_method == "slerp":
        out["base_model"] = recipe.models[0].model
        out["models"] = [{"model": recipe.models[0].model}, {"model": recipe.models[1].model}]
    else:
        models = []
        for entry in recipe.models:
            params = {}
            for spec in method.model_params():
                value = entry.parameters.get(spec.name, g.get(spec.name, spec.default))
                if spec.name == "drop_rate":
                    params["density"] = _complement(value)
                else:
                    params[spec.name] = value
            for alias in ("density", "drop_rate"):
                if alias in entry.parameters and alias not in per_model_names:
                    params["density"] = (
                        entry.parameters[alias] if alias == "density" else _complement(entry.parameters[alias])
                    )
            models.append({"model": entry.model, "parameters": params} if params else {"model": entry.model})
        out["models"] = models
    gparams: dict[str, Any] = {}
    for spec in method.global_params():
        value = g.get(spec.name, spec.default)
        if spec.name == "rescale":
            if value == "inverse":
                notes.append(
                    "rescale: fusion_ui multiplies DARE survivors by 1/(1-p) (the paper); mergekit can "
                    "only match the L1 norm (rescale: true), so results differ slightly"
                )
            gparams["rescale"] = value != "none"
        elif spec.name == "on_deltas":
            if value:
                notes.append("slerp of task vectors (on_deltas) has no mergekit equivalent; exported as plain slerp")
        else:
            gparams[spec.name] = value
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
    if method.uses_seed:
        notes.append(f"random masks: fusion_ui seeds them (seed {recipe.seed}); mergekit's differ on every run")
    if recipe.include or recipe.exclude:
        notes.append("include/exclude patterns (tensors kept from the base) have no mergekit equivalent")
    if recipe.overrides:
        notes.append("per-pattern/per-layer overrides have no exact mergekit equivalent; not exported")
    notes.append("fusion_ui computes in float32; mergekit in the models' dtype, so results differ by rounding")
    header = "".join(f"# note: {n}\n" for n in notes)
    text = "# mergekit config equivalent to this fusion_ui recipe (written by fusion_ui)\n" + header
    return text + yaml.safe_dump(out, sort_keys=False), notes


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


def _complement(value: Any) -> Any:
    """density <-> drop_rate, rounded so 1 - 0.9 prints as 0.1."""
    if isinstance(value, list):
        return [round(1.0 - float(v), 12) for v in value]
    return round(1.0 - float(value), 12)


def _value(key: str, value: Any, overrides: list[Override], model: int | None) -> Any:
    """mergekit scalar, gradient list, or conditional [{filter, value}] list -> our value."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        default = None
        # mergekit: the first matching filter wins; ours: the last matching override wins.
        for cond in reversed(value):
            if "value" not in cond:
                raise RecipeError(
                    f"mergekit parameter {key!r}: each entry of a filter list needs a `value:` "
                    f"(got {cond!r})"
                )
            if "filter" in cond and cond["filter"] is not None:
                params = {key: cond["value"]}
                overrides.append(Override(
                    match=[f"*{cond['filter']}*"],
                    parameters=params if model is None else {},
                    models={} if model is None else {model: params},
                ))
            else:
                default = cond["value"]
        if default is None:
            raise RecipeError(
                f"mergekit parameter {key!r}: a list of filters needs a last entry without a "
                f"filter (`- value: ...`) for the other tensors"
            )
        return default
    return value
