"""A training run's loss curve: the loss after each step, and its running mean, as the run goes.

One figure for every small part the app trains beside frozen models (a soft prompt in front of
a frozen LM, CALM's bridges). The x axis spans the whole run from the first point on, so a live
curve grows to the right instead of being rescaled on every redraw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from fusion_ui.figures.style import FULL_FIT_PX, OKABE_ITO, alpha, apply_layout

SMOOTHING = 0.9  # weight of the past in the running mean (an exponential moving average)


def running_mean(values: Sequence[float], smoothing: float = SMOOTHING) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's "smoothing"), one per value."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out, acc = [], 0.0
    for k, v in enumerate(values, start=1):
        acc = smoothing * acc + (1 - smoothing) * float(v)
        out.append(acc / (1 - smoothing**k))
    return out


def loss_curve(
    steps: Sequence[int],
    losses: Sequence[float],
    *,
    total_steps: int | None = None,
    title: str = "training loss",
    state: str = "",
) -> go.Figure:
    """The loss of each step (thin line) and its running mean (thick), over ``total_steps``.

    ``state`` ends the title (``"running"``, ``"stopped at step 12"``, ``"done"``).
    """
    if len(steps) != len(losses):
        raise ValueError(f"{len(steps)} steps but {len(losses)} losses")
    steps = [int(s) for s in steps]
    losses = [float(v) for v in losses]
    fig = go.Figure()
    fig.add_scatter(
        x=steps,
        y=losses,
        mode="lines",
        name="loss per step",
        line={"color": alpha(OKABE_ITO[0], 0.35), "width": 1},
    )
    fig.add_scatter(
        x=steps,
        y=running_mean(losses),
        mode="lines",
        name="running mean",
        line={"color": OKABE_ITO[0], "width": 3},
    )
    right = max([total_steps or 0, *steps, 1])
    finite = [v for v in losses if math.isfinite(v)]
    fig.update_layout(
        xaxis={"title": "step", "range": [0, right * 1.02]},
        yaxis={"title": "loss (nats / answer token)", "rangemode": "tozero"},
        legend={"orientation": "h", "x": 0, "y": -0.22},
    )
    if finite:
        head = f"{title}: {finite[0]:.3f} → {finite[-1]:.3f} after {steps[-1]} of {right} steps"
        sub = (
            "The answer tokens' mean loss on each step's batch; the thick line is its running mean."
        )
    else:
        head = f"{title}: no step yet"
        sub = "The curve draws itself as the steps finish."
    if state:
        head += f" ({state})"
    apply_layout(fig, head, sub, fit_px=FULL_FIT_PX, plot_height=300)
    return fig


__all__ = ["SMOOTHING", "loss_curve", "running_mean"]
