"""Figures of a delta analysis: what a user should conclude, readable at a glance.

Pure functions from a :class:`~fusion_ui.deltas.DeltaReport` (or a
:class:`~fusion_ui.deltas.DarePreview`) to a plotly figure. Titles state the conclusion and are
wrapped to the width the app shows the figure at (:mod:`fusion_ui.figures.style`), axes carry
units, colours are colour-blind safe (Okabe-Ito lines, cividis heatmaps), the DARE paper's
thresholds are drawn on every |δ| axis, and that axis spans where the data is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from fusion_ui.deltas.report import OUTSIDE_BLOCKS
from fusion_ui.deltas.stats import BINS_PER_DECADE, THRESHOLDS
from fusion_ui.deltas.verdict import VERDICTS
from fusion_ui.figures.style import (
    FULL_FIT_PX,
    HALF_FIT_PX,
    HEATMAP_SCALE,
    OKABE_ITO,
    alpha,
    apply_layout,
    left_margin_px,
)
from fusion_ui.tensor_names import MODULE_KINDS

if TYPE_CHECKING:
    from fusion_ui.deltas import DarePreview, DeltaReport

# What each threshold means in the DARE paper (docs/methods.md), for legends.
THRESHOLD_NOTES = {
    0.002: "0.002: DARE's comfort zone (later paper)",
    0.005: "0.005: DARE works while |δ| mostly below",
    0.01: "0.01: DARE fails above",
}
_THRESHOLD_DASH = {0.002: "dot", 0.005: "dash", 0.01: "solid"}
ABS_AXIS = "|δ| = |θ fine-tune − θ base| (weight units, log scale)"
SHARE_AXIS = "share of elements per bin (%)"
LOG_X_RANGE = (-8.3, 0.3)  # log10 of the display range 1e-8 … 1 with margins: the widest shown

# Fitting the |δ| axis to the data: from the 0.1th to the 99.9th percentile of the drawn
# elements by count, half a decade of padding, and the DARE thresholds whenever the nearest
# one lies within two decades of that span (all three, so the landmarks read as a set).
FIT_QUANTILES = (0.001, 0.999)
FIT_PAD_DECADES = 0.5
THRESHOLD_NEAR_DECADES = 2.0
_THRESHOLD_PAD_DECADES = 0.2

_SEVERITY = {v: k for k, v in enumerate(VERDICTS)}  # safe 0 … broken 3


def _share(t: float) -> str:
    return f"share_above_{t:g}"


def _pct(x: float, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if 0 < x < 10 ** (-digits - 2):
        return f"<{10 ** -digits:g}%"
    return f"{100 * x:.{digits}f}%"


def _empty(title: str, message: str, *, fit_px: int = FULL_FIT_PX) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 15})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return apply_layout(fig, title, fit_px=fit_px, plot_height=200)


def _bin_edges(bins: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Drawn lower and upper edge of each non-zero bin on a log axis (zero bin excluded)."""
    lo, hi = bins["lo"].to_numpy(float)[1:], bins["hi"].to_numpy(float)[1:]
    step = 10 ** (1 / BINS_PER_DECADE)
    lo = np.where(lo > 0, lo, hi / step)  # the (0, 1e-8) bin drawn one step below 1e-8
    hi = np.where(np.isfinite(hi), hi, lo * step)  # the [1, inf) bin one step above 1
    return lo, hi


def _bin_x(bins: pd.DataFrame) -> np.ndarray:
    """x position of each non-zero bin on a log axis (zero bin excluded)."""
    lo, hi = _bin_edges(bins)
    return np.sqrt(lo * hi)


