"""Figures of a delta analysis: what a user should conclude, readable at a glance.

Pure functions from a :class:`~fusion_ui.deltas.DeltaReport` (or a
:class:`~fusion_ui.deltas.DarePreview`) to a plotly figure. Titles state the conclusion,
axes carry units, colours are colour-blind safe (Okabe-Ito lines, cividis heatmaps), and the
DARE paper's thresholds are drawn on every |δ| axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from fusion_ui.deltas.report import OUTSIDE_BLOCKS
from fusion_ui.deltas.stats import THRESHOLDS
from fusion_ui.tensor_names import MODULE_KINDS

if TYPE_CHECKING:
    from fusion_ui.deltas import DarePreview, DeltaReport

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision
# deficiency. Ordered for lines on white (blue, orange, green, vermillion, ...).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
HEATMAP_SCALE = "Cividis"  # perceptually uniform and colour-blind safe

# What each threshold means in the DARE paper (docs/methods.md), for legends.
THRESHOLD_NOTES = {
    0.002: "0.002: DARE's comfort zone (later paper)",
    0.005: "0.005: DARE works while |δ| mostly below",
    0.01: "0.01: DARE fails above",
}
_THRESHOLD_DASH = {0.002: "dot", 0.005: "dash", 0.01: "solid"}
ABS_AXIS = "|δ| = |θ fine-tune − θ base| (weight units, log scale)"
SHARE_AXIS = "share of elements per bin (%)"
LOG_X_RANGE = (-8.3, 0.3)  # log10 of the display range 1e-8 … 1 with margins


def _share(t: float) -> str:
    return f"share_above_{t:g}"


def _pct(x: float, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if 0 < x < 10 ** (-digits - 2):
        return f"<{10 ** -digits:g}%"
    return f"{100 * x:.{digits}f}%"


def _layout(fig: go.Figure, title: str, subtitle: str = "", *, height: int = 420) -> go.Figure:
    fig.update_layout(
        title={"text": title, "subtitle": {"text": subtitle}, "x": 0.01, "xanchor": "left"},
        template="plotly_white",
        height=height,
        margin={"l": 70, "r": 30, "t": 90 if subtitle else 60, "b": 60},
        legend={"orientation": "v", "x": 1.01, "y": 1},
        font={"size": 13},
    )
    return fig


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 15})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, height=260)


def _bin_x(bins: pd.DataFrame) -> np.ndarray:
    """x position of each non-zero bin on a log axis (zero bin excluded)."""
    lo, hi = bins["lo"].to_numpy(float)[1:], bins["hi"].to_numpy(float)[1:]
    step = 10 ** 0.1
    lo = np.where(lo > 0, lo, hi / step)  # the (0, 1e-8) bin drawn one step below 1e-8
    hi = np.where(np.isfinite(hi), hi, lo * step)  # the [1, inf) bin one step above 1
    return np.sqrt(lo * hi)


def _add_thresholds(fig: go.Figure, thresholds: Sequence[float], y_max: float) -> None:
    for t in thresholds:
        fig.add_trace(
            go.Scatter(
                x=[t, t],
                y=[0, y_max],
                mode="lines",
                line={"color": "#444444", "dash": _THRESHOLD_DASH.get(t, "dashdot"), "width": 1.5},
                name=THRESHOLD_NOTES.get(t, f"{t:g}"),
                hoverinfo="name",
            )
        )


def _hist_trace(x: np.ndarray, share: np.ndarray, name: str, color: str, *, dash: str = "solid") -> go.Scatter:
    return go.Scatter(
        x=x,
        y=100 * share,
        mode="lines",
        line={"color": color, "shape": "hvh", "width": 2, "dash": dash},
        fill="tozeroy",
        fillcolor=_alpha(color, 0.15),
        name=name,
        hovertemplate="|δ| ≈ %{x:.3g}<br>%{y:.2f}% of elements<extra>" + name + "</extra>",
    )


def _alpha(hex_color: str, a: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{a})"


def _scope_row(
    report: DeltaReport, model: str, tensor: str | None, layer: int | None, kind: str | None
) -> pd.Series | None:
    """The table row holding exact statistics for a histogram's scope."""
    if tensor is not None:
        t, mask = report.tensors, report.tensors["tensor"] == tensor
    elif layer is not None and kind is not None:
        t = report.groups
        mask = (t["layer"] == layer) & (t["kind"] == kind)
    elif layer is not None:
        t, mask = report.layers, report.layers["layer"] == layer
    elif kind is not None:
        t, mask = report.kinds, report.kinds["kind"] == kind
    else:
        t, mask = report.summary, report.summary["model"] == model
    rows = t[mask & (t["model"] == model)]
    return None if rows.empty else rows.iloc[0]


