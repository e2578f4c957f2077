"""The Merge tab's controls as plain values (a RecipeForm), turned into a Recipe in one step.

The UI reads its controls into a :class:`RecipeForm` and never builds recipe dictionaries or
YAML itself; :func:`compose` applies what the controls mean (unticked fine-tunes left out, a
layer ramp, only the chosen method's parameters, the overrides box) and validates the result
once. YAML appears only at the edges: the recipe box under *Advanced*, files, exports.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from fusion_ui.dtypes import OUTPUT_DTYPES
from fusion_ui.errors import InputError, RecipeError
from fusion_ui.methods import get_method
from fusion_ui.recipe import Recipe, recipe_from_dict

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when there: ~10x faster


@dataclass(frozen=True)
class RecipeForm:
    """What the Merge tab's controls hold. Slots follow the selection's fine-tunes in order."""

    method: str
    base: str
    models: Sequence[str]  # the selection's fine-tunes, one per slot
    use: Sequence[bool]  # per slot: in the merge or not
    per_model: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # parameter -> one value per slot
    globals: Mapping[str, Any] = field(default_factory=dict)  # parameter -> value
    seed: Any = 0
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    ramp: tuple[str, float, float] | None = None  # (parameter, first layer's value, last layer's value)
    overrides: str = ""  # the overrides box: a YAML list
    dtype: str | None = None  # one of OUTPUT_DTYPES, or None for the base's


def parse_recipe(text: str) -> Recipe:
    """A recipe from YAML text (the recipe box, a script); every mistake a RecipeError naming the field."""
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise RecipeError(f"the recipe is not valid YAML: {exc}") from None
    return recipe_from_dict(data)


def compose(form: RecipeForm) -> Recipe:
    """The recipe the controls describe, validated once."""
    method = get_method(form.method)
    specs = {p.name: p for p in method.params}
    ramp = form.ramp if form.ramp is not None and form.ramp[0] in specs else None
    ramp_values = [float(ramp[1]), float(ramp[2])] if ramp else []
    models = []
    for i, ref in enumerate(form.models):
        if i < len(form.use) and not form.use[i]:
            continue
        entry: dict[str, Any] = {"model": ref}
        for name, spec in specs.items():
            if spec.per_model and name in form.per_model and i < len(form.per_model[name]):
                entry[name] = ramp_values if ramp and ramp[0] == name else _plain(form.per_model[name][i], spec.kind)
        models.append(entry)
    if not models:
        raise InputError("tick “use in the merge” for at least one fine-tune")
    parameters = {n: _plain(form.globals[n], s.kind) for n, s in specs.items() if not s.per_model and n in form.globals}
    if ramp and not specs[ramp[0]].per_model:
        parameters[ramp[0]] = ramp_values
    try:
        overrides = yaml.load(form.overrides or "", Loader=_YAML_LOADER) or []  # noqa: S506
    except yaml.YAMLError as exc:
        raise RecipeError(f"the overrides are not valid YAML: {exc}") from None
    if form.dtype and form.dtype not in OUTPUT_DTYPES:
        raise RecipeError(f"unknown output dtype {form.dtype!r}; one of {', '.join(OUTPUT_DTYPES)}")
    data: dict[str, Any] = {
        "method": form.method, "base": form.base, "models": models, "parameters": parameters,
        "seed": _seed(form.seed), "include": list(form.include), "exclude": list(form.exclude),
        "overrides": overrides,
    }
    if form.dtype:
        data["dtype"] = form.dtype
    return recipe_from_dict(data)


def form_of(recipe: Recipe, models: Sequence[str]) -> tuple[RecipeForm, bool]:
    """What the controls show for ``recipe`` over the selection's fine-tunes ``models``, and
    whether they show it exactly (they hold one two-point ramp shared by every fine-tune; a
    recipe with more can only be merged as written). The inverse of :func:`compose`."""
    method = get_method(recipe.method)
    by_ref = {e.model: dict(e.parameters) for e in recipe.models}
    per_model: dict[str, list[Any]] = {}
    ramps: set[tuple[str, tuple[float, ...]]] = set()
    for spec in method.model_params():
        values = []
        for ref in models:
            entry = by_ref.get(ref)
            value = spec.value_in(entry) if entry is not None else None
            if value is None:
                value = spec.value_in(recipe.parameters)
            if isinstance(value, list):
                ramps.add((spec.name, tuple(float(v) for v in value)))
            values.append(value)
        per_model[spec.name] = values
    globals_: dict[str, Any] = {}
    for spec in method.global_params():
        value = spec.value_in(recipe.parameters)
        if isinstance(value, list):
            ramps.add((spec.name, tuple(float(v) for v in value)))
        globals_[spec.name] = value
    ramp = None
    exact = len(ramps) <= 1
    if ramps:
        name, anchors = sorted(ramps)[0]
        ramp = (name, anchors[0], anchors[-1])
        used = [v for v, ref in zip(per_model.get(name, []), models, strict=True) if ref in by_ref]
        exact = exact and len(anchors) == 2 and all(isinstance(v, list) for v in used)
    overrides = yaml.safe_dump([o.model_dump(exclude_defaults=True) for o in recipe.overrides],
                               sort_keys=False) if recipe.overrides else ""
    form = RecipeForm(
        method=recipe.method, base=recipe.base or "", models=list(models), use=[m in by_ref for m in models],
        per_model=per_model, globals=globals_, seed=recipe.seed, include=list(recipe.include),
        exclude=list(recipe.exclude), ramp=ramp, overrides=overrides, dtype=recipe.dtype,
    )
    return form, exact


def globs(text: str) -> list[str]:
    """Patterns from a box: comma- or line-separated."""
    return [g.strip() for g in (text or "").replace(",", "\n").splitlines() if g.strip()]


def _seed(value: Any) -> int:
    try:
        f = float(value or 0)
    except (TypeError, ValueError):
        raise InputError(f"the seed must be a whole number, got {value!r}") from None
    if f != f or f in (float("inf"), float("-inf")) or f != int(f):
        raise InputError(f"the seed must be a whole number, got {value!r}")
    return int(f)


def _plain(value: Any, kind: str) -> Any:
    if kind == "path":  # a text box: a folder, or nothing yet
        return "" if value is None else str(value).strip()
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return value


__all__ = ["OUTPUT_DTYPES", "RecipeForm", "compose", "form_of", "globs", "parse_recipe"]
