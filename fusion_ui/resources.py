"""Files shipped inside the package: the demo family and the app's CSS, logo and example prompts.

They live under ``fusion_ui/assets/`` and are found through :mod:`importlib.resources`, never
through paths relative to a source file, so a wheel, an editable install and a plain checkout
all find the same files. This module is their one owner: other modules ask it for a path.

    fusion_ui/assets/demo/   the built-in demo family (base/, expert_*/, evals/, recipes/)
    fusion_ui/assets/ui/     app.css, logo.svg, example_prompts.json
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fusion_ui.errors import FusionError

# The folder under the package that holds every shipped file (package data in pyproject.toml).
ASSETS_FOLDER = "assets"
UI_FILES = ("app.css", "logo.svg", "example_prompts.json")


def asset_path(*parts: str) -> Path:
    """The on-disk path of a shipped file or folder (it may not exist: ask ``.is_file()``)."""
    resource = files("fusion_ui") / ASSETS_FOLDER
    for part in parts:
        resource = resource / part
    # Models are opened by path (safetensors memory-maps them), so the data must be real files:
    # true of every pip install (wheel or editable) and of a checkout, not of a zipped package.
    if not isinstance(resource, Path):
        raise FusionError(
            f"fusion_ui's package data ({'/'.join((ASSETS_FOLDER, *parts))}) is not a folder on disk; "
            "install fusion-ui with pip (not as a zip) to use the demo family and the app's assets"
        )
    return resource


def demo_dir() -> Path:
    """The built-in demo family: ``base/``, ``expert_<skill>/``, ``evals/*.jsonl``, ``recipes/``."""
    return asset_path("demo")


def demo_evals_dir() -> Path:
    """The demo family's eval sets (one ``<skill>.jsonl`` per skill)."""
    return demo_dir() / "evals"


def demo_recipe(name: str) -> Path:
    """A recipe shipped with the demo family, e.g. ``demo_recipe("dare_ties")``."""
    return demo_dir() / "recipes" / f"{name}.yaml"


def ui_asset(name: str) -> Path:
    """One of the app's files (:data:`UI_FILES`): its stylesheet, logo or example prompts."""
    if name not in UI_FILES:
        raise ValueError(f"unknown UI asset {name!r}; expected one of {', '.join(UI_FILES)}")
    return asset_path("ui", name)


def ui_text(name: str) -> str:
    """The text of one of the app's files, or ``""`` when it is missing (the app still works)."""
    path = ui_asset(name)
    return path.read_text(encoding="utf-8") if path.is_file() else ""


__all__ = [
    "ASSETS_FOLDER",
    "UI_FILES",
    "asset_path",
    "demo_dir",
    "demo_evals_dir",
    "demo_recipe",
    "ui_asset",
    "ui_text",
]
