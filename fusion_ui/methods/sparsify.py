"""Sparsifying a task vector: DARE, magnitude pruning, breadcrumbs, DELLA.

Small pure functions on float32 tensors; they are also the reference that the fused kernels
(:mod:`fusion_ui.kernels`) must match bit for bit.

Random draws never use global RNG state. Each random step takes a ``key`` (normally
``(seed, tensor_name, model_index)``) and element ``j`` of the flattened tensor gets the 16-bit
draw ``(splitmix64(K + (j//4 + 1)·γ) >> 16·(j mod 4)) & 0xFFFF``, with ``K`` a 64-bit hash of the
key and ``γ`` the SplitMix64 increment. A draw is thus a function of (key, element) alone: not
of processing order, chunking, threads, or the device, so CPU kernels, the torch reference and
a GPU give the same mask.

Keep probabilities are quantised to 1/65536. The inverse rescale uses the keep probability
actually drawn with, so the expectation of a rescaled delta equals the delta exactly; for drop
rates that are multiples of 1/65536 (0.5, 0.75...) this is the paper's 1/(1-p), and for p = 0.9
it is 65536/6554 instead of 10 (a 6e-5 relative difference).
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch

Rescale = Literal["inverse", "l1", "none"]
RESCALE_MODES: tuple[str, ...] = ("inverse", "l1", "none")

LEVELS = 1 << 16  # random draws are 16-bit
# SplitMix64 constants (Steele, Lea & Flood 2014; the generator behind java.util.SplittableRandom)
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def stream_key(key: tuple) -> int:
    """The 64-bit stream key K of a random key tuple (stable across runs and platforms)."""
    text = "\x1f".join(str(k) for k in key).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _shift_right(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def random16(numel: int, key: tuple, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 16-bit draws of elements 0..numel-1 under ``key``, as int32 in [0, 65536)."""
    words = (numel + 3) // 4
    z = torch.arange(1, words + 1, dtype=torch.int64, device=device)
    z = z * _signed(GOLDEN) + _signed(stream_key(key))  # int64 arithmetic wraps mod 2^64
    z = (z ^ _shift_right(z, 30)) * _signed(MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed(MIX2)
    z = z ^ _shift_right(z, 31)
    # little-endian: the four int16 of word c are bits 0-15, 16-31, 32-47, 48-63
    return (z.view(torch.int16).to(torch.int32) & 0xFFFF)[:numel]


def quantized_keep(drop_rate: float) -> tuple[int, float]:
    """(threshold, keep probability actually used) for a drop rate in [0, 1): keep iff draw >= threshold."""
    threshold = min(int(round(drop_rate * LEVELS)), LEVELS - 1)
    return threshold, (LEVELS - threshold) / LEVELS


def dare_keep_mask(
    shape: torch.Size | tuple[int, ...], drop_rate: float, key: tuple, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Bernoulli keep mask: each element kept with probability 1 - drop_rate (bool, ``shape``)."""
    numel = 1
    for d in shape:
        numel *= d
    threshold, _ = quantized_keep(drop_rate)
    return (random16(numel, key, device) >= threshold).view(shape)


def rescale_masked(original: torch.Tensor, masked: torch.Tensor, mode: Rescale, keep: float) -> torch.Tensor:
    """Rescale a pruned delta: by 1/keep (the DARE paper), to the original L1 norm (mergekit), or not."""
    if mode == "inverse":
        return masked.mul_(1.0 / keep) if keep != 1.0 else masked
    if mode == "l1":
        before = original.abs().sum()
        after = masked.abs().sum()
        if before > 1e-12 and after > 1e-12:
            masked.mul_(before / after)
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


def keep_count(numel: int, density: float) -> int:
    """How many elements a density keeps: rounded, and never zero for a non-empty tensor."""
    return min(numel, max(1, round(density * numel))) if numel else 0


def magnitude_prune(delta: torch.Tensor, density: float, *, rescale: Rescale = "none") -> torch.Tensor:
    """Keep the ``density`` fraction of largest-|δ| elements (TIES' trim; DARE paper's ablation).

    ``"inverse"`` rescale divides by ``density``, as DARE does for its random drop.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    n = delta.numel()
    k = keep_count(n, density)
    if k == n:
        return delta.clone()
    keep = rank_band_mask(delta.abs(), n - k, n)
    return rescale_masked(delta, delta * keep, rescale, k / n)


def breadcrumbs(
    delta: torch.Tensor, density: float, gamma: float, *, rescale: Rescale = "none"
) -> torch.Tensor:
    """Model Breadcrumbs: drop the largest ``gamma`` and the smallest ``1 - density - gamma`` of |δ|.

    When ``density + gamma > 1`` fewer large outliers are dropped so that ``density`` is met.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    n = delta.numel()
    n_keep = keep_count(n, density)
    n_top = min(round(gamma * n), n - n_keep)
    n_bottom = n - n_keep - n_top
    keep = rank_band_mask(delta.abs(), n_bottom, n - n_top)
    return rescale_masked(delta, delta * keep, rescale, n_keep / n if n else 1.0)


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
    if not (0.0 <= epsilon and density - epsilon > 0.0 and density + epsilon <= 1.0):
        raise ValueError(
            f"epsilon must keep density ± epsilon inside (0, 1]; got density={density}, epsilon={epsilon}"
        )
    if density == 1.0:
        return delta.clone()
    prob = della_keep_probabilities(delta, density, epsilon)
    levels = torch.round(prob * LEVELS).clamp_(1, LEVELS)  # quantised keep probability * 65536
    keep = random16(delta.numel(), key, delta.device).view(delta.shape) < levels
    out = delta * keep
    if rescale == "inverse":
        return out.mul_(LEVELS / levels)
    return rescale_masked(delta, out, rescale, 1.0)
