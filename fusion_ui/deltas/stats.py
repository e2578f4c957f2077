"""Exact statistics of |δ| from one histogram over 16-bit float bit patterns.

A bf16 (or fp16) number has only 2^15 non-negative bit patterns, so counting how often each
pattern occurs in |δ| (one ``torch.bincount`` over the bits viewed as ``int16``) *is* the
exact distribution of |δ|: mean, norm, median, any quantile, the share above any threshold and
a histogram on any bins all follow from the 32768 counts without another pass over the data.
That is what makes the full analysis of a 0.9B-parameter pair take about a second on two CPU
cores, where sorting or ``histc`` per bin would take minutes.

Exactness: for two bf16 (fp16) checkpoints δ = θi − θ0 is computed in that dtype, which is exact
whenever θi and θ0 lie within a factor 2 of each other (Sterbenz), i.e. for nearly every element
of a fine-tune; otherwise it is rounded to nearest (relative error ≤ 2^-9 in bf16, 2^-12 in fp16).
Float32 (or mixed-dtype) checkpoints have δ computed in float32 and rounded to bf16 before
counting, so their statistics are those of δ to within 0.2% relative, on each element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

HIST_BINS = 1 << 15  # non-negative bit patterns of a 16-bit float

# The DARE paper's landmarks (Yu et al. 2023; docs/methods.md): DARE keeps a fine-tune's
# ability while |δ| stays mostly below ~0.005 (later measured: ~0.002) and fails around 0.01+.
THRESHOLDS: tuple[float, ...] = (0.002, 0.005, 0.01)

# Display bins: exact zeros, (0, 1e-8), ten log-spaced bins per decade over [1e-8, 1), [1, inf).
DISPLAY_LO_EXP = -8  # 1e-8
DISPLAY_HI_EXP = 0  # 1
BINS_PER_DECADE = 10  # edges fall within 0.3% of 0.002 and 0.005, and exactly on 0.01


def share_column(threshold: float) -> str:
    """Column name of the share of elements with |δ| > threshold."""
    return f"share_above_{threshold:g}"


def hist_dtype_for(dtypes: set[torch.dtype]) -> torch.dtype:
    """The 16-bit dtype whose bit patterns index the histogram: fp16 only for all-fp16 models."""
    floats = {d for d in dtypes if d.is_floating_point}
    return torch.float16 if floats == {torch.float16} else torch.bfloat16


def pattern_values(dtype: torch.dtype) -> torch.Tensor:
    """Value of every non-negative bit pattern of ``dtype`` (float64, NaN for inf/NaN patterns)."""
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"histograms index bf16 or fp16 bit patterns, not {dtype}")
    values = torch.arange(HIST_BINS, dtype=torch.int16).view(dtype).double()  # (32768,)
    values[~torch.isfinite(values)] = math.nan
    return values


def display_edges() -> np.ndarray:
    """Edges of the log-spaced display bins, 1e-8 … 1 (81 values).

    Each edge is parsed from its decimal form ``<10^(j/10)>e<decade>``, so the decade edges are
    exactly 1e-8, 1e-7, … 1 and the others the correctly rounded product: ``10.0 **
    np.linspace(...)`` gave 9.999999999999999e-06 for 1e-5 with some numpy builds, which moved
    the bin every ``|δ| >= 1e-5`` test and figure range depends on.
    """
    edges = []
    for decade in range(DISPLAY_LO_EXP, DISPLAY_HI_EXP):
        for j in range(BINS_PER_DECADE):
            edges.append(float(f"{10.0 ** (j / BINS_PER_DECADE)!r}e{decade}"))
    edges.append(float(f"1e{DISPLAY_HI_EXP}"))
    return np.array(edges)


def display_bounds() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Lower bounds, upper bounds and labels of every display bin, zero bin first."""
    edges = display_edges()
    lo = np.concatenate([[0.0, 0.0], edges[:-1], [edges[-1]]])
    hi = np.concatenate([[0.0, edges[0]], edges[1:], [math.inf]])
    labels = ["0", f"<{edges[0]:.0e}"]
    labels += [f"{a:.3g}–{b:.3g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    labels.append(f"≥{edges[-1]:g}")
    return lo, hi, labels


def num_display_bins() -> int:
    return len(display_edges()) + 2


def display_index(values: torch.Tensor) -> torch.Tensor:
    """Display bin of each |δ| value (int64, same shape); NaN goes to the last bin (callers mask)."""
    edges = torch.as_tensor(display_edges(), dtype=values.dtype, device=values.device)
    idx = torch.bucketize(values, edges, right=True) + 1  # 1: (0, 1e-8), 2..: log bins
    idx[values == 0] = 0
    return idx.clamp_(max=num_display_bins() - 1)


@dataclass(frozen=True)
class HistogramCodec:
    """Precomputed tables for one histogram dtype (numpy, 32768 entries); build once."""

    dtype: torch.dtype
    values: np.ndarray  # float64, value of each pattern; finite ones ascending, 0 for inf/NaN
    finite: np.ndarray  # bool, pattern is a finite number
    to_display: np.ndarray  # int64, display bin of each pattern (0 for inf/NaN, masked anyway)
    above: np.ndarray  # int64, first pattern index with value > each of THRESHOLDS
    squares: np.ndarray  # float64, values ** 2

    @classmethod
    def for_dtype(cls, dtype: torch.dtype) -> HistogramCodec:
        values = pattern_values(dtype)
        finite = ~torch.isnan(values)
        values = values.nan_to_num(0.0)
        above = np.searchsorted(values[finite].numpy(), THRESHOLDS, side="right")
        return cls(
            dtype,
            values.numpy(),
            finite.numpy(),
            display_index(values).numpy(),
            np.asarray(above, dtype=np.int64),
            values.numpy() ** 2,
        )

    def finite_counts(self, counts: torch.Tensor) -> np.ndarray:
        """Pattern counts as int64 numpy with inf/NaN patterns zeroed."""
        c = counts.to("cpu", torch.int64).numpy()
        return np.where(self.finite, c, 0)

    def display_counts(self, counts: torch.Tensor) -> np.ndarray:
        """Re-bin pattern counts onto the display bins (int64, inf/NaN patterns dropped)."""
        summed = np.bincount(
            self.to_display, weights=self.finite_counts(counts), minlength=num_display_bins()
        )
        return np.rint(summed).astype(np.int64)  # exact: counts < 2^53

    def summarize(self, counts: torch.Tensor) -> DeltaStats:
        return summarize_counts(counts, self)


@torch.no_grad()
def abs_delta_(finetune: torch.Tensor, base: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write δ = finetune − base into ``out`` (histogram dtype) and return it, signed.

    Same-dtype 16-bit inputs are subtracted natively (exact in almost all cases, see module
    docstring); anything else goes through float32 and is rounded into ``out``.
    """
    # finetune, base: (n,) any float dtype; out: (n,) bf16 or fp16
    if finetune.dtype == base.dtype == out.dtype:
        return torch.sub(finetune, base, out=out)
    return out.copy_(finetune.float() - base.float())


def bits_histogram(abs_delta: torch.Tensor) -> torch.Tensor:
    """Count each bit pattern of a non-negative 16-bit float tensor: (32768,) int64."""
    # abs_delta: (n,) bf16/fp16 with the sign bit clear, so the int16 view is non-negative
    return torch.bincount(abs_delta.view(torch.int16), minlength=HIST_BINS)


@dataclass(frozen=True)
class DeltaStats:
    """Statistics of |δ| over one tensor or a group of tensors.

    Every value is over the finite deltas; ``nonfinite`` counts the others, which make the
    verdict "broken" (so a NaN can neither poison these numbers nor go unnoticed).
    """

    numel: int  # all elements, non-finite included
    zeros: int  # elements with δ exactly 0
    nonfinite: int  # δ that is inf or NaN (a broken checkpoint)
    mean_abs: float
    median_abs: float  # lower median
    p99_abs: float  # 99% of |δ| are at or below this
    max_abs: float
    sumsq: float  # ‖δ‖² over finite elements
    shares: tuple[float, ...]  # share of finite elements with |δ| > each of THRESHOLDS

    @property
    def norm(self) -> float:
        return math.sqrt(self.sumsq)

    def row(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {
            "numel": self.numel,
            "zeros": self.zeros,
            "nonfinite": self.nonfinite,
            "mean_abs": self.mean_abs,
            "median_abs": self.median_abs,
            "p99_abs": self.p99_abs,
            "max_abs": self.max_abs,
            "norm_delta": self.norm,
        }
        for t, s in zip(THRESHOLDS, self.shares, strict=True):
            out[share_column(t)] = s
        return out


def quantile_from_counts(cum: np.ndarray, values: np.ndarray, q: float) -> float:
    """The q-quantile (lower, no interpolation) from cumulative pattern counts."""
    n = int(cum[-1])
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(q * n))  # 1-based rank of the element returned
    return float(values[int(np.searchsorted(cum, rank))])


def summarize_counts(counts: torch.Tensor, codec: HistogramCodec) -> DeltaStats:
    """All of :class:`DeltaStats` from pattern counts, exactly (float64 sums)."""
    total = int(counts.sum())
    c = codec.finite_counts(counts)  # (32768,) int64
    cum = np.cumsum(c)
    n = int(cum[-1])
    v = codec.values
    w = c.astype(np.float64)
    below = np.where(codec.above > 0, cum[np.maximum(codec.above - 1, 0)], 0)
    return DeltaStats(
        numel=total,
        zeros=int(c[0]),
        nonfinite=total - n,
        mean_abs=float((w * v).sum()) / n if n else math.nan,  # no BLAS: it fights torch's threads
        median_abs=quantile_from_counts(cum, v, 0.5),
        p99_abs=quantile_from_counts(cum, v, 0.99),
        max_abs=float(v[int(np.searchsorted(cum, n))]) if n else math.nan,
        sumsq=float((w * codec.squares).sum()),
        shares=tuple(float(n - b) / n if n else math.nan for b in below),
    )


def cosine(dot: float, sumsq_a: float, sumsq_b: float) -> float:
    """cos(δa, δb) from the dot product and squared norms; NaN when either delta is zero."""
    denom = math.sqrt(sumsq_a * sumsq_b)
    return dot / denom if denom > 0 else math.nan
