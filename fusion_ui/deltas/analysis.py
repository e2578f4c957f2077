"""Stream a base and N fine-tunes tensor by tensor into a :class:`DeltaReport`.

One pass over the weights: for every tensor name, each fine-tune's δ is formed chunk by chunk
in a reused 16-bit buffer, cross-model statistics (dot products, sign conflicts) are taken while
all deltas of the chunk are at hand, then each |δ| is counted into a 2^15-bin histogram of its bit
patterns (see :mod:`fusion_ui.deltas.stats`). Tensors are visited layer by layer, so per-layer
histograms are folded into table rows as soon as a layer is done and memory stays flat. The
next tensor is read in a background thread while the current one is counted, and every
tensor is split between two worker threads ("lanes") on CPU.

Non-finite deltas (inf/NaN: a damaged checkpoint) are counted per tensor and per fine-tune and
make the verdict "broken"; every statistic (shares, quantiles, max, norms, cosine) is taken over
the finite deltas, so one NaN neither poisons the numbers nor hides in them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from fusion_ui.deltas.cache import ANALYSIS_VERSION, cache_key, cache_path
from fusion_ui.deltas.report import OUTSIDE_BLOCKS, DeltaReport, hist_columns
from fusion_ui.deltas.stats import (
    BINS_PER_DECADE,
    DISPLAY_HI_EXP,
    DISPLAY_LO_EXP,
    HIST_BINS,
    THRESHOLDS,
    DeltaStats,
    HistogramCodec,
    abs_delta_,
    bits_histogram,
    cosine,
    display_bounds,
    hist_dtype_for,
    share_column,
)
from fusion_ui.deltas.verdict import RULES_TEXT, DareVerdict, dare_verdict
from fusion_ui.device import resolve_device
from fusion_ui.errors import FusionError, IncompatibleModelsError, RecipeError
from fusion_ui.io.checkpoint import Checkpoint
from fusion_ui.io.source import short_names
from fusion_ui.progress import CancelToken, ProgressCallback, report
from fusion_ui.tensor_names import MODULE_KINDS, layer_index, module_kind

ModelRef = str | os.PathLike[str] | Checkpoint

DEFAULT_CHUNK = 1 << 22  # elements per step at most: 8 MB bf16 buffers
MIN_PIECE = 1 << 18  # tensors smaller than this are not split between lanes
# Worker threads on CPU. bincount is single-threaded, and on a busy 2-core machine a lone thread
# alternating OpenMP-parallel ops with it ran ~10x slower (measured 125 vs 1200 M elements/s)
# than two threads each taking half of every tensor.
DEFAULT_LANES = 2

EXACTNESS = (
    "Exact: every statistic (shares, mean, median, quantiles, max, norms, histograms) is "
    "computed from a histogram of every 16-bit bit pattern of |δ|, over all elements, no "
    "sampling. δ is formed in the checkpoints' 16-bit dtype, which is exact whenever the two "
    "weights are within a factor 2 of each other and otherwise rounded to nearest (≤0.2% "
    "relative, bf16); float32 checkpoints are rounded to bf16 after subtraction. ‖θ0‖ is "
    "accumulated in float32 and rounded to the storage dtype per chunk (≤0.2% relative)."
)


@torch.no_grad()
def analyze_deltas(
    base: ModelRef,
    finetunes: Sequence[ModelRef],
    *,
    labels: Sequence[str] | None = None,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    chunk_elements: int = DEFAULT_CHUNK,
    lanes: int | None = None,
) -> DeltaReport:
    """Analyse the task vectors δi = θi − θ0 of ``finetunes`` against ``base``.

    Models are folder paths, hub ids or open :class:`Checkpoint` objects (left open). With
    ``cache`` the report is read from / written to ``cache_dir`` (default
    ``~/.cache/fusion_ui/deltas``) under a key made of the checkpoints' identities, so a second
    call on unchanged files returns at once. ``progress`` is called after each tensor name;
    ``cancel`` is checked between tensors and raises :class:`CancelledError`. ``lanes``:
    worker threads that each take a share of every tensor (default 2 on CPU, 1 on CUDA).
    """
    if not finetunes:
        raise RecipeError("give at least one fine-tune to compare with the base")
    if chunk_elements < 1:
        raise RecipeError(f"chunk_elements must be positive, got {chunk_elements}")
    dev = resolve_device(device)
    with ExitStack() as stack:
        base_ck = open_checkpoint(base, stack)
        fts = [open_checkpoint(ft, stack) for ft in finetunes]
        names = _labels(fts, labels)
        settings = {
            "labels": names,
            "thresholds": list(THRESHOLDS),
            "display": [DISPLAY_LO_EXP, DISPLAY_HI_EXP, BINS_PER_DECADE],
        }
        path = None
        if cache:
            key = cache_key([ck.identity() for ck in (base_ck, *fts)], settings)
            path = cache_path(key, cache_dir)
            if path.is_file():
                try:
                    return DeltaReport.from_disk(path)
                except FusionError:
                    pass  # unreadable or stale format: analyse again and overwrite
        if lanes is None:
            lanes = 1 if dev.type == "cuda" else DEFAULT_LANES
        result = _Analysis(base_ck, fts, names, dev, chunk_elements, max(1, lanes)).run(
            progress, cancel
        )
        if path is not None:
            result.meta["cache_file"] = str(path)
            try:
                result.to_disk(path)
            except OSError:
                result.meta["cache_file"] = None  # a read-only home must not fail the analysis
        return result


def open_checkpoint(ref: ModelRef, stack: ExitStack) -> Checkpoint:
    """An open checkpoint: the one given, or one opened now and closed with ``stack``."""
    if isinstance(ref, Checkpoint):
        return ref
    return stack.enter_context(Checkpoint.open(ref))


def _labels(fts: list[Checkpoint], labels: Sequence[str] | None) -> list[str]:
    """Short unique names for the fine-tunes: given ones, else the folder / repo name."""
    if labels is not None:
        if len(labels) != len(fts) or len(set(labels)) != len(labels):
            raise RecipeError(f"give {len(fts)} distinct labels, one per fine-tune; got {labels}")
        return [str(x) for x in labels]
    return short_names([ck.ref for ck in fts])


@dataclass
class _Item:
    """One tensor name to analyse and the fine-tunes (indices) that have it with base's shape."""

    name: str
    layer: int
    kind: str
    members: tuple[int, ...]


