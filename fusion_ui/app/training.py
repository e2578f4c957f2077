"""Training from the app: one engine training call run as a job of the session, its loss history
read while it runs, and where what it trains is written.

Every trainer of the package (``fusion_ui.frozen.train_frozen``, ``fusion_ui.compose.train_composition``)
takes ``progress`` and ``cancel`` and writes its artefact only at the end, atomically. Here a
call of one becomes a job: each step's :class:`~fusion_ui.train.loop.TrainProgress` is emitted
as ``(step, loss)`` (the job's partial results: the loss history) and reported with the loss and
an ETA; Stop cancels the job's token, so the loop stops before its next step and nothing is
written. The Frozen LM and Compose tabs both train through :class:`TrainingJobs`.

What a session trains goes to its workspace, ``<state dir>/trained/<session digest>/``, one new
folder per run (``<what>-<time>-<id>``), never over an earlier one.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import plotly.graph_objects as go

from fusion_ui import figures
from fusion_ui.app.context import AppContext
from fusion_ui.errors import InputError
from fusion_ui.progress import CancelToken, Progress, ProgressCallback
from fusion_ui.runtime.jobs import Job, JobContext, JobState
from fusion_ui.train.loop import TrainConfig, TrainProgress

T = TypeVar("T")

# train(progress, cancel) -> what the engine call returns; it writes its artefact at the end
TrainCall = Callable[[ProgressCallback, CancelToken], T]

MAX_STEPS = 20_000  # steps one run from the app may take (the CLI has no bound)
MAX_BATCH = 256


@dataclass(frozen=True)
class LossHistory:
    """The losses a training job has reported so far, one per finished step."""

    steps: tuple[int, ...]
    losses: tuple[float, ...]
    total: int  # steps the run was asked for

    @property
    def done(self) -> int:
        return self.steps[-1] if self.steps else 0

    @property
    def last_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


def train_config(
    steps: object, lr: object, batch_size: object = 8, *, warmup: int | None = None, seed: int = 0
) -> TrainConfig:
    """The loop's settings from a form, each value checked with a message naming it.

    The warm-up defaults to a tenth of the steps (at most the loop's default of 10), so a short
    run from the app still reaches its learning rate."""
    n = whole_number(steps, "steps")
    if not 1 <= n <= MAX_STEPS:
        raise InputError(f"steps must be from 1 to {MAX_STEPS:,}, got {n}")
    b = whole_number(batch_size, "the batch size")
    if not 1 <= b <= MAX_BATCH:
        raise InputError(f"the batch size must be from 1 to {MAX_BATCH}, got {b}")
    try:
        rate = float(lr)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"the learning rate must be a number, got {lr!r}") from None
    if not (math.isfinite(rate) and 0 < rate <= 1):
        raise InputError(f"the learning rate must be above 0 and at most 1 (e.g. 0.01), got {lr!r}")
    warm = min(10, max(1, n // 10)) if warmup is None else warmup
    return TrainConfig(steps=n, batch_size=b, lr=rate, warmup_steps=warm, seed=seed)


def whole_number(value: object, what: str) -> int:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return int(f)


class TrainingJobs:
    """Runs engine training calls as jobs and reads their loss histories (shared by the tabs)."""

    def __init__(self, context: AppContext) -> None:
        self.context = context

    # -- where trained parts go ---------------------------------------------------------------

    def workspace(self, session: str) -> Path:
        """The session's folder for what it trains (not created until something is written)."""
        digest = hashlib.sha256(session.encode()).hexdigest()[:12]
        return self.context.state_dir / "trained" / digest

    def new_folder(self, session: str, what: str) -> Path:
        """A fresh folder name in the session's workspace for one run's artefact."""
        return (
            self.workspace(session)
            / f"{what}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        )

    def trained(self, session: str, what: str, marker: str) -> list[Path]:
        """The session's finished artefacts of ``what`` (those holding ``marker``), newest first."""
        root = self.workspace(session)
        found = (
            [p for p in root.glob(f"{what}-*") if (p / marker).is_file()] if root.is_dir() else []
        )
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    # -- the job ------------------------------------------------------------------------------

    def start(
        self, session: str, kind: str, train: TrainCall[T], *, steps: int, label: str
    ) -> Job[T]:
        """Run ``train(progress, cancel)`` as a job of ``session`` (a newer one of ``kind`` replaces it).

        The job emits ``(step, loss)`` after every step and reports ``loss … · ETA …``; before
        the first step it reports "loading the models"."""

        def run(ctx: JobContext) -> T:
            ctx.progress(Progress(0, steps, "loading the models"))
            first: list[float] = []  # when the first step was reported (the rate excludes loading)

            def on_step(p: Progress) -> None:
                if not isinstance(p, TrainProgress):
                    ctx.progress(p)
                    return
                now = time.monotonic()
                if not first:
                    first.append(now)
                ctx.emit((p.done, p.loss))
                eta = ""
                if p.done > 1:
                    per_step = (now - first[0]) / (p.done - 1)
                    eta = f" · ETA {_seconds(per_step * (p.total - p.done))}"
                ctx.progress(Progress(p.done, p.total, f"loss {p.loss:.4f}{eta}"))

            return train(on_step, ctx.cancel)

        return self.context.submit(session, kind, run, label=label)

    @staticmethod
    def history(job: Job[object]) -> LossHistory:
        """The job's losses so far (all of them once it has ended)."""
        points = job.items()
        total = job.progress.total if job.progress is not None else 0
        return LossHistory(
            tuple(int(s) for s, _ in points), tuple(float(v) for _, v in points), total
        )

    def curve(self, job: Job[object], title: str = "training loss") -> go.Figure:
        """The job's loss curve, with its state in the title."""
        h = self.history(job)
        state = {
            JobState.QUEUED: "waiting",
            JobState.RUNNING: "training",
            JobState.FINISHED: "done",
            JobState.FAILED: "failed",
            JobState.CANCELLED: f"stopped at step {h.done}",
        }[job.state]
        return figures.loss_curve(
            h.steps, h.losses, total_steps=h.total or None, title=title, state=state
        )


def tensor_params(file: str | Path) -> int:
    """Parameters in a safetensors file (what a trained artefact holds), read from its header."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(file), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
            total += math.prod(f.get_slice(name).get_shape())
    return total


def _seconds(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


__all__ = [
    "MAX_STEPS",
    "LossHistory",
    "TrainCall",
    "TrainingJobs",
    "tensor_params",
    "train_config",
    "whole_number",
]
