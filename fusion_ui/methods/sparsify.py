"""Sparsifying a task vector: DARE, magnitude pruning, breadcrumbs, DELLA.

Small pure functions on float32 tensors; they are also the reference that the fused kernels
(:mod:`fusion_ui.kernels`) must match bit for bit.

Random steps draw from :mod:`fusion_ui.rng`: each takes a ``key`` (normally
``(seed, tensor_name, model_index)``), and an element's draw depends on (key, element) alone, so
the CPU kernels, the torch reference and a GPU give the same mask.

Keep probabilities are quantised to 1/65536. The inverse rescale uses the keep probability
actually drawn with, so the expectation of a rescaled delta equals the delta exactly; for drop
rates that are multiples of 1/65536 (0.5, 0.75...) this is the paper's 1/(1-p), and for p = 0.9
it is 65536/6554 instead of 10 (a 6e-5 relative difference).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from fusion_ui.rng import LEVELS, keep_levels, quantized_keep, random16, stream_key

Rescale = Literal["inverse", "l1", "none"]
RESCALE_MODES: tuple[str, ...] = ("inverse", "l1", "none")

# Re-exported: the DARE preview and older callers import the draws from here.
__all__ = [
    "L1_BUCKETS", "RESCALE_MODES", "Rescale", "abs_sum_buckets", "breadcrumbs", "breadcrumbs_band", "dare", "dare_keep_mask",
    "della", "della_keep_probabilities", "exact_l1", "keep_count", "l1_scale", "lowest_mask", "magnitude_prune",
    "quantized_keep", "random16", "rank_band_mask", "rescale_masked", "stream_key",
]


def dare_keep_mask(
    shape: torch.Size | tuple[int, ...], drop_rate: float, key: tuple, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Bernoulli keep mask: each element kept with probability 1 - drop_rate (bool, ``shape``)."""
    numel = 1
    for d in shape:
        numel *= d
    threshold, _ = quantized_keep(drop_rate)
    return (random16(numel, key, device) >= threshold).view(shape)


# Exact L1 norms: |x| of a finite float32 is M · 2^e units of 2^-149 (the smallest subnormal),
# M < 2^24 and 0 <= e <= 253; summing M per e in int64 is exact (and order-free) for tensors of
# up to 2^39 elements, so the fused kernels and this reference get the same norm to the bit.
L1_BUCKETS = 254
_L1_CHUNK = 1 << 24  # elements per pass of the reference (bounds its int64 temporaries)
_L1_FLOOR = 1e-12  # norms at or below this leave the delta as it is (as mergekit's epsilon does)


def abs_sum_buckets(x: torch.Tensor) -> torch.Tensor:
    """Σ of |x|'s significands per binary exponent (int64, :data:`L1_BUCKETS`), exact: the L1
    norm is Σ_e buckets[e] · 2^(e - 149). Non-finite elements are left out (merges refuse them)."""
    flat = x.detach().reshape(-1)
    sums = torch.zeros(L1_BUCKETS, dtype=torch.int64, device=flat.device)
    for start in range(0, flat.numel(), _L1_CHUNK):
        bits = flat[start : start + _L1_CHUNK].float().contiguous().view(torch.int32) & 0x7FFFFFFF
        exponent = bits >> 23
        significand = bits & 0x7FFFFF
        significand = torch.where(exponent > 0, significand | 0x800000, significand)
        finite = exponent < 255
        shift = (exponent - 1).clamp_(min=0)[finite]
        sums.scatter_add_(0, shift.long(), significand[finite].long())
    return sums


def exact_l1(buckets: torch.Tensor | Sequence[int]) -> int:
    """The L1 norm of :func:`abs_sum_buckets` as an integer count of 2^-149."""
    values = buckets.tolist() if isinstance(buckets, torch.Tensor) else list(buckets)
    return sum(int(v) << e for e, v in enumerate(values))


def l1_scale(before: int, after: int) -> float | None:
    """The factor that gives a pruned delta (L1 norm ``after``) the norm of the unpruned one
    (``before``), both in units of 2^-149: their ratio rounded to float32, or None when either
    norm is at or below 1e-12 (the delta is left as it is)."""
    floor = _L1_FLOOR * 2.0**149
    if before <= floor or after <= floor:
        return None
    return float(np.float32(before / after))  # int / int is correctly rounded to float64


def rescale_masked(original: torch.Tensor, masked: torch.Tensor, mode: Rescale, keep: float) -> torch.Tensor:
    """Rescale a pruned delta: by 1/keep (the DARE paper), to the original L1 norm (mergekit), or not.

    The L1 norms are exact (:func:`abs_sum_buckets`), so the factor does not depend on the
    order of a sum, and the fused kernels reproduce it bit for bit."""
    if mode == "inverse":
        return masked.mul_(1.0 / keep) if keep != 1.0 else masked
    if mode == "l1":
        scale = l1_scale(exact_l1(abs_sum_buckets(original)), exact_l1(abs_sum_buckets(masked)))
        if scale is not None:
            masked.mul_(scale)
        return masked
    if mode == "none":
        return masked
    raise ValueError(f"unknown rescale mode {mode!r}; expected one of {RESCALE_MODES}")


