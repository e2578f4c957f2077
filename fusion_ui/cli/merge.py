"""``fusion-ui merge RECIPE --out DIR``: stream a merge to a loadable checkpoint folder."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from tqdm import tqdm

from fusion_ui.export import export_merge
from fusion_ui.progress import CancelToken, Progress
from fusion_ui.recipe import load_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge the models of a recipe (ours or a mergekit YAML) into a checkpoint folder",
        description="Run a merge recipe tensor by tensor and write sharded safetensors, config, "
        "tokenizer, model card, the recipe and an equivalent mergekit config.",
    )
    p.add_argument("recipe", help="recipe YAML (fusion_ui's, or a mergekit config as it is)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--shard-size", default="2GB", help="largest shard, e.g. 500MB, 2GB (default 2GB)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="override the recipe's output dtype")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--no-mergekit", action="store_true", help="do not write mergekit_config.yml")
    p.add_argument(
        "--allow-large-deltas", action="store_true",
        help="merge even if a model does not look like a fine-tune of the base",
    )
    p.set_defaults(func=run, fast_exit=True)


def run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe)
    updates = {k: v for k, v in (("dtype", args.dtype), ("seed", args.seed)) if v is not None}
    if updates:
        recipe = recipe.model_copy(update=updates)
    cancel = CancelToken()
    bar = tqdm(total=0, unit="tensor", desc="merging", file=sys.stderr, dynamic_ncols=True)

    def on_progress(p: Progress) -> None:
        if bar.total != p.total:
            bar.reset(total=p.total)
        bar.n = p.done
        bar.set_postfix_str(p.message[-48:], refresh=False)
        bar.refresh()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        cancel.cancel()  # stop between tensors; the export cleans up its temporary folder

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = export_merge(
            recipe, args.out, force=args.force, max_shard_size=args.shard_size, device=args.device,
            progress=on_progress, cancel=cancel, write_mergekit=not args.no_mergekit,
            allow_large_deltas=args.allow_large_deltas,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(
        f"wrote {result.path} ({result.total_bytes / 1e9:.2f} GB in {result.seconds:.1f} s): "
        f"{', '.join(result.files)}"
    )
    return 0
