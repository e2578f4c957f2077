"""The result of a delta analysis: pandas tables, display bins, and a JSON file on disk.

Everything the UI, the figures and the HTML report show comes from these tables, so a report
loaded from the cache is indistinguishable from a fresh one. The on-disk format is gzipped JSON
(no pickle: a cache file replaced by someone else cannot run code when it is read).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_ui.deltas.stats import THRESHOLDS, share_column
from fusion_ui.deltas.verdict import VERDICTS
from fusion_ui.errors import FusionError

FORMAT_VERSION = 1
OUTSIDE_BLOCKS = -1  # the `layer` of embeddings, final norm and lm_head

# Wrappers in front of the interesting part of a tensor name, dropped for display.
_NAME_PREFIXES = ("base_model.model.", "model.", "transformer.", "gpt_neox.", "language_model.")
RISK_COLUMNS = ("verdict", "name", "shape", "median |δ|", "max |δ|", "|δ| > 0.005", "|δ| > 0.01")


def hist_columns(n: int) -> list[str]:
    """Names of the count columns of histogram tables: "0" … str(n-1), one per display bin."""
    return [str(i) for i in range(n)]


@dataclass(frozen=True)
class DeltaReport:
    """Delta statistics of N fine-tunes against one base.

    Tables (pandas DataFrames; ``model`` is a fine-tune's label, ``layer`` is the block index or
    ``OUTSIDE_BLOCKS``; shares are fractions of elements, |δ| values in weight units):

    - ``summary``: one row per fine-tune: totals, |δ| statistics, ‖δ‖/‖θ0‖, shares above the
      DARE thresholds, ``verdict`` and ``reason``.
    - ``tensors``: one row per (fine-tune, tensor): the same statistics and a verdict.
    - ``groups`` / ``layers`` / ``kinds``: the same per (layer, module kind), per layer, per kind
      (exact: computed from merged histograms, not averaged).
    - ``tensor_hist`` / ``group_hist``: counts of |δ| per display bin (columns "0"…), per tensor
      and per (layer, kind); ``bins`` gives each bin's ``lo``, ``hi`` and ``label``.
    - ``pairs`` / ``pairs_by_layer`` / ``pairs_by_tensor``: cosine similarity of task vectors
      and sign-conflict rate (share of all elements where both deltas are non-zero and of
      opposite sign) for every pair of fine-tunes; empty with one fine-tune.
    - ``conflict_all_by_layer``: share of elements where the non-zero deltas of *all* fine-tunes
      do not agree in sign (what TIES' sign election resolves); empty with one fine-tune.
    - ``skipped``: tensors not analysed, with the reason (missing, shape differs, not float).
    """

    base: str  # the base model's reference (path or hub id)
    models: tuple[str, ...]  # fine-tune labels, in the order given
    refs: tuple[str, ...]  # fine-tune references, same order
    bins: pd.DataFrame
    summary: pd.DataFrame
    tensors: pd.DataFrame
    groups: pd.DataFrame
    layers: pd.DataFrame
    kinds: pd.DataFrame
    tensor_hist: pd.DataFrame
    group_hist: pd.DataFrame
    pairs: pd.DataFrame
    pairs_by_layer: pd.DataFrame
    pairs_by_tensor: pd.DataFrame
    conflict_all_by_layer: pd.DataFrame
    skipped: pd.DataFrame
    meta: dict = field(default_factory=dict)  # JSON-able: thresholds, exactness, timing, key

    # -- queries the UI and the figures use ---------------------------------------------------

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(self.meta.get("thresholds", THRESHOLDS))

    def verdict(self, model: str) -> tuple[str, str]:
        """(verdict, reason) for one fine-tune."""
        row = self.summary.loc[self.summary["model"] == model]
        if row.empty:
            raise KeyError(f"no fine-tune labelled {model!r}; have {list(self.models)}")
        return str(row["verdict"].iloc[0]), str(row["reason"].iloc[0])

    def histogram(
        self,
        model: str | None = None,
        *,
        tensor: str | None = None,
        layer: int | None = None,
        kind: str | None = None,
    ) -> pd.DataFrame:
        """|δ| histogram in long form (model, bin, lo, hi, label, count, share).

        With ``tensor``, that tensor's; otherwise the sum over the (layer, kind) groups that
        match ``layer`` and ``kind`` (both None: the whole model). ``model`` None: every model.
        """
        cols = hist_columns(len(self.bins))
        if tensor is not None:
            table = self.tensor_hist[self.tensor_hist["tensor"] == tensor]
            if table.empty:
                raise KeyError(f"no histogram for tensor {tensor!r}")
        else:
            table = self.group_hist
            if layer is not None:
                table = table[table["layer"] == layer]
            if kind is not None:
                table = table[table["kind"] == kind]
        out = []
        for m in self.models if model is None else (model,):
            counts = table.loc[table["model"] == m, cols].to_numpy(np.int64).sum(axis=0)
            total = counts.sum()
            frame = self.bins.copy()
            frame.insert(0, "model", m)
            frame["count"] = counts
            frame["share"] = counts / total if total else np.nan
            out.append(frame)
        return pd.concat(out, ignore_index=True)

    def top_tensors(self, model: str, *, by: str | None = None, n: int = 10) -> pd.DataFrame:
        """The ``n`` tensors of one fine-tune with the largest value of ``by`` (default: share
        of |δ| above 0.005): where DARE is most at risk."""
        by = by or share_column(0.005)
        t = self.tensors[self.tensors["model"] == model]
        return t.sort_values([by, "numel"], ascending=False).head(n).reset_index(drop=True)

    def risk_table(self, model: str, n: int = 15) -> pd.DataFrame:
        """The ``n`` tensors of one fine-tune where DARE is most at risk, formatted for display.

        Ordered by verdict (broken first), then share of |δ| above 0.005, then size. Columns:
        verdict, name (short: ``layers.3.mlp.down_proj``), shape, median |δ|, max |δ| (3
        significant digits), |δ| > 0.005, |δ| > 0.01 (percent of the tensor's finite deltas),
        ``inf/NaN`` (only when some are), and last ``tensor``: the full name, for drill-down.
        Every cell is a string, so a table widget shows it as it is.
        """
        if model not in self.models:
            raise KeyError(f"no fine-tune labelled {model!r}; have {list(self.models)}")
        t = self.tensors[self.tensors["model"] == model]
        severity = t["verdict"].map({v: k for k, v in enumerate(VERDICTS)}).fillna(len(VERDICTS))
        t = (
            t.assign(_severity=severity)
            .sort_values(["_severity", share_column(0.005), "numel"], ascending=False)
            .head(n)
            .reset_index(drop=True)
        )
        out = pd.DataFrame(
            {
                "verdict": t["verdict"].astype(str),
                "name": short_tensor_names(t["tensor"].tolist()),
                "shape": t["shape"].astype(str),
                "median |δ|": t["median_abs"].map(_sig3),
                "max |δ|": t["max_abs"].map(_sig3),
                "|δ| > 0.005": t[share_column(0.005)].map(_percent),
                "|δ| > 0.01": t[share_column(0.01)].map(_percent),
            },
            columns=list(RISK_COLUMNS),
        )
        if "nonfinite" in t.columns and (t["nonfinite"] > 0).any():
            out["inf/NaN"] = t["nonfinite"].map(lambda v: f"{int(v):,}")
        out["tensor"] = t["tensor"].astype(str)
        return out

    # -- disk ----------------------------------------------------------------------------------

    def to_disk(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as gzipped JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        payload: dict[str, object] = {"format": FORMAT_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, pd.DataFrame):
                payload[f.name] = _frame_to_json(value)
            elif isinstance(value, tuple):
                payload[f.name] = list(value)
            else:
                payload[f.name] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=3) as fh:
            json.dump(payload, fh, allow_nan=True)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_disk(cls, path: str | os.PathLike[str]) -> DeltaReport:
        """Read a report written by :meth:`to_disk`."""
        try:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                payload = json.load(fh)
        except (OSError, ValueError, EOFError) as exc:
            raise FusionError(f"cannot read delta report {path}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
            raise FusionError(
                f"{path} is not a delta report of format {FORMAT_VERSION}; analyse again"
            )
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            value = payload.get(f.name)
            if f.name in ("models", "refs"):
                kwargs[f.name] = tuple(value or ())
            elif f.name in ("base",):
                kwargs[f.name] = str(value)
            elif f.name == "meta":
                kwargs[f.name] = dict(value or {})
            else:
                kwargs[f.name] = _frame_from_json(value)
        return cls(**kwargs)  # type: ignore[arg-type]


def short_tensor_names(names: list[str]) -> list[str]:
    """Display names: wrapper prefixes (``model.``, ``transformer.``…) and ``.weight`` dropped
    (``model.layers.3.mlp.down_proj.weight`` -> ``layers.3.mlp.down_proj``); a name that would
    then clash with another of ``names`` stays in full."""
    short = []
    for name in names:
        s = name.removesuffix(".weight")
        stripped = True
        while stripped:
            stripped = False
            for prefix in _NAME_PREFIXES:
                if s.startswith(prefix) and len(s) > len(prefix):
                    s, stripped = s[len(prefix) :], True
        short.append(s)
    counts = pd.Series(short).value_counts()
    return [full if counts[s] > 1 else s for s, full in zip(short, names, strict=True)]


def _sig3(v: object) -> str:
    """A |δ| value in 3 significant digits ("" for missing)."""
    if _is_missing(v):
        return ""
    return f"{float(v):.3g}"  # type: ignore[arg-type]


def _percent(v: object) -> str:
    """A share as a percentage with 3 significant digits; tiny non-zero shares as "<0.01%"."""
    if _is_missing(v):
        return ""
    x = 100 * float(v)  # type: ignore[arg-type]
    if x == 0:
        return "0%"
    if x < 0.01:
        return "<0.01%"
    return f"{x:.3g}%"


def _frame_to_json(frame: pd.DataFrame) -> dict[str, object]:
    frame = frame.reset_index(drop=True)
    columns = [str(c) for c in frame.columns]
    data = []
    for col in frame.columns:
        values = frame[col].tolist()
        data.append([None if _is_missing(v) else _plain(v) for v in values])
    return {"columns": columns, "dtypes": [str(t) for t in frame.dtypes], "data": data}


def _frame_from_json(obj: object) -> pd.DataFrame:
    if not isinstance(obj, dict):
        raise FusionError("corrupt delta report: a table is missing; analyse again")
    columns, dtypes, data = obj["columns"], obj["dtypes"], obj["data"]
    frame = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in zip(columns, data, strict=True)})
    for c, t in zip(columns, dtypes, strict=True):
        if t.startswith("float"):
            frame[c] = pd.to_numeric(frame[c]).astype(t)  # None -> NaN
        elif t in ("str", "string", "object"):
            frame[c] = frame[c].astype("str" if t == "str" else object)
        else:
            frame[c] = frame[c].astype(t)
    return frame


def _is_missing(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _plain(v: object) -> object:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return v
