"""The look every figure shares: one palette, and titles that fit the width they are shown at.

Plotly never wraps a title, and a multi-line ``layout.title`` (with or without a subtitle) is
placed unpredictably, so a long title is cut off at the right edge of a half-width plot. Here a
title and its subtitle are wrapped with ``<br>`` for the narrowest width the figure is shown at
(``fit_px``), from an estimate of the text's width in the widest font plotly's default stack
falls back to (Verdana / DejaVu Sans: narrower fonts only leave more room), and drawn as two
top-left annotations whose place does not depend on plotly's title layout. The top margin and
the figure's height grow with the number of lines, so the plot area keeps its size.

Leaving ``layout.title`` unset also keeps Gradio's ``gr.Plot`` from forcing a 100 px top margin.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import plotly.graph_objects as go

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision
# deficiency. Ordered for lines on white (blue, orange, green, vermillion, ...).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
HEATMAP_SCALE = "Cividis"  # perceptually uniform and colour-blind safe

# Widths the app shows figures at (a 1400 px window): a full-width plot is ~1200-1340 px, a
# half-width one (two in a row) ~600-650 px, ~500 px on a narrower window. Titles are wrapped
# to fit the narrow end.
FULL_FIT_PX = 1000
HALF_FIT_PX = 480

TITLE_PX = 16
SUBTITLE_PX = 12
LINE_SPACING = 1.3  # plotly's line height for multi-line text, in em
SIDE_PAD_PX = 8  # title's distance from the figure's left edge (and the budget on the right)
TOP_PAD_PX = 10  # the app's gr.Plot has show_label=False: a shown label (~30 px) would
#                  overlay the figure's top-left corner, title included
GAP_PX = 6  # title to subtitle, subtitle to plot area
SAFETY = 1.05  # on the width estimate

# Advance widths (em) of printable ASCII in DejaVu Sans, widened to Verdana's where Verdana is
# wider (space, %): what chromium measured for plotly's '"Open Sans", verdana, arial' stack
# on a machine without Open Sans. Index: ord(c) - 32.
_ASCII_EM = (
    0.352, 0.401, 0.46, 0.838, 0.636, 1.076, 0.78, 0.275, 0.39, 0.39, 0.5, 0.838, 0.318, 0.361,
    0.318, 0.337, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.636, 0.337,
    0.337, 0.838, 0.838, 0.838, 0.531, 1.0, 0.684, 0.686, 0.698, 0.77, 0.632, 0.575, 0.775,
    0.752, 0.295, 0.295, 0.656, 0.557, 0.863, 0.748, 0.787, 0.603, 0.787, 0.695, 0.635, 0.611,
    0.732, 0.684, 0.989, 0.685, 0.611, 0.685, 0.39, 0.337, 0.39, 0.838, 0.5, 0.5, 0.613, 0.635,
    0.55, 0.635, 0.615, 0.352, 0.635, 0.634, 0.278, 0.278, 0.579, 0.278, 0.974, 0.634, 0.612,
    0.635, 0.635, 0.411, 0.521, 0.392, 0.634, 0.592, 0.818, 0.592, 0.592, 0.525, 0.636, 0.337,
    0.636, 0.838,
)
_OTHER_EM = {"δ": 0.612, "θ": 0.612, "‖": 0.5, "×": 0.838, "≥": 0.838, "≤": 0.838, "≈": 0.838,
             "—": 1.0, "–": 0.5, "−": 0.838, "·": 0.318, "…": 1.0, "\u0302": 0.0}
_UNKNOWN_EM = 1.0  # any other character: as wide as an em
_TAG = re.compile(r"<[^<>]*>")


def text_width_px(text: str, size_px: float) -> float:
    """Estimated width of one line of plotly text (tags such as ``<b>`` take no room)."""
    plain = _TAG.sub("", text)
    em = 0.0
    for ch in plain:
        code = ord(ch) - 32
        em += _ASCII_EM[code] if 0 <= code < len(_ASCII_EM) else _OTHER_EM.get(ch, _UNKNOWN_EM)
    return em * size_px * SAFETY


def wrap_px(text: str, width_px: float, size_px: float) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width_px`` (estimated).

    Existing ``<br>`` breaks are kept; a word wider than a line (a long tensor name) is cut
    after a ``.`` or ``_`` where possible.
    """
    lines: list[str] = []
    for paragraph in re.split(r"<br\s*/?>", text):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if text_width_px(candidate, size_px) <= width_px:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for piece in _cut_word(word, width_px, size_px):
                if line:
                    lines.append(line)
                line = piece
        lines.append(line)
    return [x for x in lines if x] or [""]


