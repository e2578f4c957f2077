"""A self-contained HTML delta report: figures, tables and verdicts in one file.

For sharing, and for people without the app: plotly.js is embedded once, inline (no CDN, so
the file works offline), every figure stays interactive, tables are escaped HTML.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from fusion_ui.errors import ExportError
from fusion_ui.figures.deltas import (
    dare_preview_histogram,
    delta_histogram,
    layer_module_heatmap,
    pairwise_by_layer_heatmap,
    pairwise_heatmap,
)

if TYPE_CHECKING:
    from fusion_ui.deltas import DarePreview, DeltaReport

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: 0.9rem; max-width: 60rem; }
.verdict-safe { color: #0072B2; font-weight: 600; }
.verdict-caution { color: #9a6700; font-weight: 600; }
.verdict-likely { color: #D55E00; font-weight: 600; }
.verdict-broken { color: #fff; background: #D55E00; padding: 0 0.3rem; font-weight: 600; }
.figure { margin: 1rem 0; }
"""

_SHARE_COLS = ("share_above_0.002", "share_above_0.005", "share_above_0.01", "zeros_share")
_ABS_COLS = ("mean_abs", "median_abs", "p99_abs", "max_abs")


def _fmt_table(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """An escaped HTML table with shares as percentages and |δ| in 3 significant digits."""
    cols = [c for c in columns if c in frame.columns]
    out = frame[cols].copy()
    for c in cols:
        if c in _SHARE_COLS or c in ("sign_conflict",):
            out[c] = out[c].map(lambda v: "" if _nan(v) else f"{100 * v:.2f}%")
        elif c in _ABS_COLS or c in ("rel_norm", "cosine", "norm_delta", "norm_base"):
            out[c] = out[c].map(lambda v: "" if _nan(v) else f"{v:.3g}")
        elif c in ("numel", "nonfinite"):
            out[c] = out[c].map(lambda v: f"{int(v):,}")
    return out.to_html(index=False, escape=True, border=0)


def _nan(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def figure_html(fig: go.Figure, div_id: str) -> str:
    """One figure as an HTML fragment for :func:`write_html_page` (plotly.js not included)."""
    return _figure(fig, div_id)


def write_html_page(path: str | os.PathLike[str], title: str, parts: Sequence[str]) -> Path:
    """A self-contained page (plotly.js inline, opens offline) of HTML fragments."""
    path = Path(path)
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        + "\n".join(parts)
        + "</body></html>\n"
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc, encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write the HTML page to {path}: {exc}") from exc
    return path


def _figure(fig: go.Figure, div_id: str) -> str:
    return (
        '<div class="figure">'
        + fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                      config={"displaylogo": False, "responsive": True})
        + "</div>"
    )


def _verdict_list(report: DeltaReport) -> str:
    items = []
    for _, row in report.summary.iterrows():
        css = "verdict-" + str(row["verdict"]).split()[0]
        items.append(
            f"<li><b>{html.escape(str(row['model']))}</b>: "
            f'<span class="{css}">{html.escape(str(row["verdict"]))}</span> — '
            f"{html.escape(str(row['reason']))}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def write_html_report(
    report: DeltaReport,
    path: str | os.PathLike[str],
    *,
    previews: Sequence[DarePreview] = (),
    title: str | None = None,
    top_n: int = 15,
) -> Path:
    """Write ``report`` (and optional DARE previews) as one self-contained HTML file."""
    path = Path(path)
    title = title or f"Delta report: {', '.join(report.models)} vs {report.base}"
    parts: list[str] = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Base: <code>{html.escape(report.base)}</code>. Fine-tunes: '
        + ", ".join(
            f"<code>{html.escape(m)}</code> = <code>{html.escape(r)}</code>"
            for m, r in zip(report.models, report.refs, strict=True)
        )
        + f". Analysed {html.escape(str(report.meta.get('created', '')))}"
        f" in {report.meta.get('seconds', float('nan')):.1f} s.</p>",
        "<h2>Will DARE work?</h2>",
        _verdict_list(report),
        f'<p class="note">{html.escape(str(report.meta.get("verdict_rules", "")))}</p>',
        _fmt_table(
            report.summary,
            ["model", "tensors", "numel", "nonfinite", "zeros_share", "mean_abs", "median_abs", "p99_abs",
             "max_abs", "rel_norm", *_SHARE_COLS[:3], "verdict"],
        ),
        "<h2>Where the deltas lie</h2>",
        _figure(delta_histogram(report), "hist-all"),
    ]
    for k, m in enumerate(report.models):
        parts.append(f"<h2>{html.escape(m)}: layer × module</h2>")
        parts.append(_figure(layer_module_heatmap(report, m, metric="median_abs"), f"heat-med-{k}"))
        parts.append(_figure(layer_module_heatmap(report, m, metric="share_above_0.005"), f"heat-share-{k}"))
        parts.append(f"<h3>Tensors most at risk ({html.escape(m)})</h3>")
        risk = report.risk_table(m, n=top_n)
        parts.append(risk.to_html(index=False, escape=True, border=0))
    if len(report.models) >= 2:
        parts += [
            "<h2>Across fine-tunes</h2>",
            _figure(pairwise_heatmap(report, metric="cosine"), "pair-cos"),
            _figure(pairwise_heatmap(report, metric="sign_conflict"), "pair-sign"),
            _figure(pairwise_by_layer_heatmap(report, metric="cosine"), "pair-cos-layer"),
            _figure(pairwise_by_layer_heatmap(report, metric="sign_conflict"), "pair-sign-layer"),
            _fmt_table(report.pairs, ["model_a", "model_b", "cosine", "sign_conflict", "numel"]),
        ]
        conflict_all = report.meta.get("sign_conflict_all")
        if conflict_all is not None and len(report.models) > 2:
            parts.append(
                f'<p class="note">Across all fine-tunes, {100 * conflict_all:.2f}% of elements '
                "have non-zero deltas of both signs: the elements TIES' sign election decides.</p>"
            )
    for k, p in enumerate(previews):
        parts.append(f"<h2>DARE preview {k + 1}: {html.escape(', '.join(p.tensors[:3]))}</h2>")
        parts.append(_figure(dare_preview_histogram(p), f"preview-{k}"))
    if not report.skipped.empty:
        parts.append("<h2>Tensors not compared</h2>")
        parts.append(_fmt_table(report.skipped, ["model", "tensor", "reason"]))
    parts.append("<h2>How these numbers were computed</h2>")
    parts.append(f'<p class="note">{html.escape(str(report.meta.get("exactness", "")))}</p>')
    parts.append(
        f'<p class="note">Sign conflict: {html.escape(str(report.meta.get("sign_conflict_definition", "")))}.'
        " Median |δ| is the lower median of all elements.</p>"
    )
    return write_html_page(path, title, parts)
