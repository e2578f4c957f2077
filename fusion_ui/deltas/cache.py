"""Where delta reports are cached, and the key that says two analyses are the same.

The key hashes what identifies the weights (each checkpoint's path, shard sizes and mtimes, hub
revision: ``Checkpoint.identity()``) with the analysis settings and version, so a changed file,
a different order of fine-tunes or a new version of the statistics never reuses an old report.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ANALYSIS_VERSION = 2  # bump when the statistics or the tables change (2: inf/NaN -> "broken")


def default_cache_dir() -> Path:
    """``$FUSION_UI_CACHE/deltas``, else ``$XDG_CACHE_HOME/fusion_ui/deltas``, else
    ``~/.cache/fusion_ui/deltas``."""
    root = os.environ.get("FUSION_UI_CACHE")
    if root:
        return Path(root).expanduser() / "deltas"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fusion_ui" / "deltas"


def cache_key(identities: list[dict[str, object]], settings: dict[str, object]) -> str:
    """Hex digest naming one analysis: base identity first, then the fine-tunes in order."""
    blob = json.dumps(
        {"version": ANALYSIS_VERSION, "models": identities, "settings": settings},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def cache_path(key: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"report-{key}.json.gz"
