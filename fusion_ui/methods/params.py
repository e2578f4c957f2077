"""Parameter schemas: each merge method declares its parameters so a UI can build its controls.

A parameter is global (one value for the merge) or per model (one value per fine-tune). Float
parameters may also be given as a ramp: a list of values spread evenly across the layers and
interpolated linearly between them (mergekit calls these gradients).

A per-model share may have a complement: a second name a recipe may use for ``1 − value``
(DARE's ``drop_rate`` p is ``1 − density``, the name TIES and mergekit use). The spec declares
it (``complement``) and is its one owner: :meth:`ParamSpec.value_in` reads either spelling and
:func:`complement_value` converts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fusion_ui.errors import RecipeError

# path: a folder or file a method reads besides the weights (data statistics); recipes resolve it
# against their own folder like a model path, and a UI shows a text box.
ParamKind = Literal["float", "int", "bool", "choice", "path"]
Scalar = float | int | bool | str


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a merge method, with what a UI needs to draw its control."""

    name: str  # key in recipes (``weight``, ``drop_rate``, ``lambda``...)
    default: Scalar  # value used when a recipe leaves it out
    per_model: bool = False  # one value per fine-tune (True) or one for the merge (False)
    kind: ParamKind = "float"
    minimum: float | None = None  # inclusive unless min_inclusive is False
    maximum: float | None = None  # inclusive unless max_inclusive is False
    min_inclusive: bool = True
    max_inclusive: bool = True
    choices: tuple[str, ...] = ()  # for kind == "choice"
    label: str = ""  # short UI label
    help: str = ""  # one sentence: what moving it does
    step: float = 0.01  # slider step for floats
    # Where a slider should end when the allowed range is much wider than the useful one (weights
    # may go to 10, but 0-2 is where they are used); None: the allowed range. Recipes may still
    # give any allowed value.
    slider_range: tuple[float, float] | None = None
    # Another name a recipe may use for 1 − this value (``density`` for ``drop_rate``); a recipe
    # gives one or the other, never both.
    complement: str | None = None

    def names(self) -> tuple[str, ...]:
        """The keys a recipe may set this parameter with: its name, then its complement's."""
        return (self.name,) if self.complement is None else (self.name, self.complement)

    def value_in(self, values: dict[str, Any]) -> Any:
        """This parameter's value in a mapping of settings (a scalar or ramp anchors), read under
        its name or, converted, under its complement's; None if it is set under neither."""
        if self.name in values:
            return values[self.name]
        if self.complement is not None and self.complement in values:
            return complement_value(values[self.complement], f"{self.complement} ")
        return None

    def check(self, value: Any, where: str) -> Scalar:
        """Validate and coerce one scalar value; ``where`` names it in the error."""
        name = f"{where}{self.name}"
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise RecipeError(f"{name} must be true or false, got {value!r}")
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return value
            raise RecipeError(f"{name} must be one of {', '.join(self.choices)}; got {value!r}")
        if self.kind == "path":
            if isinstance(value, str):
                return value.strip()
            raise RecipeError(f"{name} must be a folder path (text), got {value!r}")
        number = as_number(value)
        if number is None:
            raise RecipeError(f"{name} must be a number, got {value!r}")
        if math.isnan(number):
            raise RecipeError(f"{name} must be a number, got NaN; {self.range_text()}")
        if math.isinf(number):
            size = "too large" if number > 0 else "too small"
            raise RecipeError(f"{name} = {number} is {size} (infinite): {self.range_text()}")
        if self.kind == "int":
            if float(number) != int(number):
                raise RecipeError(f"{name} must be a whole number, got {value!r}")
            value = int(number)
        else:
            value = float(number)
        lo, hi = self.minimum, self.maximum
        if lo is not None and (value < lo or (value == lo and not self.min_inclusive)):
            raise RecipeError(f"{name} = {value} is out of range: {self.range_text()}")
        if hi is not None and (value > hi or (value == hi and not self.max_inclusive)):
            raise RecipeError(f"{name} = {value} is out of range: {self.range_text()}")
        return value

    def range_text(self) -> str:
        lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
        hi = "inf" if self.maximum is None else f"{self.maximum:g}"
        left = "[" if self.min_inclusive and self.minimum is not None else "("
        right = "]" if self.max_inclusive and self.maximum is not None else ")"
        return f"{self.name} must be in {left}{lo}, {hi}{right}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a UI or a JSON schema dump."""
        d = asdict(self)
        d["choices"] = list(self.choices)
        return d


def complement_value(value: Any, where: str = "") -> float | list[float]:
    """``1 − value`` (each anchor of a ramp), rounded to 12 decimals so that 1 − 0.9 reads 0.1."""
    if isinstance(value, list):
        return [complement_value(v, where) for v in value]  # type: ignore[misc]
    number = as_number(value)
    if number is None:
        raise RecipeError(f"{where}must be a number, got {value!r}")
    return round(1.0 - float(number), 12)


def as_number(value: Any) -> float | int | None:
    """``value`` as a number, or None if it is not one.

    YAML 1.1 (PyYAML) reads ``1e300`` or ``1e-3``, floats without a dot, as text; those count as
    the numbers they spell, as in YAML 1.2 and JSON. Booleans are not numbers here.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and "_" not in value:  # Python's float() also takes "1_000"
        try:
            return float(value)
        except ValueError:
            return None
    return None


# Parameters shared by several methods, declared once.
WEIGHT = ParamSpec(
    "weight", 1.0, per_model=True, minimum=0.0, maximum=10.0, slider_range=(0.0, 2.0),
    label="weight", help="How much of this model's change goes into the merge (up to 10 in the recipe).",
)
SIGNED_WEIGHT = ParamSpec(
    "weight", 1.0, per_model=True, minimum=-10.0, maximum=10.0, slider_range=(-2.0, 2.0),
    label="weight",
    help="How much of this model's task vector is added; negative subtracts it (task negation). ±10 in the recipe.",
)
LAMBDA = ParamSpec(
    "lambda", 1.0, minimum=0.0, maximum=10.0, slider_range=(0.0, 3.0),
    label="λ (scale)", help="Scales the merged task vector before it is added to the base (up to 10 in the recipe).",
)
SEED = ParamSpec(
    "seed", 0, kind="int", minimum=0, maximum=2**31 - 1, step=1,
    label="seed", help="Seeds the random drop masks; the same seed gives the same merge.",
)
RESCALE = ParamSpec(
    "rescale", "inverse", kind="choice", choices=("inverse", "l1", "none"),
    label="rescale",
    help="inverse: survivors × 1/(1-p) as in the DARE paper; l1: match the L1 norm (mergekit); none: ablation.",
)
PRUNE_RESCALE = ParamSpec(
    "rescale", "none", kind="choice", choices=("none", "inverse", "l1"),
    label="rescale",
    help="none: keep survivors as they are; inverse: × 1/density; l1: match the L1 norm.",
)
DROP_RATE = ParamSpec(
    "drop_rate", 0.9, per_model=True, minimum=0.0, maximum=1.0, max_inclusive=False,
    label="drop rate p", help="Share of this model's delta elements dropped at random (DARE's p).",
    complement="density",
)


def normalize_spec(default: bool) -> ParamSpec:
    return ParamSpec(
        "normalize", default, kind="bool", label="normalize",
        help="Divide the summed deltas by the summed weights (a weighted mean instead of a sum).",
    )


def density_spec(default: float, help: str) -> ParamSpec:
    return ParamSpec(
        "density", default, per_model=True, minimum=0.0, maximum=1.0, min_inclusive=False,
        label="density", help=help, complement="drop_rate",
    )
