"""The app's engine: one facade per tab over a shared context, and what spans the tabs (a
browser session's jobs, Stop, a closed page, work done ahead of the first clicks).

The UI (``fusion_ui.ui``) never imports torch; it calls an :class:`Engine` and gets back
DataFrames, plotly figures, strings, typed results and :class:`~fusion_ui.runtime.Job`
handles. Each tab's module in ``fusion_ui.ui`` talks to its own facade:

    engine.models   Models tab   (fusion_ui.app.models)    presets, selections, inspect
    engine.deltas   Deltas tab   (fusion_ui.app.deltas)    the analysis and its figures
    engine.merges   Merge tab    (fusion_ui.app.merges)    preview merges, the DARE preview
    engine.cocktail Cocktail tab (fusion_ui.app.cocktail)  LM-Cocktail's weights from a few examples
    engine.sweeps   Sweep tab    (fusion_ui.app.sweeps)    a grid of merges around the recipe, scored
    engine.compose  Compose tab  (fusion_ui.app.compose)   CALM: two frozen models and their bridges
    engine.frozen   Frozen LM tab (fusion_ui.app.frozen)   a soft prompt trained before a frozen LM
    engine.training (fusion_ui.app.training)                training runs as jobs, their loss histories
    engine.statistics (fusion_ui.app.statistics)            Fisher / RegMean statistics as jobs, reused
    engine.compare  Compare tab  (fusion_ui.app.compare)   side-by-side generation, scoring
    engine.exports  Export tab   (fusion_ui.app.exports)   exports under the root, history

Errors a user can fix are :class:`~fusion_ui.errors.FusionError`; the UI shows their message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from fusion_ui.app.cocktail import CocktailFacade
from fusion_ui.app.compare import CompareFacade
from fusion_ui.app.compose import ComposeFacade
from fusion_ui.app.context import LIVE_LIMIT_BYTES, AppContext
from fusion_ui.app.deltas import DEFAULT_HEATMAP_METRIC, DeltasFacade
from fusion_ui.app.exports import ExportFacade
from fusion_ui.app.frozen import FrozenFacade
from fusion_ui.app.merges import MergeFacade
from fusion_ui.app.models import ModelsFacade
from fusion_ui.app.selection import LIMITS, DemoFamily, Limits, Selection
from fusion_ui.app.statistics import StatisticsFacade
from fusion_ui.app.sweeps import SweepFacade
from fusion_ui.app.training import TrainingJobs
from fusion_ui.runtime.jobs import JobView


class Engine:
    """What the app does, per tab, behind one job runner and one model cache. Safe to share
    across browser sessions."""

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
        self.context = AppContext(demo_dir=demo_dir, device=device, memory_budget=memory_budget,
                                  state_dir=state_dir, export_root=export_root, live_limit_bytes=live_limit_bytes,
                                  limits=limits, ray=ray)
        self.models = ModelsFacade(self.context)
        self.deltas = DeltasFacade(self.context)
        self.merges = MergeFacade(self.context, self.deltas)
        self.statistics = StatisticsFacade(self.context)
        self.cocktail = CocktailFacade(self.context)
        self.sweeps = SweepFacade(self.context)
        self.training = TrainingJobs(self.context)
        self.compose = ComposeFacade(self.context, self.training)
        self.frozen = FrozenFacade(self.context, self.training)
        self.compare = CompareFacade(self.context)
        self.exports = ExportFacade(self.context)

    @property
    def demo(self) -> DemoFamily | None:
        return self.context.demo

    @property
    def limits(self) -> Limits:
        return self.context.limits

    @property
    def jobs(self):  # noqa: ANN201 - the JobRunner (for tests and checks)
        return self.context.jobs

    def close(self) -> None:
        """Cancel every job and stop the worker threads."""
        self.context.close()

    # -- a browser session --------------------------------------------------------------------

    def cancel(self, session: str) -> bool:
        """Stop the session's queued and running jobs (a running one at its next unit of work)."""
        return bool(self.context.jobs.cancel(session))

    def stop(self, session: str, *, wait: float = 30.0) -> list[JobView]:
        """Cancel the session's jobs and wait (up to ``wait`` s each) until they have ended.

        Returns their final snapshots; empty when nothing of this session was running.
        """
        jobs = self.context.jobs.cancel(session)
        for job in jobs:
            job.wait(wait)
        return [job.view() for job in jobs]

    def last_job(self, session: str, kinds: Sequence[str] | None = None) -> JobView | None:
        """The session's newest job (of ``kinds``, if given), ended or not."""
        for job in reversed(self.context.jobs.jobs(session)):
            if kinds is None or job.kind in kinds:
                return job.view()
        return None

    def end_session(self, session: str) -> None:
        """A browser session is gone: cancel its jobs and free its preview model."""
        self.context.end_session(session)

    def prefetch(self, session: str, sel: Selection | None) -> bool:
        """Do ahead of time, for a small selection, what its first clicks will need: the delta
        analysis with the Deltas tab's first figures, and the session's preview model loaded
        for the first merge. Big models are left for an explicit click. Returns whether it did."""
        if not sel or not self.context.live_ok(sel):
            return False
        if self.deltas.cached_report(sel) is None:
            self.deltas.start(session, sel, figures_for=DEFAULT_HEATMAP_METRIC)
        self.merges.prepare(session, sel)
        return True


__all__ = ["Engine"]