def fit_log_range(
    counts: Sequence[np.ndarray], bins: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS
) -> list[float]:
    """log10 x range of a |δ| histogram that spans where its elements are.

    ``counts``: one array per curve of element counts in the non-zero display bins (the zero
    bin excluded), aligned with ``bins[1:]``. The range runs from the lowest curve's 0.1th to
    the highest curve's 99.9th percentile (by count, to bin edges), padded half a decade, and
    takes in the thresholds when they are near; the full display range if nothing is drawn.
    """
    lo_edges, hi_edges = _bin_edges(bins)
    lows, highs = [], []
    for c in counts:
        c = np.asarray(c, dtype=np.float64)
        total = c.sum()
        if not total > 0:
            continue
        cum = np.cumsum(c)
        first = int(np.searchsorted(cum, max(1.0, math.ceil(FIT_QUANTILES[0] * total))))
        last = int(np.searchsorted(cum, max(1.0, math.ceil(FIT_QUANTILES[1] * total))))
        lows.append(math.log10(lo_edges[first]))
        highs.append(math.log10(hi_edges[min(last, len(hi_edges) - 1)]))
    if not lows:
        return list(LOG_X_RANGE)
    lo, hi = min(lows) - FIT_PAD_DECADES, max(highs) + FIT_PAD_DECADES
    marks = [math.log10(t) for t in thresholds if t > 0]
    if marks and min(max(lo - m, m - hi, 0.0) for m in marks) <= THRESHOLD_NEAR_DECADES:
        lo = min(lo, min(marks) - _THRESHOLD_PAD_DECADES)
        hi = max(hi, max(marks) + _THRESHOLD_PAD_DECADES)
    return [max(lo, LOG_X_RANGE[0]), min(hi, LOG_X_RANGE[1])]


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


def _hist_trace(
    x: np.ndarray, share: np.ndarray, name: str, color: str, *, dash: str = "solid",
    what: str = "of elements",
) -> go.Scatter:
    return go.Scatter(
        x=x,
        y=100 * share,
        mode="lines",
        line={"color": color, "shape": "hvh", "width": 2, "dash": dash},
        fill="tozeroy",
        fillcolor=alpha(color, 0.15),
        name=name,
        hovertemplate="|δ| ≈ %{x:.3g}<br>%{y:.2f}% " + what + "<extra>" + name + "</extra>",
    )


def _abs_axis(fig: go.Figure, x_range: list[float]) -> None:
    fig.update_xaxes(type="log", range=x_range, title=ABS_AXIS, exponentformat="power")


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


def _verdict_phrase(verdicts: Sequence[tuple[str, str]]) -> str:
    """"all 3 fine-tunes safe", or "b likely to fail; a, c safe" (most severe first)."""
    if not verdicts:
        return "no verdict"
    kinds = {v for _, v in verdicts}
    if len(verdicts) > 1 and len(kinds) == 1:
        return f"all {len(verdicts)} fine-tunes {verdicts[0][1]}"
    order = sorted(kinds, key=lambda v: -_SEVERITY.get(v, len(VERDICTS)))
    return "; ".join(", ".join(m for m, v in verdicts if v == k) + f" {k}" for k in order)