def _cut_word(word: str, width_px: float, size_px: float) -> list[str]:
    """A word in pieces that each fit, cut after '.', '_' or '/' when one is near the end."""
    pieces = []
    while text_width_px(word, size_px) > width_px and len(word) > 1:
        n = len(word)
        while n > 1 and text_width_px(word[:n], size_px) > width_px:
            n -= 1
        soft = max(word.rfind(c, 0, n) for c in "._/")
        cut = soft + 1 if soft >= n // 2 else n
        pieces.append(word[:cut])
        word = word[cut:]
    pieces.append(word)
    return pieces


def left_margin_px(tick_labels: Sequence[str], *, axis_title: bool = True, font_px: int = 13) -> int:
    """A left margin that holds these y tick labels (and an axis title) without plotly having
    to widen it: a widened margin would shift the title right, past the width it was fit to."""
    widest = max((text_width_px(str(t), font_px) for t in tick_labels), default=0.0)
    title = LINE_SPACING * round(font_px * 1.2) + 8 if axis_title else 0.0
    return max(70, math.ceil(widest + title + 16))


def _block_px(lines: int, size_px: float) -> float:
    return lines * LINE_SPACING * size_px


def apply_layout(
    fig: go.Figure,
    title: str,
    subtitle: str = "",
    *,
    fit_px: int = FULL_FIT_PX,
    plot_height: int = 330,
    margin: dict[str, int] | None = None,
) -> go.Figure:
    """House style, with ``title`` and ``subtitle`` wrapped to fit a ``fit_px``-wide figure.

    ``plot_height`` is the height of the plot area plus the bottom margin; the header's lines
    are added on top, so wrapping never squeezes the plot.
    """
    margin = {"l": 70, "r": 30, "b": 60, **(margin or {})}
    budget = fit_px - 2 * SIDE_PAD_PX
    title_lines = wrap_px(title, budget, TITLE_PX)
    sub_lines = wrap_px(subtitle, budget, SUBTITLE_PX) if subtitle else []
    title_h = _block_px(len(title_lines), TITLE_PX)
    sub_h = _block_px(len(sub_lines), SUBTITLE_PX) + GAP_PX if sub_lines else 0.0
    top = round(TOP_PAD_PX + title_h + sub_h + 2 * GAP_PX)
    common = {
        "xref": "paper", "yref": "paper", "x": 0, "y": 1, "xanchor": "left", "yanchor": "top",
        "align": "left", "showarrow": False, "borderpad": 0, "xshift": SIDE_PAD_PX - margin["l"],
    }
    fig.add_annotation(text="<br>".join(title_lines), name="title", font={"size": TITLE_PX},
                       yshift=top - TOP_PAD_PX, **common)
    if sub_lines:
        fig.add_annotation(text="<br>".join(sub_lines), name="subtitle",
                           font={"size": SUBTITLE_PX, "color": "#555555"},
                           yshift=top - TOP_PAD_PX - title_h - GAP_PX, **common)
    fig.update_layout(
        template="plotly_white",
        height=plot_height + top,
        margin={**margin, "t": top},
        legend={"orientation": "v", "x": 1.01, "y": 1},
        font={"size": 13},
    )
    return fig


def _annotation_text(fig: go.Figure, name: str) -> str:
    for a in fig.layout.annotations:
        if a.name == name:
            return re.sub(r"<br\s*/?>", " ", a.text or "")
    return ""


def figure_title(fig: go.Figure) -> str:
    """The title of a figure made here, as one line (its ``<br>`` wraps undone)."""
    return _annotation_text(fig, "title")


def figure_subtitle(fig: go.Figure) -> str:
    """The subtitle of a figure made here, as one line."""
    return _annotation_text(fig, "subtitle")


def alpha(hex_color: str, a: float) -> str:
    """``#rrggbb`` as ``rgba(r,g,b,a)``."""
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{a})"
