"""Long work as jobs: queued per lane, one at a time, with progress, partial results and cancel.

The app never runs a merge, an analysis, a generation, a scoring run or an export on the
thread that serves a browser request. It submits a :class:`Job` to the :class:`JobRunner`,
which runs the jobs of each lane (one lane per compute device) one after another on that
lane's worker thread, and the request's handler only watches the job: its state, its latest
progress report and the partial results it has emitted (text as a model writes it). So:

- work on one device never overlaps (two merges never fight for the same memory);
- every job belongs to one browser session, and only that session can cancel it
  (:meth:`JobRunner.cancel`); a session that goes away takes its jobs with it
  (:meth:`JobRunner.end_session`);
- a job of a ``supersede`` kind (a live re-merge on slider release) replaces the session's
  older job of that kind instead of queueing behind it;
- every job ends in a final state: finished, failed or cancelled, with its result or error
  kept for the session (the last few jobs per session).

A job's function receives a :class:`JobContext`: it reports progress, emits partial results
and passes ``ctx.cancel`` to the engine, which stops between units of work (tensors, tokens,
eval items) and raises :class:`~fusion_ui.errors.CancelledError`.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fusion_ui.errors import CancelledError
from fusion_ui.progress import CancelToken, Progress

T = TypeVar("T")
log = logging.getLogger("fusion_ui.jobs")

DEFAULT_LANE = "device"
KEEP_PER_SESSION = 16  # finished jobs kept per session (their results and errors)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobView:
    """A consistent snapshot of a job, for a status line."""

    id: int
    kind: str
    label: str
    state: JobState
    progress: Progress | None
    ahead: int  # jobs queued or running before this one in its lane (0 once it runs)
    emitted: int  # partial results emitted so far
    error: BaseException | None
    seconds: float  # since submitted (queued) or started (running), or how long it ran (final)


@dataclass(eq=False)
class Job(Generic[T]):
    """One piece of long work of one session. Read it through :meth:`view`, :meth:`wait`,
    :meth:`watch`; only the runner changes it."""

    id: int
    session: str
    kind: str
    label: str
    lane: str
    fn: Callable[[JobContext], T] = field(repr=False)
    cancel_token: CancelToken = field(default_factory=CancelToken, repr=False)
    state: JobState = JobState.QUEUED
    progress: Progress | None = None
    result: T | None = field(default=None, repr=False)
    error: BaseException | None = None
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    ended: float | None = None
    _items: list[Any] = field(default_factory=list, repr=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _runner: JobRunner | None = field(default=None, repr=False)
    _version: int = field(default=0, repr=False)  # bumped on every change, for watchers

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_token.cancelled

    def view(self) -> JobView:
        # The runner's lock is taken before a job's (never inside it): ask for the place first.
        ahead = self._runner.ahead_of(self) if self._runner is not None else 0
        with self._changed:
            now = time.monotonic()
            if self.state.final:
                seconds = (self.ended or now) - (self.started or self.submitted)
            else:
                seconds = now - (self.started or self.submitted)
            return JobView(self.id, self.kind, self.label, self.state, self.progress, ahead,
                           len(self._items), self.error, seconds)

    def items(self, start: int = 0) -> list[Any]:
        """Partial results emitted from index ``start`` on."""
        with self._changed:
            return list(self._items[start:])

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is final (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self.state.final:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def watch(self, every: float = 0.5) -> Iterator[JobView]:
        """Snapshots as the job changes, and at least every ``every`` seconds, ending with the
        final one. A watcher that polls regularly (a browser handler) notices a gone client."""
        seen = -1
        version = 0
        while True:
            with self._changed:
                if self._version == seen and not self.state.final:
                    self._changed.wait(every)
                version = self._version
            view = self.view()
            seen = version
            yield view
            if view.state.final:
                return

    def outcome(self) -> T:
        """The result of a final job; its error re-raised otherwise."""
        if not self.state.final:
            raise RuntimeError("the job has not ended yet")
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]

    # -- changed by the runner and the job's context -----------------------------------------

    def _touch(self, **changes: Any) -> None:
        with self._changed:
            for key, value in changes.items():
                setattr(self, key, value)
            self._version += 1
            self._changed.notify_all()

    def _emit(self, item: Any) -> None:
        with self._changed:
            self._items.append(item)
            self._version += 1
            self._changed.notify_all()


class JobContext:
    """What a job's function gets: progress reports, partial results, and the cancel token."""

    def __init__(self, job: Job[Any]) -> None:
        self._job = job

    @property
    def cancel(self) -> CancelToken:
        return self._job.cancel_token

    def progress(self, p: Progress) -> None:
        self._job._touch(progress=p)

    def emit(self, item: Any) -> None:
        """Hand a partial result to whoever watches the job (e.g. the next piece of text)."""
        self._job._emit(item)

    def check(self) -> None:
        """Raise CancelledError if the job was cancelled (call between units of work)."""
        self._job.cancel_token.raise_if_cancelled()


