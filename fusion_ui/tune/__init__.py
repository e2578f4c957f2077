"""Merge weights computed from data (no UI code here).

LM-Cocktail (Xiao et al. 2023, arXiv 2311.13534): score each candidate model on a few examples
of the target task, turn the losses into weights ``softmax(-loss / T)``, merge linearly::

    from fusion_ui.evals import load_eval_set
    from fusion_ui.tune import cocktail_recipe, cocktail_weights
    result = cocktail_weights(["base", "ft_a", "ft_b"], load_eval_set("five.jsonl"), base="base")
    print(result.table())                        # label, model, loss, weight
    recipe = cocktail_recipe(result)             # method: linear, weights_from: recorded
"""

from __future__ import annotations

from fusion_ui.tune.cocktail import (
    DEFAULT_TEMPERATURE,
    CocktailError,
    CocktailResult,
    UnsupportedModelError,
    cocktail_recipe,
    cocktail_weights,
    examples_sha256,
    format_loss,
    softmax_weights,
)

__all__ = [
    "DEFAULT_TEMPERATURE",
    "CocktailError",
    "CocktailResult",
    "UnsupportedModelError",
    "cocktail_recipe",
    "cocktail_weights",
    "examples_sha256",
    "format_loss",
    "softmax_weights",
]
