"""Running a sweep: each cell merged in memory into one loaded model of the base, then scored.

The local executor loads the base once (:class:`CellRunner`) and, for each cell not yet in the
results file, merges the cell's recipe into that model (no disk) and runs the evals; the row is
appended to the CSV as soon as the cell ends, so a crash or a cancel keeps every finished cell
and the next run resumes after them. :mod:`fusion_ui.sweep.ray_executor` runs the same
:class:`CellRunner` as Ray actors, one per worker, and streams rows into the same file.

    from fusion_ui.sweep import load_sweep, run_sweep
    result = run_sweep(load_sweep("sweep.yaml"))           # ray="auto" for a Ray cluster
    print(result.table)                                   # one row per cell
    result.best_recipe().to_yaml()                        # what `fusion-ui merge` takes
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fusion_ui.errors import CancelledError
from fusion_ui.progress import CancelToken, ProgressCallback, report
from fusion_ui.recipe import Recipe
from fusion_ui.sweep.cells import Cell, grid_cells
from fusion_ui.sweep.results import ResultsFile
from fusion_ui.sweep.runner import CellResult, CellRunner, runner_arguments
from fusion_ui.sweep.spec import Sweep, SweepError

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class SweepResult:
    """The table of a sweep (one row per finished cell, grid order) and how the run went."""

    sweep: Sweep
    table: pd.DataFrame
    path: Path  # the results CSV
    cells: int  # in the grid
    ran: int  # cells run by this call
    skipped: int  # cells found done in the results file
    cancelled: bool
    seconds: float  # this call's wall time
    warnings: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.table) == self.cells

    def best_recipe(self, by: str | None = None) -> Recipe:
        """The recipe of the best cell by ``by`` (default: the sweep's ``best.by``)."""
        from fusion_ui.sweep.best import best_recipe

        return best_recipe(self.sweep, self.table, by=by)


def run_sweep(
    sweep: Sweep,
    *,
    out: str | Path | None = None,
    ray: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    allow_large_deltas: bool = False,
    threads: int | None = None,
) -> SweepResult:
    """Run every cell not yet in the results file; return the whole table.

    ``out``: the folder of the results CSV (default: next to the sweep file). ``ray``: None runs
    here; ``"auto"`` (a running cluster, ``RAY_ADDRESS`` or this machine's), ``"local"`` (start
    one on this machine) or an address (``ray://head:10001``) runs the cells as Ray tasks, see
    :mod:`fusion_ui.sweep.ray_executor`. A cancel stops at the next cell (or tensor); the cells
    done stay in the CSV and ``cancelled`` is set.

    ``threads``: torch threads for the local executor while it runs (set back after; None:
    torch's setting). Small models generate faster on 1 thread, and far faster on 1 when other
    work shares the cores: on the demo family, 0.57 s per cell on 1 thread against 4.6 s on 2
    on a busy 2-core machine (``benchmarks/sweep_speed.py``). Ray workers use 1 (Ray's default).
    """
    start = time.perf_counter()
    cells = grid_cells(sweep)
    results = ResultsFile(sweep.results_path(out), sweep)
    done = results.done_keys()
    todo = [c for c in cells if c.key not in done]
    by_key = {c.key: c for c in cells}
    warnings = list(sweep.warnings)
    eta = Eta(len(todo))
    report(
        progress,
        len(cells) - len(todo),
        len(cells),
        f"{len(cells) - len(todo)} cells already done, resuming"
        if len(todo) < len(cells)
        else "starting",
    )
    stream: Iterator[CellResult]
    if ray is None:
        stream = local_cells(
            sweep,
            todo,
            device=device,
            cancel=cancel,
            allow_large_deltas=allow_large_deltas,
            threads=threads,
        )
    else:
        from fusion_ui.sweep.ray_executor import ray_cells

        stream = ray_cells(
            sweep,
            todo,
            address=ray,
            device=device,
            workers=workers,
            cancel=cancel,
            allow_large_deltas=allow_large_deltas,
        )
    ran = 0
    cancelled = False
    try:
        for result in stream:
            cell = by_key[result.key]
            results.append(result.row(cell, sweep.fingerprint))
            warnings += list(result.warnings)
            ran += 1
            eta.tick()
            report(
                progress,
                len(cells) - len(todo) + ran,
                len(cells),
                f"{short_label(cell.values)}: mean {result.mean:.3f}, {eta.text()}",
            )
            if cancel is not None and cancel.cancelled:
                cancelled = ran < len(todo)
                break
    except CancelledError:
        cancelled = True
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # the Ray executor stops its workers
    table = results.table([c.key for c in cells])
    return SweepResult(
        sweep,
        table,
        results.path,
        len(cells),
        ran,
        len(cells) - len(todo),
        cancelled,
        time.perf_counter() - start,
        list(dict.fromkeys(warnings)),
    )


def local_cells(
    sweep: Sweep,
    cells: Sequence[Cell],
    *,
    device: str = "auto",
    cancel: CancelToken | None = None,
    allow_large_deltas: bool = False,
    threads: int | None = None,
) -> Iterator[CellResult]:
    """The cells' results, one after the other, in this process (on ``threads`` torch threads
    while it runs, when given)."""
    if not cells:
        return
    with torch_threads(threads):
        yield from _run_here(
            sweep, cells, device=device, cancel=cancel, allow_large_deltas=allow_large_deltas
        )


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch on ``threads`` intra-op threads inside the block, then back to what it was."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise SweepError(f"threads must be 1 or more, got {threads}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_here(
    sweep: Sweep,
    cells: Sequence[Cell],
    *,
    device: str,
    cancel: CancelToken | None,
    allow_large_deltas: bool,
) -> Iterator[CellResult]:
    runner = CellRunner(
        **runner_arguments(sweep), device=device, allow_large_deltas=allow_large_deltas
    )
    for cell in cells:
        if cancel is not None and cancel.cancelled:
            return
        yield runner.run(cell.recipe, cell.key, cancel)


class Eta:
    """Time left from the cells finished so far in this run (wall time per cell, so parallel
    workers count)."""

    def __init__(self, cells: int) -> None:
        self.cells = cells
        self.done = 0
        self.start = time.perf_counter()

    def tick(self) -> None:
        self.done += 1

    def seconds_left(self) -> float | None:
        if self.done == 0:
            return None
        return (time.perf_counter() - self.start) / self.done * (self.cells - self.done)

    def text(self) -> str:
        left = self.seconds_left()
        if left is None:
            return "ETA after the first cell"
        return f"ETA {format_duration(left)}"


def short_label(values: dict[str, Any]) -> str:
    """``drop_rate=0.9 lambda=1.5``: a cell's values for a progress line."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


__all__ = [
    "Eta",
    "SweepResult",
    "format_duration",
    "local_cells",
    "run_sweep",
    "short_label",
    "torch_threads",
]
