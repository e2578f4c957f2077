"""What every tab's facade shares: the device, the model cache, the job runner, the bounds, the
history, where the app may write, and what each browser session holds (its preview model and
the merge in it)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from fusion_ui import figures
from fusion_ui.app.history import History
from fusion_ui.app.selection import LIMITS, DemoFamily, Limits, Selection
from fusion_ui.device import resolve_device
from fusion_ui.errors import FusionError
from fusion_ui.evals import load_causal_lm
from fusion_ui.io import Checkpoint
from fusion_ui.io.writer import parse_size
from fusion_ui.kernels import warm_up_in_background
from fusion_ui.progress import ProgressCallback
from fusion_ui.recipe import Recipe
from fusion_ui.runtime.cache import LoadedModel, ModelCache, default_memory_budget
from fusion_ui.runtime.jobs import Job, JobContext, JobRunner

T = TypeVar("T")

# Merges of models up to this size (as loaded) re-run on slider release when "live" is on.
LIVE_LIMIT_BYTES = 512 * 2**20
DEFAULT_EXPORT_ROOT = Path("~/fusion_ui/exports")
DEFAULT_STATE_DIR = Path("~/.cache/fusion_ui/app")


@dataclass(frozen=True, eq=False)  # identity hash: Gradio hashes a session's state to see it change
class MergeRef:
    """A merge a session's preview model holds: enough to rebuild it (small, copyable)."""

    recipe: Recipe
    allow_large_deltas: bool = False


class AppContext:
    """Shared by the facades of one app; safe to use from every browser session at once."""

    def __init__(
        self,
        *,
        demo_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        memory_budget: int | str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        export_root: str | os.PathLike[str] | None = None,
        live_limit_bytes: int = LIVE_LIMIT_BYTES,
        limits: Limits = LIMITS,
        ray: str | None = None,
    ) -> None:
        self.demo = DemoFamily.find(demo_dir)
        # The Ray cluster the Sweep tab may send cells to (``fusion-ui app --ray``), chosen by
        # whoever starts the app, never typed in the page: None, the tab runs sweeps here only.
        self.ray = ray
        self.device = device
        budget = default_memory_budget() if memory_budget is None else parse_size(memory_budget)
        self.cache = ModelCache(budget)
        self.live_limit_bytes = live_limit_bytes
        self.limits = limits
        self.state_dir = Path(state_dir or DEFAULT_STATE_DIR).expanduser()
        self.export_root = Path(export_root or DEFAULT_EXPORT_ROOT).expanduser().absolute()
        self.history = History(self.state_dir)
        self.jobs = JobRunner()
        self.merges: dict[str, MergeRef] = {}  # session -> what its preview model holds
        # The CPU kernels and plotly's figure machinery load while the page opens, not on the first
        # click. (Compiling the kernels in a separate process instead, on a fresh install, was
        # measured: the first Deltas analysis 4.2-4.6 s instead of 6.1 s, but the first merge
        # 22-25 s instead of 11 s; so here, on a thread.)
        warm_up_in_background()
        threading.Thread(target=_warm_up_figures, name="fusion-ui-figures-warm-up", daemon=True).start()

    def close(self) -> None:
        """Cancel every job and stop the worker threads."""
        self.jobs.shutdown()

    # -- jobs ---------------------------------------------------------------------------------

    def submit(self, session: str, kind: str, fn: Callable[[JobContext], T], *, label: str,
               supersede: bool = True) -> Job[T]:
        return self.jobs.submit(session, kind, fn, label=label, supersede=supersede)

    @staticmethod
    def wait(job: Job[T], progress: ProgressCallback | None = None) -> T:
        """Wait for ``job``, passing its progress on; its result, or its error raised.

        If the waiting caller is interrupted, the job is cancelled.
        """
        try:
            for view in job.watch():
                if progress is not None and view.progress is not None:
                    progress(view.progress)
        except BaseException:
            if job._runner is not None:
                job._runner.cancel_job(job)
            raise
        return job.outcome()

    # -- models in memory ---------------------------------------------------------------------

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def load_dtype(self, ck: Checkpoint) -> torch.dtype:
        # float32 on the CPU (fast and exact for bf16 weights); the checkpoint's dtype on a GPU.
        return ck.main_dtype if self.torch_device().type == "cuda" else torch.float32

    def loaded_bytes(self, ref: str) -> int:
        with Checkpoint.open(ref) as ck:
            return ck.num_params * torch.empty((), dtype=self.load_dtype(ck)).element_size()

    def live_ok(self, sel: Selection | None) -> bool:
        """Whether a merge of this selection is small enough to re-run on every slider release."""
        if not sel:
            return False
        try:
            return self.loaded_bytes(sel["base"]) <= self.live_limit_bytes
        except FusionError:
            return False

    def model(self, ref: str) -> LoadedModel:
        """A model folder or hub id, loaded once and kept in the cache."""
        return self.cache.get(f"model:{ref}", self.loaded_bytes(ref), lambda: self._load(ref))

    def preview_model(self, session: str, ref: str) -> LoadedModel:
        """The session's preview model: loaded once with ``ref``'s architecture, re-merged in place."""
        key = preview_key(session)
        item = self.cache.peek(key)
        if item is not None and item.source == ref:
            return item
        self.cache.discard(key)
        return self.cache.get(key, self.loaded_bytes(ref), lambda: self._load(ref))

    def _load(self, ref: str) -> LoadedModel:
        with Checkpoint.open(ref) as ck:
            dtype = self.load_dtype(ck)
        model, tokenizer = load_causal_lm(ref, device=self.torch_device(), dtype=dtype)
        nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        return LoadedModel(model, tokenizer, nbytes, ref)

    # -- sessions -----------------------------------------------------------------------------

    def end_session(self, session: str) -> None:
        """A browser session is gone: cancel its jobs and free its preview model."""
        self.jobs.end_session(session)
        self.cache.discard(preview_key(session))
        self.merges.pop(session, None)


def preview_key(session: str) -> str:
    return f"merge:{session}"


def _warm_up_figures() -> None:
    try:
        figures.warm_up()
    except Exception:  # noqa: BLE001 - only an optimisation; the first real figure reports any error
        pass


__all__ = ["DEFAULT_EXPORT_ROOT", "LIVE_LIMIT_BYTES", "AppContext", "MergeRef", "preview_key"]
