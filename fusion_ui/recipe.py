"""Recipes: a YAML file that fully describes a merge, and its per-tensor parameter resolution.

Example::

    method: dare_ties
    base: ./base                      # folder or hub id (org/name@revision)
    models:
      - model: ./expert_a
        weight: 0.5
        drop_rate: 0.9
      - model: ./expert_b
        weight: 0.5
        drop_rate: [0.95, 0.8]        # a ramp: 0.95 at the first layer -> 0.8 at the last
    parameters: {lambda: 1.0, rescale: inverse}
    seed: 0
    dtype: bfloat16                   # default: the base's dtype
    tokenizer_source: base            # base, model:N, or a folder/hub id
    exclude: ["*embed_tokens*", "lm_head.*"]   # taken from the base unchanged
    overrides:
      - match: "*.self_attn.*"
        layers: [0, 3]
        parameters: {drop_rate: 0.5}

Relative paths are resolved against the recipe file's folder first, then the working folder.

Optional ``weights_from:`` says where the models' weights came from when they were computed
rather than set by hand (:class:`WeightsFrom`; LM-Cocktail, :mod:`fusion_ui.tune.cocktail`)::

    weights_from:
      method: lm_cocktail             # w = softmax(-loss / T), then the base floor
      examples: 5                     # how many examples were scored
      examples_sha256: 9f2c...        # of the examples as scored (fusion_ui.tune.examples_sha256)
      temperature: 5.0
      base_floor: 0.0
      candidates:                     # one per entry of models:, in the same order
        - {label: base, loss: 2.31, weight: 0.0621}        # loss: nats per answer token
        - {label: expert_upper, loss: 0.0114, weight: 0.9379}   # weight: as computed

It is a record, not an input: the merge uses the ``models:`` weights (which the user may have
edited), and the model card shows both.

Optional ``slices:`` build the output's layer stack from layer ranges of the models (a
frankenmerge, mergekit's ``slices:``), each slice merged by ``method`` from its sources::

    method: passthrough               # one source per slice: its layers copied (times `scale`)
    slices:
      - sources: [{model: ./a, layer_range: [0, 24]}]         # [first, end): layers 0..23 of a
      - sources: [{model: ./b, layer_range: [8, 32], scale: 1.0}]

With several sources per slice (each covering the same number of layers), the slice's layers are
merged by ``method`` (slerp, linear, ...; the base, where the method reads one, is the source that
is ``base:``). ``models:`` is then derived: each model the slices name, once, in order. Embeddings
come from the first slice's sources and the final norm and head from the last slice's, as in
mergekit. Also as in mergekit: a ramp runs over each slice's layers (0 at its first, 1 at its last;
a one-layer slice sits at 1), tensors outside the layer stack sit at 0, and parameters are read
narrowest first (a source's, then its slice's, then the recipe's; a pattern in ``overrides:`` at
each level wins over that level's plain values); per-source values match the source's own tensor
name, global values the output's.
"""

from __future__ import annotations

import fnmatch
import math
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fusion_ui.dtypes import Dtype
from fusion_ui.errors import RecipeError
from fusion_ui.mergekit_compat import is_mergekit_config, recipe_from_mergekit
from fusion_ui.methods import MergeMethod, get_method
from fusion_ui.methods.params import ParamSpec, as_number, complement_value
from fusion_ui.tensor_names import is_input_side, layer_index

RECIPE_VERSION = 1
ParamValue = Union[bool, int, float, str, list[float]]  # noqa: UP007 (pydantic reads it at runtime)


