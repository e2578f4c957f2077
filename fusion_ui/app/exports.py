"""The Export tab's facade: where the app may write (one export root), exports as jobs, and the
history of merges and exports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fusion_ui.app.context import AppContext
from fusion_ui.app.history import HISTORY_COLUMNS
from fusion_ui.errors import ExportError
from fusion_ui.export import MERGEKIT_FILE, RECIPE_FILE, export_merge
from fusion_ui.io.writer import parse_size
from fusion_ui.progress import ProgressCallback
from fusion_ui.recipe import Recipe
from fusion_ui.runtime.jobs import Job, JobContext


@dataclass(frozen=True)
class ExportSummary:
    path: str
    files: list[str]
    size_bytes: int
    seconds: float
    card: str  # the model card (README.md) as written
    recipe_yaml: str
    mergekit_yaml: str | None
    warnings: list[str]


class ExportFacade:
    def __init__(self, context: AppContext) -> None:
        self.context = context

    @property
    def root(self) -> Path:
        return self.context.export_root

    def target(self, out_dir: str) -> Path:
        """Where an export from the app goes: a folder under the export root, never elsewhere.

        A relative name is taken under the root; an absolute path must lie inside it once
        symlinks are followed; ``..`` is refused outright.
        """
        text = (out_dir or "").strip()
        if not text:
            raise ExportError(f"choose an output folder: a name under the export root {self.root}")
        root = self.root.resolve()
        path = Path(text).expanduser()
        if ".." in path.parts:
            raise ExportError(f"{text}: `..` is not allowed in an export folder; give a name under {root}")
        target = (path if path.is_absolute() else root / path).resolve()
        if target == root or not target.is_relative_to(root):
            raise ExportError(
                f"{text} is outside the export root {root}: the app writes only below it. Give a "
                "folder name (it goes under the root), or restart the app with --export-root DIR"
            )
        return target

    def start(
        self,
        session: str,
        recipe: Recipe,
        out_dir: str,
        *,
        dtype: str | None = None,
        max_shard_size: str = "2GB",
        tokenizer_source: str = "base",
        write_mergekit: bool = True,
        force: bool = False,
        allow_large_deltas: bool = False,
    ) -> Job[ExportSummary]:
        """Write ``recipe`` to a folder under the export root that ``transformers`` loads (atomic),
        as a job; recorded in the history. ``force`` replaces only an earlier export."""
        target = self.target(out_dir)
        update: dict[str, Any] = {"tokenizer_source": tokenizer_source or "base"}
        if dtype:
            update["dtype"] = dtype
        recipe = recipe.updated(source="the Export tab", **update)
        parse_size(max_shard_size)  # a bad size fails now, not after the queue
        context = self.context

        def run(ctx: JobContext) -> ExportSummary:
            context.export_root.mkdir(parents=True, exist_ok=True)
            result = export_merge(
                recipe, target, force=force, max_shard_size=max_shard_size, device=context.device,
                progress=ctx.progress, cancel=ctx.cancel, write_mergekit=write_mergekit,
                allow_large_deltas=allow_large_deltas,
            )
            path = Path(result.path)
            mergekit = path / MERGEKIT_FILE
            summary = ExportSummary(
                path=str(path),
                files=result.files,
                size_bytes=sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
                seconds=result.seconds,
                card=(path / "README.md").read_text(encoding="utf-8"),
                recipe_yaml=(path / RECIPE_FILE).read_text(encoding="utf-8"),
                mergekit_yaml=mergekit.read_text(encoding="utf-8") if mergekit.is_file() else None,
                warnings=list(result.warnings),
            )
            context.history.add("export", recipe, path=str(path))
            return summary

        return context.submit(session, "export", run, label="export", supersede=False)

    def export(self, session: str, recipe: Recipe, out_dir: str, *, progress: ProgressCallback | None = None,
               **options: Any) -> ExportSummary:
        """:meth:`start` and wait for it."""
        return self.context.wait(self.start(session, recipe, out_dir, **options), progress)

    # -- the history --------------------------------------------------------------------------

    def history_table(self) -> pd.DataFrame:
        return pd.DataFrame(self.context.history.rows(), columns=HISTORY_COLUMNS)

    def history_choices(self) -> list[tuple[str, int]]:
        return self.context.history.choices()

    def history_recipe(self, entry_id: int) -> str:
        return self.context.history.recipe(entry_id)


__all__ = ["ExportFacade", "ExportSummary"]
