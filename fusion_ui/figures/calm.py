"""Figures of a CALM composition: which layers the bridges join, and what they read.

Pure functions from engine results to plotly figures: :func:`bridge_layer_diagram` from the
bridges' layer pairs, :func:`bridge_attention_chart` from a
:class:`~fusion_ui.compose.attention.BridgeAttention` (one prompt's recorded cross-attention).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fusion_ui.figures.style import (
    FULL_FIT_PX,
    HALF_FIT_PX,
    HEATMAP_SCALE,
    OKABE_ITO,
    apply_layout,
    left_margin_px,
)

if TYPE_CHECKING:
    from fusion_ui.compose import BridgeAttention, LayerPair

MAX_COLUMNS = 4  # heatmaps per row of small multiples
HEATMAP_PX = 260  # height of one row of heatmaps
CONTRIBUTION_PX = 220  # height of the contribution chart under them
SUBPLOT_TITLE_PX = 22  # a row of subplot titles (12 px text and its gap)
_SHOWN = {" ": "␣", "\n": "↵", "\t": "⇥"}


def token_labels(tokens: Sequence[str]) -> list[str]:
    """Tokens as tick labels: a space is drawn as ␣ (it would be invisible), GPT-2's and
    SentencePiece's space marks (Ġ, ▁) too; escaped, as plotly reads tags (``<s>``) in text."""
    out = []
    for tok in tokens:
        text = "".join(_SHOWN.get(c, c) for c in tok)
        out.append(html.escape(text.replace("Ġ", "␣").replace("▁", "␣")) or "∅")
    return out


def pair_label(k: int, pair: LayerPair) -> str:
    return f"bridge {k + 1}: m_A block {pair.augment} → m_B block {pair.anchor}"


def bridge_attention_chart(reading: BridgeAttention, *, head: int | None = None,
                           fit_px: int = FULL_FIT_PX) -> go.Figure:
    """One heatmap per bridge (rows: anchor m_B tokens, the queries; columns: the m_A tokens they
    read, the keys), and under them each bridge's contribution per token: the size of what it
    adds relative to m_B's own hidden state there. ``head``: one head's weights, else the mean.
    """
    weights = reading.head_weights(head)  # (n, T, T)
    contribution = reading.contribution  # (n, T)
    n, t = weights.shape[0], weights.shape[-1]
    labels = token_labels(reading.tokens)
    cols = min(n, MAX_COLUMNS)
    grid_rows = math.ceil(n / cols)
    specs: list[list[dict | None]] = [[{} for _ in range(cols)] for _ in range(grid_rows)]
    specs.append([{"colspan": cols}] + [None] * (cols - 1))
    titles = [pair_label(k, p) for k, p in enumerate(reading.pairs)]
    titles += [""] * (grid_rows * cols - n) + ["contribution per token"]
    heat_share = grid_rows * HEATMAP_PX
    fig = make_subplots(rows=grid_rows + 1, cols=cols, specs=specs, subplot_titles=titles,
                        row_heights=[HEATMAP_PX / (heat_share + CONTRIBUTION_PX)] * grid_rows
                        + [CONTRIBUTION_PX / (heat_share + CONTRIBUTION_PX)],
                        horizontal_spacing=0.06 if cols > 1 else 0.0, vertical_spacing=0.12 / (grid_rows + 1) + 0.06)
    ticks = {"tickmode": "array", "tickvals": list(range(t)), "ticktext": labels, "tickangle": 0,
             "tickfont": {"size": 10 if t <= 24 else 8}}
    split = reading.prompt_tokens - 0.5  # prompt | answer
    for k in range(n):
        row, col = k // cols + 1, k % cols + 1
        shown = np.where(np.tril(np.ones((t, t), dtype=bool)), weights[k], np.nan)  # the future: blank
        hover = [[f"{labels[q]} (m_B token {q}) reads {labels[s]} (m_A token {s})" for s in range(t)]
                 for q in range(t)]
        fig.add_heatmap(z=shown, x=list(range(t)), y=list(range(t)), coloraxis="coloraxis", customdata=hover,
                        hovertemplate="%{customdata}<br>weight %{z:.3f}<extra>" + f"bridge {k + 1}</extra>",
                        row=row, col=col)
        fig.update_xaxes(ticks, row=row, col=col, title={"text": "m_A token (key)", "font": {"size": 11}})
        fig.update_yaxes(ticks, row=row, col=col, autorange="reversed",
                         title={"text": "m_B token (query)" if col == 1 else "", "font": {"size": 11}})
        if reading.prompt_tokens < t:
            for axis in ("x", "y"):
                line = {"x0": split, "x1": split, "y0": -0.5, "y1": t - 0.5} if axis == "x" else \
                    {"y0": split, "y1": split, "x0": -0.5, "x1": t - 0.5}
                fig.add_shape(type="line", line={"color": "#D55E00", "width": 1, "dash": "dot"},
                              row=row, col=col, **line)
    last = grid_rows + 1
    for k, pair in enumerate(reading.pairs):
        fig.add_scatter(x=list(range(t)), y=contribution[k], mode="lines+markers", name=f"bridge {k + 1} ({pair})",
                        line={"color": OKABE_ITO[k % len(OKABE_ITO)], "width": 2}, marker={"size": 5},
                        hovertemplate="%{y:.2f} × m_B's state<extra>" + f"bridge {k + 1}</extra>",
                        row=last, col=1)
    fig.update_xaxes(ticks, row=last, col=1)
    fig.update_yaxes(row=last, col=1, rangemode="tozero",
                     title={"text": "‖added‖ / ‖m_B state‖", "font": {"size": 11}})
    if reading.prompt_tokens < t:
        fig.add_vline(x=split, line={"color": "#D55E00", "width": 1, "dash": "dot"}, row=last, col=1)
    fig.update_layout(coloraxis={"colorscale": HEATMAP_SCALE, "cmin": 0, "cmax": 1,
                                 "colorbar": {"title": {"text": "weight"}, "len": 0.5, "y": 1, "yanchor": "top"}})
    for a in fig.layout.annotations:  # subplot titles: smaller than the figure's title
        a.font = {"size": 12}
    head_text = "the mean over heads" if head is None else f"head {head}"
    apply_layout(fig, _headline(reading), "Each heatmap is one bridge's cross-attention (" + head_text + "): "
                 "a row is an anchor m_B token, its cells the m_A tokens it reads (only those at or before it; "
                 "rows sum to 1). Below: what each bridge adds to m_B's residual stream at each token, relative "
                 "to m_B's own hidden state there. Dotted: where the prompt ends and the greedy answer begins.",
                 fit_px=fit_px, plot_height=heat_share + CONTRIBUTION_PX + 90,
                 margin={"l": left_margin_px(labels), "r": 30, "b": 90})
    # room for the subplot titles above the first row, and the legend under the last
    for a in fig.layout.annotations:
        if a.name in ("title", "subtitle"):
            a.yshift += SUBPLOT_TITLE_PX
    fig.update_layout(margin={"t": fig.layout.margin.t + SUBPLOT_TITLE_PX}, height=fig.layout.height + SUBPLOT_TITLE_PX,
                      legend={"orientation": "h", "x": 0, "y": 0.01, "yanchor": "bottom", "yref": "container"})
    return fig