@dataclass
class _Acc:
    """A histogram being merged over several tensors of one fine-tune."""

    counts: torch.Tensor = field(default_factory=lambda: torch.zeros(HIST_BINS, dtype=torch.int64))
    base_sumsq: float = 0.0
    tensors: int = 0
    base_nonfinite: int = 0  # inf/NaN weights of the base in these tensors

    def add(self, counts: torch.Tensor, base_sumsq: float, base_nonfinite: int = 0) -> None:
        self.counts += counts
        self.base_sumsq += base_sumsq
        self.base_nonfinite += base_nonfinite
        self.tensors += 1


@dataclass
class _TensorResult:
    counts: dict[int, torch.Tensor]  # member -> (32768,) int64 CPU
    base_sumsq: float  # over the base's finite weights
    dots: dict[tuple[int, int], float]  # (i, j), i < j -> Σ δi·δj over elements finite in both
    conflicts: dict[tuple[int, int], int]  # (i, j) -> elements with δi·δj < 0 (both finite)
    conflict_all: int  # elements where the members' non-zero deltas disagree in sign
    base_nonfinite: int = 0  # inf/NaN weights of the base
    pair_nonfinite: dict[tuple[int, int], int] = field(default_factory=dict)  # left out of dots


class _Analysis:
    def __init__(
        self,
        base: Checkpoint,
        fts: list[Checkpoint],
        labels: list[str],
        device: torch.device,
        chunk: int,
        lanes: int,
    ) -> None:
        self.base, self.fts, self.labels, self.device, self.chunk = base, fts, labels, device, chunk
        self.items, self.skipped = _plan(base, fts, labels)
        dtypes = {base.tensors[it.name].dtype for it in self.items}
        dtypes |= {ft.tensors[it.name].dtype for it in self.items for ft in fts if it.name in ft}
        self.codec = HistogramCodec.for_dtype(hist_dtype_for(dtypes))
        self._buffers: dict[tuple[int, int], torch.Tensor] = {}  # (lane, member) -> (chunk,)
        self.lanes = lanes
        self._pool: ThreadPoolExecutor | None = None
        self._cols = hist_columns(len(display_bounds()[0]))
        # accumulators
        self.model_acc = {i: _Acc() for i in range(len(fts))}
        self.kind_acc: dict[tuple[int, str], _Acc] = {}
        self.layer_acc: dict[tuple[int, int], _Acc] = {}
        self.group_acc: dict[tuple[int, int, str], _Acc] = {}
        # (i, j, layer) -> [dot, ssi, ssj, conflicts, numel, elements left out as inf/NaN]
        self.pair_acc: dict[tuple[int, int, int], list[float]] = {}
        self.conflict_all_acc: dict[int, list[int]] = {}  # layer -> [conflicts, numel]
        # rows
        self.tensor_rows: list[dict] = []
        self.tensor_hist_rows: list[dict] = []
        self.group_rows: list[dict] = []
        self.group_hist_rows: list[dict] = []
        self.layer_rows: list[dict] = []
        self.pair_tensor_rows: list[dict] = []

    # -- driving ---------------------------------------------------------------------------

    def run(self, progress: ProgressCallback | None, cancel: CancelToken | None) -> DeltaReport:
        start = time.perf_counter()
        total = len(self.items)
        current_layer: int | None = None
        if self.lanes > 1:
            self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="fusion-deltas")
        # Read-ahead: the next tensor is read (pread, GIL released) while this one is counted.
        reader = ThreadPoolExecutor(1, thread_name_prefix="fusion-deltas-read")
        try:
            pending = reader.submit(self._read, self.items[0]) if self.items else None
            for k, item in enumerate(self.items):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                tensors = pending.result()
                if k + 1 < total:
                    pending = reader.submit(self._read, self.items[k + 1])
                if item.layer != current_layer:
                    self._close_layer()
                    current_layer = item.layer
                self._add(item, self._tensor_pass(item, *tensors))
                del tensors
                report(progress, k + 1, total, item.name)
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            self._buffers.clear()
        self._close_layer()
        return self._report(time.perf_counter() - start)

    def _read(self, item: _Item) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """One tensor of the base and of each member fine-tune, flat, storage dtype."""
        base = self.base.tensor(item.name).reshape(-1)  # (n,)
        return base, {i: self.fts[i].tensor(item.name).reshape(-1) for i in item.members}

    @torch.no_grad()
    def _tensor_pass(
        self, item: _Item, base: torch.Tensor, fts: dict[int, torch.Tensor]
    ) -> _TensorResult:
        """Count |δ| of every member fine-tune for one tensor; dot products, sign conflicts."""
        pieces = _split(base.numel(), self.chunk, self.lanes)
        if self._pool is None or len(pieces) == 1:
            parts = [self._lane(0, item.members, base, fts, pieces)]
        else:
            parts = list(
                self._pool.map(
                    lambda j: self._lane(j, item.members, base, fts, pieces[j :: self.lanes]),
                    range(self.lanes),
                )
            )
        first, *rest = parts
        for part in rest:
            for i, c in part.counts.items():
                first.counts[i] += c
            for key in first.dots:
                first.dots[key] += part.dots[key]
                first.conflicts[key] += part.conflicts[key]
                first.pair_nonfinite[key] += part.pair_nonfinite[key]
            first.conflict_all += part.conflict_all
            first.base_sumsq += part.base_sumsq
            first.base_nonfinite += part.base_nonfinite
        first.counts = {i: c.cpu() for i, c in first.counts.items()}
        return first

    def _lane(
        self,
        lane: int,
        members: tuple[int, ...],
        base: torch.Tensor,
        fts: dict[int, torch.Tensor],
        pieces: list[tuple[int, int]],
    ) -> _TensorResult:
        """Process some pieces of one tensor with this lane's buffers (runs in a worker thread)."""
        dev = self.device
        counts = {i: torch.zeros(HIST_BINS, dtype=torch.int64, device=dev) for i in members}
        pairs = [(a, b) for ai, a in enumerate(members) for b in members[ai + 1 :]]
        res = _TensorResult(
            counts, 0.0, dict.fromkeys(pairs, 0.0), dict.fromkeys(pairs, 0), 0,
            pair_nonfinite=dict.fromkeys(pairs, 0),
        )
        for s, e in pieces:
            b = base[s:e].to(dev)  # (c,)
            deltas = {
                i: abs_delta_(fts[i][s:e].to(dev), b, self._buffer(lane, i, e - s)) for i in members
            }  # i -> (c,) signed δ in the histogram dtype
            sumsq, bad = _finite_sumsq(b)
            res.base_sumsq += sumsq
            res.base_nonfinite += bad
            if pairs:
                f32 = {i: d.float() for i, d in deltas.items()}  # (c,) exact copies
                for a, c in pairs:
                    prod = f32[a] * f32[c]
                    dot = float(prod.sum(dtype=torch.float64))
                    if math.isfinite(dot):  # no inf/NaN delta (nor overflow) in the chunk
                        res.dots[(a, c)] += dot
                        res.conflicts[(a, c)] += int((prod < 0).sum())
                    else:
                        dot, conflicts, left_out = _finite_dot(f32[a], f32[c])
                        res.dots[(a, c)] += dot
                        res.conflicts[(a, c)] += conflicts
                        res.pair_nonfinite[(a, c)] += left_out
                pos = torch.zeros(e - s, dtype=torch.bool, device=dev)
                neg = torch.zeros_like(pos)
                for d in f32.values():
                    pos |= d > 0
                    neg |= d < 0
                res.conflict_all += int((pos & neg).sum())
            for i, d in deltas.items():
                counts[i] += bits_histogram(d.abs_())
        return res

    def _buffer(self, lane: int, i: int, n: int) -> torch.Tensor:
        buf = self._buffers.get((lane, i))
        if buf is None:
            buf = torch.empty(self.chunk, dtype=self.codec.dtype, device=self.device)
            self._buffers[(lane, i)] = buf
        return buf[:n]

    # -- folding results into rows ---------------------------------------------------------

    def _add(self, item: _Item, res: _TensorResult) -> None:
        info = self.base.tensors[item.name]
        norm_base = math.sqrt(res.base_sumsq)
        sumsq: dict[int, float] = {}
        for i in item.members:
            counts = res.counts[i]
            stats = self.codec.summarize(counts)
            sumsq[i] = stats.sumsq
            ft_info = self.fts[i].tensors[item.name]
            row = {
                "model": self.labels[i],
                "tensor": item.name,
                "layer": item.layer,
                "kind": item.kind,
                "shape": "×".join(map(str, info.shape)) or "scalar",
                "dtype": str(ft_info.dtype).removeprefix("torch."),
                **stats.row(),
                "norm_base": norm_base,
                "rel_norm": _ratio(stats.norm, norm_base),
            }
            row["verdict"] = _verdict_of(stats, row["rel_norm"]).verdict
            self.tensor_rows.append(row)
            self.tensor_hist_rows.append(
                {"model": self.labels[i], "tensor": item.name, **self._hist_cols(counts)}
            )
            for acc in (
                self.model_acc[i],
                self.kind_acc.setdefault((i, item.kind), _Acc()),
                self.layer_acc.setdefault((i, item.layer), _Acc()),
                self.group_acc.setdefault((i, item.layer, item.kind), _Acc()),
            ):
                acc.add(counts, res.base_sumsq, res.base_nonfinite)
        for (a, c), dot in res.dots.items():
            acc = self.pair_acc.setdefault((a, c, item.layer), [0.0, 0.0, 0.0, 0, 0, 0])
            acc[0] += dot
            acc[1] += sumsq[a]
            acc[2] += sumsq[c]
            acc[3] += res.conflicts[(a, c)]
            acc[4] += info.numel
            acc[5] += res.pair_nonfinite[(a, c)]
            self.pair_tensor_rows.append(
                {
                    "model_a": self.labels[a],
                    "model_b": self.labels[c],
                    "tensor": item.name,
                    "layer": item.layer,
                    "kind": item.kind,
                    "cosine": cosine(dot, sumsq[a], sumsq[c]),
                    "sign_conflict": res.conflicts[(a, c)] / info.numel if info.numel else math.nan,
                    "nonfinite": res.pair_nonfinite[(a, c)],
                }
            )
        if len(item.members) >= 2:
            acc_all = self.conflict_all_acc.setdefault(item.layer, [0, 0])
            acc_all[0] += res.conflict_all
            acc_all[1] += info.numel

    def _hist_cols(self, counts: torch.Tensor) -> dict[str, int]:
        return dict(zip(self._cols, self.codec.display_counts(counts).tolist(), strict=True))

    def _close_layer(self) -> None:
        """Turn the finished layer's histograms into rows and free them."""
        for (i, layer, kind), acc in sorted(self.group_acc.items()):
            row = self._stats_row(acc, model=self.labels[i], layer=layer, kind=kind)
            self.group_rows.append(row)
            self.group_hist_rows.append(
                {"model": self.labels[i], "layer": layer, "kind": kind, **self._hist_cols(acc.counts)}
            )
        for (i, layer), acc in sorted(self.layer_acc.items()):
            self.layer_rows.append(self._stats_row(acc, model=self.labels[i], layer=layer))
        self.group_acc.clear()
        self.layer_acc.clear()

    def _stats_row(self, acc: _Acc, **keys: object) -> dict:
        stats = self.codec.summarize(acc.counts)
        norm_base = math.sqrt(acc.base_sumsq)
        row = {**keys, "tensors": acc.tensors, **stats.row(), "norm_base": norm_base}
        row["rel_norm"] = _ratio(stats.norm, norm_base)
        row["verdict"] = _verdict_of(stats, row["rel_norm"]).verdict
        return row

    # -- the report ------------------------------------------------------------------------

    def _report(self, seconds: float) -> DeltaReport:
        lo, hi, labels = display_bounds()
        bins = pd.DataFrame({"bin": np.arange(len(lo)), "lo": lo, "hi": hi, "label": labels})
        kinds_rows = [
            self._stats_row(acc, model=self.labels[i], kind=kind)
            for (i, kind), acc in sorted(
                self.kind_acc.items(), key=lambda kv: (kv[0][0], MODULE_KINDS.index(kv[0][1]))
            )
        ]
        kinds = pd.DataFrame(kinds_rows)
        summary = pd.DataFrame([self._summary_row(i, kinds) for i in range(len(self.fts))])
        pairs, pairs_by_layer = self._pair_tables()
        conflict_all = pd.DataFrame(
            [
                {"layer": layer, "sign_conflict_all": c / n if n else math.nan, "numel": n}
                for layer, (c, n) in sorted(self.conflict_all_acc.items())
            ],
            columns=["layer", "sign_conflict_all", "numel"],
        )
        total_c = sum(c for c, _ in self.conflict_all_acc.values())
        total_n = sum(n for _, n in self.conflict_all_acc.values())
        meta = {
            "analysis_version": ANALYSIS_VERSION,
            "thresholds": list(THRESHOLDS),
            "hist_dtype": str(self.codec.dtype).removeprefix("torch."),
            "exactness": EXACTNESS,
            "verdict_rules": RULES_TEXT,
            "sign_conflict_definition": (
                "share of all elements of the compared tensors where both deltas are non-zero "
                "and of opposite sign"
            ),
            "sign_conflict_all": total_c / total_n if total_n else None,
            "seconds": seconds,
            "device": str(self.device),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "base_config": {
                k: self.base.config.get(k)
                for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
                if k in self.base.config
            },
        }
        return DeltaReport(
            base=str(self.base.ref),
            models=tuple(self.labels),
            refs=tuple(str(ft.ref) for ft in self.fts),
            bins=bins,
            summary=summary,
            tensors=_frame(self.tensor_rows, ["model", "tensor", "layer", "kind"]),
            groups=_frame(self.group_rows, ["model", "layer", "kind"]),
            layers=_frame(self.layer_rows, ["model", "layer"]),
            kinds=kinds,
            tensor_hist=_frame(self.tensor_hist_rows, ["model", "tensor", *self._cols]),
            group_hist=_frame(self.group_hist_rows, ["model", "layer", "kind", *self._cols]),
            pairs=pairs,
            pairs_by_layer=pairs_by_layer,
            pairs_by_tensor=_frame(
                self.pair_tensor_rows,
                ["model_a", "model_b", "tensor", "layer", "kind", "cosine", "sign_conflict",
                 "nonfinite"],
            ),
            conflict_all_by_layer=conflict_all,
            skipped=_frame(self.skipped, ["model", "tensor", "reason"]),
            meta=meta,
        )

    def _summary_row(self, i: int, kinds: pd.DataFrame) -> dict:
        acc = self.model_acc[i]
        stats = self.codec.summarize(acc.counts)
        norm_base = math.sqrt(acc.base_sumsq)
        rel = _ratio(stats.norm, norm_base)
        v = _verdict_of(stats, rel, where=self._nonfinite_where(i))
        reason = v.reason
        if v.verdict == "broken" and acc.base_nonfinite:
            reason += f"; the base itself has {acc.base_nonfinite:,} inf/NaN weight(s)"
        elif v.verdict != "safe" and rel < 0.5:
            reason += _where(kinds[kinds["model"] == self.labels[i]])
        skipped = sum(1 for r in self.skipped if r["model"] == self.labels[i])
        if skipped:
            reason += f". {skipped} tensor(s) not compared (see skipped)"
        return {
            "model": self.labels[i],
            "ref": str(self.fts[i].ref),
            "tensors": acc.tensors,
            **stats.row(),
            "zeros_share": stats.zeros / stats.numel if stats.numel else math.nan,
            "norm_base": norm_base,
            "rel_norm": rel,
            "verdict": v.verdict,
            "reason": reason,
        }

    def _nonfinite_where(self, i: int) -> str:
        """" in N tensor(s), first NAME" for fine-tune ``i``'s inf/NaN deltas (analysis order)."""
        bad = [r["tensor"] for r in self.tensor_rows if r["model"] == self.labels[i] and r["nonfinite"]]
        return f" in {len(bad)} tensor(s), first {bad[0]}" if bad else ""

    def _pair_tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        by_layer, whole = [], {}
        for (a, c, layer), (dot, ssa, ssc, conf, n, bad) in sorted(self.pair_acc.items()):
            by_layer.append(
                {
                    "model_a": self.labels[a],
                    "model_b": self.labels[c],
                    "layer": layer,
                    "cosine": cosine(dot, ssa, ssc),
                    "sign_conflict": conf / n if n else math.nan,
                    "numel": int(n),
                    "nonfinite": int(bad),
                }
            )
            w = whole.setdefault((a, c), [0.0, 0.0, 0.0, 0, 0, 0])
            for k, v in enumerate((dot, ssa, ssc, conf, n, bad)):
                w[k] += v
        # nonfinite: elements left out of the cosine because either delta is inf/NaN
        cols = ["model_a", "model_b", "cosine", "sign_conflict", "numel", "nonfinite"]
        pairs = [
            {
                "model_a": self.labels[a],
                "model_b": self.labels[c],
                "cosine": cosine(dot, ssa, ssc),
                "sign_conflict": conf / n if n else math.nan,
                "numel": int(n),
                "nonfinite": int(bad),
            }
            for (a, c), (dot, ssa, ssc, conf, n, bad) in sorted(whole.items())
        ]
        return _frame(pairs, cols), _frame(by_layer, cols[:2] + ["layer"] + cols[2:])


