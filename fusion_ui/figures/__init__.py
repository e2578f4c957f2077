"""Plotly figures of engine results: pure functions (report → figure), no UI code.

Shared by the browser app and the CLI's self-contained HTML reports.
"""

from fusion_ui.figures.deltas import (
    OKABE_ITO,
    dare_preview_histogram,
    delta_histogram,
    layer_module_heatmap,
    pairwise_by_layer_heatmap,
    pairwise_heatmap,
)
from fusion_ui.figures.html_report import write_html_report

__all__ = [
    "OKABE_ITO",
    "dare_preview_histogram",
    "delta_histogram",
    "layer_module_heatmap",
    "pairwise_by_layer_heatmap",
    "pairwise_heatmap",
    "write_html_report",
]
