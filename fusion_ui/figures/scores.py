"""Evaluation scores as a chart: one group of bars per skill, one bar per model."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from fusion_ui.figures.style import OKABE_ITO


def score_chart(scores: pd.DataFrame, metric: str = "exact_match") -> go.Figure:
    """Grouped bars from a table with columns ``model``, ``skill`` and ``metric`` (a fraction).

    Models keep the order they first appear in, and their Okabe-Ito colour (the same as in
    the delta figures), so a model has one colour throughout the app.
    """
    missing = {"model", "skill", metric} - set(scores.columns)
    if missing:
        raise ValueError(f"score table needs columns model, skill and {metric}; missing {sorted(missing)}")
    fig = go.Figure()
    for k, (model, group) in enumerate(scores.groupby("model", sort=False)):
        fig.add_bar(x=group["skill"], y=100 * group[metric], name=str(model),
                    marker_color=OKABE_ITO[k % len(OKABE_ITO)],
                    text=[f"{100 * v:.0f}%" for v in group[metric]], textposition="outside")
    fig.update_layout(
        title={"text": f"{metric.replace('_', ' ')} per skill (%)", "x": 0.01},
        template="plotly_white", barmode="group", height=380, yaxis={"range": [0, 110], "title": "%"},
        margin={"l": 50, "r": 20, "t": 60, "b": 40}, legend={"orientation": "h", "y": -0.15},
    )
    return fig
