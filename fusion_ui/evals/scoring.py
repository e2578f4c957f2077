"""String metrics for generated answers (case-sensitive: case can be the skill)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fusion_ui.errors import RecipeError

Metric = Literal["exact_match", "contains"]
METRICS: tuple[Metric, ...] = ("exact_match", "contains")


def exact_match(prediction: str, answer: str) -> bool:
    """Equal after stripping surrounding whitespace."""
    return prediction.strip() == answer.strip()


def contains(prediction: str, answer: str) -> bool:
    """The stripped answer occurs somewhere in the prediction (lenient for chatty models)."""
    return answer.strip() in prediction


def metric_fn(name: str) -> Callable[[str, str], bool]:
    if name == "exact_match":
        return exact_match
    if name == "contains":
        return contains
    raise RecipeError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