def _count(n: float) -> str:
    return f"{int(n):,}"


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
    the whole model. The title gives each fine-tune's DARE verdict for that scope, the subtitle
    its shares above the thresholds and what is not drawn (exact zeros, inf/NaN).
    """
    models = list(models or report.models)
    x = _bin_x(report.bins)
    fig = go.Figure()
    y_max = 0.0
    verdicts: list[tuple[str, str]] = []
    details, drawn = [], []
    for k, m in enumerate(models):
        h = report.histogram(m, tensor=tensor, layer=layer, kind=kind)
        share = h["share"].to_numpy(float)
        if not np.isfinite(share).any():
            continue
        fig.add_trace(_hist_trace(x, share[1:], m, OKABE_ITO[k % len(OKABE_ITO)]))
        drawn.append(h["count"].to_numpy(np.int64)[1:])
        y_max = max(y_max, float(np.nanmax(100 * share[1:])))
        row = _scope_row(report, m, tensor, layer, kind)
        if row is None:
            continue
        verdicts.append((m, str(row["verdict"])))
        note = f"{m}: {_pct(row[_share(0.005)])} of |δ| > 0.005, {_pct(row[_share(0.01)], 2)} > 0.01"
        if share[0] > 0:
            note += f", {_pct(share[0])} exactly 0"
        if row.get("nonfinite", 0):
            note += f", {_count(row['nonfinite'])} inf/NaN"
        details.append(note)
    if not fig.data:
        return _empty("No deltas to show", f"no tensor analysed for {_scope_name(tensor, layer, kind)}")
    _add_thresholds(fig, report.thresholds, y_max * 1.05)
    _abs_axis(fig, fit_log_range(drawn, report.bins, report.thresholds))
    fig.update_yaxes(title=SHARE_AXIS, rangemode="tozero")
    title = f"DARE outlook, {_scope_name(tensor, layer, kind)}: {_verdict_phrase(verdicts)}"
    subtitle = (
        "Right of the solid line (0.01) DARE's drop-and-rescale breaks a fine-tune; exact zeros "
        "and inf/NaN are not drawn.<br>" + " · ".join(details)
    )
    return apply_layout(fig, title, subtitle, fit_px=FULL_FIT_PX)


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


def _nonfinite_note(report: DeltaReport, model: str) -> str:
    """"Broken: N inf/NaN deltas (first in T) are not in the colours. " or ""."""
    t = report.tensors
    if "nonfinite" not in t.columns:
        return ""
    bad = t[(t["model"] == model) & (t["nonfinite"] > 0)]
    if bad.empty:
        return ""
    return (f"Broken: {_count(bad['nonfinite'].sum())} inf/NaN deltas (first in "
            f"{bad['tensor'].iloc[0]}) are not in the colours. ")


def layer_module_heatmap(report: DeltaReport, model: str, *, metric: str = "median_abs") -> go.Figure:
    """Layer × module-kind heatmap of one fine-tune (rows: layers, outside-block tensors first).

    ``metric`` is a column of ``report.groups``: ``median_abs`` (log colour scale) or a share
    such as ``share_above_0.005`` (percent). Sized for a half-width column.
    """
    if metric not in HEATMAP_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(HEATMAP_METRICS)}")
    g = report.groups[report.groups["model"] == model]
    if g.empty:
        return _empty(f"{model}: nothing to show", "no tensor of this fine-tune was analysed",
                      fit_px=HALF_FIT_PX)
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
    fig.update_yaxes(autorange="reversed")  # rows say "layer 0 …": no axis title to overflow
    fig.update_xaxes(title="module kind", side="bottom")
    if np.isfinite(values).any():
        r, c = np.unravel_index(np.nanargmax(values), values.shape)
        if layers[r] == OUTSIDE_BLOCKS:  # embeddings, lm_head, the final norm
            where = "the final norm" if kinds[c] == "norm" else kinds[c]
        else:
            where = f"layer {layers[r]} {kinds[c]}"
        title = f"{model}: {label} is highest in {where} ({text[r, c]})"
    else:
        title = f"{model}: {label}"
    subtitle = _nonfinite_note(report, model) + (
        "Darker = smaller. Cells above ~5% are where DARE is at risk."
        if is_share
        else "Darker = smaller; blank = no such tensor, or |δ| = 0. "
        "The DARE paper: fine while |δ| stays mostly below 0.005."
    )
    return apply_layout(fig, title, subtitle, fit_px=HALF_FIT_PX,
                        plot_height=max(230, 22 * len(layers) + 70),
                        margin={"l": left_margin_px(row_names, axis_title=False)})


_PAIR_METRICS = {
    "cosine": ("cosine similarity of task vectors", -1.0, 1.0),
    "sign_conflict": ("share of elements whose deltas disagree in sign", 0.0, None),
}


def _left_out_note(pairs: pd.DataFrame) -> str:
    if "nonfinite" not in pairs.columns or not pairs["nonfinite"].sum():
        return ""
    return f" {_count(pairs['nonfinite'].sum())} elements with an inf/NaN delta are left out."


def pairwise_heatmap(report: DeltaReport, *, metric: str = "cosine") -> go.Figure:
    """Fine-tune × fine-tune matrix of task-vector cosine or sign-conflict rate (whole model).

    Sized for a half-width column.
    """
    if metric not in _PAIR_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(_PAIR_METRICS)}")
    label, zmin, zmax = _PAIR_METRICS[metric]
    if len(report.models) < 2 or report.pairs.empty:
        return _empty(label.capitalize(), "Needs two or more fine-tunes of the same base.",
                      fit_px=HALF_FIT_PX)
    names = list(report.models)
    n = len(names)
    m = np.full((n, n), 1.0 if metric == "cosine" else 0.0)
    for _, row in report.pairs.iterrows():
        a, b = names.index(row["model_a"]), names.index(row["model_b"])
        m[a, b] = m[b, a] = row[metric]
    off = report.pairs[metric].to_numpy(float)
    mean = float(np.nanmean(off)) if np.isfinite(off).any() else math.nan
    if metric == "cosine":
        text = np.vectorize(lambda v: f"{v:.3f}")(m)
        if mean < 0.1:
            title = f"Cosine: task vectors nearly orthogonal (mean {mean:.2f})"
            why = "Little overlap to fight over. "
        elif mean < 0.5:
            title = f"Cosine: task vectors partly overlap (mean {mean:.2f})"
            why = ""
        else:
            title = f"Cosine: task vectors point the same way (mean {mean:.2f})"
            why = "The fine-tunes learned similar changes. "
        subtitle = why + "cos(δa, δb) over all compared tensors: 1 = same direction, 0 = unrelated."
        zmax = 1.0
    else:
        text = np.vectorize(lambda v: _pct(v))(m)
        title = f"Sign conflicts: {_pct(mean)} of elements disagree (mean over pairs)"
        subtitle = (
            ("TIES' sign election will matter. " if mean > 0.2 else "")
            + "Share of all elements where both deltas are non-zero and of opposite sign; "
            "independent random deltas give ~50%."
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
    return apply_layout(fig, title, subtitle + _left_out_note(report.pairs), fit_px=HALF_FIT_PX,
                        plot_height=max(230, 60 * n + 90),
                        margin={"l": left_margin_px(names, axis_title=False)})


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
    return apply_layout(fig, title, _left_out_note(p).strip(), fit_px=FULL_FIT_PX,
                        plot_height=max(240, 40 * len(grid) + 140),
                        margin={"l": left_margin_px(list(grid.index), axis_title=False)})


PREVIEW_SHARE_AXIS = "% of non-zero deltas per bin"


def dare_preview_histogram(preview: DarePreview) -> go.Figure:
    """|δ| before and after drop-and-rescale, with the thresholds, for the chosen drop rate.

    Each curve is a share of its own non-zero deltas (after: the kept ones), so at p = 0.99 the
    1% kept is drawn at the same scale as before, shifted right by the rescale.
    """
    h = preview.hist
    bins = h[h["stage"] == "before"][["lo", "hi"]].reset_index(drop=True)
    x = _bin_x(bins)
    fig = go.Figure()
    y_max = 0.0
    drawn = []
    kept = f"after DARE (p = {preview.drop_rate:g}), kept only"
    for k, stage in enumerate(("before", "after")):
        rows = h[h["stage"] == stage]
        share = rows["share_nonzero"].to_numpy(float)[1:]  # the zero bin is not drawn
        name = "before DARE" if stage == "before" else kept
        fig.add_trace(_hist_trace(x, share, name, OKABE_ITO[k], dash="solid" if k == 0 else "dash",
                                  what="of " + ("non-zero" if k == 0 else "kept") + " deltas"))
        drawn.append(rows["count"].to_numpy(np.int64)[1:])
        if np.isfinite(share).any():
            y_max = max(y_max, float(np.nanmax(100 * share)))
    _add_thresholds(fig, THRESHOLDS, y_max * 1.05)
    _abs_axis(fig, fit_log_range(drawn, bins, THRESHOLDS))
    fig.update_yaxes(title=PREVIEW_SHARE_AXIS, rangemode="tozero")
    scale = 1 / preview.keep_probability if preview.rescale == "inverse" else None
    i5 = THRESHOLDS.index(0.005)
    title = (
        f"Drop {preview.drop_rate:.0%}: {_pct(preview.share_kept)} of deltas kept"
        + (f", rescaled ×{scale:.3g}" if scale else "")
        + f"; {_pct(preview.shares_after[i5])} of the kept |δ| are above 0.005"
        f" (before: {_pct(preview.shares_before[i5])})"
    )
    what = ", ".join(preview.tensors[:3]) + (" …" if len(preview.tensors) > 3 else "")
    expected = preview.expected_rel_error
    subtitle = (
        "Each curve is a share of its own non-zero deltas (dropped ones become exact zeros, "
        "not drawn), so the kept ones show at any drop rate"
        + (f", shifted right ×{scale:.3g} by the rescale" if scale else "")
        + f". {what} · seed {preview.seed} · ‖δ̂−δ‖/‖δ‖ = {preview.rel_error:.3g}"
        + (f" (expected {expected:.3g})" if not math.isnan(expected) else "")
        + f" · weights move by {_pct(preview.rel_change_weights, 2)} of ‖θ‖"
        + (f" · {_count(preview.nonfinite)} inf/NaN deltas left out: the checkpoint is broken"
           if preview.nonfinite else "")
    )
    return apply_layout(fig, title, subtitle, fit_px=FULL_FIT_PX)
