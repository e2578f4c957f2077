"""Progress reports and cancellation shared by every long engine operation.

The engine calls ``progress(Progress(...))`` after each unit of work and checks a
:class:`CancelToken` between units. The CLI turns reports into a tqdm bar, the UI into
``gr.Progress``; neither is known here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from fusion_ui.errors import CancelledError


@dataclass(frozen=True)
class Progress:
    """One step of a long operation."""

    done: int  # units finished so far
    total: int  # units in all
    message: str = ""  # what was just done, e.g. a tensor name

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[Progress], None]


class CancelToken:
    """Set from any thread (a UI button, a signal handler) to stop work between units."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled by the user; nothing was written")


def report(callback: ProgressCallback | None, done: int, total: int, message: str = "") -> None:
    """Call ``callback`` if there is one (keeps call sites to one line)."""
    if callback is not None:
        callback(Progress(done, total, message))
