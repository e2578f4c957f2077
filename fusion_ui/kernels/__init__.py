"""Fused per-element kernels for the hot merge methods.

The torch functions in :mod:`fusion_ui.methods` define each method; a kernel here computes the
same float32 operations in the same order, one element at a time with every intermediate in
registers, so its output equals the reference bit for bit while reading each input once.
Kernels are optional: without numba (or for methods and options they do not cover) the engine
runs the reference.
"""

from __future__ import annotations

from fusion_ui.kernels.cpu import available as cpu_kernels_available

__all__ = ["cpu_kernels_available"]
