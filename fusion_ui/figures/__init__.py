"""Plotly figures of engine results: pure functions (report → figure), no UI code.

Shared by the browser app and the CLI's self-contained HTML reports. One palette
(:data:`OKABE_ITO`) and one title layout (:mod:`fusion_ui.figures.style`) for all of them.
"""

from fusion_ui.figures.calm import bridge_attention_chart, bridge_layer_diagram
from fusion_ui.figures.cocktail import cocktail_chart
from fusion_ui.figures.deltas import (
    dare_preview_histogram,
    delta_histogram,
    fit_log_range,
    layer_module_heatmap,
    pairwise_by_layer_heatmap,
    pairwise_heatmap,
)
from fusion_ui.figures.html_report import figure_html, write_html_page, write_html_report
from fusion_ui.figures.scores import score_chart
from fusion_ui.figures.style import HEATMAP_SCALE, OKABE_ITO, figure_subtitle, figure_title
from fusion_ui.figures.sweep import sweep_chart
from fusion_ui.figures.training import loss_curve
from fusion_ui.figures.warm import warm_up

__all__ = [
    "HEATMAP_SCALE",
    "OKABE_ITO",
    "bridge_attention_chart",
    "bridge_layer_diagram",
    "cocktail_chart",
    "dare_preview_histogram",
    "delta_histogram",
    "figure_html",
    "figure_subtitle",
    "figure_title",
    "fit_log_range",
    "layer_module_heatmap",
    "loss_curve",
    "pairwise_by_layer_heatmap",
    "pairwise_heatmap",
    "score_chart",
    "sweep_chart",
    "warm_up",
    "write_html_page",
    "write_html_report",
]
