"""A sweep's table as a figure: a heatmap of the mean score over two axes, or one line per
skill (and the mean) along one axis, as the DARE paper plots accuracy against the drop rate."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from fusion_ui.figures.style import FULL_FIT_PX, HEATMAP_SCALE, OKABE_ITO, apply_layout


def sweep_chart(table: pd.DataFrame, axes: Sequence[str], skills: Sequence[str], *, title: str = "sweep") -> go.Figure:
    """``table``: one row per cell with the axis columns, each skill's score and ``mean`` (0-1)."""
    fig = go.Figure()
    axes = list(axes)
    if len(axes) == 1:
        x = axes[0]
        ordered = table.sort_values(x, kind="stable")
        for k, skill in enumerate([*skills, "mean"]):
            fig.add_scatter(x=ordered[x], y=100 * ordered[skill], mode="lines+markers", name=skill,
                            line={"color": OKABE_ITO[k % len(OKABE_ITO)], "width": 3 if skill == "mean" else 2,
                                  "dash": "dot" if skill == "mean" else "solid"})
        fig.update_layout(xaxis_title=x, yaxis={"title": "score (%)", "range": [0, 102]})
        subtitle = f"Each skill's score, and their mean, at each {x}: {len(ordered)} cells."
    else:
        rows, cols = axes[0], axes[1]
        grid = table.pivot_table(index=rows, columns=cols, values="mean", aggfunc="first").sort_index()
        grid = grid[sorted(grid.columns)]
        z = 100 * grid.to_numpy()
        fig.add_heatmap(z=z, x=[str(c) for c in grid.columns], y=[str(r) for r in grid.index],
                        colorscale=HEATMAP_SCALE, zmin=0, zmax=100, colorbar={"title": "mean %"},
                        text=[[f"{v:.0f}" for v in row] for row in z], texttemplate="%{text}",
                        hovertemplate=f"{rows} %{{y}}, {cols} %{{x}}: mean %{{z:.1f}}%<extra></extra>")
        fig.update_layout(xaxis={"title": cols, "type": "category"}, yaxis={"title": rows, "type": "category"})
        subtitle = f"Mean score (%) over {', '.join(skills)} for each cell: {rows} (rows) × {cols} (columns)."
    if len(table):
        best = table.loc[table["mean"].idxmax()]
        at = ", ".join(f"{a} = {best[a]:g}" if isinstance(best[a], float) else f"{a} = {best[a]}" for a in axes)
        head = f"{title}: best mean {100 * best['mean']:.1f}% at {at}"
    else:
        head = f"{title}: no cell finished"
    apply_layout(fig, head, subtitle, fit_px=FULL_FIT_PX, plot_height=380)
    return fig


__all__ = ["sweep_chart"]
