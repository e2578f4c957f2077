"""What the tabs share: session state, the engine queue, and how handlers talk to the engine.

Handlers stay thin: they call the :class:`~fusion_ui.engine.Engine`, turn its
:class:`~fusion_ui.errors.FusionError` into a ``gr.Error`` a person can act on, and turn its
progress reports into ``gr.Progress``. Anything else that goes wrong is a bug: it is logged with
its traceback on the server and shown to the user as a short message, never as a traceback.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from fusion_ui.engine import Engine
from fusion_ui.errors import FusionError
from fusion_ui.progress import Progress, ProgressCallback

log = logging.getLogger("fusion_ui.ui")

# Every event that loads models or computes on them joins this one queue, one at a time, so two
# browser sessions never fight for the same memory (the engine also holds one work lock).
ENGINE_QUEUE: dict[str, Any] = {"concurrency_id": "engine", "concurrency_limit": 1}

MAX_MODELS = 6  # fine-tune slots in the Merge tab
MAX_COLUMNS = MAX_MODELS + 2  # Compare columns: base, fine-tunes, merge

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Shared:
    """Components several tabs read or write."""

    engine: Engine
    selection: gr.State  # Selection dict (base, models, labels) or None
    merged: gr.State  # YAML of the recipe merged into this session's preview, or None
    tabs: gr.Tabs


def _message(exc: BaseException) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, FusionError):
        return gr.Error(str(exc), title="Cannot do that yet")
    log.exception("unexpected error in a handler", exc_info=exc)
    return gr.Error(
        f"Something went wrong inside fusion_ui ({type(exc).__name__}: {exc}). The details are in "
        "the terminal that runs the app; please report them.",
        title="Internal error",
    )


def user_errors(fn: F) -> F:
    """Show FusionError messages as ``gr.Error``; keeps generator handlers generators."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (mapped to a message, see _message)
                raise _message(exc) from exc

        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _message(exc) from exc

    return wrapper  # type: ignore[return-value]


def progress_callback(progress: gr.Progress, verb: str) -> ProgressCallback:
    """Engine progress reports as a Gradio progress bar."""

    def report(p: Progress) -> None:
        progress(p.fraction, desc=f"{verb} {p.message}".strip())

    return report


def session_of(request: gr.Request | None) -> str:
    """The browser session's id (one preview model and one cancel button per session)."""
    return getattr(request, "session_hash", None) or "default"


def require_selection(selection: dict[str, Any] | None) -> dict[str, Any]:
    if not selection:
        raise gr.Error("Load a base and fine-tunes in the Models tab first.", title="No models yet")
    return selection