def _headline(reading: BridgeAttention) -> str:
    """Which bridge adds most where the answer is decided (the prompt's last token), and the m_A
    token it reads most there."""
    q = reading.prompt_tokens - 1
    contribution = reading.contribution[:, q]
    k = int(np.argmax(contribution))
    labels = token_labels(reading.tokens)
    answer = f" → “{reading.answer.strip()}”" if reading.answer.strip() else ""
    if not np.any(contribution > 0):
        return f"The bridges add nothing at “{labels[q]}”{answer}: they are untrained (zero output)"
    read = int(np.argmax(reading.head_weights()[k, q]))
    return (f"At “{labels[q]}”{answer}, bridge {k + 1} ({reading.pairs[k]}) adds most "
            f"({contribution[k]:.2f} × m_B's state), reading m_A's “{labels[read]}” (token {read}) most")


def bridge_layer_diagram(pairs: Sequence[LayerPair], n_augment: int, n_anchor: int, *,
                         planned: bool = False, fit_px: int = HALF_FIT_PX) -> go.Figure:
    """m_A's blocks (left) and m_B's (right), bottom to top, and a line per bridge from the m_A
    block it reads to the m_B block after which it adds its output. Two models of different
    depths are drawn to the same height, so a line's slope shows where in each model it sits.
    ``planned``: bridges still to train (the title says so)."""
    def y_of(i: int, n: int) -> float:
        return (i + 0.5) / n

    fig = go.Figure()
    for x, n, name in ((0, n_augment, "m_A (augmenting)"), (1, n_anchor, "m_B (anchor)")):
        fig.add_scatter(x=[x] * n, y=[y_of(i, n) for i in range(n)], mode="markers+text",
                        text=[f"block {i}" for i in range(n)], textposition="middle left" if x == 0 else "middle right",
                        marker={"symbol": "square", "size": 14, "color": "#DDDDDD", "line": {"color": "#555555",
                                                                                            "width": 1}},
                        hovertemplate=f"{name} block %{{text}}<extra></extra>", showlegend=False)
    for k, pair in enumerate(pairs):
        color = OKABE_ITO[k % len(OKABE_ITO)]
        fig.add_scatter(x=[0, 1], y=[y_of(pair.augment, n_augment), y_of(pair.anchor, n_anchor)],
                        mode="lines+markers", name=f"bridge {k + 1}: {pair.augment} → {pair.anchor}",
                        line={"color": color, "width": 3},
                        marker={"symbol": ["circle", "arrow"], "size": [8, 14], "angleref": "previous",
                                "color": color},
                        hovertemplate=pair_label(k, pair) + "<extra></extra>")
    for x, name in ((0, "m_A (augmenting)"), (1, "m_B (anchor)")):  # column heads, inside the plot area
        fig.add_annotation(x=x, y=1.0, text=f"<b>{name}</b>", showarrow=False, yanchor="bottom", font={"size": 12})
    fig.update_xaxes(range=[-0.6, 1.6], visible=False)
    fig.update_yaxes(range=[0, 1.08], visible=False)
    blocks = max(n_augment, n_anchor)
    count = f"{len(pairs)} bridge{'s' if len(pairs) != 1 else ''}"
    apply_layout(fig, f"{count} to train: which m_A block will feed which m_B block" if planned
                 else f"{count}: which m_A block feeds which m_B block",
                 "Each line reads the output of an m_A block and adds to m_B's residual stream after its block "
                 "(block 0 at the bottom).", fit_px=fit_px, plot_height=min(560, 120 + 44 * blocks),
                 margin={"l": 30, "r": 30, "b": 30 + 22 * math.ceil(len(pairs) / 2)})
    fig.update_layout(legend={"orientation": "h", "x": 0, "y": 0, "yanchor": "top"})
    return fig


__all__ = ["bridge_attention_chart", "bridge_layer_diagram", "token_labels"]
