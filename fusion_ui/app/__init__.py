"""The app's engine side (no Gradio here): one facade per tab over a shared context.

- :mod:`~fusion_ui.app.selection`  what the user picked, the demo family, the bounds (Limits)
- :mod:`~fusion_ui.app.context`    the device, model cache, job runner, history and export root
- :mod:`~fusion_ui.app.recipe_form` the Merge tab's controls as plain values, composed into a Recipe
- :mod:`~fusion_ui.app.models`, :mod:`~fusion_ui.app.deltas`, :mod:`~fusion_ui.app.merges`,
  :mod:`~fusion_ui.app.compare`, :mod:`~fusion_ui.app.exports`, :mod:`~fusion_ui.app.compose`,
  :mod:`~fusion_ui.app.frozen`, ...: one facade per tab
- :mod:`~fusion_ui.app.training`   an engine training call as a job: loss history, Stop, workspace
- :mod:`~fusion_ui.app.history`    merges, exports and recent selections, on disk
- :mod:`~fusion_ui.app.engine`     the Engine that holds them, and what spans the tabs
"""

from fusion_ui.app.compare import Column, GenerationSettings
from fusion_ui.app.context import AppContext, MergeRef
from fusion_ui.app.engine import Engine
from fusion_ui.app.exports import ExportSummary
from fusion_ui.app.merges import MergeResult
from fusion_ui.app.models import InspectResult
from fusion_ui.app.recipe_form import OUTPUT_DTYPES, RecipeForm, compose, parse_recipe
from fusion_ui.app.selection import LIMITS, DemoFamily, Limits, Selection, check_ref, make_selection

__all__ = [
    "LIMITS",
    "OUTPUT_DTYPES",
    "AppContext",
    "Column",
    "DemoFamily",
    "Engine",
    "ExportSummary",
    "GenerationSettings",
    "InspectResult",
    "Limits",
    "MergeRef",
    "MergeResult",
    "RecipeForm",
    "Selection",
    "check_ref",
    "compose",
    "make_selection",
    "parse_recipe",
]