class ModelEntry(BaseModel):
    """One model of the merge and its per-model parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str  # folder or hub id (org/name[@revision])
    parameters: dict[str, ParamValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat_parameters(cls, data: Any) -> Any:
        """Accept ``{model: x, weight: 0.5}`` as well as ``{model: x, parameters: {weight: 0.5}}``."""
        if isinstance(data, str):
            return {"model": data}
        if isinstance(data, dict):
            data = dict(data)
            params = dict(data.pop("parameters", None) or {})
            for key in [k for k in data if k != "model"]:
                params[key] = data.pop(key)
            data["parameters"] = params
        return data


class SliceSource(BaseModel):
    """One model's layer range in a slice, and its per-model parameters there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str  # folder or hub id, as in models:
    layer_range: tuple[int, int]  # [first, end): half-open, as mergekit writes it
    parameters: dict[str, ParamValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _flat_parameters(cls, data: Any) -> Any:
        """Accept ``{model, layer_range, scale: 0.5}`` as well as ``parameters: {scale: 0.5}``."""
        if isinstance(data, dict):
            data = dict(data)
            params = dict(data.pop("parameters", None) or {})
            for key in [k for k in data if k not in ("model", "layer_range")]:
                params[key] = data.pop(key)
            data["parameters"] = params
        return data

    @field_validator("layer_range")
    @classmethod
    def _ordered_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 0 or v[1] <= v[0]:
            raise ValueError(f"layer_range must be [first, end) with 0 <= first < end, got {list(v)}")
        return v

    @property
    def num_layers(self) -> int:
        return self.layer_range[1] - self.layer_range[0]


class Slice(BaseModel):
    """Consecutive output layers: the sources' layer ranges, merged by the recipe's method."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sources: list[SliceSource] = Field(min_length=1)
    parameters: dict[str, ParamValue] = Field(default_factory=dict)  # for this slice's tensors
    overrides: list[Override] = Field(default_factory=list)  # `models:` keys: source indices

    @field_validator("overrides")
    @classmethod
    def _source_indices(cls, v: list[Override]) -> list[Override]:
        """Source indices read back from YAML/JSON as text ("0") are the same as 0."""
        return [ov.model_copy(update={"models": {int(k) if str(k).isdigit() else k: vals
                                                 for k, vals in ov.models.items()}}) for ov in v]

    @property
    def num_layers(self) -> int:
        return self.sources[0].num_layers


class Override(BaseModel):
    """Parameter values for the tensors that match a name pattern and/or a layer range."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: list[str] = Field(default_factory=lambda: ["*"])  # globs, or "re:<regex>"
    layers: tuple[int, int] | None = None  # inclusive layer range; tensors outside layers never match
    parameters: dict[str, ParamValue] = Field(default_factory=dict)  # global, or per-model for all
    models: dict[Union[int, str], dict[str, ParamValue]] = Field(default_factory=dict)  # noqa: UP007

    @field_validator("match", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("match")
    @classmethod
    def _valid_patterns(cls, v: list[str]) -> list[str]:
        return _valid_patterns(v)

    @field_validator("layers")
    @classmethod
    def _ordered_layers(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 0 or v[1] < v[0]):
            raise ValueError(f"layers must be [first, last] with 0 <= first <= last, got {list(v)}")
        return v

    def describe(self) -> str:
        """The override's selection, as a recipe writes it."""
        where = f"match {self.match if len(self.match) > 1 else self.match[0]!r}"
        return where + (f", layers {list(self.layers)}" if self.layers is not None else "")

    def applies_to(self, name: str, layer: int | None) -> bool:
        if self.layers is not None:
            if layer is None or not self.layers[0] <= layer <= self.layers[1]:
                return False
        return name_matches(name, self.match)


Slice.model_rebuild()


class CandidateScore(BaseModel):
    """One candidate's loss on the examples and the weight it gave (``weights_from.candidates``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str  # short name of the model (the matching `models:` entry holds its reference)
    loss: float  # mean answer-only cross-entropy on the examples, nats per scored token
    weight: float  # the weight as computed (before any edit), in [0, 1]

    @field_validator("loss")
    @classmethod
    def _finite_loss(cls, v: float) -> float:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"a loss is a finite number >= 0, got {v}")
        return v

    @field_validator("weight")
    @classmethod
    def _share(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise ValueError(f"a computed weight is between 0 and 1, got {v}")
        return v


class WeightsFrom(BaseModel):
    """Where a recipe's weights came from: LM-Cocktail's softmax of a few examples' losses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["lm_cocktail"] = "lm_cocktail"  # how the weights were computed
    examples: int  # how many examples were scored
    examples_sha256: str  # hex SHA-256 of the examples as scored (fusion_ui.tune.examples_sha256)
    temperature: float  # T of softmax(-loss / T)
    base_floor: float = 0.0  # the least weight the base got (0: no floor)
    candidates: list[CandidateScore]  # one per entry of the recipe's `models:`, same order

    @field_validator("examples")
    @classmethod
    def _some_examples(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"weights are computed from at least 1 example, got {v}")
        return v

    @field_validator("examples_sha256")
    @classmethod
    def _hex_digest(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("examples_sha256 must be a SHA-256 digest: 64 lowercase hex digits")
        return v

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"temperature must be a number above 0, got {v}")
        return v

    @field_validator("base_floor")
    @classmethod
    def _floor_share(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise ValueError(f"base_floor must be between 0 and 1, got {v}")
        return v


class Recipe(BaseModel):
    """A complete, reproducible description of a merge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fusion_ui: int = RECIPE_VERSION  # recipe format version
    method: str
    base: str | None = None  # θ0; required by methods that use task vectors
    models: list[ModelEntry]
    parameters: dict[str, ParamValue] = Field(default_factory=dict)
    seed: int = 0
    dtype: Dtype | None = None  # output dtype; None = the base's (or first model's) dtype
    tokenizer_source: str = "base"  # "base", "model:N", or a folder / hub id
    include: list[str] = Field(default_factory=list)  # if set, only these tensors are merged
    exclude: list[str] = Field(default_factory=list)  # these tensors come from the base unchanged
    overrides: list[Override] = Field(default_factory=list)
    vocab: Literal["crop_to_base", "error"] = "crop_to_base"  # embeddings with extra rows
    name: str | None = None  # shown in the model card
    weights_from: WeightsFrom | None = None  # where computed weights came from (a record, see above)
    slices: list[Slice] = Field(default_factory=list)  # a layer stack (see above); [] = whole models

    @model_validator(mode="before")
    @classmethod
    def _models_from_slices(cls, data: Any) -> Any:
        """With ``slices:``, ``models:`` is each model the slices name, once (derived if left out)."""
        if isinstance(data, dict) and data.get("slices") and not data.get("models"):
            refs: list[str] = []
            for sl in data["slices"]:
                for src in (sl.get("sources") or []) if isinstance(sl, dict) else []:
                    ref = src.get("model") if isinstance(src, dict) else None
                    if isinstance(ref, str) and ref not in refs:
                        refs.append(ref)
            data = {**data, "models": [{"model": r} for r in refs]}
        return data

    @model_validator(mode="after")
    def _slices_name_the_models(self) -> Recipe:
        if not self.slices:
            return self
        refs = list(dict.fromkeys(src.model for sl in self.slices for src in sl.sources))
        if [e.model for e in self.models] != refs or any(e.parameters for e in self.models):
            raise ValueError(
                "with slices:, leave models: out (it is each model the slices name, once); give "
                "per-model parameters on the slices' sources"
            )
        return self

    @model_validator(mode="after")
    def _one_score_per_model(self) -> Recipe:
        if self.weights_from is not None and len(self.weights_from.candidates) != len(self.models):
            raise ValueError(
                f"weights_from lists {len(self.weights_from.candidates)} candidates for "
                f"{len(self.models)} models; it records one per entry of models: (drop weights_from "
                "when the models change)"
            )
        return self

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < 2**63:
            raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {v}")
        return v

    @field_validator("include", "exclude")
    @classmethod
    def _valid_patterns(cls, v: list[str]) -> list[str]:
        return _valid_patterns(v)

    @cached_property
    def merge_method(self) -> MergeMethod:
        return get_method(self.method)

    # -- validation that needs the method ------------------------------------------------

    def validate_for_method(self) -> None:
        """Check model counts and every parameter name and value (ramp anchors included)."""
        m = self.merge_method
        n = len(self.models)
        if m.needs_base and not self.base:
            raise RecipeError(f"method {m.name!r} needs a base model: set `base:` in the recipe")
        if not self.base:
            for where, values in [("parameters", self.parameters),
                                  *((f"overrides[{j}].parameters", o.parameters) for j, o in enumerate(self.overrides))]:
                if m.needs_base_with(values):
                    raise RecipeError(
                        f"method {m.name!r} with these {where} needs a base model: set `base:` in the "
                        "recipe (or change the parameter that uses it, e.g. on_deltas: false)"
                    )
        if self.slices:
            self._validate_slices(m)
        elif n < m.min_models:
            raise RecipeError(f"method {m.name!r} needs at least {m.min_models} model(s), got {n}")
        if not self.slices and m.max_models is not None and n > m.max_models:
            raise RecipeError(f"method {m.name!r} takes at most {m.max_models} model(s), got {n}")
        _check_values(m, self.parameters, "parameters.", allow_per_model=True)
        for i, entry in enumerate(self.models):
            _check_values(m, entry.parameters, f"models[{i}].", allow_per_model=True, only_per_model=True)
        for j, ov in enumerate(self.overrides):
            _check_values(m, ov.parameters, f"overrides[{j}].parameters.", allow_per_model=True)
            for key, values in ov.models.items():
                self.model_index(key)  # raises if unknown
                _check_values(m, values, f"overrides[{j}].models[{key}].", allow_per_model=True, only_per_model=True)
        if self.tokenizer_source.startswith("model:"):
            self.model_index(self.tokenizer_source[len("model:"):])
        # a recipe changed with model_copy skipped the field validators: patterns once more
        for where, patterns in [
            ("include", self.include), ("exclude", self.exclude),
            *((f"overrides[{j}].match", ov.match) for j, ov in enumerate(self.overrides)),
        ]:
            try:
                _valid_patterns(patterns)
            except ValueError as exc:
                raise RecipeError(f"{where}: {exc}") from None

    def _validate_slices(self, m: MergeMethod) -> None:
        """Each slice's source count, ranges and parameters (the models' layer counts and
        shapes are checked against the opened checkpoints: :func:`fusion_ui.slices.plan_slices`)."""
        for j, ov in enumerate(self.overrides):
            if ov.models:
                raise RecipeError(
                    f"overrides[{j}].models: with slices:, per-model overrides go in the slice "
                    "(slices[i].overrides, keyed by source index)"
                )
        for i, sl in enumerate(self.slices):
            where = f"slices[{i}]"
            counts = [src.num_layers for src in sl.sources]
            if len(set(counts)) > 1:
                raise RecipeError(
                    f"{where}: every source of a slice covers the same number of layers; the "
                    f"layer_ranges give {', '.join(map(str, counts))}"
                )
            refs = [src.model for src in sl.sources]
            with_base = m.needs_base and self.base in refs
            n = len(refs) - with_base
            if m.needs_base and not with_base:
                raise RecipeError(
                    f"{where}: method {m.name!r} reads the base's layers, so the base {self.base} "
                    "must be one of the slice's sources (with its layer_range)"
                )
            if n < m.min_models:
                raise RecipeError(f"{where}: method {m.name!r} needs at least {m.min_models} source(s) "
                                  f"besides the base, got {n}")
            if m.max_models is not None and n > m.max_models:
                raise RecipeError(f"{where}: method {m.name!r} takes at most {m.max_models} source(s) "
                                  f"per slice, got {n}")
            if len(set(refs)) < len(refs):
                raise RecipeError(f"{where}: a model appears twice among the sources; give it once")
            _check_values(m, sl.parameters, f"{where}.parameters.", allow_per_model=True)
            for k, src in enumerate(sl.sources):
                _check_values(m, src.parameters, f"{where}.sources[{k}].", allow_per_model=True,
                              only_per_model=True)
            for j, ov in enumerate(sl.overrides):
                _check_values(m, ov.parameters, f"{where}.overrides[{j}].parameters.", allow_per_model=True)
                for key, values in ov.models.items():
                    if not (str(key).isdigit() and int(key) < len(sl.sources)):
                        raise RecipeError(
                            f"{where}.overrides[{j}].models: {key!r} is no source of the slice; use "
                            f"a source index 0..{len(sl.sources) - 1}"
                        )
                    _check_values(m, values, f"{where}.overrides[{j}].models[{key}].",
                                  allow_per_model=True, only_per_model=True)

    def resolve_slice(
        self, index: int | None, name: str, source_names: list[str], pos: float
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Global and per-source parameter values for one output tensor of a ``slices:`` recipe.

        ``index``: the slice whose settings apply; ``source_names``: the tensor's name in each
        of the slice's sources; ``pos``: its place on the ramps (see the module docstring).
        Narrowest first, as mergekit reads them: a source's, its slice's, the recipe's."""
        m = self.merge_method
        sl = self.slices[index] if index is not None else None

        def level(values: dict[str, Any], overrides: list[Override], tensor: str,
                  source: int | None) -> list[dict[str, Any]]:
            layer = layer_index(tensor)
            out = [values]
            for ov in overrides:
                if ov.applies_to(tensor, layer):
                    out.append(ov.parameters if source is None else
                               next((v for k, v in ov.models.items() if int(k) == source), {}))
            return out

        g_layers = level(self.parameters, self.overrides, name, None)
        if sl is not None:
            g_layers += level(sl.parameters, sl.overrides, name, None)
        g = {spec.name: _pick(spec, g_layers, pos, spec.default) for spec in m.global_params()}
        per_model = []
        for k, tensor in enumerate(source_names):
            layers = level(self.parameters, self.overrides, tensor, None)
            if sl is not None:
                layers += level(sl.parameters, sl.overrides, tensor, None)
                layers += [sl.sources[k].parameters] + level({}, sl.overrides, tensor, k)[1:]
            per_model.append({s.name: _pick(s, layers, pos, s.default) for s in m.model_params()})
        return g, per_model

    def updated(self, *, source: str = "recipe", **changes: Any) -> Recipe:
        """A copy with ``changes`` applied and validated like a loaded recipe (``model_copy``
        would skip the checks: a ``seed`` of -5 would pass)."""
        data = self.model_dump()
        data.update(changes)
        try:
            recipe = Recipe.model_validate(data)
        except ValidationError as exc:
            raise RecipeError(f"{source}: {format_validation(exc)}") from None
        recipe.validate_for_method()
        return recipe

    def selection_warnings(self, names: list[str], merged: list[str], num_layers: int | None) -> list[str]:
        """What the recipe's patterns and overrides select that is nothing: likely typos."""
        out = []
        for key, patterns in (("include", self.include), ("exclude", self.exclude)):
            for pat in patterns:
                if not any(name_matches(n, [pat]) for n in names):
                    out.append(f"{key} pattern {pat!r} matches no tensor of the model; check it for typos")
        layers = f"layers 0..{num_layers - 1}" if num_layers else "no numbered layers"
        for j, ov in enumerate(self.overrides):
            if any(ov.applies_to(n, layer_index(n)) for n in merged):
                continue
            unmerged = any(ov.applies_to(n, layer_index(n)) for n in names)
            why = (
                "only tensors that are not merged (include/exclude)" if unmerged
                else f"no tensor (the model has {layers})"
            )
            out.append(f"overrides[{j}] ({ov.describe()}) selects {why}, so it changes nothing")
        return out

    def model_index(self, key: int | str) -> int:
        """Index of a model named by position or by its reference string."""
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            i = int(key)
            if 0 <= i < len(self.models):
                return i
        else:
            for i, entry in enumerate(self.models):
                if entry.model == key:
                    return i
        raise RecipeError(
            f"no model {key!r} in the recipe: use an index 0..{len(self.models) - 1} or one of "
            f"{', '.join(e.model for e in self.models)}"
        )

    # -- per-tensor resolution -----------------------------------------------------------

    def is_merged(self, name: str) -> bool:
        """Whether a tensor is merged (True) or taken unchanged from the base (False)."""
        if self.include and not name_matches(name, self.include):
            return False
        return not (self.exclude and name_matches(name, self.exclude))

    def resolve(self, name: str, num_layers: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Global and per-model parameter values for one tensor, ramps evaluated."""
        m = self.merge_method
        layer = layer_index(name)
        pos = ramp_position(name, layer, num_layers)
        global_layers = [self.parameters] + [
            ov.parameters for ov in self.overrides if ov.applies_to(name, layer)
        ]
        g: dict[str, Any] = {}
        for spec in m.global_params():
            g[spec.name] = _pick(spec, global_layers, pos, spec.default)
        per_model: list[dict[str, Any]] = []
        for i, entry in enumerate(self.models):
            layers = [self.parameters, entry.parameters]
            for ov in self.overrides:
                if ov.applies_to(name, layer):
                    layers.append(ov.parameters)
                    for key, values in ov.models.items():
                        if self.model_index(key) == i:
                            layers.append(values)
            per_model.append({s.name: _pick(s, layers, pos, s.default) for s in m.model_params()})
        return g, per_model

    # -- files ---------------------------------------------------------------------------

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=False)
        data["models"] = [
            {"model": e.model, **e.parameters} for e in self.models
        ]
        if self.slices:
            del data["models"]  # derived from the slices
            data["slices"] = [
                {"sources": [{"model": src.model, "layer_range": list(src.layer_range), **src.parameters}
                             for src in sl.sources],
                 **({"parameters": dict(sl.parameters)} if sl.parameters else {}),
                 **({"overrides": [ov.model_dump(mode="json") for ov in sl.overrides]} if sl.overrides else {})}
                for sl in self.slices
            ]
        for key in ("include", "exclude", "overrides", "parameters", "slices"):
            if not data[key]:
                del data[key]
        for key in ("name", "weights_from"):
            if data.get(key) is None:
                data.pop(key, None)
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def with_paths_resolved(self, folder: Path | None) -> Recipe:
        """A copy whose relative model paths are absolute (so the recipe works from anywhere)."""
        def fix(ref: str | None) -> str | None:
            return None if ref is None else resolve_ref(ref, folder)

        tok = self.tokenizer_source
        if tok not in ("base",) and not tok.startswith("model:"):
            tok = fix(tok) or tok
        method = get_method(self.method)
        paths = {p.name for p in method.params if p.kind == "path"}

        def fix_paths(values: dict[str, Any]) -> dict[str, Any]:
            """Path parameters (statistics folders) resolved like model paths."""
            return {k: resolve_ref(v, folder) if k in paths and isinstance(v, str) and v else v
                    for k, v in values.items()}

        return self.model_copy(
            update={
                "base": fix(self.base),
                "models": [e.model_copy(update={"model": fix(e.model), "parameters": fix_paths(e.parameters)})
                           for e in self.models],
                "slices": [sl.model_copy(update={"sources": [
                    src.model_copy(update={"model": fix(src.model), "parameters": fix_paths(src.parameters)})
                    for src in sl.sources]}) for sl in self.slices],
                "parameters": fix_paths(self.parameters),
                "tokenizer_source": tok,
            }
        )


def resolve_ref(ref: str, folder: Path | None) -> str:
    """Make a relative model path absolute: the recipe's folder first, then the working folder."""
    p = Path(ref).expanduser()
    if p.is_absolute():
        return str(p)
    if folder is not None and (folder / p).exists():
        return str((folder / p).resolve())
    if p.exists():
        return str(p.resolve())
    return ref  # a hub id, or a missing folder that will be reported when opened


def name_matches(name: str, patterns: list[str]) -> bool:
    """Glob match (``fnmatch``), or regex search for patterns written ``re:<regex>``."""
    for pat in patterns:
        if pat.startswith("re:"):
            if _regex(pat).search(name):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern[3:])
    except re.error as exc:
        raise RecipeError(f"invalid regular expression in pattern {pattern!r}: {exc}") from None


def _valid_patterns(patterns: list[str]) -> list[str]:
    """Compile every ``re:`` pattern now, so a bad one fails when the recipe is loaded."""
    for pat in patterns:
        if pat.startswith("re:"):
            try:
                re.compile(pat[3:])
            except re.error as exc:
                where = f" at position {exc.pos}" if exc.pos is not None else ""
                raise ValueError(
                    f"{pat!r} is not a valid regular expression ({exc.msg}{where}); fix it, or "
                    f"drop the re: prefix to use a glob such as '*.self_attn.*'"
                ) from None
    return patterns


def ramp_position(name: str, layer: int | None, num_layers: int | None) -> float:
    """Where a tensor sits on a ramp: 0 at the first layer (and embeddings), 1 at the last (and head)."""
    if layer is not None and num_layers and num_layers > 1:
        return min(1.0, layer / (num_layers - 1))
    if layer is not None:
        return 0.0
    return 0.0 if is_input_side(name) else 1.0


def ramp_value(anchors: list[float], pos: float) -> float:
    """Linear interpolation between evenly spaced anchors at ``pos`` in [0, 1]."""
    if len(anchors) == 1:
        return float(anchors[0])
    x = pos * (len(anchors) - 1)
    lo = min(int(math.floor(x)), len(anchors) - 2)
    frac = x - lo
    return float(anchors[lo] * (1.0 - frac) + anchors[lo + 1] * frac)


def load_recipe(path: str | Path) -> Recipe:
    """Read a fusion_ui recipe, or a mergekit YAML file (detected by its keys), from disk."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at position {exc.start}); "
            f"save the recipe as UTF-8"
        ) from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from exc
    return recipe_from_dict(data, folder=path.resolve().parent, source=str(path))


def recipe_from_dict(data: Any, *, folder: Path | None = None, source: str = "recipe") -> Recipe:
    """Validate a parsed recipe (ours or mergekit's) and resolve its relative paths."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping")
    if is_mergekit_config(data):
        data = recipe_from_mergekit(data)  # plain recipe data, with mergekit's defaults
        source = "mergekit config could not be converted"  # reported in mergekit terms
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"{source}: {format_validation(exc)}") from None
    recipe = recipe.with_paths_resolved(folder)
    recipe.validate_for_method()
    return recipe


def format_validation(exc: ValidationError) -> str:
    """A pydantic error on one line, each failing field named by its path in the recipe."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "recipe"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: where, and what."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _check_values(
    m: MergeMethod, values: dict[str, Any], where: str, *, allow_per_model: bool, only_per_model: bool = False
) -> None:
    for key, value in values.items():
        spec = m.param_for(key)
        if only_per_model and not spec.per_model:
            raise RecipeError(
                f"{where}{key} is a global parameter of {m.name!r}: set it under `parameters:`"
            )
        if spec.per_model and not allow_per_model:
            raise RecipeError(f"{where}{key} is a per-model parameter")
        complement = key != spec.name
        anchors = value if isinstance(value, list) else [value]
        if isinstance(value, list):
            if spec.kind != "float":
                raise RecipeError(f"{where}{key}: only number parameters can ramp across layers")
            if not value:
                raise RecipeError(f"{where}{key}: a ramp needs at least one value")
        for a in anchors:
            if complement:
                a = complement_value(a, f"{where}{key} ")
            spec.check(a, where)
        if complement and spec.name in values:
            raise RecipeError(
                f"{where}: give either {spec.name} or {key} (= 1 - {spec.name}), not both"
            )


def _pick(spec: ParamSpec, layers: list[dict[str, Any]], pos: float, default: Any) -> Any:
    """The last value set for ``spec`` across layers of settings, ramps evaluated."""
    value: Any = default
    for values in layers:
        given = spec.value_in(values)
        if given is not None:
            value = given if spec.kind == "path" else _scalar(given, pos)
    if spec.kind == "float":
        return float(value)
    if spec.kind == "int":
        return int(value)
    return value


def _scalar(value: Any, pos: float) -> Any:
    if isinstance(value, list):
        return ramp_value([float(v) for v in value], pos)
    if isinstance(value, str):  # a number YAML left as text ("1e-3"), checked in validate_for_method
        number = as_number(value)
        return value if number is None else number
    return value
