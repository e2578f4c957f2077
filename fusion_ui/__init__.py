"""fusion_ui: explore, analyse and export merges of Hugging Face checkpoints.

The engine API (no UI code here)::

    from fusion_ui import load_recipe, export_merge, merge_to_state_dict, inspect_models
    recipe = load_recipe("recipe.yaml")
    export_merge(recipe, "merged/")               # sharded safetensors + config + tokenizer + card
    state = merge_to_state_dict(recipe)           # in memory, for previews
"""

from __future__ import annotations

__version__ = "0.1.0"

from fusion_ui.errors import (
    CancelledError,
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
from fusion_ui.export import ExportResult, export_merge
from fusion_ui.inspect import CompatibilityReport, check_compatibility, inspect_models
from fusion_ui.io import Checkpoint, ModelSource, TensorInfo, resolve_model
from fusion_ui.merge import MergePlan, merge_into_model, merge_to_state_dict, plan_merge, run_merge
from fusion_ui.methods import METHODS, MergeMethod, ParamSpec, get_method
from fusion_ui.progress import CancelToken, Progress, ProgressCallback
from fusion_ui.recipe import ModelEntry, Override, Recipe, load_recipe, recipe_from_dict

__all__ = [
    "METHODS",
    "CancelToken",
    "CancelledError",
    "Checkpoint",
    "CompatibilityReport",
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
