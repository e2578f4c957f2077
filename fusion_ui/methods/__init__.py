"""The registry of merge methods. Each declares its parameters (:mod:`.params`) and what it is
(:mod:`.capabilities`); adding a method is one module here and one line in ``METHODS``."""

from __future__ import annotations

from fusion_ui.errors import RecipeError
from fusion_ui.methods.base import MergeMethod, TensorContext
from fusion_ui.methods.capabilities import Capabilities, DropSettings, RandomDrop
from fusion_ui.methods.fisher import FisherMerge
from fusion_ui.methods.linear import LinearMerge
from fusion_ui.methods.model_stock import ModelStockMerge
from fusion_ui.methods.params import ParamSpec
from fusion_ui.methods.passthrough import PassthroughMerge
from fusion_ui.methods.regmean import RegMeanMerge
from fusion_ui.methods.sce import SceMerge
from fusion_ui.methods.slerp import SlerpMerge
from fusion_ui.methods.task_arithmetic import TASK_ARITHMETIC_METHODS

METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        LinearMerge(),
        *TASK_ARITHMETIC_METHODS,
        SlerpMerge(),
        ModelStockMerge(),
        SceMerge(),
        FisherMerge(),
        RegMeanMerge(),
        PassthroughMerge(),
    )
}
for _method in METHODS.values():
    _method.check_declaration()  # capabilities name declared parameters, or the import fails


def get_method(name: str) -> MergeMethod:
    """The method registered under ``name``; a clear error lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise RecipeError(
            f"unknown merge method {name!r}; known methods: {', '.join(METHODS)}"
        ) from None


__all__ = [
    "METHODS", "Capabilities", "DropSettings", "MergeMethod", "ParamSpec", "RandomDrop",
    "TensorContext", "get_method",
]
