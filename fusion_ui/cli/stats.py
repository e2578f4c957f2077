"""``fusion-ui stats fisher|gram MODEL --data FILE --out DIR``: statistics for data-aware merges.

Runs MODEL on the prompt/answer rows of FILE and saves, in DIR, its diagonal Fisher (``fisher``,
for ``method: fisher``) or its linear layers' input Gram matrices (``gram``, for ``method:
regmean``), with a JSON naming the model and the dataset; a recipe then points at DIR
(``fisher: DIR`` / ``gram: DIR`` per model). Ctrl-C / SIGTERM stop at the next batch and leave
nothing written (:mod:`fusion_ui.cli.exporting`); the exit code is 128 plus the signal's number.
"""

from __future__ import annotations

import argparse

from fusion_ui.cli.exporting import ProgressBar, Stopped, stop_on_signals
from fusion_ui.errors import FusionError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stats",
        help="compute a model's Fisher or Gram statistics on a few examples (for fisher / regmean merges)",
        description="Run MODEL on the prompt/answer rows of --data and save its diagonal empirical "
        "Fisher (fisher: mean over examples of the squared gradient of the answer-token loss) or the "
        "Gram matrix XᵀX of every nn.Linear (and GPT-2 Conv1D) input (gram, for RegMean) into --out, with a JSON naming "
        "the model and the dataset. Recipes point at the folder: `fisher: DIR` or `gram: DIR`.",
    )
    p.add_argument(
        "kind", choices=("fisher", "gram"), help="fisher (Fisher merging) or gram (RegMean)"
    )
    p.add_argument("model", metavar="MODEL", help="the model: folder or hub id")
    p.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help="examples: .jsonl or .csv with prompt and answer columns (a few hundred is plenty)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (must not exist unless --force)"
    )
    p.add_argument(
        "--limit", type=int, default=None, metavar="N", help="use the first N examples only"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="examples per batch (default 4 for fisher, which holds one gradient per example; 16 for gram)",
    )
    p.add_argument("--max-length", type=int, default=None, help="cut examples to this many tokens")
    p.add_argument(
        "--no-eos", action="store_true", help="do not score EOS after the answer (fisher)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace --out if it holds earlier statistics (or is empty)",
    )
    p.set_defaults(func=run, fast_exit=True)


def run(args: argparse.Namespace) -> int:
    # torch and transformers load here, not for `fusion-ui --help`
    from fusion_ui.stats.artefact import check_target
    from fusion_ui.stats.data import read_dataset
    from fusion_ui.stats.run import compute_statistics

    if args.batch_size is not None and args.batch_size < 1:
        raise FusionError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_target(args.out, force=args.force)  # a folder that would be refused fails before the pass
    dataset = read_dataset(args.data, limit=args.limit)
    with stop_on_signals() as stop:
        bar = ProgressBar("example", f"{args.kind} statistics")
        result = stop.run(
            bar,
            lambda: compute_statistics(
                args.kind,
                args.model,
                dataset,
                args.out,
                batch_size=args.batch_size,
                device=args.device,
                with_eos=not args.no_eos,
                max_length=args.max_length,
                force=args.force,
                progress=bar,
                cancel=stop.cancel,
            ),
            f"the {args.kind} pass was cancelled, and nothing was written to {args.out}",
        )
        if isinstance(result, Stopped):
            return result.code
    print(
        f"wrote {result.path}: {args.kind} statistics of {args.model} from {result.examples} example(s), "
        f"{result.tokens} token(s), {result.tensors} tensor(s), {result.nbytes / 1e6:.1f} MB, "
        f"pass {result.seconds:.1f} s; use it in a recipe as `{args.kind}: {result.path}`"
    )
    return 0