def _plan(
    base: Checkpoint, fts: list[Checkpoint], labels: list[str]
) -> tuple[list[_Item], list[dict]]:
    """Which tensors to compare for which fine-tune, layer by layer; and what is skipped why."""
    items, skipped = [], []
    for name, info in base.tensors.items():
        if not info.dtype.is_floating_point:
            skipped += [{"model": lab, "tensor": name, "reason": "not a floating-point tensor"}
                        for lab in labels]
            continue
        members = []
        for i, ft in enumerate(fts):
            other = ft.tensors.get(name)
            if other is None:
                skipped.append({"model": labels[i], "tensor": name, "reason": "missing in the fine-tune"})
            elif other.shape != info.shape:
                skipped.append(
                    {
                        "model": labels[i],
                        "tensor": name,
                        "reason": f"shape {list(other.shape)} differs from the base's {list(info.shape)}",
                    }
                )
            elif not other.dtype.is_floating_point:
                skipped.append({"model": labels[i], "tensor": name, "reason": "not a floating-point tensor"})
            else:
                members.append(i)
        if members:
            layer = layer_index(name)
            items.append(
                _Item(name, OUTSIDE_BLOCKS if layer is None else layer, module_kind(name), tuple(members))
            )
    for i, ft in enumerate(fts):
        extra = [n for n in ft.tensors if n not in base.tensors]
        skipped += [{"model": labels[i], "tensor": n, "reason": "not in the base"} for n in extra]
        if not any(i in it.members for it in items):
            raise IncompatibleModelsError(
                f"{ft.ref} has no tensor with the same name and shape as in the base {base.ref}; "
                "is it a fine-tune of that base? Check the architecture and the base you picked"
            )
    order = {name: k for k, name in enumerate(base.tensors)}
    items.sort(key=lambda it: (it.layer, order[it.name]))
    return items, skipped


