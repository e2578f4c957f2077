"""The model card (README.md) written with every exported merge."""

from __future__ import annotations

from importlib import metadata

import yaml

from fusion_ui.merge import MergePlan
from fusion_ui.recipe import Recipe


def fusion_ui_version() -> str:
    """The installed fusion_ui's version (read from the distribution, not from the package's
    ``__init__``: that imports the exporter, which imports this module)."""
    try:
        return metadata.version("fusion-ui")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "(not installed)"


def model_card(
    plan: MergePlan, recipe_yaml: str, mergekit_notes: list[str] | None, *, mergekit_written: bool = True
) -> str:
    """Hub-style card: YAML front matter (base_model, tags) and a human summary with the recipe.

    ``mergekit_notes``: what :func:`~fusion_ui.mergekit_compat.recipe_to_mergekit` said (None:
    not asked); ``mergekit_written``: whether ``mergekit_config.yml`` was written beside the card
    (not for a method mergekit lacks), so the card never points at a file that is not there."""
    recipe = plan.recipe
    method = plan.method
    base = recipe.base or recipe.models[0].model
    front = {
        "base_model": [base] if not recipe.base else base,
        "library_name": "transformers",
        "tags": ["merge", "fusion_ui", method.name],
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {recipe.name or 'Merged model'}",
        "",
        f"Merged with fusion_ui {fusion_ui_version()} using **{method.title}** "
        f"(`{method.name}`): {method.summary}",
        "",
        f"Reference: {method.reference}.",
        "",
        "## Models",
        "",
        "| role | model | parameters |",
        "|---|---|---|",
    ]
    if recipe.base:
        # the method says whether it reads θ0 with these settings (linear, plain slerp do not)
        role = "" if plan.reads_base else f"not read: {method.name} with these settings merges the models' weights"
        lines.append(f"| base | `{recipe.base}` | {role} |")
    for i, entry in enumerate(recipe.models):
        params = ", ".join(f"{k}={v}" for k, v in entry.parameters.items()) or "defaults"
        lines.append(f"| model {i} | `{entry.model}` | {params} |")
    if plan.layout is not None:
        layout = plan.layout
        lines += [
            "",
            "## Layer stack",
            "",
            f"{layout.num_layers} layers, {layout.num_parameters:,} parameters, from these slices "
            "(layer ranges are the sources' own layer numbers; embeddings come from the first "
            "slice's sources, the final norm and head from the last's):",
            "",
            *(f"- {line}" for line in layout.describe(recipe)),
        ]
    globals_ = {p.name: recipe.parameters.get(p.name, p.default) for p in method.global_params()}
    lines += [
        "",
        "## Method and parameters",
        "",
        f"- method: `{method.name}`",
        *(f"- {k}: `{v}`" for k, v in globals_.items()),
        f"- seed: `{recipe.seed}`" + (
            " (keys the random drop masks with each tensor's name and model index)"
            if method.capabilities.uses_seed else " (unused: this method is deterministic)"
        ),
        f"- output dtype: `{str(plan.out_dtype).removeprefix('torch.')}`",
        f"- tokenizer from: `{recipe.tokenizer_source}`",
    ]
    if recipe.include:
        lines.append(f"- merged tensors only: `{recipe.include}`")
    if recipe.exclude:
        lines.append(f"- taken unchanged from the base: `{recipe.exclude}`")
    if recipe.overrides:
        lines.append(f"- {len(recipe.overrides)} per-tensor override(s), see the recipe")
    if plan.notes:
        lines += ["", "## How the method treated the tensors", "", *(f"- {n}" for n in plan.notes)]
    lines += weights_from_section(recipe)
    if plan.warnings:
        lines += ["", "## Warnings at merge time", "", *(f"- {w}" for w in plan.warnings)]
    lines += [
        "",
        "## Recipe",
        "",
        "Reproduce this merge with `fusion-ui merge fusion_ui_recipe.yaml --out DIR` (the same "
        "recipe gives the same bits on the same device).",
        "",
        "```yaml",
        recipe_yaml.rstrip(),
        "```",
    ]
    if mergekit_notes is not None and not mergekit_written:
        lines += [
            "",
            f"There is no equivalent mergekit config ({'; '.join(mergekit_notes)}), so no "
            "`mergekit_config.yml` was written.",
        ]
    elif mergekit_notes is not None:
        lines += [
            "",
            "An equivalent mergekit config is in `mergekit_config.yml`. Differences:",
            "",
            *(f"- {n}" for n in mergekit_notes),
        ]
    return "\n".join(lines) + "\n"


def weights_from_section(recipe: Recipe) -> list[str]:
    """Markdown lines saying where the recipe's weights came from (none when set by hand)."""
    source = recipe.weights_from
    if source is None:
        return []
    from fusion_ui.tune.cocktail import format_loss  # the one formatting of losses (CLI, card)

    given = [float(e.parameters.get("weight", 1.0)) for e in recipe.models]
    total = sum(given)
    normalize = recipe.parameters.get("normalize", True) is not False
    merged = [w / total if normalize and total else w for w in given]  # the share each model gets
    edited = any(abs(m - c.weight) > 5e-6 for m, c in zip(merged, source.candidates, strict=True))
    floor = f", base floor {source.base_floor:g}" if source.base_floor else ""
    lines = [
        "",
        "## Where the weights came from",
        "",
        f"LM-Cocktail (Xiao et al. 2023, arXiv 2311.13534): each model's mean answer-only "
        f"cross-entropy on {source.examples} example(s) of the target task, turned into weights "
        f"`softmax(-loss / T)` with T = {source.temperature:g}{floor}. Examples' SHA-256: "
        f"`{source.examples_sha256}`.",
        "",
        "| model | loss (nats/token) | computed weight | merged weight |",
        "|---|---|---|---|",
    ]
    for entry, score, share in zip(recipe.models, source.candidates, merged, strict=True):
        lines.append(f"| {score.label} (`{entry.model}`) | {format_loss(score.loss)} | {score.weight:.4f} | {share:.4f} |")
    if edited:
        lines += ["", "The weights were edited after they were computed: the merge used the last column."]
    return lines