def _scope_name(tensor: str | None, layer: int | None, kind: str | None) -> str:
    if tensor is not None:
        return tensor
    parts = []
    if layer is not None:
        parts.append("outside blocks" if layer == OUTSIDE_BLOCKS else f"layer {layer}")
    if kind is not None:
        parts.append(f"{kind} tensors")
    return ", ".join(parts) or "whole model"


def delta_histogram(
    report: DeltaReport,
    *,
    models: Sequence[str] | None = None,
    tensor: str | None = None,
    layer: int | None = None,
    kind: str | None = None,
) -> go.Figure:
    """Overlaid log-x histograms of |δ| per fine-tune, with the DARE thresholds.

    Scope: one ``tensor``, or the tensors of a ``layer`` and/or module ``kind``, or (default)
    the whole model. The title gives each fine-tune's DARE verdict for that scope.
    """
    models = list(models or report.models)
    x = _bin_x(report.bins)
    fig = go.Figure()
    y_max = 0.0
    verdicts, zero_notes = [], []
    for k, m in enumerate(models):
        h = report.histogram(m, tensor=tensor, layer=layer, kind=kind)
        share = h["share"].to_numpy(float)
        if not np.isfinite(share).any():
            continue
        fig.add_trace(_hist_trace(x, share[1:], m, OKABE_ITO[k % len(OKABE_ITO)]))
        y_max = max(y_max, float(np.nanmax(100 * share[1:])))
        if share[0] > 0:
            zero_notes.append(f"{m}: {_pct(share[0])} exactly 0 (not drawn)")
        row = _scope_row(report, m, tensor, layer, kind)
        if row is not None:
            verdicts.append(
                f"{m} {row['verdict']} ({_pct(row[_share(0.005)])} > 0.005, "
                f"{_pct(row[_share(0.01)], 2)} > 0.01)"
            )
    if not fig.data:
        return _empty("No deltas to show", f"no tensor analysed for {_scope_name(tensor, layer, kind)}")
    _add_thresholds(fig, report.thresholds, y_max * 1.05)
    fig.update_xaxes(type="log", range=list(LOG_X_RANGE), title=ABS_AXIS, exponentformat="power")
    fig.update_yaxes(title=SHARE_AXIS, rangemode="tozero")
    title = f"DARE outlook, {_scope_name(tensor, layer, kind)}: " + "; ".join(verdicts)
    subtitle = "Right of the solid line DARE's drop-and-rescale breaks the fine-tune."
    if zero_notes:
        subtitle += " " + "; ".join(zero_notes) + "."
    return _layout(fig, title, subtitle)


HEATMAP_METRICS = {
    "median_abs": "median |δ|",
    "mean_abs": "mean |δ|",
    "p99_abs": "99th percentile of |δ|",
    "max_abs": "max |δ|",
    "rel_norm": "‖δ‖ / ‖θ base‖",
    "share_above_0.002": "share of |δ| above 0.002",
    "share_above_0.005": "share of |δ| above 0.005",
    "share_above_0.01": "share of |δ| above 0.01",
}