def dare(delta: torch.Tensor, drop_rate: float, key: tuple, *, rescale: Rescale = "inverse") -> torch.Tensor:
    """DARE (Yu et al. 2023): drop each element with probability p, rescale survivors by 1/(1-p).

    ``delta`` is float32; returns a new tensor. ``rescale="none"`` is the paper's ablation,
    ``"l1"`` mergekit's variant (match the L1 norm of the unpruned delta).
    """
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    threshold, keep = quantized_keep(drop_rate)
    if threshold == 0:
        return delta.clone()
    mask = dare_keep_mask(delta.shape, drop_rate, key, delta.device)
    return rescale_masked(delta, delta * mask, rescale, keep)


def lowest_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ``k`` smallest elements of a 1-D tensor; ties go to the lower flat index."""
    n = values.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=values.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=values.device)
    if values.device.type == "cpu":
        kth = torch.kthvalue(values, k).values
    else:  # a GPU's kthvalue selects in one thread block; a full sort there takes milliseconds
        kth = torch.sort(values).values[k - 1]
    mask = values < kth
    need = k - int(mask.sum())
    ties = torch.nonzero(values == kth).squeeze(1)
    mask[ties[:need]] = True
    return mask


def rank_band_mask(magnitude: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Keep elements whose ascending rank (ties by flat index) lies in [lo, hi); same shape."""
    flat = magnitude.reshape(-1)
    keep = lowest_mask(flat, hi)
    if lo > 0:
        keep &= ~lowest_mask(flat, lo)
    return keep.view(magnitude.shape)


Rounding = Literal["round", "floor"]


def keep_count(numel: int, density: float, rounding: Rounding = "round") -> int:
    """How many elements a density keeps: ``density·n`` rounded (fusion_ui) or floored (mergekit
    and PEFT), and never zero for a non-empty tensor."""
    if not numel:
        return 0
    count = round(density * numel) if rounding == "round" else int(density * numel)
    return min(numel, max(1, count))


def magnitude_prune(
    delta: torch.Tensor, density: float, *, rescale: Rescale = "none", rounding: Rounding = "round"
) -> torch.Tensor:
    """Keep the ``density`` fraction of largest-|δ| elements (TIES' trim; DARE paper's ablation).

    ``"inverse"`` rescale divides by ``density``, as DARE does for its random drop.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    n = delta.numel()
    k = keep_count(n, density, rounding)
    if k == n:
        return delta.clone()
    keep = rank_band_mask(delta.abs(), n - k, n)
    return rescale_masked(delta, delta * keep, rescale, k / n)


def breadcrumbs(
    delta: torch.Tensor, density: float, gamma: float, *, rescale: Rescale = "none",
    rounding: Rounding = "round",
) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest ``gamma`` and the smallest ``1 - density - gamma`` of |δ|.

    When ``density + gamma > 1`` fewer large outliers are dropped so that ``density`` is met.
    ``rounding="floor"`` counts as mergekit does: ⌊density·n⌋ kept (possibly none), ⌊γ·n⌋ outliers.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    n = delta.numel()
    if density == 1.0:
        return delta.clone()  # mergekit returns the delta as it is, whatever γ
    lo, hi = breadcrumbs_band(n, density, gamma, rounding)
    keep = rank_band_mask(delta.abs(), lo, hi)
    return rescale_masked(delta, delta * keep, rescale, (hi - lo) / n if n else 1.0)


def breadcrumbs_band(numel: int, density: float, gamma: float, rounding: Rounding = "round") -> tuple[int, int]:
    """The ascending |δ| ranks [lo, hi) that breadcrumbs keeps of ``numel`` elements (density < 1);
    the fused kernels take the same band."""
    n = numel
    if rounding == "floor":
        n_keep = min(n, int(density * n))
        n_top = min(int(gamma * n), n - n_keep)
    else:
        n_keep = keep_count(n, density)
        n_top = min(round(gamma * n), n - n_keep)
    n_bottom = n - n_keep - n_top
    return n_bottom, n - n_top


def della_keep_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's MagPrune: keep probability rising linearly with |δ| rank inside each row.

    Rows are the last dimension (a 1-D tensor is one row); the smallest element of a row gets
    ``density - epsilon``, the largest ``density + epsilon``. Returns float32, ``delta``'s shape.
    """
    rows = delta.reshape(-1, delta.shape[-1]) if delta.dim() >= 1 else delta.reshape(1, 1)  # (R, C)
    cols = rows.shape[1]
    ranks = rows.abs().argsort(dim=1, stable=True).argsort(dim=1).to(torch.float32)  # (R, C)
    position = ranks / (cols - 1) if cols > 1 else torch.full_like(ranks, 0.5)
    return ((density - epsilon) + 2.0 * epsilon * position).view(delta.shape)


def della(
    delta: torch.Tensor, density: float, epsilon: float, key: tuple, *, rescale: Rescale = "inverse"
) -> torch.Tensor:
    """DELLA (Deep et al. 2024): magnitude-ranked random drop, survivors rescaled by 1/p_keep each."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if density == 1.0:
        return delta.clone()  # nothing dropped, whatever epsilon (as mergekit)
    if not (0.0 <= epsilon and density - epsilon > 0.0 and density + epsilon <= 1.0):
        raise ValueError(
            f"epsilon must keep density ± epsilon inside (0, 1]; got density={density}, epsilon={epsilon}"
        )
    prob = della_keep_probabilities(delta, density, epsilon)
    levels = keep_levels(prob)  # quantised keep probability * 65536
    keep = random16(delta.numel(), key, delta.device).view(delta.shape) < levels
    out = delta * keep
    if rescale == "inverse":
        return out.mul_(LEVELS / levels)
    return rescale_masked(delta, out, rescale, 1.0)
