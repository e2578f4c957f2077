"""The model card names mergekit_config.yml only when the export wrote one (a method mergekit
lacks, such as magnitude_prune, fisher or regmean, gets no file and a card that says so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion_ui import export_merge, recipe_from_dict
from fusion_ui.export import MERGEKIT_FILE

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(family: dict[str, Path], method: str) -> object:
    models = [{"model": str(p), "weight": 0.5} for k, p in family.items() if k != "base"]
    return recipe_from_dict({"method": method, "base": str(family["base"]), "models": models[:2]})


def test_a_method_without_mergekit_equivalent_has_no_config_and_the_card_says_so(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "pruned"
    export_merge(_recipe(llama_family, "magnitude_prune"), out, device="cpu")
    card = (out / "README.md").read_text()
    assert not (out / MERGEKIT_FILE).exists()
    assert f"is in `{MERGEKIT_FILE}`" not in card
    assert "mergekit has no 'magnitude_prune' method" in card
    assert f"no `{MERGEKIT_FILE}` was written" in card


def test_a_method_with_a_mergekit_equivalent_still_points_at_its_config(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "ta"
    export_merge(_recipe(llama_family, "task_arithmetic"), out, device="cpu")
    assert (out / MERGEKIT_FILE).is_file()
    assert f"An equivalent mergekit config is in `{MERGEKIT_FILE}`" in (out / "README.md").read_text()
