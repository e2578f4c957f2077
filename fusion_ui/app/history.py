"""What the app remembers across restarts: the merges asked for and the exports (JSON lines),
and the recent model selections."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fusion_ui.app.selection import Selection
from fusion_ui.errors import RecipeError
from fusion_ui.io.source import short_names
from fusion_ui.recipe import Recipe

HISTORY_COLUMNS = ["id", "when", "kind", "method", "models", "path"]
RECENT_KEPT = 8


class History:
    """Merges and exports, newest last, in ``history.jsonl``; recent selections in ``recent.json``.

    Unreadable or torn lines (a crash mid-write) are skipped, never rewritten; a read-only
    state folder keeps the history for the running app only.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "history.jsonl"
        self.entries: list[dict[str, Any]] = []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        except (OSError, UnicodeDecodeError):
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("id"), int) and "recipe" in entry:
                self.entries.append(entry)

    # -- merges and exports ------------------------------------------------------------------

    def add(self, kind: str, recipe: Recipe, **extra: Any) -> dict[str, Any]:
        """Record a merge the user asked for, or an export (``kind``), with its recipe."""
        entry = {
            "id": (self.entries[-1]["id"] + 1) if self.entries else 1,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "kind": kind,
            "method": recipe.method,
            "models": ", ".join(short_names([e.model for e in recipe.models])),
            "recipe": recipe.to_yaml(),
            **extra,
        }
        self.entries.append(entry)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError:
            pass
        return entry

    def rows(self) -> list[dict[str, Any]]:
        """One dict per entry (the HISTORY_COLUMNS), newest first."""
        return [{"id": e["id"], "when": e.get("time", ""), "kind": e.get("kind", ""), "method": e.get("method", ""),
                 "models": e.get("models", ""), "path": e.get("path", "")} for e in reversed(self.entries)]

    def choices(self) -> list[tuple[str, int]]:
        """(label, id) of every entry, newest first, for a picker."""
        return [(f"#{e['id']} · {e.get('kind', '')} · {e.get('method', '')} · {e.get('models', '')} · "
                 f"{e.get('time', '')}", int(e["id"])) for e in reversed(self.entries)]

    def recipe(self, entry_id: int) -> str:
        """The recipe YAML of entry ``entry_id``."""
        for e in self.entries:
            if e["id"] == entry_id:
                return str(e["recipe"])
        raise RecipeError(f"no merge #{entry_id} in the history")

    # -- recent selections -------------------------------------------------------------------

    def recent(self) -> list[Selection]:
        try:
            data = json.loads((self.state_dir / "recent.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        if not isinstance(data, list):
            return []
        out = []
        for s in data:
            if (isinstance(s, dict) and isinstance(s.get("base"), str) and isinstance(s.get("models"), list)
                    and all(isinstance(m, str) for m in s["models"])):
                out.append({"base": s["base"], "models": s["models"], "labels": short_names(s["models"])})
        return out[:RECENT_KEPT]

    def remember(self, sel: Selection) -> None:
        items = [sel] + [s for s in self.recent() if (s["base"], s["models"]) != (sel["base"], sel["models"])]
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "recent.json").write_text(json.dumps(items[:RECENT_KEPT], indent=1), encoding="utf-8")
        except OSError:
            pass


__all__ = ["HISTORY_COLUMNS", "History"]
