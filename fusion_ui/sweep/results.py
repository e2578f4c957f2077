"""The results file: one CSV row per finished cell, appended (and flushed) as each cell ends.

Columns: ``cell`` (the cell's key), ``sweep`` (the sweep's fingerprint), one column per axis,
one per skill (the metric, 0 to 1), ``mean`` (over the skills), then the times ``merge_s``,
``eval_s`` and ``seconds`` (the cell's whole time). Floats are written as Python writes them
(``repr``), so they read back bit for bit.

A crash can leave at most a partial last line; it is dropped when the file is opened again.
Rows of another fingerprint mean the file belongs to another sweep (the recipe, the axes' parameters
or the eval items changed): it is refused rather than mixed.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fusion_ui.sweep.spec import Sweep, SweepError

TIME_COLUMNS = ("merge_s", "eval_s", "seconds")  # differ from run to run; everything else does not


def columns(sweep: Sweep) -> list[str]:
    """The results file's header."""
    axes = [a.label for a in sweep.axes]
    cols = ["cell", "sweep", *axes, *sweep.skills, "mean", *TIME_COLUMNS]
    clash = sorted({c for c in cols if cols.count(c) > 1})
    if clash:
        raise SweepError(
            f"the results would have two columns named {', '.join(clash)} (an axis and a skill); "
            "give the axis another `name:`"
        )
    return cols


class ResultsFile:
    """The CSV of one sweep: what is done already, and rows appended as cells finish."""

    def __init__(self, path: Path, sweep: Sweep) -> None:
        self.path = Path(path)
        self.sweep = sweep
        self.columns = columns(sweep)

    def done_keys(self) -> set[str]:
        """Keys of the cells already in the file (checked to be this sweep's)."""
        frame = self.read()
        return set(frame["cell"])

    def read(self) -> pd.DataFrame:
        """Every row of the file (an empty frame with the header when there is none)."""
        if not self.path.is_file():
            return pd.DataFrame(columns=self.columns)
        self._drop_partial_line()
        text = self.path.read_text(encoding="utf-8")
        if not text.strip():
            return pd.DataFrame(columns=self.columns)
        header = next(csv.reader(io.StringIO(text)))
        if header != self.columns:
            raise SweepError(
                f"{self.path} has the columns {header}, not this sweep's {self.columns}: it holds "
                "another sweep's results; move or delete it, or write elsewhere (--out)"
            )
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        for name in frame.columns[2:]:
            frame[name] = _typed(frame[name])
        other = sorted(set(frame["sweep"]) - {self.sweep.fingerprint})
        if other:
            raise SweepError(
                f"{self.path} holds results of another sweep (fingerprint {other[0]}, this one "
                f"{self.sweep.fingerprint}): the recipe, an axis' parameter, the eval items or the metric "
                "changed since; move or delete the file, or write elsewhere (--out)"
            )
        return frame

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one finished cell and flush it to disk (a crash after this keeps it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with self.path.open("a", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            if new:
                writer.writerow(self.columns)
            writer.writerow([_text(row[c]) for c in self.columns])
            f.flush()
            os.fsync(f.fileno())

    def table(self, keys: Sequence[str]) -> pd.DataFrame:
        """The rows of ``keys`` that are done, in the order of ``keys`` (grid order)."""
        frame = self.read()
        order = {k: i for i, k in enumerate(keys)}
        frame = frame[frame["cell"].isin(order)].drop_duplicates("cell", keep="last")
        frame = frame.sort_values("cell", key=lambda s: s.map(order), kind="stable")
        return frame.reset_index(drop=True)

    def _drop_partial_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])


def _typed(column: pd.Series) -> pd.Series:
    """A column of text as ints, floats (parsed by Python: exactly what ``repr`` wrote), booleans
    or text, whichever all its values are."""
    values = list(column)
    for parse in (int, float, _boolean):
        try:
            return pd.Series([parse(v) for v in values], index=column.index, name=column.name)
        except ValueError:
            continue
    return column


def _boolean(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(text)
    return text == "True"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


__all__ = ["TIME_COLUMNS", "ResultsFile", "columns"]