def _split(n: int, chunk: int, lanes: int) -> list[tuple[int, int]]:
    """Cut [0, n) into equal pieces of at most ``chunk`` elements, at least one per lane
    (unless the tensor is small), so every lane gets work even for single-chunk tensors."""
    if n == 0:
        return [(0, 0)]
    pieces = max(math.ceil(n / chunk), min(lanes, max(1, n // MIN_PIECE)))
    step = math.ceil(n / pieces)
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _sumsq(x: torch.Tensor) -> float:
    """Σ x² accumulated in float32; the 16-bit fast path rounds the norm to bf16/fp16."""
    if x.dtype in (torch.bfloat16, torch.float16):
        norm = float(torch.linalg.vector_norm(x))
        if math.isfinite(norm):
            return norm * norm
    return float(torch.linalg.vector_norm(x, dtype=torch.float32)) ** 2


def _finite_sumsq(x: torch.Tensor) -> tuple[float, int]:
    """(Σ x² over the finite elements, number of inf/NaN elements); one pass when all finite."""
    sumsq = _sumsq(x)
    if math.isfinite(sumsq):
        return sumsq, 0
    ok = torch.isfinite(x)
    return float(torch.linalg.vector_norm(x[ok], dtype=torch.float64)) ** 2, int((~ok).sum())


def _finite_dot(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int, int]:
    """(Σ a·b, elements with a·b < 0, elements left out) over the elements where a and b are
    both finite, in float64: the slow path once a chunk's float32 dot product is not finite."""
    ok = torch.isfinite(a) & torch.isfinite(b)  # (c,)
    prod = a[ok].double() * b[ok].double()
    return float(prod.sum()), int((prod < 0).sum()), int((~ok).sum())


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


def _verdict_of(stats: DeltaStats, rel_norm: float, *, where: str = "") -> DareVerdict:
    shares = dict(zip(THRESHOLDS, stats.shares, strict=True))
    return dare_verdict(
        shares[0.005],
        shares[0.01],
        rel_norm,
        zeros_share=stats.zeros / stats.numel if stats.numel else 1.0,
        nonfinite=stats.nonfinite,
        where=where,
    )


def _where(kinds: pd.DataFrame) -> str:
    """Name the module kinds holding most of the |δ| above 0.005."""
    col = share_column(0.005)
    above = kinds[col].fillna(0) * (kinds["numel"] - kinds["nonfinite"])
    total = float(above.sum())
    if total <= 0:
        return ""
    parts = (above / total).sort_values(ascending=False)
    named = [f"{kinds.loc[k, 'kind']} {v:.0%}" for k, v in parts.items() if v >= 0.15][:3]
    return f" (of the |δ| above 0.005: {', '.join(named)})" if named else ""


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    if rows:
        return pd.DataFrame(rows)
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
