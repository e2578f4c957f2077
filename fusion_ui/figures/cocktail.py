"""LM-Cocktail's weights as a chart: each candidate's loss on the examples and the weight it gets."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from fusion_ui.figures.style import FULL_FIT_PX, OKABE_ITO, apply_layout


def cocktail_chart(labels: Sequence[str], losses: Sequence[float], weights: Sequence[float], *,
                   temperature: float, n_examples: int) -> go.Figure:
    """Two bars per candidate: its mean answer loss (left axis, nats per token) and its weight
    softmax(−loss / T) (right axis, %). Lower loss, higher weight; T sets how sharply."""
    labels = [str(x) for x in labels]
    fig = go.Figure()
    fig.add_bar(x=labels, y=list(losses), name="loss (nats / answer token)", marker_color=OKABE_ITO[1],
                offsetgroup="loss", yaxis="y", text=[f"{v:.3g}" for v in losses], textposition="outside")
    fig.add_bar(x=labels, y=[100 * w for w in weights], name="weight (%)", marker_color=OKABE_ITO[0],
                offsetgroup="weight", yaxis="y2", text=[f"{100 * w:.1f}%" for w in weights],
                textposition="outside")
    top_loss = max([float(v) for v in losses] + [1e-9])
    fig.update_layout(
        barmode="group",
        yaxis={"title": "loss", "range": [0, 1.2 * top_loss], "rangemode": "tozero"},
        yaxis2={"title": "weight (%)", "overlaying": "y", "side": "right", "range": [0, 110], "showgrid": False},
    )
    best = labels[max(range(len(labels)), key=lambda i: weights[i])] if labels else ""
    apply_layout(
        fig, f"LM-Cocktail weights from {n_examples} example{'s' if n_examples != 1 else ''}: "
        f"{best} weighs most",
        f"w = softmax(−loss / T), T = {temperature:g}: a lower loss on the examples gives more weight; a higher "
        "T spreads the weights, a lower one gives nearly all to the best candidate.",
        fit_px=FULL_FIT_PX, plot_height=340, margin={"r": 70},
    )
    fig.update_layout(legend={"orientation": "h", "x": 0, "y": -0.18})
    return fig


__all__ = ["cocktail_chart"]
