"""The app served for tests: on a free localhost port, in the test's process (its engine is
inspectable); and what the real-browser tests share (Debian's chromium, its flags, screenshots).

Screenshots go to ``test-artifacts/screenshots/`` (or ``$FUSION_UI_ARTIFACTS``); with
``FUSION_UI_UPDATE_SCREENSHOTS=1`` those meant for the README are also copied to
``assets/ui/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from fusion_ui.app import Engine  # noqa: E402
from fusion_ui.ui import build_app, launch  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("FUSION_UI_ARTIFACTS", REPO / "test-artifacts")) / "screenshots"
README_SHOTS = REPO / "assets" / "ui" / "screenshots"
# The marks of a real-browser test module: skipped without chromium; gradio's queue warnings quiet.
BROWSER_MARKS = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium"),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),
]


def save_screenshot(page: Any, name: str, *, clip: dict | None = None, readme: bool = True) -> Path:
    """The page (whole, or ``clip``) as ``ARTIFACTS/name``; copied for the README when asked."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True, **({"clip": clip} if clip else {}))
    if readme and os.environ.get("FUSION_UI_UPDATE_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, README_SHOTS / name)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningApp:
    """The app served on a free localhost port, in this process (its engine is inspectable)."""

    def __init__(self, family: Path, state_dir: Path, **options: Any) -> None:
        self.export_root = state_dir / "exports"
        self.engine = Engine(demo_dir=family, state_dir=state_dir, device="cpu", export_root=self.export_root)
        self.blocks = build_app(self.engine)
        self.port = free_port()
        launch(self.blocks, host="127.0.0.1", port=self.port, block=False, **options)
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.blocks.close()
        self.engine.close()
