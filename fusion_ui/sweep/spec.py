"""The sweep YAML: a base recipe, one to three axes over its parameters, an eval set, a metric.

Example (``demo_grid.yaml``; relative paths are resolved against the sweep file's folder)::

    name: DARE-TIES drop rate x lambda
    recipe: ../recipes/dare_ties.yaml        # a recipe file, or the recipe itself inline
    axes:
      - parameter: drop_rate                 # a parameter of the method (either spelling:
        range: {start: 0.0, stop: 0.99, num: 10}   #   drop_rate or density), `method` or `seed`
      - parameter: lambda
        values: [0.5, 1.0, 1.5, 2.0]
      - parameter: weight
        model: expert_upper                  # per-model parameters: one model (index, reference
        values: [0.5, 1.0]                   #   or folder name); left out: every model
    eval:
      sets: [demo]                           # "demo" (the shipped sets) or .jsonl/.csv files/folders
      skills: [upper, shift, mirror]         # keep only these skills (default: all in the sets)
      items_per_skill: 50                    # the first N items of each skill (null: all)
      metric: exact_match                    # or contains
    best:
      by: mean                               # "mean" or a skill: the cell the sweep recommends
      pareto: [upper, shift]                 # optional: the front over two skills

Everything is checked once, when the file is loaded (:func:`load_sweep`): an unknown parameter
for the method, a value outside the parameter's range, too many axes, and every cell's recipe
(so that no cell fails halfway through a long sweep).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fusion_ui.errors import RecipeError
from fusion_ui.evals.harness import HarnessSpec
from fusion_ui.methods import METHODS
from fusion_ui.recipe import (
    Recipe,
    format_validation,
    load_recipe,
    recipe_from_dict,
    resolve_ref,
)

SWEEP_VERSION = 1
MAX_AXES = 3
MAX_CELLS = 10_000  # a grid past this is a typo in a range, not a plan
METHOD_AXIS = "method"  # axis parameters that are fields of the recipe, not method parameters
SEED_AXIS = "seed"
AxisValue = Union[bool, int, float, str]  # noqa: UP007 (pydantic reads it at runtime)


class SweepError(RecipeError):
    """A sweep file, or its results file, that cannot be used as it is."""


class ValueRange(BaseModel):
    """``num`` evenly spaced values from ``start`` to ``stop``, both included (like numpy's linspace)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: float
    stop: float
    num: int

    @field_validator("num")
    @classmethod
    def _some(cls, v: int) -> int:
        if not 1 <= v <= MAX_CELLS:
            raise ValueError(f"num must be a whole number from 1 to {MAX_CELLS}, got {v}")
        return v

    @field_validator("start", "stop")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"range ends must be finite numbers, got {v}")
        return v

    def points(self) -> list[float]:
        """The values, rounded to 12 decimals so that 0.1 * 3 reads 0.3 in tables and keys."""
        if self.num == 1:
            return [float(self.start)]
        step = (self.stop - self.start) / (self.num - 1)
        return [round(self.start + k * step, 12) for k in range(self.num - 1)] + [float(self.stop)]


