"""The merge-method interface and the per-tensor context every method receives."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fusion_ui.errors import RecipeError
from fusion_ui.methods.params import ParamSpec


class NonFiniteInput(ValueError):  # noqa: N818 - a signal between kernel and executor, not a user error
    """A fused kernel met NaN/inf in one of its inputs; the executor names the checkpoint."""

    def __init__(self, index: int | None) -> None:
        super().__init__("base" if index is None else f"model {index}")
        self.index = index  # position in ctx.models, or None for the base


@dataclass
class TensorContext:
    """Everything a method needs to merge one tensor. Tensors are float32 on the compute device."""

    name: str  # tensor name, e.g. "model.layers.3.mlp.up_proj.weight"
    base: torch.Tensor | None  # θ0, or None for methods without a base
    models: list[torch.Tensor]  # θi of the merged models, in recipe order
    model_params: list[dict[str, Any]]  # per-model parameters resolved for this tensor
    params: dict[str, Any]  # global parameters resolved for this tensor
    seed: int = 0  # recipe seed; random steps use key(i) = (seed, name, i)
    model_indices: Sequence[int] = field(default_factory=tuple)  # recipe index of each model
    # Reused bytes (CPU, uint8) a fused kernel may write its result into instead of new memory
    out_buffer: torch.Tensor | None = None

    def key(self, i: int) -> tuple:
        """Random key of the i-th model here: depends on (seed, tensor name, model index) only."""
        index = self.model_indices[i] if self.model_indices else i
        return (self.seed, self.name, index)


class MergeMethod(ABC):
    """A merge rule applied tensor by tensor.

    Subclasses set the class attributes and implement :meth:`merge`; :meth:`check` may add
    cross-parameter rules (e.g. weights that sum to zero).
    """

    name: str  # registry key, used in recipes
    title: str  # human name for the UI
    summary: str  # one line: what it does
    reference: str  # paper or source
    needs_base: bool  # whether θ0 is required
    min_models: int = 1  # fine-tunes (models other than the base) required
    max_models: int | None = None
    uses_seed: bool = False  # whether the result depends on the seed
    params: tuple[ParamSpec, ...] = ()

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise RecipeError(
            f"method {self.name!r} has no parameter {name!r}; its parameters are: "
            f"{', '.join(p.name for p in self.params) or 'none'}"
        )

    def global_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if not p.per_model)

    def model_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.per_model)

    def needs_base_with(self, params: dict[str, Any]) -> bool:
        """Whether θ0 is required with these (global) parameter values; a method whose base is
        optional may need it for some settings (slerp of task vectors)."""
        return self.needs_base

    def check(self, params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
        """Rules across parameters (single values are range-checked by their specs)."""
        return None

    @abstractmethod
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        """The merged tensor, float32, same shape as the inputs."""

    def merge_fused_cpu(self, ctx: TensorContext, out_dtype: torch.dtype) -> torch.Tensor | None:
        """The merged tensor in ``out_dtype`` from a fused CPU kernel, or None if none covers it.

        Here ``ctx`` holds the raw CPU tensors in their storage dtypes. A kernel must return
        exactly ``merge(ctx as float32).to(out_dtype)``; NaN/inf inputs raise :class:`NonFiniteInput`.
        """
        return None

    def schema(self) -> dict[str, Any]:
        """Plain data describing the method and its parameters, for a UI."""
        return {
            "name": self.name,
            "title": self.title,
            "summary": self.summary,
            "reference": self.reference,
            "needs_base": self.needs_base,
            "min_models": self.min_models,
            "max_models": self.max_models,
            "uses_seed": self.uses_seed,
            "params": [p.to_dict() for p in self.params],
        }
