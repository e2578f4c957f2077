"""The job runner (fusion_ui.runtime.jobs): one job at a time per lane, cancel by session,
supersede, final states, results kept per session, partial results, and no job stuck."""

from __future__ import annotations

import threading
import time

import pytest

from fusion_ui.errors import CancelledError, RecipeError
from fusion_ui.progress import Progress
from fusion_ui.runtime import JobContext, JobRunner, JobState


@pytest.fixture
def runner() -> JobRunner:
    r = JobRunner(keep_per_session=3)
    yield r
    r.shutdown()


def blocker() -> tuple[threading.Event, threading.Event, object]:
    """A job function that reports it started, then waits to be released (checking cancel)."""
    started, release = threading.Event(), threading.Event()

    def fn(ctx: JobContext) -> str:
        started.set()
        while not release.wait(0.01):
            ctx.check()
        return "released"

    return started, release, fn


def test_jobs_of_one_lane_run_one_at_a_time_in_order(runner: JobRunner) -> None:
    running, most, order = [0], [0], []
    lock = threading.Lock()

    def fn(k: int):
        def run(ctx: JobContext) -> int:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.02)
            order.append(k)
            with lock:
                running[0] -= 1
            return k * k

        return run

    jobs = [runner.submit(f"s{k % 2}", "work", fn(k)) for k in range(6)]
    assert [j.wait(5) for j in jobs] == [True] * 6
    assert most[0] == 1 and order == list(range(6))
    assert [j.outcome() for j in jobs] == [k * k for k in range(6)]


def test_a_queued_job_knows_its_place_and_cancel_ends_it_at_once(runner: JobRunner) -> None:
    started, release, fn = blocker()
    first = runner.submit("a", "merge", fn)
    assert started.wait(5)
    second = runner.submit("b", "merge", lambda ctx: "b")
    third = runner.submit("c", "merge", lambda ctx: "c")
    assert first.view().state is JobState.RUNNING
    assert (second.view().ahead, third.view().ahead) == (1, 2)

    assert runner.cancel("b") == [second]  # only b's job, and it never runs
    assert second.state is JobState.CANCELLED and isinstance(second.error, CancelledError)
    assert third.view().ahead == 1
    release.set()
    assert third.wait(5) and third.outcome() == "c"
    assert first.outcome() == "released"
    with pytest.raises(CancelledError):
        second.outcome()


def test_cancel_stops_a_running_job_at_its_next_unit_and_only_that_sessions(runner: JobRunner) -> None:
    started, _release, fn = blocker()
    mine = runner.submit("mine", "merge", fn)
    assert started.wait(5)
    other = runner.submit("other", "merge", lambda ctx: "other's")
    assert runner.cancel("nobody") == []
    assert runner.cancel("mine") == [mine]
    assert mine.wait(5) and mine.state is JobState.CANCELLED
    assert other.wait(5) and other.outcome() == "other's"  # the lane goes on with the next job


def test_failures_are_kept_on_the_job_and_the_lane_goes_on(runner: JobRunner) -> None:
    def broken(ctx: JobContext) -> None:
        raise RecipeError("bad recipe")

    bad = runner.submit("s", "merge", broken)
    good = runner.submit("s", "merge", lambda ctx: 1)
    assert bad.wait(5) and good.wait(5)
    assert bad.state is JobState.FAILED and isinstance(bad.error, RecipeError)
    assert good.state is JobState.FINISHED
    with pytest.raises(RecipeError, match="bad recipe"):
        bad.outcome()


def test_a_job_that_returns_has_finished_even_if_stop_came_after_its_last_unit(runner: JobRunner) -> None:
    gate = threading.Event()

    def fn(ctx: JobContext) -> str:
        ctx.check()
        gate.wait(5)  # the last unit of work is done; Stop arrives now
        return "written"

    job = runner.submit("s", "export", fn)
    time.sleep(0.05)
    runner.cancel("s")
    gate.set()
    assert job.wait(5) and job.state is JobState.FINISHED and job.outcome() == "written"


def test_supersede_replaces_the_sessions_older_job_of_that_kind_only(runner: JobRunner) -> None:
    started, release, fn = blocker()
    running = runner.submit("s", "merge", fn)
    assert started.wait(5)
    queued = runner.submit("s", "merge", lambda ctx: "old")
    preview = runner.submit("s", "preview", lambda ctx: "preview")
    others = runner.submit("t", "merge", lambda ctx: "t's")
    newest = runner.submit("s", "merge", lambda ctx: "new", supersede=True)
    assert running.wait(5)  # stopped at its next check, without being released
    release.set()
    for job in (queued, preview, others, newest):
        assert job.wait(5)
    assert running.state is JobState.CANCELLED and queued.state is JobState.CANCELLED
    assert [preview.outcome(), others.outcome(), newest.outcome()] == ["preview", "t's", "new"]


def test_progress_and_partial_results_reach_a_watcher(runner: JobRunner) -> None:
    def fn(ctx: JobContext) -> str:
        for k in range(3):
            ctx.progress(Progress(k + 1, 3, f"piece {k}"))
            ctx.emit(f"p{k}")
            time.sleep(0.01)
        return "done"

    job = runner.submit("s", "generate", fn)
    views = list(job.watch(every=0.05))
    assert views[-1].state is JobState.FINISHED
    assert views[-1].progress == Progress(3, 3, "piece 2")
    assert job.items() == ["p0", "p1", "p2"] and job.items(2) == ["p2"]


def test_results_kept_per_session_are_bounded_and_end_session_forgets_them(runner: JobRunner) -> None:
    jobs = [runner.submit("s", "merge", lambda ctx, k=k: k) for k in range(5)]
    for j in jobs:
        j.wait(5)
    kept = runner.jobs("s")
    assert [j.outcome() for j in kept] == [2, 3, 4]  # keep_per_session=3, newest kept
    started, _release, fn = blocker()
    live = runner.submit("s", "merge", fn)
    assert started.wait(5)
    assert runner.end_session("s") == [live]
    assert live.wait(5) and live.state is JobState.CANCELLED
    deadline = time.monotonic() + 5
    while runner.jobs("s") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.jobs("s") == []


def test_run_waits_and_a_watcher_that_gives_up_cancels(runner: JobRunner) -> None:
    seen = []
    assert runner.run("s", "merge", lambda ctx: 7, on_update=seen.append) == 7
    assert seen[-1].state is JobState.FINISHED
    started, _release, fn = blocker()
    job = runner.submit("s", "merge", fn)
    assert started.wait(5)
    watcher = job.watch(every=0.01)
    next(watcher)
    watcher.close()  # a generator closed before the end: the runner is not told by itself...
    assert not job.state.final
    runner.cancel_job(job)  # ...which is why the UI's follow() cancels in its finally
    assert job.wait(5) and job.state is JobState.CANCELLED


def test_shutdown_cancels_everything(runner: JobRunner) -> None:
    started, _release, fn = blocker()
    job = runner.submit("s", "merge", fn)
    queued = runner.submit("s", "merge", lambda ctx: 1)
    assert started.wait(5)
    runner.shutdown()
    assert job.state is JobState.CANCELLED and queued.state is JobState.CANCELLED
    with pytest.raises(RuntimeError, match="shut down"):
        runner.submit("s", "merge", lambda ctx: 1)
