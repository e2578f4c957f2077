"""Figures read at the app's widths: |δ| axes span the data, the DARE preview's kept deltas get
their own scale, titles are wrapped to fit, and the score chart uses the one palette."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from deltas_models import TENSOR, app_figures, family, write_model

from fusion_ui.deltas import DeltaReport, analyze_deltas, dare_preview
from fusion_ui.figures import (
    OKABE_ITO,
    dare_preview_histogram,
    delta_histogram,
    fit_log_range,
    score_chart,
)
from fusion_ui.figures.style import (
    LINE_SPACING,
    SIDE_PAD_PX,
    SUBTITLE_PX,
    TITLE_PX,
    text_width_px,
    wrap_px,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return family(tmp_path_factory.mktemp("fit"), {"expert_small": 0.001, "expert_big": 0.004})


@pytest.fixture(scope="module")
def report(models: dict[str, Path]) -> DeltaReport:
    return analyze_deltas(models["base"], [models["expert_small"], models["expert_big"]], cache=False)


def _curves(fig: go.Figure, names: list[str]) -> list[go.Scatter]:
    return [tr for tr in fig.data if tr.name in names or any(tr.name.startswith(n) for n in names)]


# -- |δ| axis range ---------------------------------------------------------------------------


def _percentile_edges(counts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """log10 of the lower edge of the 0.1th and the upper edge of the 99.9th percentile bin."""
    cum = np.cumsum(counts)
    first = int(np.searchsorted(cum, math.ceil(0.001 * cum[-1])))
    last = int(np.searchsorted(cum, math.ceil(0.999 * cum[-1])))
    return math.log10(lo[first]), math.log10(hi[last])


@pytest.mark.parametrize("scope", [{}, {"tensor": TENSOR}, {"layer": 2, "kind": "q"}, {"kind": "o"}])
def test_abs_axis_spans_the_data_and_the_thresholds(report: DeltaReport, scope: dict) -> None:
    fig = delta_histogram(report, **scope)
    lo_r, hi_r = fig.layout.xaxis.range
    bins = report.bins.iloc[1:]  # the zero bin is not drawn
    lo_e, hi_e = bins["lo"].to_numpy(float), bins["hi"].to_numpy(float)
    ends = []
    for m in report.models:
        counts = report.histogram(m, **scope)["count"].to_numpy(np.int64)[1:]
        ends.append(_percentile_edges(counts, lo_e, hi_e))
    data_lo, data_hi = min(e[0] for e in ends), max(e[1] for e in ends)
    # half a decade of room around the 0.1th..99.9th percentile, and no more than that ...
    assert lo_r == pytest.approx(data_lo - 0.5, abs=1e-9)
    assert hi_r == pytest.approx(max(data_hi + 0.5, math.log10(0.01) + 0.2), abs=1e-9)
    # ... with the DARE landmarks in view (their lines are drawn at x = t)
    for t in (0.002, 0.005, 0.01):
        assert lo_r < math.log10(t) < hi_r
    assert hi_r - lo_r < 5.5  # the old axis spanned 8.6 decades, most of them empty


def test_decade_edges_are_exact_whatever_numpy_computes_powers_with() -> None:
    # 10.0 ** np.linspace(-8, 0, 81) gave 9.999999999999999e-06 for 1e-5 with numpy 2.4's pow,
    # which moved the bins of every |δ| >= 1e-5 selection (the test below failed there)
    from fusion_ui.deltas.stats import BINS_PER_DECADE, display_edges

    assert display_edges()[::BINS_PER_DECADE].tolist() == [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def test_fit_log_range_rules(report: DeltaReport) -> None:
    bins = report.bins
    n = len(bins) - 1
    lo_e = bins["lo"].to_numpy(float)[1:]
    counts = np.zeros(n)
    counts[(lo_e >= 1e-5) & (lo_e < 1e-2)] = 1000  # data in 1e-5 … 1e-2
    assert fit_log_range([counts], bins) == pytest.approx([-5.5, -1.5])
    far = np.zeros(n)
    far[(lo_e >= 1e-8) & (lo_e < 1e-7)] = 1000  # 4+ decades below the thresholds: not pulled in
    assert fit_log_range([far], bins) == pytest.approx([-8.3, -6.5])
    near = np.zeros(n)
    near[(lo_e >= 1e-6) & (lo_e < 1e-5)] = 1000  # 0.002 two decades above the padded top
    lo, hi = fit_log_range([near], bins)
    assert lo == pytest.approx(-6.5) and hi == pytest.approx(-1.8)
    one_outlier = counts.copy()
    one_outlier[-1] = 1  # a single |δ| ≥ 1 among 9e4 is above the 99.9th percentile
    assert fit_log_range([one_outlier], bins) == pytest.approx([-5.5, -1.5])
    assert fit_log_range([np.zeros(n)], bins) == [-8.3, 0.3]


# -- the DARE preview -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preview_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("preview")
    g = torch.Generator().manual_seed(5)
    base = torch.randn(512, 512, generator=g) * 0.02
    ft = base + torch.randn(base.shape, generator=g) * 0.002
    name = "model.layers.0.mlp.up_proj.weight"
    return (write_model(root / "b", {name: base}), write_model(root / "f", {name: ft}))


def _mean_log_x(tr: go.Scatter) -> float:
    x, y = np.asarray(tr.x, float), np.nan_to_num(np.asarray(tr.y, float))
    return float((np.log10(x) * y).sum() / y.sum())


@pytest.mark.parametrize("p", [0.9, 0.99])
def test_preview_draws_the_kept_deltas_on_their_own_scale(preview_pair, p: float) -> None:
    base, ft = preview_pair
    preview = dare_preview(base, ft, "model.layers.0.mlp.up_proj.weight", drop_rate=p, device="cpu")
    fig = dare_preview_histogram(preview)
    before, after = _curves(fig, ["before DARE", "after DARE"])
    # each curve is a share of its own non-zero deltas: both add up to 100%, so the ~1% kept at
    # p = 0.99 is as tall as the before-curve instead of flat on the axis
    assert np.nansum(before.y) == pytest.approx(100.0, abs=1e-6)
    assert np.nansum(after.y) == pytest.approx(100.0, abs=1e-6)
    assert np.nanmax(after.y) > 0.5 * np.nanmax(before.y)
    assert "kept" in after.name and "non-zero" in fig.layout.yaxis.title.text
    # the rescale by 1/(1-p) moves the kept deltas right by log10(1/(1-p)) decades, in view
    shift = _mean_log_x(after) - _mean_log_x(before)
    assert shift == pytest.approx(math.log10(1 / (1 - p)), abs=0.1)
    lo_r, hi_r = fig.layout.xaxis.range
    for tr in (before, after):
        x, y = np.asarray(tr.x, float), np.nan_to_num(np.asarray(tr.y, float))
        inside = (np.log10(x) > lo_r) & (np.log10(x) < hi_r)
        assert y[inside].sum() > 99.8
    assert lo_r > -8.3  # not the whole display range: the empty decades below the data go


# -- titles that fit ---------------------------------------------------------------------------


def _header_lines(fig: go.Figure) -> list[tuple[str, int]]:
    """(line, font px) of the title and subtitle, however the figure carries them."""
    lines = []
    title = fig.layout.title
    if title.text:
        lines += [(x, title.font.size or 17) for x in title.text.split("<br>")]
    if title.subtitle and title.subtitle.text:
        lines += [(x, title.subtitle.font.size or 13) for x in title.subtitle.text.split("<br>")]
    for a in fig.layout.annotations:
        if a.name in ("title", "subtitle"):
            lines += [(x, a.font.size) for x in a.text.split("<br>")]
    return lines


def test_every_title_line_fits_the_width_it_is_shown_at(report: DeltaReport, models) -> None:
    for name, (fig, width) in app_figures(report, models).items():
        lines = _header_lines(fig)
        assert lines, name
        for line, size in lines:
            assert text_width_px(line, size) <= width - 2 * SIDE_PAD_PX, (name, line)
        # the top margin holds every line above the plot area
        titles = sum(1 for _, s in lines if s == TITLE_PX)
        subs = sum(1 for _, s in lines if s == SUBTITLE_PX)
        header = LINE_SPACING * (titles * TITLE_PX + subs * SUBTITLE_PX)
        assert fig.layout.margin.t >= header, name
        assert len(fig.to_json()) < 200_000, name  # sent to the browser on every update


def test_wrap_keeps_words_and_cuts_only_overlong_ones() -> None:
    text = "DARE outlook, model.layers.10.self_attn.q_proj.weight: all 6 fine-tunes likely to fail"
    lines = wrap_px(text, 420, TITLE_PX)
    assert len(lines) > 1 and " ".join(lines) == text
    assert all(text_width_px(x, TITLE_PX) <= 420 for x in lines)
    long = "model.layers.10.self_attn.q_proj.weight"
    pieces = wrap_px(long, 120, TITLE_PX)
    assert "".join(pieces) == long and all(text_width_px(x, TITLE_PX) <= 120 for x in pieces)
    assert wrap_px("a<br>b", 500, 12) == ["a", "b"]


# -- scores ------------------------------------------------------------------------------------


def test_score_chart_groups_skills_and_uses_the_palette() -> None:
    scores = pd.DataFrame(
        {
            "model": ["base", "base", "expert_a", "expert_a", "merge", "merge"],
            "skill": ["math", "code", "math", "code", "math", "code"],
            "exact_match": [0.25, 0.5, 0.75, 0.1, 0.6, 0.45],
        }
    )
    fig = score_chart(scores)
    assert fig.layout.barmode == "group"
    assert [tr.name for tr in fig.data] == ["base", "expert_a", "merge"]
    assert [tr.marker.color for tr in fig.data] == list(OKABE_ITO[:3])
    assert all(list(tr.x) == ["math", "code"] for tr in fig.data)
    assert list(fig.data[1].y) == pytest.approx([75.0, 10.0])
    assert list(fig.data[1].text) == ["75%", "10%"]
    assert "exact match" in fig.layout.title.text
    with pytest.raises(ValueError, match="exact_match"):
        score_chart(scores.drop(columns="exact_match"))
