"""Sparsifying a task vector: DARE, magnitude pruning, breadcrumbs, DELLA.

Small pure functions on float32 tensors. Random steps never use global RNG state: each takes
a ``key`` (normally ``(seed, tensor_name, model_index)``) and draws its bits from generators
seeded by that key, block by block (:data:`MASK_BLOCK` elements each), so a mask depends on
the key alone and not on processing order, chunking or threads. On the same device the same
key always gives the same bits; CPU and CUDA generators differ from each other.

Keep probabilities are quantised to 1/65536 (16-bit draws). The inverse rescale uses the
keep probability actually drawn with, so the expectation of a rescaled delta equals the
delta exactly; for drop rates that are multiples of 1/65536 (0.5, 0.75, 0.9 is 58982.4/65536:
quantised to 58982) this is the paper's 1/(1-p).
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch

Rescale = Literal["inverse", "l1", "none"]
RESCALE_MODES: tuple[str, ...] = ("inverse", "l1", "none")

MASK_BLOCK = 1 << 20  # elements per independently seeded block of random draws
_LEVELS = 1 << 16  # random draws are 16-bit
_HALF = 1 << 15


def block_seed(key: tuple, block: int) -> int:
    """A 63-bit generator seed from a key and a block number (stable across runs/platforms)."""
    text = "\x1f".join(str(k) for k in (*key, block)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def random16(numel: int, key: tuple, device: torch.device | str = "cpu") -> torch.Tensor:
    """``numel`` uniform 16-bit draws as int16 in [-32768, 32767], a function of ``key`` only.

    Each block of MASK_BLOCK draws comes from its own mt19937/Philox generator; one int64 from
    ``random_()`` gives three draws (its low 48 bits; the top bit is not uniform).
    """
    device = torch.device(device)
    out = torch.empty(numel, dtype=torch.int16, device=device)
    for block, start in enumerate(range(0, numel, MASK_BLOCK)):
        n = min(MASK_BLOCK, numel - start)
        gen = torch.Generator(device=device)
        gen.manual_seed(block_seed(key, block))
        words = torch.empty((n + 2) // 3, dtype=torch.int64, device=device)
        words.random_(generator=gen)
        draws = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)  # (3 * words,)
        out[start : start + n] = draws[:n]
    return out


def quantized_keep(drop_rate: float) -> tuple[int, float]:
    """(threshold, keep probability actually used) for a drop rate in [0, 1)."""
    threshold = min(int(round(drop_rate * _LEVELS)), _LEVELS - 1)
    return threshold, (_LEVELS - threshold) / _LEVELS


def dare_keep_mask(
    shape: torch.Size | tuple[int, ...], drop_rate: float, key: tuple, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Bernoulli keep mask: each element kept with probability 1 - drop_rate (bool, ``shape``)."""
    numel = 1
    for d in shape:
        numel *= d
    threshold, _ = quantized_keep(drop_rate)
    draws = random16(numel, key, device)
    return (draws >= threshold - _HALF).view(shape)


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
    kth = torch.kthvalue(values, k).values
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
    levels = torch.round(prob * _LEVELS).clamp_(1, _LEVELS)  # quantised keep probability * 65536
    draws = random16(delta.numel(), key, delta.device).view(delta.shape).to(torch.float32) + _HALF
    keep = draws < levels
    out = delta * keep
    if rescale == "inverse":
        return out.mul_(_LEVELS / levels)
    return rescale_masked(delta, out, rescale, 1.0)
