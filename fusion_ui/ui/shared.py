"""What the tabs share: session state, how handlers follow engine jobs, and how errors show.

Handlers stay thin: they start a job on the :class:`~fusion_ui.app.Engine` and follow it
(:func:`follow`), writing its state into the tab's status line: waiting, a progress bar,
then a final state (done, stopped, failed). A :class:`~fusion_ui.errors.FusionError` becomes a
message a person can act on (the app's own wording of the fix, ``message_for("app")``); anything
else is a bug, logged with its traceback on the server and shown as a short message.

Events that follow jobs hide Gradio's own progress overlay (``show_progress="hidden"``): the
status line shows progress, and a failure then leaves no "Error" badge over the tab's other
outputs, only the status line's message and a toast.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr

from fusion_ui.app import LIMITS, Engine
from fusion_ui.errors import CancelledError, FusionError
from fusion_ui.runtime import Job, JobState, JobView

log = logging.getLogger("fusion_ui.ui")

# Events that start and follow jobs. The engine's job runner runs one job at a time on the
# device; these events only wait on their job, so many may wait at once (each session sees
# its own place in the line) while the page's other events stay free.
JOB_EVENT: dict[str, Any] = {"concurrency_id": "jobs", "concurrency_limit": 32, "show_progress": "hidden"}
# Cheap events (figures from a cached report, composing a recipe): no overlay either.
QUICK: dict[str, Any] = {"show_progress": "hidden"}

MAX_MODELS = LIMITS.max_finetunes  # fine-tune slots in the Merge tab
MAX_COLUMNS = MAX_MODELS + 2  # Compare columns: base, fine-tunes, merge
FOLLOW_EVERY = 0.5  # s between status updates of a running job (and checks for a gone client)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Shared:
    """Components several tabs read or write."""

    engine: Engine
    selection: gr.State  # Selection dict (base, models, labels) or None
    merged: gr.State  # {"recipe": YAML, "allow_large_deltas": bool} of this session's preview, or None
    tabs: gr.Tabs


def message_of(exc: BaseException) -> str:
    """What a person reads about an error: the app's wording of a FusionError's fix."""
    if isinstance(exc, gr.Error):
        return str(exc.message)
    if isinstance(exc, FusionError):
        return exc.message_for("app")
    log.exception("unexpected error in a handler", exc_info=exc)
    return (f"Something went wrong inside fusion_ui ({type(exc).__name__}: {exc}). The details are in "
            "the terminal that runs the app; please report them.")


def _error(exc: BaseException) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    title = "Cannot do that yet" if isinstance(exc, FusionError) else "Internal error"
    return gr.Error(message_of(exc), title=title)


def user_errors(fn: F) -> F:
    """Show FusionError messages as ``gr.Error``; keeps generator handlers generators."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (mapped to a message, see message_of)
                raise _error(exc) from exc

        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _error(exc) from exc

    return wrapper  # type: ignore[return-value]


def session_of(request: gr.Request | None) -> str:
    """The browser session's id (one preview model and its own jobs per session)."""
    return getattr(request, "session_hash", None) or "default"


def require_selection(selection: dict[str, Any] | None) -> dict[str, Any]:
    if not selection:
        raise gr.Error("Load a base and fine-tunes in the Models tab first.", title="No models yet")
    return selection


# -- following a job ---------------------------------------------------------------------------


def follow(job: Job[Any], every: float = FOLLOW_EVERY) -> Iterator[JobView]:
    """Snapshots of ``job`` until it ends: one at most every ``every`` seconds while it waits or
    runs, and the final one at once. If the handler stops following (the browser went away,
    Stop cancelled the event), the job is cancelled: nobody is left to see its result.

    Every snapshot a handler yields is a message the page renders; a job that reports each of
    its 39 tensors would queue 39 redraws behind its result (measured: the final status shown
    0.4 s after the job ended). A job shorter than ``every`` shows only its end.
    """
    last = time.monotonic()
    try:
        for view in job.watch(every):
            now = time.monotonic()
            if view.state.final or now - last >= every:
                last = now
                yield view
    finally:
        if not job.state.final and job._runner is not None:
            job._runner.cancel_job(job)


