"""How long the app takes to answer in a real browser, as a user sees it.

Starts the app as a user does (``python app.py --no-browser``, a whole process with a fresh
home folder, on the shipped demo family), drives Debian's chromium through Playwright, and
prints, against the targets of the hardening issue (2-core machine):

- page load -> the Models table and verdict shown;
- first opening of the Deltas tab -> the histogram drawn (target <= 3 s);
- a drop-rate slider released in the Merge tab with *live* on -> the DARE preview redrawn,
  and the live re-merge's status line (target <= 0.5 s each; the median of ``--repeats``).

``--cold-kernels`` gives the app an empty numba cache (as on a fresh install, where the CPU
kernels compile on first use); by default the kernels compiled by earlier runs are used.

Command:  python benchmarks/ui_latency.py [--repeats 7] [--cold-kernels]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
TARGETS = {"first Deltas analysis": 3.0, "DARE preview after release": 0.5, "live re-merge after release": 0.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the app did not answer at {url} within {timeout:.0f} s")


def text_of(page, selector: str) -> str:  # noqa: ANN001 - playwright page
    return page.locator(selector).first.inner_text()


def wait_changes(page, watched: dict[str, tuple[str, str]], start: float, timeout: float = 30.0) -> dict[str, float]:  # noqa: ANN001
    """Seconds from ``start`` until each watched element's text differs from its text before
    (``watched``: selector -> (text before, text it must then contain))."""
    seen: dict[str, float] = {}
    deadline = start + timeout
    while len(seen) < len(watched) and time.perf_counter() < deadline:
        for selector, (before, must_contain) in watched.items():
            if selector not in seen:
                now = text_of(page, selector)
                if now != before and must_contain in now:
                    seen[selector] = time.perf_counter() - start
        time.sleep(0.005)
    missing = set(watched) - set(seen)
    if missing:
        now = {sel: text_of(page, sel) for sel in missing}
        raise SystemExit(f"{', '.join(sorted(missing))} did not change within {timeout:.0f} s: {now}")
    return seen


def click_track(page, selector: str, fraction: float) -> None:  # noqa: ANN001
    """Press and release the pointer on a slider's track at ``fraction`` of its width."""
    box = page.locator(selector).first.bounding_box()
    x, y = box["x"] + fraction * box["width"], box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.up()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", default=str(REPO / "assets" / "demo"))
    parser.add_argument("--repeats", type=int, default=7, help="slider releases timed (median reported)")
    parser.add_argument("--cold-kernels", action="store_true", help="start with an empty numba cache")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="fusion-ui-bench-home-"))
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if args.cold_kernels:
        env["NUMBA_CACHE_DIR"] = str(home / "numba-cache")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    app = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--no-browser", "--port", str(port),
                            "--demo-dir", args.demo_dir, "--device", "cpu"], cwd=home, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    figures: dict[str, float] = {}
    try:
        wait_http(url, 120)
        figures["app process up (python app.py)"] = time.perf_counter() - t0
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t = time.perf_counter()
            page.goto(url)
            page.locator("#verdict").get_by_text("Compatible").first.wait_for(timeout=120_000)
            figures["page load -> models checked"] = time.perf_counter() - t

            t = time.perf_counter()
            page.click("#tab-deltas-button")
            page.locator("#delta-histogram .js-plotly-plot").first.wait_for(timeout=120_000)
            figures["first Deltas analysis"] = time.perf_counter() - t

            page.click("#tab-merge-button")
            page.locator("#drop_rate-0").wait_for(timeout=60_000)
            page.locator("#dare-preview .js-plotly-plot").first.wait_for(timeout=60_000)
            page.locator("#live input").check()
            previews, merges = [], []
            for k in range(args.repeats):
                watched = {"#preview-text": (text_of(page, "#preview-text"), "p = "),
                           "#merge-status": (text_of(page, "#merge-status"), "Live re-merge")}
                start = time.perf_counter()
                click_track(page, "#drop_rate-0 input[type=range]", 0.55 + 0.06 * (k % 5))
                seen = wait_changes(page, watched, start)
                previews.append(seen["#preview-text"])
                merges.append(seen["#merge-status"])
                page.wait_for_timeout(300)
            figures["DARE preview after release"] = statistics.median(previews)
            figures["live re-merge after release"] = statistics.median(merges)
            browser.close()
    finally:
        app.terminate()
        try:
            app.wait(10)
        except subprocess.TimeoutExpired:
            app.kill()
    print(f"fusion_ui app in chromium, demo family {args.demo_dir}, "
          f"{'cold' if args.cold_kernels else 'warm'} numba cache, {os.cpu_count()} cores")
    print(f"{'what':<38} {'seconds':>8} {'target':>8}")
    for what, seconds in figures.items():
        target = TARGETS.get(what)
        verdict = "" if target is None else ("  met" if seconds <= target else "  NOT met")
        print(f"{what:<38} {seconds:8.2f} {'' if target is None else f'{target:8.1f}'}{verdict}")
    if args.repeats > 1:
        print(f"(slider releases: preview {', '.join(f'{x:.2f}' for x in previews)}; "
              f"re-merge {', '.join(f'{x:.2f}' for x in merges)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
