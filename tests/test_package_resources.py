"""Package data: the demo family and the app's files are found through importlib.resources.

Each lookup must land on real files inside the installed package (``fusion_ui/assets/``), the
place a wheel puts them, so what passes here from a checkout also holds for ``pip install``.
"""

from __future__ import annotations

import fnmatch
import json
from importlib.resources import files
from pathlib import Path

import pytest

import fusion_ui
from fusion_ui import load_recipe
from fusion_ui.demo import DEMO_DIR, EXPERT_SKILLS, GENERAL
from fusion_ui.evals import DEMO_EVALS_DIR, demo_eval_set
from fusion_ui.resources import (
    UI_FILES,
    asset_path,
    demo_dir,
    demo_evals_dir,
    demo_recipe,
    ui_asset,
    ui_text,
)

PACKAGE = Path(str(files("fusion_ui")))
SHIPPED_RECIPES = ("dare_ties", "task_arithmetic", "cocktail_mirror")


def test_every_lookup_is_inside_the_imported_package() -> None:
    assert PACKAGE == Path(fusion_ui.__path__[0])
    for path in (demo_dir(), demo_evals_dir(), DEMO_DIR, DEMO_EVALS_DIR, *(ui_asset(n) for n in UI_FILES)):
        assert path.is_relative_to(PACKAGE / "assets"), path
    assert DEMO_DIR == demo_dir() and DEMO_EVALS_DIR == demo_dir() / "evals"


def test_the_demo_family_is_complete() -> None:
    family = demo_dir()
    assert (family / "base" / "config.json").is_file()
    for skill in EXPERT_SKILLS:
        expert = family / f"expert_{skill}"
        assert (expert / "config.json").is_file() and (expert / "model.safetensors").is_file()
        assert (expert / "tokenizer.json").is_file()
    assert (family / "README.md").is_file()
    assert json.loads((family / "build_info.json").read_text())["config"]["experts"] == list(EXPERT_SKILLS)
    assert {p.stem for p in demo_evals_dir().glob("*.jsonl")} == {*EXPERT_SKILLS, GENERAL}


@pytest.mark.parametrize("name", SHIPPED_RECIPES)
def test_shipped_recipes_resolve_to_the_packaged_family(name: str) -> None:
    recipe = load_recipe(demo_recipe(name))
    family = demo_dir().resolve()
    assert recipe.base == str(family / "base")
    assert all(Path(m.model).parent == family and Path(m.model).is_dir() for m in recipe.models)


def test_demo_eval_sets_load() -> None:
    items = demo_eval_set()
    assert {item.skill for item in items} == {*EXPERT_SKILLS, GENERAL}
    assert all(item.prompt and item.answer for item in items)
    assert [i.skill for i in demo_eval_set(["upper"])] == ["upper"] * len(demo_eval_set(["upper"]))


def test_ui_files_load() -> None:
    assert "#app-header" in ui_text("app.css")
    assert ui_text("logo.svg").lstrip().startswith("<svg")
    prompts = json.loads(ui_text("example_prompts.json"))["prompts"]
    assert {p["skill"] for p in prompts} >= set(EXPERT_SKILLS)
    with pytest.raises(ValueError, match="app.css"):
        ui_asset("screenshots/1-models.png")


def test_the_app_reads_its_css_logo_and_example_prompts() -> None:
    pytest.importorskip("gradio")
    from fusion_ui.ui.compare import example_prompts
    from fusion_ui.ui.theme import css, logo_svg

    assert css() == ui_text("app.css") != ""
    assert logo_svg() == ui_text("logo.svg") != ""
    labels = dict(example_prompts())
    assert "upper · upper: hello =" in labels and len(labels) >= len(EXPERT_SKILLS)


def test_pyproject_ships_every_asset_and_no_screenshot() -> None:
    # The wheel check (.ci/check_wheel.py) builds the wheel; this catches a missing pattern fast.
    tomllib = pytest.importorskip("tomllib")
    root = PACKAGE.parent
    if not (root / "pyproject.toml").is_file():
        pytest.skip("not a checkout: no pyproject.toml next to the package")
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fusion_ui"]
    shipped = {str(p.relative_to(PACKAGE)) for p in asset_path().rglob("*") if p.is_file()}
    assert shipped, "no package data under fusion_ui/assets"
    unmatched = sorted(f for f in shipped if not any(_matches(f, pattern) for pattern in patterns))
    assert unmatched == [], f"package data that pyproject.toml does not ship: {unmatched}"
    assert not any(f.endswith(".png") for f in shipped), "README screenshots are not package data"


def _matches(path: str, pattern: str) -> bool:
    """setuptools' package-data glob: ``**`` spans folders, ``*`` stays inside one."""
    if "**" in pattern:
        head, _, tail = pattern.partition("**/")
        return path.startswith(head) and fnmatch.fnmatch(path.rsplit("/", 1)[-1], tail or "*")
    return len(path.split("/")) == len(pattern.split("/")) and fnmatch.fnmatch(path, pattern)
