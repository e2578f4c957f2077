"""``fusion-ui merge RECIPE --out DIR``: stream a merge to a loadable checkpoint folder.

Ctrl-C (SIGINT) and SIGTERM (what ``timeout``, systemd and docker send) stop the merge at the
next tensor: the working folder is removed, nothing is written, and the exit code is 128 plus
the signal's number (130, 143). A second signal stops at once, still cleaning up.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from tqdm import tqdm

from fusion_ui.dtypes import OUTPUT_DTYPES
from fusion_ui.errors import CancelledError
from fusion_ui.progress import CancelToken, Progress

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge the models of a recipe (ours or a mergekit YAML) into a checkpoint folder",
        description="Run a merge recipe tensor by tensor and write sharded safetensors, config, "
        "tokenizer, model card, the recipe and an equivalent mergekit config.",
    )
    p.add_argument("recipe", help="recipe YAML (fusion_ui's, or a mergekit config as it is)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    p.add_argument("--force", action="store_true",
                   help="replace the output folder if it is an earlier export (or empty)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--shard-size", default="2GB", help="largest shard, e.g. 500MB, 2GB (default 2GB)")
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
    from fusion_ui.export import export_merge
    from fusion_ui.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    updates = {k: v for k, v in (("dtype", args.dtype), ("seed", args.seed)) if v is not None}
    if updates:
        flags = " ".join(f"--{k} {v}" for k, v in updates.items())
        recipe = recipe.updated(source=f"command line ({flags})", **updates)
    cancel = CancelToken()
    bar: tqdm | None = None  # made at the first tensor: an error before it prints only itself

    def on_progress(p: Progress) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=p.total, unit="tensor", desc="merging", file=sys.stderr, dynamic_ncols=True)
        if bar.total != p.total:
            bar.reset(total=p.total)
        bar.n = p.done
        bar.set_postfix_str(p.message[-48:], refresh=False)
        bar.refresh()

    stopped_by: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopped_by:  # a second signal: stop now; the export still removes its working folder
            raise KeyboardInterrupt
        stopped_by.append(signum)
        cancel.cancel()  # stop between tensors; the export cleans up its working folder

    # Signal handlers can only be set from the main thread (main() may be called from another).
    handle = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS} if handle else {}
    try:
        result = export_merge(
            recipe, args.out, force=args.force, max_shard_size=args.shard_size, device=args.device,
            progress=on_progress, cancel=cancel, write_mergekit=not args.no_mergekit,
            allow_large_deltas=args.allow_large_deltas,
        )
    except (CancelledError, KeyboardInterrupt):
        if not stopped_by:
            raise
        name = signal.Signals(stopped_by[0]).name
        if bar is not None:
            bar.close()
        print(f"error: stopped by {name}: the merge was cancelled, its working folder removed, "
              f"and nothing was written to {args.out}", file=sys.stderr)
        return 128 + stopped_by[0]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if bar is not None:
            bar.close()
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(
        f"wrote {result.path} ({result.total_bytes / 1e9:.2f} GB in {result.seconds:.1f} s): "
        f"{', '.join(result.files)}"
    )
    return 0
