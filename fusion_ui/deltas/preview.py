"""What DARE does to one tensor's delta, for a drop rate and seed the user is trying out.

The preview calls the merge engine's own :func:`fusion_ui.methods.sparsify.dare` with the key a
merge uses, ``(seed, tensor_name, model_index)``, so what it shows is exactly what the merge
will do to that tensor. It reads only the tensors asked for, so it is fast enough to follow a
slider (~0.1-0.2 s for a 4M-element tensor on two busy CPU cores, most of it DARE's own draws).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fusion_ui.deltas.analysis import ModelRef, open_checkpoint
from fusion_ui.deltas.stats import (
    HIST_BINS,
    DeltaStats,
    HistogramCodec,
    bits_histogram,
    display_bounds,
)
from fusion_ui.device import resolve_device
from fusion_ui.errors import IncompatibleModelsError, ModelSourceError, RecipeError
from fusion_ui.methods.sparsify import RESCALE_MODES, Rescale, dare
from fusion_ui.rng import quantized_keep


@dataclass(frozen=True)
class DarePreview:
    """|δ| before and after DARE on a few tensors of one fine-tune."""

    model: str  # the fine-tune's reference
    tensors: tuple[str, ...]
    drop_rate: float  # as asked
    keep_probability: float  # as drawn: DARE quantises to 1/65536
    seed: int
    model_index: int
    rescale: str
    # stage ("before"/"after"), bin, lo, hi, label, count, share (of all elements) and
    # share_nonzero (of that stage's non-zero elements: the kept ones after the drop; NaN for
    # the zero bin), so the few kept deltas at p = 0.99 get a curve of their own scale
    hist: pd.DataFrame
    numel: int
    nonzero_before: int
    nonzero_after: int
    rel_error: float  # ‖δ̂ − δ‖ / ‖δ‖
    expected_rel_error: float  # √(p/(1−p)) for the inverse rescale: what to compare with
    rel_change_weights: float  # ‖δ̂ − δ‖ / ‖θi‖: how far the fine-tune's weights move
    shares_before: tuple[float, ...]  # share of the non-zero deltas with |δ| > each threshold
    shares_after: tuple[float, ...]  # share of the surviving deltas with |δ̂| > each threshold:
    #                                  what the merge adds; rescaling by 1/(1-p) inflates |δ|
    nonfinite: int = 0  # inf/NaN deltas (a damaged checkpoint): left out of every number above

    @property
    def share_kept(self) -> float:
        """Share of the non-zero deltas that survive the drop."""
        return self.nonzero_after / self.nonzero_before if self.nonzero_before else math.nan


@torch.no_grad()
def dare_preview(
    base: ModelRef,
    finetune: ModelRef,
    tensors: str | Sequence[str],
    *,
    drop_rate: float,
    seed: int = 0,
    model_index: int = 0,
    rescale: Rescale = "inverse",
    device: str | torch.device = "auto",
) -> DarePreview:
    """Drop-and-rescale the deltas of ``tensors`` as a merge would, and compare before/after.

    ``model_index`` is the fine-tune's index in the merge recipe (it is part of DARE's random
    key); ``seed`` the recipe seed. Several tensors are pooled into one histogram.
    """
    names = (tensors,) if isinstance(tensors, str) else tuple(tensors)
    if not names:
        raise RecipeError("name at least one tensor to preview")
    if not 0.0 <= drop_rate < 1.0:
        raise RecipeError(f"drop rate must be in [0, 1), got {drop_rate}")
    if rescale not in RESCALE_MODES:
        raise RecipeError(f"unknown rescale {rescale!r}; expected one of {RESCALE_MODES}")
    dev = resolve_device(device)
    codec = HistogramCodec.for_dtype(torch.bfloat16)
    before = torch.zeros(HIST_BINS, dtype=torch.int64)
    after = torch.zeros(HIST_BINS, dtype=torch.int64)
    err_sq = delta_sq = weights_sq = 0.0
    with ExitStack() as stack:
        base_ck, ft_ck = open_checkpoint(base, stack), open_checkpoint(finetune, stack)
        for name in names:
            for ck in (base_ck, ft_ck):
                if name not in ck.tensors:
                    raise ModelSourceError(f"{ck.ref} has no tensor named {name!r}")
            if base_ck.tensors[name].shape != ft_ck.tensors[name].shape:
                raise IncompatibleModelsError(
                    f"{name}: shape {ft_ck.tensors[name].shape} in {ft_ck.ref} differs from "
                    f"{base_ck.tensors[name].shape} in the base"
                )
            theta = ft_ck.tensor(name).to(dev, torch.float32)  # (*shape,)
            delta = theta - base_ck.tensor(name).to(dev, torch.float32)  # (*shape,) as a merge
            dropped = dare(delta, drop_rate, (seed, name, model_index), rescale=rescale)
            # Counted like the report: |δ| rounded to bf16 (≤0.2% relative), every bit pattern.
            # Rounded first, abs after: float32 NaN becomes a bf16 NaN with the sign bit set.
            before += bits_histogram(delta.to(torch.bfloat16).abs_().reshape(-1)).cpu()
            after += bits_histogram(dropped.to(torch.bfloat16).abs_().reshape(-1)).cpu()
            err_sq += _finite_sumsq(dropped.sub_(delta))
            delta_sq += _finite_sumsq(delta)
            weights_sq += _finite_sumsq(theta)
    _, keep = quantized_keep(drop_rate)
    sb, sa = codec.summarize(before), codec.summarize(after)
    nz_before, nz_after = sb.numel - sb.zeros - sb.nonfinite, sa.numel - sa.zeros - sa.nonfinite
    return DarePreview(
        model=str(ft_ck.ref),
        tensors=names,
        drop_rate=drop_rate,
        keep_probability=keep,
        seed=seed,
        model_index=model_index,
        rescale=rescale,
        hist=_hist_frame(codec.display_counts(before), codec.display_counts(after)),
        numel=sb.numel,
        nonzero_before=nz_before,
        nonzero_after=nz_after,
        rel_error=math.sqrt(err_sq / delta_sq) if delta_sq > 0 else 0.0,
        expected_rel_error=math.sqrt((1 - keep) / keep) if rescale == "inverse" else math.nan,
        rel_change_weights=math.sqrt(err_sq / weights_sq) if weights_sq > 0 else 0.0,
        shares_before=_nonzero_shares(sb, nz_before),
        shares_after=_nonzero_shares(sa, nz_after),
        nonfinite=sb.nonfinite,
    )


def _finite_sumsq(x: torch.Tensor) -> float:
    """Σ x² over the finite elements: an inf/NaN delta must not turn every error into NaN."""
    sumsq = float(torch.linalg.vector_norm(x)) ** 2
    if math.isfinite(sumsq):
        return sumsq
    return float(torch.linalg.vector_norm(x[torch.isfinite(x)], dtype=torch.float64)) ** 2


def _nonzero_shares(stats: DeltaStats, nonzero: int) -> tuple[float, ...]:
    """Shares above the thresholds among the non-zero elements (the report's are over all)."""
    finite = stats.numel - stats.nonfinite
    return tuple(s * finite / nonzero if nonzero else math.nan for s in stats.shares)


def _hist_frame(before: np.ndarray, after: np.ndarray) -> pd.DataFrame:
    lo, hi, labels = display_bounds()
    frames = []
    for stage, counts in (("before", before), ("after", after)):
        total = counts.sum()
        nonzero = total - counts[0]
        share_nonzero = counts / nonzero if nonzero else np.full(len(counts), np.nan)
        share_nonzero = np.where(np.arange(len(counts)) == 0, np.nan, share_nonzero)
        frames.append(
            pd.DataFrame(
                {
                    "stage": stage,
                    "bin": np.arange(len(lo)),
                    "lo": lo,
                    "hi": hi,
                    "label": labels,
                    "count": counts,
                    "share": counts / total if total else np.nan,
                    "share_nonzero": share_nonzero,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def default_preview_tensor(report_tensors: pd.DataFrame, model: str) -> str:
    """A tensor worth previewing: the 2-D tensor of ``model`` with the largest share of |δ|
    above 0.005 (ties: the largest), i.e. where DARE is most at risk."""
    t = report_tensors[(report_tensors["model"] == model) & report_tensors["shape"].str.contains("×")]
    if t.empty:
        t = report_tensors[report_tensors["model"] == model]
    if t.empty:
        raise RecipeError(f"no analysed tensor for {model!r}")
    col = f"share_above_{0.005:g}"
    return str(t.sort_values([col, "numel"], ascending=False)["tensor"].iloc[0])


__all__ = ["DarePreview", "dare_preview", "default_preview_tensor"]