class Axis(BaseModel):
    """One dimension of the grid: a parameter (and, for per-model ones, which model) and its values."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parameter: str  # a method parameter (either spelling), "method" or "seed"
    model: Union[int, str, None] = None  # noqa: UP007  per-model parameters: one model; None: every model
    values: list[AxisValue] | None = None
    range: ValueRange | None = None
    name: str | None = None  # column name in the results (default: parameter, or parameter[model])

    @model_validator(mode="after")
    def _values_or_range(self) -> Axis:
        if (self.values is None) == (self.range is None):
            raise ValueError("give an axis either `values: [...]` or `range: {start, stop, num}`")
        if self.values is not None and not self.values:
            raise ValueError("an axis needs at least one value")
        return self

    def raw_values(self) -> list[AxisValue]:
        return list(self.values) if self.values is not None else list(self.range.points())  # type: ignore[union-attr]


class EvalSpec(BaseModel):
    """What each cell is scored on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sets: list[str] = Field(
        default_factory=lambda: ["demo"]
    )  # "demo", or .jsonl/.csv files or folders
    skills: list[str] | None = None  # keep only these skills, in this order
    items_per_skill: int | None = 50  # the first N items of each skill; None: all
    metric: Literal["exact_match", "contains"] = "exact_match"
    batch_size: int = 200  # prompts generated at once
    # lm-evaluation-harness tasks instead of the sets: the tasks are the skills
    harness: HarnessSpec | None = None

    @model_validator(mode="after")
    def _sets_or_harness(self) -> EvalSpec:
        both = {"sets", "skills", "items_per_skill", "metric", "batch_size"} & self.model_fields_set
        if self.harness is not None and both:
            raise ValueError(
                f"harness: replaces {', '.join(sorted(both))}: its tasks are the skills, "
                "harness.metric the metric and harness.limit the items per task; leave "
                f"{'it' if len(both) == 1 else 'them'} out"
            )
        return self

    @field_validator("sets", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("items_per_skill", "batch_size")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be a whole number >= 1, got {v}")
        return v


class BestSpec(BaseModel):
    """Which cell the sweep recommends."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    by: str = "mean"  # "mean" (over the skills) or one skill
    pareto: tuple[str, str] | None = None  # also report the Pareto front over these two skills


class SweepSpec(BaseModel):
    """The sweep file as written (paths not yet resolved, the recipe not yet loaded)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fusion_ui_sweep: int = SWEEP_VERSION  # sweep format version
    name: str | None = None
    recipe: Union[str, dict[str, Any]]  # noqa: UP007  a recipe file, or the recipe inline
    axes: list[Axis]
    eval: EvalSpec = Field(default_factory=EvalSpec)
    best: BestSpec = Field(default_factory=BestSpec)

    @field_validator("axes")
    @classmethod
    def _axis_count(cls, v: list[Axis]) -> list[Axis]:
        if not 1 <= len(v) <= MAX_AXES:
            raise ValueError(
                f"a sweep has 1 to {MAX_AXES} axes, got {len(v)}; fix the others in the recipe"
            )
        return v


@dataclass(frozen=True)
class ResolvedAxis:
    """An axis checked against the recipe: its values coerced, its model an index."""

    parameter: str  # as written (``density`` stays ``density``; the recipe owns the complement)
    label: str  # column name in the results
    values: tuple[AxisValue, ...]
    model: int | None = None  # per-model parameters: the model's index; None: every model
    per_model: bool = False  # a per-model parameter (set on each model entry), else a global one

    @property
    def kind(self) -> Literal["method", "seed", "parameter"]:
        if self.parameter == METHOD_AXIS:
            return "method"
        if self.parameter == SEED_AXIS:
            return "seed"
        return "parameter"


@dataclass(frozen=True)
class Sweep:
    """A loaded, checked sweep: what :func:`fusion_ui.sweep.run_sweep` takes."""

    spec: SweepSpec
    recipe: Recipe  # the base recipe, paths resolved
    axes: tuple[ResolvedAxis, ...]
    source: Path | None = None  # the sweep file, when it came from one (results go next to it)
    folder: Path | None = None  # where relative paths of the file are resolved
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        if self.spec.name:
            return self.spec.name
        return self.source.stem if self.source is not None else "sweep"

    @cached_property
    def harness(self) -> HarnessSpec | None:
        """The harness tasks that score each cell (``include_path`` resolved), or None."""
        spec = self.spec.eval.harness
        if spec is None or spec.include_path is None:
            return spec
        return spec.model_copy(update={"include_path": resolve_ref(spec.include_path, self.folder)})

    @cached_property
    def items(self) -> list[Any]:
        """The eval items every cell is scored on (:class:`fusion_ui.evals.EvalItem`); none
        when harness tasks score the cells."""
        if self.harness is not None:
            return []
        return eval_items(self.spec.eval, self.folder)

    @property
    def skills(self) -> list[str]:
        """The skills in the results, in order (the harness tasks, for a harness eval)."""
        if self.harness is not None:
            return list(self.harness.tasks)
        seen: dict[str, None] = {}
        for item in self.items:
            seen.setdefault(item.skill, None)
        return list(seen)

    @cached_property
    def fingerprint(self) -> str:
        """12 hex digits that change when anything but the axes' values changes (the base recipe,
        the axes' parameters, the eval items, the metric): results of another fingerprint are not
        resumed."""
        data = {
            "recipe": self.recipe.model_dump(mode="json"),
            "axes": [[a.parameter, a.model, a.label] for a in self.axes],
            "items": [[i.prompt, i.answer, i.skill] for i in self.items],
            "metric": self.spec.eval.metric,
        }
        if self.harness is not None:
            data["harness"] = self.harness.fingerprint_data()
        blob = json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:12]

    def results_path(self, out: str | Path | None = None) -> Path:
        """``<stem>.results.csv`` in ``out``, else next to the sweep file, else in the working folder."""
        stem = self.source.stem if self.source is not None else "sweep"
        folder = (
            Path(out)
            if out is not None
            else (self.source.parent if self.source is not None else Path.cwd())
        )
        return folder / f"{stem}.results.csv"

    def best_path(self, out: str | Path | None = None) -> Path:
        """Where the best cell's recipe is written: ``<stem>.best.yaml`` beside the results."""
        results = self.results_path(out)
        return results.with_name(results.name.replace(".results.csv", ".best.yaml"))


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file (every cell's recipe included)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SweepError(f"cannot read sweep {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SweepError(
            f"{path} is not a valid YAML text file: {str(exc).splitlines()[0]}"
        ) from exc
    return sweep_from_dict(data, folder=path.resolve().parent, source=path.resolve())


