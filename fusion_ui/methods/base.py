"""The merge-method interface and the per-tensor context every method receives."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from fusion_ui.errors import RecipeError
from fusion_ui.methods.capabilities import Capabilities, DropSettings
from fusion_ui.methods.params import ParamSpec
from fusion_ui.methods.sparsify import RESCALE_MODES

if TYPE_CHECKING:
    from fusion_ui.io.checkpoint import Checkpoint


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

    def require_base(self, who: str) -> torch.Tensor:
        """θ0, or a clear error for a caller that left it out (recipes are refused earlier).

        ``who`` names the method (and setting) in the message: ``"method 'ties'"``.
        """
        if self.base is None:
            raise RecipeError(
                f"{who} computes task vectors δ = θ - θ0 and needs the base: set `base:` in the "
                f"recipe (in Python: pass TensorContext(base=...))"
            )
        return self.base


class MergeMethod(ABC):
    """A merge rule applied tensor by tensor.

    Subclasses set the class attributes (``capabilities`` says what the method is: code outside
    ``methods/`` asks it rather than guessing from names) and implement :meth:`merge`;
    :meth:`check` may add cross-parameter rules (e.g. weights that sum to zero).
    """

    name: str  # registry key, used in recipes
    title: str  # human name for the UI
    summary: str  # one line: what it does
    reference: str  # paper or source
    capabilities: Capabilities = Capabilities()
    min_models: int = 1  # fine-tunes (models other than the base) required
    max_models: int | None = None
    params: tuple[ParamSpec, ...] = ()

    @property
    def needs_base(self) -> bool:
        """Whether θ0 is required whatever the parameters (see :meth:`needs_base_with`)."""
        return self.capabilities.base == "required"

    @property
    def uses_seed(self) -> bool:
        """Whether the result depends on the recipe's seed."""
        return self.capabilities.uses_seed

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise RecipeError(
            f"method {self.name!r} has no parameter {name!r}; its parameters are: "
            f"{', '.join(p.name for p in self.params) or 'none'}"
        )

    def param_for(self, key: str) -> ParamSpec:
        """The parameter a recipe key sets: the one named ``key``, or the one whose complement
        ``key`` is (``density`` sets ``drop_rate`` = 1 − density)."""
        for p in self.params:
            if key in p.names():
                return p
        return self.param(key)  # raises, listing the parameters

    def global_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if not p.per_model)

    def model_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.per_model)

    def needs_base_with(self, params: dict[str, Any]) -> bool:
        """Whether θ0 is read with these global parameter values (a method whose base is
        optional reads it while its switch is on: slerp of task vectors)."""
        caps = self.capabilities
        if caps.base != "optional":
            return caps.base == "required"
        switch = self.param(caps.base_switch or "")
        return params.get(switch.name, switch.default) is True

    def drop_settings(self, params: dict[str, Any], model_params: dict[str, Any]) -> DropSettings | None:
        """The drop rate and rescale of one model on one tensor (resolved parameters), for the
        DARE preview; None when the method has no DARE drop (``capabilities.dare_preview``)."""
        drop = self.capabilities.random_drop
        if drop is None or drop.rate is None:
            return None
        rescale = self.capabilities.rescale
        return DropSettings(
            drop_rate=float(model_params[drop.rate]),
            rescale=params[rescale] if rescale is not None else "none",
        )

    def check_declaration(self) -> None:
        """Raise TypeError if the capabilities name parameters the method does not declare as
        they are used (a programming error, caught when the registry is built and by the tests)."""
        caps = self.capabilities
        names = [n for p in self.params for n in p.names()]
        if len(names) != len(set(names)):
            raise TypeError(f"{self.name}: two parameters share a name or complement: {names}")

        def spec(name: str, *, per_model: bool, kinds: tuple[str, ...], what: str) -> ParamSpec:
            found = next((p for p in self.params if p.name == name), None)
            if found is None or found.per_model != per_model or found.kind not in kinds:
                raise TypeError(f"{self.name}: {what} {name!r} must be a declared parameter "
                                f"({'per model' if per_model else 'global'}, {'/'.join(kinds)})")
            return found

        if caps.base_switch is not None:
            spec(caps.base_switch, per_model=False, kinds=("bool",), what="base_switch")
        if caps.random_drop is not None and caps.random_drop.rate is not None:
            spec(caps.random_drop.rate, per_model=True, kinds=("float",), what="random_drop.rate")
        if caps.statistics is not None:
            spec(caps.statistics, per_model=True, kinds=("path",), what="statistics")
        if caps.rescale is not None:
            rescale = spec(caps.rescale, per_model=False, kinds=("choice",), what="rescale")
            if not set(rescale.choices) <= set(RESCALE_MODES):
                raise TypeError(f"{self.name}: rescale choices {rescale.choices} not in {RESCALE_MODES}")
        for p in self.params:
            if p.complement is not None and (not p.per_model or p.kind != "float"
                                             or (p.minimum, p.maximum) != (0.0, 1.0)):
                raise TypeError(f"{self.name}: only per-model shares in [0, 1] have a complement ({p.name})")

    def check(self, params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
        """Rules across parameters (single values are range-checked by their specs)."""
        return None

    def check_sources(
        self, models: Sequence[Checkpoint], merged: Mapping[str, Sequence[Mapping[str, Any]]]
    ) -> list[str]:
        """Check what the method reads besides the weights (``capabilities.statistics``) against
        the opened ``models``, before any tensor is merged: ``merged`` maps each merged tensor to
        its resolved per-model parameters. Raises RecipeError naming the model and the problem;
        returns notes for the model card (what the method did where)."""
        return []

    @abstractmethod
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        """The merged tensor, float32, same shape as the inputs."""

    def merge_fused_cpu(self, ctx: TensorContext, out_dtype: torch.dtype) -> torch.Tensor | None:
        """The merged tensor in ``out_dtype`` from a fused CPU kernel, or None if none covers it.

        Here ``ctx`` holds the raw CPU tensors in their storage dtypes. A kernel must return
        exactly ``merge(ctx as float32).to(out_dtype)``; NaN/inf inputs raise :class:`NonFiniteInput`.
        """
        return None

    def switched_params(self) -> tuple[str, ...]:
        """Parameters that act only while the method's base switch is on: the random drop's rate
        and its rescale, where the drop is switched (DARE in front of Fisher / RegMean)."""
        caps = self.capabilities
        if caps.base_switch is None or caps.random_drop is None:
            return ()
        return tuple(n for n in (caps.random_drop.rate, caps.rescale) if n)

    def schema(self) -> dict[str, Any]:
        """Plain data describing the method and its parameters, for a UI."""
        return {
            "switch": self.capabilities.base_switch,
            "switched": list(self.switched_params()),
            "name": self.name,
            "title": self.title,
            "summary": self.summary,
            "reference": self.reference,
            "needs_base": self.needs_base,
            "min_models": self.min_models,
            "max_models": self.max_models,
            "uses_seed": self.uses_seed,
            "capabilities": self.capabilities.to_dict(),
            "params": [p.to_dict() for p in self.params],
        }
