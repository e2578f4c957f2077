"""Loading plotly's figure machinery ahead of the first real figure.

Plotly builds its validators on first use of each trace and layout type: ~0.6 s on a 2-core
machine for the first delta histogram of a process, ~0.08 s for the next. The app calls
:func:`warm_up` on a thread when it starts, so the first Deltas tab a user opens does not pay it.
"""

from __future__ import annotations

import plotly.graph_objects as go


def warm_up() -> None:
    """Build and serialise one throw-away figure with every trace and layout part the figures use."""
    fig = go.Figure([
        go.Scatter(x=[1e-4, 1e-3], y=[1, 2], fill="tozeroy", line={"dash": "dash"}, name="a"),
        go.Heatmap(z=[[0.1, 0.2]], colorscale="Viridis", colorbar={"title": {"text": "x"}}, text=[["a", "b"]]),
        go.Bar(x=["a"], y=[1], text=["1%"], textposition="outside"),
    ])
    fig.update_layout(template="plotly_white", xaxis={"type": "log", "range": [-5, -1]},
                      legend={"orientation": "h"}, margin={"t": 60}, height=300)
    fig.add_annotation(text="title", xref="paper", yref="paper", x=0, y=1.1, showarrow=False)
    fig.add_shape(type="line", x0=0.002, x1=0.002, y0=0, y1=1, yref="paper", line={"dash": "dot"})
    fig.to_json()
