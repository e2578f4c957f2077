"""Figure titles in a real browser (Debian's chromium): at the widths the app shows each figure,
every title and subtitle line lies inside the figure and above its plot area.

plotly.js is loaded once from the installed plotly package (nothing fetched); each figure is
drawn into a div of the app's width. Screenshots go to ``$FUSION_UI_ARTIFACTS/figures``
(default ``test-artifacts/figures``) for a person to look at.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltas_models import app_figures, family

from fusion_ui.deltas import DeltaReport, analyze_deltas

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FUSION_UI_ARTIFACTS", REPO / "test-artifacts")) / "figures"
# The app at a 1400 px window shows full-width plots at ~1200-1340 px and half-width ones at
# ~600-650 px. Titles are anchored top-left, so fitting the narrow end (a smaller window) is
# fitting every width above it.
WIDTHS = {"full": 1000, "half": 500}

@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return family(tmp_path_factory.mktemp("fit"), {"expert_small": 0.001, "expert_big": 0.004})


@pytest.fixture(scope="module")
def report(models: dict[str, Path]) -> DeltaReport:
    return analyze_deltas(models["base"], [models["expert_small"], models["expert_big"]], cache=False)


pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium; Playwright's own browsers are never downloaded",
)
sync_api = pytest.importorskip("playwright.sync_api")

# Boxes of every title-like element (plotly's own title or the header annotations) and of the
# plot area, relative to the figure's svg.
_BOXES = """(id) => {
  const gd = document.getElementById(id);
  const svg = gd.querySelector('.main-svg').getBoundingClientRect();
  const rel = e => { const r = e.getBoundingClientRect();
    return [r.left - svg.left, r.top - svg.top, r.right - svg.left, r.bottom - svg.top]; };
  const titles = [...gd.querySelectorAll('.gtitle, .gtitle-subtitle, .annotation')]
    .filter(e => e.textContent.trim()).map(e => ({text: e.textContent, box: rel(e)}));
  return {width: svg.width, plot: rel(gd.querySelector('.bglayer rect, .nsewdrag')), titles};
}"""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    from plotly.offline import get_plotlyjs

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.set_content("<html><body style='margin:0'></body></html>")
        pg.add_script_tag(content=get_plotlyjs())
        yield pg
        browser.close()


def test_titles_fit_inside_the_figure_at_app_widths(page: Any, report, models) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems = []
    for name, (fig, fit) in app_figures(report, models).items():
        for width in (WIDTHS["half" if fit < 800 else "full"],):
            div = f"fig-{name.replace(' ', '-')}-{width}"
            page.evaluate(
                """([id, width, fig]) => { document.body.innerHTML = '';
                     const d = document.createElement('div'); d.id = id; d.style.width = width + 'px';
                     document.body.appendChild(d); return Plotly.newPlot(d, fig.data, fig.layout); }""",
                [div, width, json.loads(fig.to_json())],
            )
            found = page.evaluate(_BOXES, div)
            page.locator(f"#{div}").screenshot(path=str(ARTIFACTS / f"{div}.png"))
            assert found["titles"], f"{name}: no title drawn"
            for t in found["titles"]:
                left, top, right, bottom = t["box"]
                if left < -0.5 or right > found["width"] + 0.5:
                    problems.append(f"{name} at {width}px: {t['text'][:60]!r} spans {left:.0f}..{right:.0f}")
                if bottom > found["plot"][1] + 0.5:
                    problems.append(f"{name} at {width}px: {t['text'][:60]!r} runs into the plot")
                if top < 0:
                    problems.append(f"{name} at {width}px: {t['text'][:60]!r} starts above the figure")
    assert not problems, "\n".join(problems)