def layer_module_heatmap(report: DeltaReport, model: str, *, metric: str = "median_abs") -> go.Figure:
    """Layer × module-kind heatmap of one fine-tune (rows: layers, outside-block tensors first).

    ``metric`` is a column of ``report.groups``: ``median_abs`` (log colour scale) or a share
    such as ``share_above_0.005`` (percent).
    """
    if metric not in HEATMAP_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(HEATMAP_METRICS)}")
    g = report.groups[report.groups["model"] == model]
    if g.empty:
        return _empty(f"{model}: nothing to show", "no tensor of this fine-tune was analysed")
    kinds = [k for k in MODULE_KINDS if k in set(g["kind"])]
    layers = sorted(int(x) for x in set(g["layer"]))
    grid = g.pivot_table(index="layer", columns="kind", values=metric, aggfunc="first")
    grid = grid.reindex(index=layers, columns=kinds)
    values = grid.to_numpy(float)  # (layers, kinds)
    is_share = metric.startswith("share")
    label = HEATMAP_METRICS[metric]
    row_names = ["outside blocks" if r == OUTSIDE_BLOCKS else f"layer {r}" for r in layers]
    if is_share:
        z, text = 100 * values, np.vectorize(lambda v: _pct(v, 2))(values)
        colorbar = {"title": {"text": "%"}, "ticksuffix": "%"}
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(values > 0, np.log10(values), np.nan)
        text = np.vectorize(lambda v: f"{v:.3g}")(values)
        lo, hi = (math.floor(np.nanmin(z)), math.ceil(np.nanmax(z))) if np.isfinite(z).any() else (-8, 0)
        ticks = list(range(lo, hi + 1))
        colorbar = {"title": {"text": "|δ|"}, "tickvals": ticks, "ticktext": [f"1e{t}" for t in ticks]}
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=kinds,
            y=row_names,
            text=text,
            colorscale=HEATMAP_SCALE,
            colorbar=colorbar,
            hoverongaps=False,
            hovertemplate="%{y} · %{x}<br>" + label + ": %{text}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", title="layer (0 = first block)")
    fig.update_xaxes(title="module kind", side="bottom")
    if np.isfinite(values).any():
        r, c = np.unravel_index(np.nanargmax(values), values.shape)
        worst = f"{row_names[r]} {kinds[c]} ({text[r, c]})"
        title = f"{model}: {label} is highest in {worst}"
    else:
        title = f"{model}: {label}"
    subtitle = "Darker = smaller. " + (
        "Cells above ~5% are where DARE is at risk."
        if is_share
        else "The DARE paper: fine while |δ| stays mostly below 0.005."
    )
    return _layout(fig, title, subtitle, height=max(320, 22 * len(layers) + 160))


_PAIR_METRICS = {
    "cosine": ("cosine similarity of task vectors", -1.0, 1.0),
    "sign_conflict": ("share of elements whose deltas disagree in sign", 0.0, None),
}