class _Lane:
    """One worker thread and its FIFO of queued jobs."""

    def __init__(self, name: str, runner: JobRunner) -> None:
        self.name = name
        self.queue: deque[Job[Any]] = deque()
        self.running: Job[Any] | None = None
        self.thread = threading.Thread(target=runner._work, args=(self,), name=f"fusion-ui-jobs-{name}",
                                       daemon=True)


class JobRunner:
    """Runs submitted jobs one at a time per lane, on worker threads; safe to share across sessions."""

    def __init__(self, *, keep_per_session: int = KEEP_PER_SESSION) -> None:
        self.keep_per_session = keep_per_session
        self._lock = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._ids = itertools.count(1)
        self._by_session: dict[str, deque[Job[Any]]] = {}
        self._gone: set[str] = set()  # ended sessions whose jobs are still winding down
        self._closed = False

    # -- submitting and watching -------------------------------------------------------------

    def submit(
        self,
        session: str,
        kind: str,
        fn: Callable[[JobContext], T],
        *,
        label: str = "",
        lane: str = DEFAULT_LANE,
        supersede: bool = False,
    ) -> Job[T]:
        """Queue ``fn`` as a job of ``session``. With ``supersede``, the session's earlier jobs of
        the same kind that have not ended are cancelled first (the newest request wins)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the job runner is shut down")
            self._gone.discard(session)
            if supersede:
                for old in self._live(session):
                    if old.kind == kind:
                        self._cancel_locked(old)
            job: Job[T] = Job(next(self._ids), session, kind, label or kind, lane, fn, _runner=self)
            lane_ = self._lanes.get(lane)
            if lane_ is None:
                lane_ = self._lanes[lane] = _Lane(lane, self)
                lane_.thread.start()
            lane_.queue.append(job)
            jobs = self._by_session.setdefault(session, deque())
            jobs.append(job)
            self._trim(jobs)
            self._lock.notify_all()
        return job

    def run(
        self,
        session: str,
        kind: str,
        fn: Callable[[JobContext], T],
        *,
        label: str = "",
        lane: str = DEFAULT_LANE,
        supersede: bool = False,
        on_update: Callable[[JobView], None] | None = None,
    ) -> T:
        """Submit, wait for the end (passing each snapshot to ``on_update``), return the result.

        For callers that block anyway (the Python facade, tests). If the caller itself is
        interrupted while waiting, the job is cancelled.
        """
        job = self.submit(session, kind, fn, label=label, lane=lane, supersede=supersede)
        try:
            for view in job.watch():
                if on_update is not None:
                    on_update(view)
        except BaseException:
            self.cancel_job(job)
            raise
        return job.outcome()

    def jobs(self, session: str) -> list[Job[Any]]:
        """The session's jobs, oldest first (those not ended, and the last few ended ones)."""
        with self._lock:
            return list(self._by_session.get(session, ()))

    def active(self, session: str) -> list[Job[Any]]:
        """The session's jobs that have not ended, oldest first."""
        with self._lock:
            return self._live(session)

    def ahead_of(self, job: Job[Any]) -> int:
        """How many jobs run or wait before ``job`` in its lane."""
        with self._lock:
            lane = self._lanes.get(job.lane)
            if lane is None or job.state is not JobState.QUEUED:
                return 0
            try:
                position = lane.queue.index(job)
            except ValueError:
                return 0
            return position + (lane.running is not None)

    def busy(self, lane: str = DEFAULT_LANE) -> bool:
        with self._lock:
            ln = self._lanes.get(lane)
            return ln is not None and (ln.running is not None or bool(ln.queue))

    # -- cancelling -------------------------------------------------------------------------

    def cancel(self, session: str, *, kind: str | None = None) -> list[Job[Any]]:
        """Cancel the session's jobs that have not ended (of ``kind`` only, if given).

        Queued jobs end at once; a running job stops at its next unit of work. Returns the jobs
        it cancelled (empty: nothing of this session was running or queued).
        """
        with self._lock:
            hit = [j for j in self._live(session) if kind is None or j.kind == kind]
            for job in hit:
                self._cancel_locked(job)
        return hit

    def cancel_job(self, job: Job[Any]) -> None:
        with self._lock:
            self._cancel_locked(job)

    def end_session(self, session: str) -> list[Job[Any]]:
        """The session is gone (its browser tab closed): cancel its jobs and forget its results."""
        hit = self.cancel(session)
        with self._lock:
            jobs = self._by_session.get(session)
            if jobs is not None:
                live = [j for j in jobs if not j.state.final]
                if live:
                    self._by_session[session] = deque(live)
                    self._gone.add(session)  # forgotten once they end
                else:
                    del self._by_session[session]
        return hit

    def shutdown(self, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Cancel everything and stop the worker threads."""
        with self._lock:
            self._closed = True
            for lane in self._lanes.values():
                for job in [*lane.queue, *([lane.running] if lane.running else [])]:
                    self._cancel_locked(job)
            self._lock.notify_all()
            threads = [lane.thread for lane in self._lanes.values()]
        if wait:
            for t in threads:
                t.join(timeout)

    # -- internals ---------------------------------------------------------------------------

    def _live(self, session: str) -> list[Job[Any]]:
        return [j for j in self._by_session.get(session, ()) if not j.state.final]

    def _cancel_locked(self, job: Job[Any]) -> None:
        if job.state.final:
            return
        job.cancel_token.cancel()
        if job.state is JobState.QUEUED:
            lane = self._lanes.get(job.lane)
            if lane is not None and job in lane.queue:
                lane.queue.remove(job)
            now = time.monotonic()
            job._touch(state=JobState.CANCELLED, error=CancelledError("stopped before it started"),
                       started=now, ended=now)
        else:
            job._touch()  # watchers see cancel_requested at once

    def _trim(self, jobs: deque[Job[Any]]) -> None:
        ended = [j for j in jobs if j.state.final]
        for old in ended[: max(0, len(ended) - self.keep_per_session)]:
            jobs.remove(old)

    def _work(self, lane: _Lane) -> None:
        while True:
            with self._lock:
                while not lane.queue and not self._closed:
                    self._lock.wait()
                if not lane.queue:
                    return  # closed and drained
                job = lane.queue.popleft()
                lane.running = job
                job._touch(state=JobState.RUNNING, started=time.monotonic())
            try:
                job.cancel_token.raise_if_cancelled()
                # A job that returns has finished, even if Stop came after its last unit of work
                # (an export renamed into place is there: calling it cancelled would be a lie).
                result = job.fn(JobContext(job))
                final: dict[str, Any] = {"state": JobState.FINISHED, "result": result}
            except CancelledError as exc:
                final = {"state": JobState.CANCELLED, "error": exc}
            except BaseException as exc:  # noqa: BLE001 - kept on the job, re-raised to its watcher
                if job.cancel_token.cancelled:
                    final = {"state": JobState.CANCELLED, "error": CancelledError(str(exc))}
                else:
                    final = {"state": JobState.FAILED, "error": exc}
            with self._lock:
                lane.running = None
                job._touch(ended=time.monotonic(), **final)
                log.info("job %d (%s, session %s): %s after %.2f s waiting, %.2f s running", job.id, job.label,
                         job.session[:8], job.state.value, (job.started or 0) - job.submitted,
                         (job.ended or 0) - (job.started or 0))
                jobs = self._by_session.get(job.session)
                if jobs is not None and job.session in self._gone:
                    jobs.remove(job)
                    if not jobs:
                        del self._by_session[job.session]
                        self._gone.discard(job.session)
                elif jobs is not None:
                    self._trim(jobs)
                self._lock.notify_all()


__all__ = ["DEFAULT_LANE", "Job", "JobContext", "JobRunner", "JobState", "JobView"]
