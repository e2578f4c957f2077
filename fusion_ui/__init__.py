"""fusion_ui: explore, analyse and export merges of Hugging Face checkpoints.

The engine API (no UI code here)::

    from fusion_ui import load_recipe, export_merge, merge_to_state_dict, inspect_models
    recipe = load_recipe("recipe.yaml")
    export_merge(recipe, "merged/")               # sharded safetensors + config + tokenizer + card
    state = merge_to_state_dict(recipe)           # in memory, for previews

The names below are loaded when first used, so that importing the package (the ``fusion-ui``
command, ``fusion_ui.errors``) does not load torch: ``fusion-ui --help`` stays quick, and the
app can set torch's thread settings before torch starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from fusion_ui.errors import (
    CancelledError,
    DeviceError,
    ExportError,
    FusionError,
    GenerationError,
    IncompatibleModelsError,
    InputError,
    ModelSourceError,
    RecipeError,
    TensorValueError,
    UnsafeCheckpointError,
)

# name -> the module that defines it (imported on first access)
_LAZY = {
    "ExportResult": "fusion_ui.export",
    "export_merge": "fusion_ui.export",
    "CompatibilityReport": "fusion_ui.inspect",
    "check_compatibility": "fusion_ui.inspect",
    "inspect_models": "fusion_ui.inspect",
    "Checkpoint": "fusion_ui.io",
    "ModelSource": "fusion_ui.io",
    "TensorInfo": "fusion_ui.io",
    "resolve_model": "fusion_ui.io",
    "MergePlan": "fusion_ui.merge",
    "merge_into_model": "fusion_ui.merge",
    "merge_to_state_dict": "fusion_ui.merge",
    "plan_merge": "fusion_ui.merge",
    "run_merge": "fusion_ui.merge",
    "METHODS": "fusion_ui.methods",
    "MergeMethod": "fusion_ui.methods",
    "ParamSpec": "fusion_ui.methods",
    "get_method": "fusion_ui.methods",
    "CancelToken": "fusion_ui.progress",
    "Progress": "fusion_ui.progress",
    "ProgressCallback": "fusion_ui.progress",
    "ModelEntry": "fusion_ui.recipe",
    "Override": "fusion_ui.recipe",
    "Recipe": "fusion_ui.recipe",
    "load_recipe": "fusion_ui.recipe",
    "recipe_from_dict": "fusion_ui.recipe",
}

if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
    from fusion_ui.export import ExportResult, export_merge
    from fusion_ui.inspect import CompatibilityReport, check_compatibility, inspect_models
    from fusion_ui.io import Checkpoint, ModelSource, TensorInfo, resolve_model
    from fusion_ui.merge import (
        MergePlan,
        merge_into_model,
        merge_to_state_dict,
        plan_merge,
        run_merge,
    )
    from fusion_ui.methods import METHODS, MergeMethod, ParamSpec, get_method
    from fusion_ui.progress import CancelToken, Progress, ProgressCallback
    from fusion_ui.recipe import ModelEntry, Override, Recipe, load_recipe, recipe_from_dict


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion_ui' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "METHODS",
    "CancelToken",
    "CancelledError",
    "Checkpoint",
    "CompatibilityReport",
    "DeviceError",
    "ExportError",
    "ExportResult",
    "FusionError",
    "GenerationError",
    "IncompatibleModelsError",
    "InputError",
    "MergeMethod",
    "MergePlan",
    "ModelEntry",
    "ModelSource",
    "ModelSourceError",
    "Override",
    "ParamSpec",
    "Progress",
    "ProgressCallback",
    "Recipe",
    "RecipeError",
    "TensorInfo",
    "TensorValueError",
    "UnsafeCheckpointError",
    "__version__",
    "check_compatibility",
    "export_merge",
    "get_method",
    "inspect_models",
    "load_recipe",
    "merge_into_model",
    "merge_to_state_dict",
    "plan_merge",
    "recipe_from_dict",
    "resolve_model",
    "run_merge",
]
