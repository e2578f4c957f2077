"""``fusion-ui cocktail BASE FT... --examples ex.jsonl --out DIR``: LM-Cocktail's automatic mix.

Scores the base and every fine-tune on a few examples of the target task (answer-only
cross-entropy), prints the losses and the weights ``softmax(-loss / T)``, then merges linearly
with those weights and exports like ``fusion-ui merge`` (the same Ctrl-C / SIGTERM handling,
:mod:`fusion_ui.cli.exporting`). ``--no-merge`` only prints the table; ``--recipe-out`` writes
the recipe, which records where its weights came from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fusion_ui.cli.exporting import (
    ProgressBar,
    Stopped,
    add_export_options,
    export_recipe,
    stop_on_signals,
)
from fusion_ui.dtypes import OUTPUT_DTYPES
from fusion_ui.errors import ExportError, FusionError

if TYPE_CHECKING:
    from fusion_ui.tune import CocktailResult

DEFAULT_TEMPERATURE = 5.0  # fusion_ui.tune.DEFAULT_TEMPERATURE (not imported: it would load torch)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cocktail",
        help="LM-Cocktail: weights from a few examples' losses, then a linear merge",
        description="Score BASE and each FT on a few examples of the target task (mean answer-only "
        "cross-entropy), weight them softmax(-loss / T), print the table, then merge linearly with "
        "those weights and export (LM-Cocktail, arXiv 2311.13534). Causal LMs only.",
    )
    p.add_argument("base", metavar="BASE", help="the base model: folder or hub id")
    p.add_argument("finetunes", nargs="+", metavar="FT", help="fine-tunes (and other candidates) to mix in")
    p.add_argument("--examples", required=True, metavar="FILE",
                   help="examples of the target task: .jsonl or .csv with prompt and answer (5 is enough)")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help=f"T of softmax(-loss / T); lower is sharper (default {DEFAULT_TEMPERATURE:g})")
    p.add_argument("--base-floor", type=float, default=0.0,
                   help="the least weight the base gets, 0-1; the others share the rest (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per forward pass (default 8)")
    p.add_argument("--out", help="output folder (must not exist unless --force); not with --no-merge")
    add_export_options(p)
    p.add_argument("--dtype", choices=OUTPUT_DTYPES, help="output dtype (default: the base's)")
    p.add_argument("--name", help="the merge's name in the model card")
    p.add_argument("--no-merge", action="store_true", help="only print the losses and weights")
    p.add_argument("--recipe-out", metavar="FILE", help="also write the recipe YAML here")
    p.set_defaults(func=run, fast_exit=True)


def run(args: argparse.Namespace) -> int:
    # torch and transformers load here, not for `fusion-ui --help`
    from fusion_ui.evals import load_eval_set
    from fusion_ui.tune import cocktail_recipe, cocktail_weights

    if args.out is None and not args.no_merge:
        raise FusionError("give --out DIR for the merged model, or --no-merge to only print the weights")
    if args.out is not None and args.no_merge:
        raise FusionError("--no-merge writes no model: leave out --out (or drop --no-merge)")
    candidates = [args.base, *args.finetunes]
    if args.out is not None:  # a folder the export would refuse fails now, not after the scoring
        from fusion_ui.export import check_target, output_folder

        inputs = [(ref, Path(ref)) for ref in candidates if Path(ref).is_dir()]
        check_target(output_folder(args.out), force=args.force, inputs=inputs)
    examples = load_eval_set(args.examples)
    with stop_on_signals() as stop:
        bar = ProgressBar("batch", "scoring")
        result = stop.run(bar, lambda: cocktail_weights(
            candidates, examples, temperature=args.temperature, base=args.base,
            base_floor=args.base_floor, device=args.device, batch_size=args.batch_size,
            progress=bar, cancel=stop.cancel,
        ), "the weights were not computed, and nothing was written")
        if isinstance(result, Stopped):
            return result.code
        for w in result.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(format_table(result))
        recipe = cocktail_recipe(result, name=args.name)
        if args.dtype is not None:
            recipe = recipe.updated(source=f"command line (--dtype {args.dtype})", dtype=args.dtype)
        if args.recipe_out is not None:
            _write_recipe(recipe.to_yaml(), Path(args.recipe_out))
            print(f"wrote the recipe to {args.recipe_out}")
        if args.no_merge:
            return 0
        return export_recipe(recipe, args.out, stop=stop, force=args.force, device=args.device,
                             shard_size=args.shard_size)


def format_table(result: CocktailResult) -> str:
    """The losses and weights as printed: a header line, then one row per candidate."""
    from fusion_ui.tune import format_loss

    floor = f", base floor {result.base_floor:g}" if result.base_floor else ""
    head = (f"LM-Cocktail weights from {result.n_examples} example(s) (sha256 {result.examples_sha256[:12]}), "
            f"softmax(-loss / T), T = {result.temperature:g}{floor}")
    table = result.table().drop(columns="model").set_index("label")
    body = table.to_string(formatters={"loss": format_loss, "weight": "{:.4f}".format})
    return head + "\n" + body


def _write_recipe(text: str, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write the recipe to {path}: {exc.strerror or exc}") from exc
