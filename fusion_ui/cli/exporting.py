"""What every exporting command shares: Ctrl-C / SIGTERM stop the work at the next unit, and a
progress bar on stderr (``fusion-ui merge``, ``fusion-ui cocktail``).

SIGINT and SIGTERM (what ``timeout``, systemd and docker send) cancel through a
:class:`~fusion_ui.progress.CancelToken`: the engine stops at its next tensor or batch, an export
removes its working folder, nothing is written, and the command exits with 128 plus the signal's
number (130, 143). A second signal stops at once (as ``KeyboardInterrupt``), still cleaning up.

Not a sub-command: no ``register``. Light at import (no torch): the engine loads in the functions.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

from tqdm import tqdm

from fusion_ui.errors import CancelledError
from fusion_ui.progress import CancelToken, Progress

if TYPE_CHECKING:
    from fusion_ui.recipe import Recipe

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class SignalStop:
    """The first stop signal cancels ``cancel``; which one came is kept for the exit code."""

    def __init__(self) -> None:
        self.cancel = CancelToken()
        self.signum: int | None = None

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # a second signal: stop now; exports still remove their folder
            raise KeyboardInterrupt
        self.signum = signum
        self.cancel.cancel()  # the engine stops at its next unit of work

    def exit_code(self, what: str) -> int:
        """Print ``error: stopped by SIGINT: <what>`` and return 128 + the signal's number."""
        if self.signum is None:
            raise RuntimeError("exit_code() asked before any stop signal")  # a bug, not a user error
        print(f"error: stopped by {signal.Signals(self.signum).name}: {what}", file=sys.stderr)
        return 128 + self.signum

    def run(self, bar: ProgressBar, work: Callable[[], T], cancelled: str) -> T | Stopped:
        """``work()`` with ``bar`` closed after it; a stop signal's cancel becomes :class:`Stopped`
        (the message ``cancelled`` printed, the exit code kept), any other error propagates."""
        try:
            return work()
        except (CancelledError, KeyboardInterrupt):
            if not self.stopped:
                raise
            bar.close()
            return Stopped(self.exit_code(cancelled))
        finally:
            bar.close()


@dataclass(frozen=True)
class Stopped:
    """A command's work ended by a stop signal: the exit code to return (130, 143)."""

    code: int


@contextmanager
def stop_on_signals() -> Iterator[SignalStop]:
    """SIGINT/SIGTERM cancel the yielded stop's token while the block runs; handlers restored after.

    Signal handlers can only be set from the main thread (``main()`` may be called from
    another); elsewhere the token is simply never cancelled by a signal.
    """
    stop = SignalStop()
    handle = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, stop.on_signal) for s in STOP_SIGNALS} if handle else {}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class ProgressBar:
    """A tqdm bar on stderr fed by engine :class:`Progress` reports, made at the first report
    (an error before it prints only itself)."""

    def __init__(self, unit: str, desc: str) -> None:
        self.unit, self.desc = unit, desc
        self.bar: tqdm | None = None

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            self.bar = tqdm(total=p.total, unit=self.unit, desc=self.desc, file=sys.stderr, dynamic_ncols=True)
        if self.bar.total != p.total:
            self.bar.reset(total=p.total)
        self.bar.n = p.done
        self.bar.set_postfix_str(p.message[-48:], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_export_options(p: argparse.ArgumentParser) -> None:
    """``--force``, ``--device``, ``--shard-size`` as every exporting command spells them (each
    command adds its own ``--out``: required for ``merge``, not with ``cocktail --no-merge``)."""
    p.add_argument("--force", action="store_true",
                   help="replace the output folder if it is an earlier export (or empty)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--shard-size", default="2GB", help="largest shard, e.g. 500MB, 2GB (default 2GB)")


def export_recipe(
    recipe: Recipe,
    out: str,
    *,
    stop: SignalStop,
    force: bool,
    device: str,
    shard_size: str,
    write_mergekit: bool = True,
    allow_large_deltas: bool = False,
) -> int:
    """Merge and export ``recipe`` with a progress bar; print the warnings and what was written.

    Returns the exit code: 0, or 128 + the signal's number when ``stop`` was signalled.
    """
    from fusion_ui.export import export_merge

    bar = ProgressBar("tensor", "merging")
    try:
        result = export_merge(
            recipe, out, force=force, max_shard_size=shard_size, device=device,
            progress=bar, cancel=stop.cancel, write_mergekit=write_mergekit,
            allow_large_deltas=allow_large_deltas,
        )
    except (CancelledError, KeyboardInterrupt):
        if not stop.stopped:
            raise
        bar.close()
        return stop.exit_code(
            f"the merge was cancelled, its working folder removed, and nothing was written to {out}"
        )
    finally:
        bar.close()
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(
        f"wrote {result.path} ({result.total_bytes / 1e9:.2f} GB in {result.seconds:.1f} s): "
        f"{', '.join(result.files)}"
    )
    return 0
