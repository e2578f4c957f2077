"""``fusion-ui merge RECIPE --out DIR``: stream a merge to a loadable checkpoint folder.

Ctrl-C (SIGINT) and SIGTERM (what ``timeout``, systemd and docker send) stop the merge at the
next tensor: the working folder is removed, nothing is written, and the exit code is 128 plus
the signal's number (130, 143). A second signal stops at once, still cleaning up
(:mod:`fusion_ui.cli.exporting`, shared with ``fusion-ui cocktail``).
"""

from __future__ import annotations

import argparse

from fusion_ui.cli.exporting import add_export_options, export_recipe, stop_on_signals
from fusion_ui.dtypes import OUTPUT_DTYPES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge the models of a recipe (ours or a mergekit YAML) into a checkpoint folder",
        description="Run a merge recipe tensor by tensor and write sharded safetensors, config, "
        "tokenizer, model card, the recipe and an equivalent mergekit config.",
    )
    p.add_argument("recipe", help="recipe YAML (fusion_ui's, or a mergekit config as it is)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    add_export_options(p)
    p.add_argument("--dtype", choices=OUTPUT_DTYPES, help="override the recipe's output dtype")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--no-mergekit", action="store_true", help="do not write mergekit_config.yml")
    p.add_argument(
        "--allow-large-deltas", action="store_true",
        help="merge even if a model does not look like a fine-tune of the base",
    )
    p.set_defaults(func=run, fast_exit=True)


def run(args: argparse.Namespace) -> int:
    # torch and numba load here, not for `fusion-ui --help`
    from fusion_ui.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    updates = {k: v for k, v in (("dtype", args.dtype), ("seed", args.seed)) if v is not None}
    if updates:
        flags = " ".join(f"--{k} {v}" for k, v in updates.items())
        recipe = recipe.updated(source=f"command line ({flags})", **updates)
    with stop_on_signals() as stop:
        return export_recipe(
            recipe, args.out, stop=stop, force=args.force, device=args.device, shard_size=args.shard_size,
            write_mergekit=not args.no_mergekit, allow_large_deltas=args.allow_large_deltas,
        )
