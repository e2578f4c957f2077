"""``fusion-ui sweep SWEEP.yaml [--ray ADDRESS] [--out DIR]``: a grid of in-memory merges, scored.

Each cell is merged into one loaded model of the base and evaluated; its row goes to
``<stem>.results.csv`` (next to the sweep file, or in ``--out``) as soon as it ends. Running
the same command again resumes: cells already in the file are skipped. Prints the table and
the best cell's recipe, and writes that recipe to ``<stem>.best.yaml`` for ``fusion-ui merge``.

Ctrl-C or SIGTERM stop at the next cell (a second one at once): the finished cells stay in the
CSV and the exit code is 128 plus the signal's number.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="merge and score a grid of recipes (in memory; resumable; Ray for clusters)",
        description="Run a sweep file: a base recipe, 1-3 axes of its parameters, an eval set and a "
        "metric. Results go to a CSV as cells finish; the best cell's recipe is written as YAML.",
    )
    p.add_argument("sweep", help="sweep YAML (recipe:, axes:, eval:, best:)")
    p.add_argument(
        "--out",
        default=None,
        help="folder for the results CSV and best recipe (default: the sweep file's folder)",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="run the cells on Ray: auto (a running cluster), local (start one here), or "
        "an address (HEAD:6379, ray://HEAD:10001); needs the ray extra",
    )
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: as many as fit)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the cells run here (default: torch's; 1 is fastest for small "
        "models on a busy machine)",
    )
    p.add_argument(
        "--allow-large-deltas",
        action="store_true",
        help="merge even if a model does not look like a fine-tune of the base",
    )
    p.set_defaults(func=run, fast_exit=True)


def run(args: argparse.Namespace) -> int:
    # torch, pandas and Ray load here, not for `fusion-ui --help`
    from fusion_ui.cli.exporting import ProgressBar, stop_on_signals
    from fusion_ui.sweep import best_row, load_sweep, pareto_front, run_sweep

    sweep = load_sweep(args.sweep)
    for w in sweep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    bar = ProgressBar("cell", "sweep")
    with stop_on_signals() as stop:
        try:
            result = run_sweep(
                sweep,
                out=args.out,
                ray=args.ray,
                device=args.device,
                workers=args.workers,
                progress=bar,
                cancel=stop.cancel,
                allow_large_deltas=args.allow_large_deltas,
                threads=args.threads,
            )
        except KeyboardInterrupt:
            if not stop.stopped:
                raise
            bar.close()
            return stop.exit_code(
                f"the cells done are in {sweep.results_path(args.out)}; run again to resume"
            )
        finally:
            bar.close()
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    table = result.table
    shown = table.drop(columns=["cell", "sweep"])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(
        f"{result.ran} cells run, {result.skipped} resumed from {result.path}, in {result.seconds:.1f} s"
    )
    if result.cancelled:
        return stop.exit_code(
            f"{len(table)} of {result.cells} cells are in {result.path}; run again to resume"
        )
    if table.empty:
        return 0
    by = sweep.spec.best.by
    best = best_row(table, by)
    recipe = result.best_recipe()
    path = sweep.best_path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    print(f"\nbest by {by}: {best['cell']} ({by} {float(best[by]):.3f})")
    if sweep.spec.best.pareto is not None:
        a, b = sweep.spec.best.pareto
        front = pareto_front(table, (a, b))
        print(f"Pareto front over {a} and {b}:")
        print(
            front[["cell", a, b, "mean"]].to_string(index=False, float_format=lambda v: f"{v:.3g}")
        )
    print(f"\n# {path}  (fusion-ui merge {path} --out DIR)")
    print(recipe.to_yaml(), end="")
    return 0