def pairwise_heatmap(report: DeltaReport, *, metric: str = "cosine") -> go.Figure:
    """Fine-tune × fine-tune matrix of task-vector cosine or sign-conflict rate (whole model)."""
    if metric not in _PAIR_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(_PAIR_METRICS)}")
    label, zmin, zmax = _PAIR_METRICS[metric]
    if len(report.models) < 2 or report.pairs.empty:
        return _empty(label.capitalize(), "Needs two or more fine-tunes of the same base.")
    names = list(report.models)
    n = len(names)
    m = np.full((n, n), 1.0 if metric == "cosine" else 0.0)
    for _, row in report.pairs.iterrows():
        a, b = names.index(row["model_a"]), names.index(row["model_b"])
        m[a, b] = m[b, a] = row[metric]
    off = report.pairs[metric].to_numpy(float)
    if metric == "cosine":
        text = np.vectorize(lambda v: f"{v:.3f}")(m)
        mean = float(np.nanmean(off))
        if mean < 0.1:
            verdict = f"task vectors are nearly orthogonal (mean cosine {mean:.2f}): little overlap to fight over"
        elif mean < 0.5:
            verdict = f"task vectors partly overlap (mean cosine {mean:.2f})"
        else:
            verdict = f"task vectors point the same way (mean cosine {mean:.2f}): the fine-tunes learned similar changes"
        title, zmax = f"Cosine similarity: {verdict}", 1.0
    else:
        text = np.vectorize(lambda v: _pct(v))(m)
        mean = float(np.nanmean(off))
        title = (
            f"Sign conflicts: {_pct(mean)} of elements disagree on average"
            + (" — TIES' sign election will matter" if mean > 0.2 else "")
        )
        zmax = max(0.5, float(np.nanmax(m)))
        m = m * 100
        zmin, zmax = 0.0, 100 * zmax
    fig = go.Figure(
        go.Heatmap(
            z=m, x=names, y=names, text=text, texttemplate="%{text}", colorscale=HEATMAP_SCALE,
            zmin=zmin, zmax=zmax,
            colorbar={"title": {"text": "cos" if metric == "cosine" else "%"}},
            hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    subtitle = (
        "cos(δa, δb) over all compared tensors; 1 = same direction, 0 = unrelated."
        if metric == "cosine"
        else "Share of all elements where both deltas are non-zero and of opposite sign; "
        "independent random deltas give ~50%."
    )
    return _layout(fig, title, subtitle, height=max(320, 60 * n + 180))


def pairwise_by_layer_heatmap(report: DeltaReport, *, metric: str = "cosine") -> go.Figure:
    """Pairs of fine-tunes × layers: where the task vectors agree or conflict."""
    if metric not in _PAIR_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(_PAIR_METRICS)}")
    label, zmin, zmax = _PAIR_METRICS[metric]
    p = report.pairs_by_layer
    if len(report.models) < 2 or p.empty:
        return _empty(f"{label.capitalize()} per layer", "Needs two or more fine-tunes of the same base.")
    p = p.assign(pair=p["model_a"] + " vs " + p["model_b"])
    layers = sorted(int(x) for x in set(p["layer"]))
    grid = p.pivot_table(index="pair", columns="layer", values=metric, aggfunc="first").reindex(columns=layers)
    values = grid.to_numpy(float)
    cols = ["outside" if c == OUTSIDE_BLOCKS else str(c) for c in layers]
    where = ["outside blocks" if c == OUTSIDE_BLOCKS else f"layer {c}" for c in layers]
    if metric == "sign_conflict":
        z, zmin, zmax = 100 * values, 0.0, max(50.0, float(np.nanmax(100 * values)))
        text = np.vectorize(lambda v: _pct(v))(values)
    else:
        z, text = values, np.vectorize(lambda v: f"{v:.3f}")(values)
    fig = go.Figure(
        go.Heatmap(
            z=z, x=cols, y=list(grid.index), text=text, colorscale=HEATMAP_SCALE, zmin=zmin,
            zmax=zmax, hovertemplate="%{y}, layer %{x}: %{text}<extra></extra>",
            colorbar={"title": {"text": "cos" if metric == "cosine" else "%"}},
        )
    )
    fig.update_xaxes(title="layer", type="category")
    if np.isfinite(values).any():
        r, c = np.unravel_index(
            np.nanargmin(values) if metric == "cosine" else np.nanargmax(values), values.shape
        )
        which = "least aligned" if metric == "cosine" else "most conflicting"
        title = f"{label.capitalize()} per layer: {which} is {where[c]} ({text[r, c]}, {grid.index[r]})"
    else:
        title = f"{label.capitalize()} per layer"
    return _layout(fig, title, height=max(300, 40 * len(grid) + 200))


def dare_preview_histogram(preview: DarePreview) -> go.Figure:
    """|δ| before and after drop-and-rescale, with the thresholds, for the chosen drop rate."""
    h = preview.hist
    bins = h[h["stage"] == "before"][["lo", "hi"]].reset_index(drop=True)
    x = _bin_x(bins)
    fig = go.Figure()
    y_max = 0.0
    for k, stage in enumerate(("before", "after")):
        share = h.loc[h["stage"] == stage, "share"].to_numpy(float)[1:]  # zero bin not drawn
        name = "before DARE" if stage == "before" else f"after DARE (p = {preview.drop_rate:g})"
        fig.add_trace(_hist_trace(x, share, name, OKABE_ITO[k], dash="solid" if k == 0 else "dash"))
        if np.isfinite(share).any():
            y_max = max(y_max, float(np.nanmax(100 * share)))
    _add_thresholds(fig, THRESHOLDS, y_max * 1.05)
    fig.update_xaxes(type="log", range=list(LOG_X_RANGE), title=ABS_AXIS, exponentformat="power")
    fig.update_yaxes(title=SHARE_AXIS, rangemode="tozero")
    scale = 1 / preview.keep_probability if preview.rescale == "inverse" else None
    i5 = THRESHOLDS.index(0.005)
    title = (
        f"Drop {preview.drop_rate:.0%}: {_pct(preview.share_kept)} of deltas kept"
        + (f", rescaled ×{scale:.3g}" if scale else "")
        + f": {_pct(preview.shares_after[i5])} of the kept |δ| are above 0.005"
        f" (before: {_pct(preview.shares_before[i5])})"
    )
    what = ", ".join(preview.tensors[:3]) + (" …" if len(preview.tensors) > 3 else "")
    subtitle = (
        f"{what} · seed {preview.seed} · ‖δ̂−δ‖/‖δ‖ = {preview.rel_error:.3g}"
        + (f" (expected {preview.expected_rel_error:.3g})" if not math.isnan(preview.expected_rel_error) else "")
        + f" · weights move by {_pct(preview.rel_change_weights, 2)} of ‖θ‖"
        + " · dropped elements are exact zeros (not drawn)"
    )
    return _layout(fig, title, subtitle)
