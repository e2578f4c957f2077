"""Eval sets: rows of (prompt, answer, skill) read from JSONL or CSV."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusion_ui.errors import FusionError
from fusion_ui.resources import demo_evals_dir

REQUIRED_COLUMNS = ("prompt", "answer")
# Where the shipped demo family keeps its eval sets (package data, see fusion_ui.resources).
DEMO_EVALS_DIR = demo_evals_dir()


class EvalSetError(FusionError):
    """An eval set file is missing, unreadable or lacks the required columns."""


@dataclass(frozen=True)
class EvalItem:
    """One scored question."""

    prompt: str  # text the model continues
    answer: str  # expected continuation (compared after stripping whitespace)
    skill: str  # group label the results are reported by


def load_eval_set(path: str | Path, *, skill: str | None = None) -> list[EvalItem]:
    """Read a ``.jsonl`` or ``.csv`` file; a missing ``skill`` column defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise EvalSetError(f"eval set {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            frame = pd.DataFrame(rows)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            raise EvalSetError(f"{path}: eval sets must be .jsonl or .csv, not {suffix or 'no suffix'}")
    except (json.JSONDecodeError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise EvalSetError(f"{path} cannot be parsed: {exc}") from exc
    return items_from_frame(frame, default_skill=skill or path.stem, source=str(path))


def items_from_frame(frame: pd.DataFrame, *, default_skill: str, source: str = "table") -> list[EvalItem]:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise EvalSetError(
            f"{source} lacks column(s) {missing}; an eval set needs 'prompt' and 'answer' (and optionally 'skill')"
        )
    if frame.empty:
        raise EvalSetError(f"{source} has no rows")
    skills = frame["skill"] if "skill" in frame.columns else [default_skill] * len(frame)
    return [
        EvalItem(str(p), str(a), str(s) if str(s) else default_skill)
        for p, a, s in zip(frame["prompt"], frame["answer"], skills, strict=True)
    ]


def load_eval_sets(paths: Iterable[str | Path]) -> list[EvalItem]:
    """Files, or folders of ``*.jsonl``/``*.csv`` files, concatenated in sorted order."""
    items: list[EvalItem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted([*path.glob("*.jsonl"), *path.glob("*.csv")])
            if not files:
                raise EvalSetError(f"{path} holds no .jsonl or .csv eval sets")
            for file in files:
                items.extend(load_eval_set(file))
        else:
            items.extend(load_eval_set(path))
    return items


def demo_eval_set(skills: Sequence[str] | None = None, *, folder: Path = DEMO_EVALS_DIR) -> list[EvalItem]:
    """The demo family's shipped eval sets (all of them, or the named skills)."""
    if not folder.is_dir():
        raise EvalSetError(f"demo eval sets not found at {folder}; rebuild them with `fusion-ui demo build`")
    if skills is None:
        return load_eval_sets([folder])
    return [item for skill in skills for item in load_eval_set(folder / f"{skill}.jsonl")]


def limit_per_skill(items: Sequence[EvalItem], n: int | None) -> list[EvalItem]:
    """The first ``n`` items of each skill, order kept (``None`` keeps all): quick looks."""
    if n is None:
        return list(items)
    counts: dict[str, int] = {}
    kept: list[EvalItem] = []
    for item in items:
        counts[item.skill] = counts.get(item.skill, 0) + 1
        if counts[item.skill] <= n:
            kept.append(item)
    return kept
