"""The Deltas tab's facade: the delta analysis of a selection as a job, kept in memory for the
last few selections, and the tab's figures and tables built from it."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import plotly.graph_objects as go

from fusion_ui import figures
from fusion_ui.app.context import AppContext
from fusion_ui.app.selection import Selection, selection_key
from fusion_ui.deltas import OUTSIDE_BLOCKS, DeltaReport, analyze_deltas
from fusion_ui.figures.deltas import HEATMAP_METRICS
from fusion_ui.progress import ProgressCallback
from fusion_ui.runtime.jobs import Job, JobContext

DEFAULT_HEATMAP_METRIC = "median_abs"
REPORTS_KEPT = 4
OVERVIEWS_KEPT = 8


class DeltasFacade:
    def __init__(self, context: AppContext) -> None:
        self.context = context
        self._reports: OrderedDict[str, DeltaReport] = OrderedDict()
        self._running: dict[tuple[str, str], Job[DeltaReport]] = {}  # (session, selection) -> its analysis
        self._overviews: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()

    @staticmethod
    def heatmap_metrics() -> dict[str, str]:
        """Metric key -> label for the layer × module heatmap."""
        return dict(HEATMAP_METRICS)

    def cached_report(self, sel: Selection) -> DeltaReport | None:
        """The delta analysis of ``sel`` if it is already in memory (no work)."""
        key = selection_key(sel)
        report = self._reports.get(key)
        if report is not None:
            self._reports.move_to_end(key)
        return report

    def start(self, session: str, sel: Selection, *, figures_for: str | None = None) -> Job[DeltaReport]:
        """The delta analysis as a job (it finishes at once when the report is in memory).

        While the session's analysis of the same models is queued or running (started ahead of
        time, or by a click), that job is returned instead. ``figures_for`` (a heatmap metric):
        the job also builds the tab's first figures.
        """
        key = (session, selection_key(sel))
        running = self._running.get(key)
        if running is not None and not running.state.final:
            return running

        def run(ctx: JobContext) -> DeltaReport:
            report = self.cached_report(sel)
            if report is None:
                report = analyze_deltas(sel["base"], sel["models"], labels=sel["labels"], device=self.context.device,
                                        progress=ctx.progress, cancel=ctx.cancel)
                self._reports[selection_key(sel)] = report
                while len(self._reports) > REPORTS_KEPT:
                    self._reports.popitem(last=False)
            if figures_for is not None:
                self.overview(sel, "", figures_for)
            return report

        job = self.context.submit(session, "analysis", run, label="delta analysis", supersede=False)
        self._running = {k: j for k, j in self._running.items() if not j.state.final}
        self._running[key] = job
        return job

    def report(self, sel: Selection, *, progress: ProgressCallback | None = None, session: str = "") -> DeltaReport:
        """The delta analysis of the selection (from memory, else computed as a job, waited for)."""
        return self.cached_report(sel) or self.context.wait(self.start(session, sel), progress)

    def overview(self, sel: Selection, model: str, metric: str, **kw: Any) -> dict[str, Any]:
        """Figures and tables of the tab for one fine-tune (``model`` a label), kept for the last
        few (selection, fine-tune, metric) asked for."""
        report = self.report(sel, **kw)
        model = model if model in report.models else report.models[0]
        key = (selection_key(sel), model, metric)
        view = self._overviews.get(key)
        if view is None or view["report"] is not report:
            view = self._overviews[key] = _overview(report, model, metric)
            while len(self._overviews) > OVERVIEWS_KEPT:
                self._overviews.popitem(last=False)
        return view

    def drilldown(
        self, sel: Selection, *, tensor: str | None = None, layer: int | None = None, kind: str | None = None
    ) -> go.Figure:
        """|δ| histograms of every fine-tune for one tensor, or one layer and/or module kind."""
        report = self.report(sel)
        if tensor:
            return figures.delta_histogram(report, tensor=tensor)
        return figures.delta_histogram(report, layer=layer, kind=kind)


def _overview(report: DeltaReport, model: str, metric: str) -> dict[str, Any]:
    return {
        "report": report,
        "models": list(report.models),
        "model": model,
        "summary": report.summary[["model", "verdict", "reason"]].copy(),
        "histogram": figures.delta_histogram(report),
        "heatmap": figures.layer_module_heatmap(report, model, metric=metric),
        "cosine": figures.pairwise_heatmap(report, metric="cosine"),
        "conflict": figures.pairwise_heatmap(report, metric="sign_conflict"),
        "top": report.risk_table(model, n=15),
        "tensors": sorted(report.tensors.loc[report.tensors["model"] == model, "tensor"]),
        "layers": [("outside blocks" if x == OUTSIDE_BLOCKS else f"layer {x}", x)
                   for x in sorted({int(x) for x in report.groups["layer"]})],
        "kinds": sorted({str(x) for x in report.groups["kind"]}),
    }


__all__ = ["DEFAULT_HEATMAP_METRIC", "DeltasFacade"]