def running_line(view: JobView, verb: str) -> str:
    """The status line of a job that has not ended: its place in the line, or a progress bar."""
    if view.state is JobState.QUEUED:
        ahead = "1 job" if view.ahead == 1 else f"{view.ahead} jobs"
        return (f'<span class="busy-dot"></span> Waiting for the device: {ahead} ahead '
                f"({view.seconds:.0f} s)… <b>Stop</b> cancels it.")
    if view.progress is None or not view.progress.total:
        return f'<span class="busy-dot"></span> {html.escape(verb.capitalize())}… ({view.seconds:.1f} s)'
    p = view.progress
    what = html.escape(p.message[-60:]) if p.message else ""
    return (f'<span class="busy-dot"></span> {html.escape(verb.capitalize())} {p.done} / {p.total} '
            f'<progress value="{p.done}" max="{p.total}"></progress> {what} ({view.seconds:.1f} s)')


def failed_line(text: str) -> str:
    return f'<span class="bad-dot"></span> <b>Failed.</b> {html.escape(text)}'


def stopped_line(view: JobView, noun: str, note: str = "") -> str:
    where = ""
    if view.progress is not None and view.progress.total:
        where = f" at {view.progress.done} of {view.progress.total}"
    tail = f" {html.escape(note)}" if note else ""
    return f'<span class="stop-dot"></span> <b>Stopped</b>: the {noun} was cancelled{where}.{tail}'


def final_error(view: JobView) -> BaseException | None:
    """The error a failed job should raise to its handler (None when it finished or was stopped)."""
    if view.state is JobState.FAILED:
        return view.error
    return None


def was_stopped(view: JobView) -> bool:
    return view.state is JobState.CANCELLED or isinstance(view.error, CancelledError)


def stop_line(views: list[JobView], last: JobView | None) -> str:
    """What Stop says: what it stopped (in its final state), or that nothing was running."""
    if views:
        parts = []
        for v in views:
            state = "stopped" if v.state is JobState.CANCELLED else v.state.value
            parts.append(f"{v.label} {state}")
        return f'<span class="stop-dot"></span> <b>Stopped</b>: {", ".join(parts)}.'
    if last is not None and last.state.final:
        return (f"Nothing is running: the last {html.escape(last.label)} {last.state.value} "
                f"({last.seconds:.1f} s).")
    return "Nothing is running."


def stop_handler(engine: Engine, *, note: str = "") -> Callable[[gr.Request], str]:
    """The handler of a tab's Stop button: cancel this session's jobs, and say what stopped
    (and ``note``, what a stop leaves behind, when it stopped something)."""

    def stop_work(request: gr.Request) -> str:
        session = session_of(request)
        views = engine.stop(session)
        line = stop_line(views, engine.last_job(session))
        return f"{line} {html.escape(note)}" if views and note else line

    return stop_work


def follow_into(job: Job[Any], status: Any, verb: str, done: Callable[[Any, JobView], dict[Any, Any]], *,
                noun: str | None = None, stopped_note: str = "",
                live: Callable[[JobView], dict[Any, Any]] | None = None) -> Iterator[dict[Any, Any]]:
    """Follow ``job`` into the ``status`` line (waiting, "<verb>" with progress, "<noun>"
    stopped, failed); when it finishes, yield ``done(result, view)``. A failure is raised as a
    message after its line.

    ``live(view)`` adds outputs to every snapshot that is not the finished one (a training
    run's loss curve as it grows, and as it was when stopped or failed); ``stopped_note`` ends
    the stopped line (what a stop left behind)."""
    more = live or (lambda view: {})
    for view in follow(job):
        if not view.state.final:
            yield {status: running_line(view, verb), **more(view)}
        elif view.state is JobState.FINISHED:
            yield done(job.result, view)
        elif view.state is JobState.CANCELLED:
            yield {status: stopped_line(view, noun or verb, stopped_note), **more(view)}
        else:
            yield {status: failed_line(message_of(view.error)), **more(view)}
            raise gr.Error(message_of(view.error), title="Cannot do that yet")