def sweep_from_dict(data: Any, *, folder: Path | None = None, source: Path | None = None) -> Sweep:
    """Validate a parsed sweep: the spec, the base recipe, every axis, and every cell."""
    where = str(source) if source is not None else "sweep"
    if not isinstance(data, dict):
        raise SweepError(f"{where}: a sweep must be a YAML mapping with recipe:, axes: and eval:")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SweepError(f"{where}: {format_validation(exc)}") from None
    if spec.fusion_ui_sweep != SWEEP_VERSION:
        raise SweepError(
            f"{where}: fusion_ui_sweep {spec.fusion_ui_sweep} is not a version this release "
            f"reads ({SWEEP_VERSION}); upgrade fusion-ui"
        )
    if isinstance(spec.recipe, str):
        recipe_file = Path(resolve_ref(spec.recipe, folder))
        recipe = load_recipe(recipe_file)
    else:
        recipe = recipe_from_dict(spec.recipe, folder=folder, source=f"{where}: recipe")
    axes, warnings = _resolve_axes(spec, recipe, where)
    sweep = Sweep(
        spec=spec,
        recipe=recipe,
        axes=tuple(axes),
        source=source,
        folder=folder,
        warnings=tuple(warnings),
    )
    from fusion_ui.sweep.cells import grid_cells  # the grid is the cells module's concept

    grid_cells(sweep)  # every cell's recipe validated now, not at cell 57
    if sweep.harness is not None:
        from fusion_ui.evals.harness import check_tasks

        try:
            check_tasks(sweep.harness)  # the harness installed, every task known
        except RecipeError as exc:
            raise SweepError(f"{where}: {exc}") from None
    skills = sweep.skills
    for key, skill in [
        ("best.by", spec.best.by),
        *(("best.pareto", s) for s in spec.best.pareto or ()),
    ]:
        if skill != "mean" or key != "best.by":
            if skill not in skills:
                raise SweepError(
                    f"{where}: {key} names skill {skill!r}, which the eval sets do not have; "
                    f"use mean or one of {', '.join(skills)}"
                )
    return sweep


def eval_items(spec: EvalSpec, folder: Path | None) -> list[Any]:
    """The eval items of ``spec``: the sets loaded, the skills kept, the first N of each."""
    from fusion_ui.evals.sets import demo_eval_set, limit_per_skill, load_eval_sets

    items = []
    for ref in spec.sets:
        items.extend(
            demo_eval_set() if ref == "demo" else load_eval_sets([resolve_ref(ref, folder)])
        )
    if spec.skills is not None:
        present = {i.skill for i in items}
        missing = [s for s in spec.skills if s not in present]
        if missing:
            raise SweepError(
                f"eval.skills: {', '.join(missing)} not in the eval sets; they have "
                f"{', '.join(sorted(present))}"
            )
        items = [i for s in spec.skills for i in items if i.skill == s]
    return limit_per_skill(items, spec.items_per_skill)


