"""Keyed, counter-based random draws: the same mask on every device, thread and chunking.

Random steps never use global RNG state. Each takes a ``key``, normally
``(seed, tensor_name, model_index)``, and element ``j`` of the flattened tensor gets the 16-bit
draw ``(splitmix64(K + (j//4 + 1)·γ) >> 16·(j mod 4)) & 0xFFFF``, with ``K`` a 64-bit hash of the
key and ``γ`` the SplitMix64 increment. A draw is thus a function of (key, element) alone: not
of processing order, chunking, threads, or the device, so CPU kernels, the torch reference and
a GPU give the same mask.

Keep probabilities are quantised to 1/65536 (:func:`quantized_keep`, :func:`keep_levels`): an
element is kept by comparing its draw with an integer threshold, and the rescale that follows
uses the probability actually drawn with, so the expectation of a rescaled delta is exact.

This module is the one owner of the generator: the torch reference (:mod:`fusion_ui.methods`)
and the fused kernels (:mod:`fusion_ui.kernels`) both import it, and it imports neither.
"""

from __future__ import annotations

import hashlib

import torch

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
    """(threshold, keep probability actually used) for a drop rate in [0, 1): keep iff draw >= threshold.

    DARE's p is rounded to a multiple of 1/65536, and never reaches 1 (one level is always kept).
    """
    threshold = min(int(round(drop_rate * LEVELS)), LEVELS - 1)
    return threshold, (LEVELS - threshold) / LEVELS


def keep_levels(keep_probability: torch.Tensor) -> torch.Tensor:
    """Per-element keep probabilities quantised to levels of 1/65536 (float32, in [1, 65536]):
    keep iff draw < level; the probability actually drawn with is ``level / 65536``."""
    return torch.round(keep_probability * LEVELS).clamp_(1, LEVELS)
