"""What a merge method is, declared by the method itself.

Code outside :mod:`fusion_ui.methods` (the planner, recipes, mergekit import/export, the model
card, the engine and the UI) asks these questions here instead of guessing from parameter or
method names:

- does the method read the base θ0 (always, never, or when a switch parameter is on)?
- does it drop delta elements at random (seeded; fails on large deltas), and is that drop
  DARE's, with one drop rate per model, so that the DARE preview shows what the merge does?
- which global parameter chooses how survivors are rescaled?
- does it read statistics of each model on data (Fisher, Gram matrices), and which per-model
  path parameter names their folder?

Two spellings of one quantity (``density`` = 1 − ``drop_rate``) are a property of a parameter,
declared on its :class:`~fusion_ui.methods.params.ParamSpec` (``complement``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from fusion_ui.methods.sparsify import Rescale

BaseUse = Literal["required", "optional", "unused"]


@dataclass(frozen=True)
class RandomDrop:
    """The method drops delta elements at random, keyed by (seed, tensor, model), and rescales
    the survivors: its result depends on the seed, and it breaks on large deltas (Yu et al. 2023)."""

    # Per-model parameter that is DARE's drop rate p, the same for every element of a delta: the
    # DARE preview (which runs the merge's own ``dare()``) shows it. None when the drop
    # probability varies by element (DELLA's ranked drop): there is no DARE preview then.
    rate: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """A method's nature, for code outside ``methods/`` to ask (see the module docstring)."""

    # required: θ0 is read for every tensor (task vectors); optional: read only while the bool
    # global parameter ``base_switch`` is on; unused: never read (a recipe's base is ignored).
    base: BaseUse = "required"
    base_switch: str | None = None  # with base="optional": e.g. slerp's ``on_deltas``
    random_drop: RandomDrop | None = None  # None: deterministic
    rescale: str | None = None  # global choice parameter: how kept deltas are rescaled
    # per-model path parameter naming each model's statistics folder (``fusion-ui stats``);
    # None: the method reads the weights only
    statistics: str | None = None

    def __post_init__(self) -> None:
        if (self.base == "optional") != (self.base_switch is not None):
            raise TypeError("Capabilities: base='optional' needs a base_switch parameter, and only it has one")

    @property
    def uses_seed(self) -> bool:
        """Whether the result depends on the recipe's seed."""
        return self.random_drop is not None

    @property
    def dare_preview(self) -> bool:
        """Whether the DARE preview shows what this method does to a delta (a uniform random drop)."""
        return self.random_drop is not None and self.random_drop.rate is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a UI (with the derived answers, so it need not work them out)."""
        return asdict(self) | {"uses_seed": self.uses_seed, "dare_preview": self.dare_preview}


@dataclass(frozen=True)
class DropSettings:
    """What the DARE preview needs to drop a delta exactly as the merge does, for one tensor."""

    drop_rate: float  # p, resolved for the tensor (ramps and overrides applied)
    rescale: Rescale  # the rescale the merge applies to the survivors ("none" if it has none)