def _resolve_axes(
    spec: SweepSpec, recipe: Recipe, where: str
) -> tuple[list[ResolvedAxis], list[str]]:
    axes: list[ResolvedAxis] = []
    warnings: list[str] = []
    method_axis = next((a for a in spec.axes if a.parameter == METHOD_AXIS), None)
    methods = (
        [str(v) for v in method_axis.raw_values()] if method_axis is not None else [recipe.method]
    )
    for j, axis in enumerate(spec.axes):
        at = f"{where}: axes[{j}] ({axis.parameter})"
        raw = axis.raw_values()
        if axis.parameter == METHOD_AXIS:
            unknown = [v for v in raw if not isinstance(v, str) or v not in METHODS]
            if unknown:
                raise SweepError(
                    f"{at}: unknown method(s) {unknown}; known methods: {', '.join(METHODS)}"
                )
            if axis.model is not None:
                raise SweepError(f"{at}: the method is one for the whole merge; drop `model:`")
            axes.append(ResolvedAxis(METHOD_AXIS, axis.name or METHOD_AXIS, tuple(raw)))
            continue
        if axis.parameter == SEED_AXIS:
            values = tuple(_seed(v, at) for v in raw)
            if axis.model is not None:
                raise SweepError(f"{at}: the seed is one for the whole merge; drop `model:`")
            axes.append(ResolvedAxis(SEED_AXIS, axis.name or SEED_AXIS, values))
            continue
        per_model: bool | None = None
        values_out: tuple[AxisValue, ...] = ()
        for method_name in methods:
            m = METHODS[method_name]
            try:
                spec_ = m.param_for(axis.parameter)
            except RecipeError as exc:
                raise SweepError(f"{at}: {exc}; or sweep `method` or `seed`") from None
            per_model = spec_.per_model
            complement = axis.parameter != spec_.name
            checked = []
            for k, v in enumerate(raw):
                try:
                    value = _complement(v, at) if complement else v
                    value = spec_.check(value, "")
                except RecipeError as exc:
                    raise SweepError(f"{at}: values[{k}]: {exc}") from None
                checked.append(round(1.0 - value, 12) if complement else value)
            values_out = tuple(checked)
        index: int | None = None
        if axis.model is not None:
            if not per_model:
                raise SweepError(
                    f"{at}: {axis.parameter} is a global parameter, one for the whole merge; "
                    "drop `model:`"
                )
            index = _model_index(recipe, axis.model, at)
        label = axis.name or (
            axis.parameter
            if index is None
            else f"{axis.parameter}[{_short(recipe.models[index].model)}]"
        )
        axes.append(ResolvedAxis(axis.parameter, label, values_out, index, bool(per_model)))
        names = set(METHODS[methods[0]].param_for(axis.parameter).names())
        for k, ov in enumerate(recipe.overrides):
            touched = names & {*ov.parameters, *(n for vals in ov.models.values() for n in vals)}
            if touched:
                warnings.append(
                    f"overrides[{k}] ({ov.describe()}) sets {', '.join(sorted(touched))}: "
                    f"the axis {axis.parameter} does not reach the tensors it selects"
                )
    labels = [a.label for a in axes]
    if len(set(labels)) != len(labels):
        raise SweepError(
            f"{where}: two axes sweep the same thing ({', '.join(labels)}); merge their "
            "values into one axis, or give each a distinct `name:`"
        )
    if (
        len([a for a in axes if a.kind == "method"]) > 1
        or len([a for a in axes if a.kind == "seed"]) > 1
    ):
        raise SweepError(f"{where}: at most one method axis and one seed axis")
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_CELLS:
        raise SweepError(
            f"{where}: the grid has {count} cells, more than {MAX_CELLS}; use fewer values"
        )
    return axes, warnings


def _seed(value: Any, at: str) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or float(value) != int(value)
        or not 0 <= int(value) < 2**63
    ):
        raise SweepError(f"{at}: a seed is a whole number from 0 to 2**63 - 1, got {value!r}")
    return int(value)


def _complement(value: Any, at: str) -> float:
    from fusion_ui.methods.params import complement_value

    out = complement_value(value, f"{at}: ")
    return float(out)  # type: ignore[arg-type]


def _model_index(recipe: Recipe, key: int | str, at: str) -> int:
    """A model named by index, by its reference as the recipe gives it, or by its folder's name."""
    refs = [e.model for e in recipe.models]
    if isinstance(key, int) or key.isdigit():
        i = int(key)
        if 0 <= i < len(refs):
            return i
    else:
        for i, ref in enumerate(refs):
            if key in (ref, _short(ref)) or resolve_ref(key, None) == ref:
                return i
    raise SweepError(
        f"{at}: model {key!r} is not in the recipe; use an index 0..{len(refs) - 1} or one of "
        f"{', '.join(_short(r) for r in refs)}"
    )


def _short(ref: str) -> str:
    """A model's short name: its folder's name, or the hub id as it is."""
    p = Path(ref)
    return p.name if p.is_absolute() else ref


__all__ = [
    "MAX_AXES",
    "MAX_CELLS",
    "Axis",
    "BestSpec",
    "EvalSpec",
    "ResolvedAxis",
    "Sweep",
    "SweepError",
    "SweepSpec",
    "ValueRange",
    "eval_items",
    "load_sweep",
    "sweep_from_dict",
]
