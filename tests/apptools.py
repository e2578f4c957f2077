"""The app served for tests: on a free localhost port, in the test's process (its engine is inspectable)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from fusion_ui.app import Engine  # noqa: E402
from fusion_ui.ui import build_app, launch  # noqa: E402


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
