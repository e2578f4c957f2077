"""Figures of a delta report and the self-contained HTML report (and the CLI that writes it)."""

from __future__ import annotations

import re
from pathlib import Path

import plotly.graph_objects as go
import pytest
from deltas_models import family

from fusion_ui.cli import main
from fusion_ui.deltas import DeltaReport, analyze_deltas, dare_preview
from fusion_ui.figures import (
    OKABE_ITO,
    dare_preview_histogram,
    delta_histogram,
    figure_title,
    layer_module_heatmap,
    pairwise_by_layer_heatmap,
    pairwise_heatmap,
    write_html_report,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return family(tmp_path_factory.mktemp("fig"), {"small": 0.001, "big": 0.02})


@pytest.fixture(scope="module")
def report(models) -> DeltaReport:
    return analyze_deltas(models["base"], [models["small"], models["big"]], cache=False)


def _threshold_xs(fig: go.Figure) -> set[float]:
    return {tr.x[0] for tr in fig.data if tr.name and tr.name.startswith(("0.002", "0.005", "0.01"))}


def test_histogram_overlays_models_with_thresholds(report: DeltaReport) -> None:
    fig = delta_histogram(report)
    assert fig.layout.xaxis.type == "log"
    assert "|δ|" in fig.layout.xaxis.title.text and "%" in fig.layout.yaxis.title.text
    assert _threshold_xs(fig) == {0.002, 0.005, 0.01}
    lines = [tr for tr in fig.data if tr.name in report.models]
    assert [tr.line.color for tr in lines] == list(OKABE_ITO[:2])
    title = figure_title(fig)
    assert "small safe" in title and "big likely to fail" in title
    # drawn shares (percent) plus the exact zeros (not drawn on a log axis) make 100%
    zeros = report.histogram("small")["share"].iloc[0]
    assert zeros > 0  # bf16 norm weights near 1 cannot hold a delta of 0.001: it rounds to 0
    assert sum(lines[0].y) + 100 * zeros == pytest.approx(100.0, abs=1e-6)
    one = delta_histogram(report, tensor="model.layers.1.mlp.down_proj.weight", models=["big"])
    assert "model.layers.1.mlp.down_proj.weight" in figure_title(one)
    kind = delta_histogram(report, layer=2, kind="q")
    assert "layer 2, q tensors" in figure_title(kind)


def test_layer_module_heatmap(report: DeltaReport) -> None:
    fig = layer_module_heatmap(report, "big", metric="median_abs")
    heat = fig.data[0]
    assert list(heat.x) == ["embed", "q", "o", "down", "norm"]
    assert list(heat.y) == ["outside blocks", "layer 0", "layer 1", "layer 2"]
    assert heat.colorscale[0][1] != heat.colorscale[-1][1]  # a real scale (cividis)
    assert "highest in" in figure_title(fig)
    share = layer_module_heatmap(report, "big", metric="share_above_0.005")
    assert share.data[0].colorbar.ticksuffix == "%"
    with pytest.raises(ValueError, match="unknown metric"):
        layer_module_heatmap(report, "big", metric="nope")


def test_pairwise_figures(report: DeltaReport) -> None:
    cos = pairwise_heatmap(report, metric="cosine")
    z = cos.data[0].z
    assert z[0][0] == 1.0 and z[0][1] == z[1][0] == pytest.approx(report.pairs["cosine"].iloc[0])
    assert "orthogonal" in figure_title(cos)
    sign = pairwise_heatmap(report, metric="sign_conflict")
    assert "disagree" in figure_title(sign)
    by_layer = pairwise_by_layer_heatmap(report, metric="sign_conflict")
    assert list(by_layer.data[0].x) == ["outside", "0", "1", "2"]
    single = analyze_deltas(report.base, [report.refs[0]], cache=False)
    empty = pairwise_heatmap(single)
    assert "two or more" in empty.layout.annotations[0].text


def test_dare_preview_figure(models) -> None:
    p = dare_preview(models["base"], models["small"], "model.layers.0.mlp.down_proj.weight",
                     drop_rate=0.9, device="cpu")
    fig = dare_preview_histogram(p)
    assert fig.data[0].name == "before DARE"
    assert fig.data[1].name.startswith("after DARE (p = 0.9)")
    assert _threshold_xs(fig) == {0.002, 0.005, 0.01}
    assert figure_title(fig).startswith("Drop 90%")


def test_html_report_is_self_contained(report: DeltaReport, models, tmp_path: Path) -> None:
    p = dare_preview(models["base"], models["big"], "model.layers.0.mlp.down_proj.weight",
                     drop_rate=0.5, device="cpu")
    path = write_html_report(report, tmp_path / "sub" / "r.html", previews=[p])
    text = path.read_text(encoding="utf-8")
    assert text.count("<script type=\"text/javascript\">/**") <= 1
    assert len(re.findall(r"plotly\.js v\d", text)) >= 1  # the library is inline
    assert not re.search(r"<script[^>]*\bsrc=", text)  # nothing fetched from a CDN
    for div in ("hist-all", "heat-med-0", "heat-share-1", "pair-cos", "pair-sign", "preview-0"):
        assert f'id="{div}"' in text
    assert "likely to fail" in text and "Will DARE work?" in text
    assert "Tensors most at risk" in text and "model.layers.0.mlp.down_proj.weight" in text


def test_cli_writes_report(models, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.html"
    code = main(["deltas", str(models["base"]), str(models["small"]), str(models["big"]),
                 "--html", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "small: SAFE" in printed and "big: LIKELY TO FAIL" in printed
    assert "small vs big: cosine" in printed
    assert out.stat().st_size > 1_000_000 and 'id="preview-1"' in out.read_text(encoding="utf-8")
