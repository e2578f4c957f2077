"""Fused per-element kernels for the hot merge methods.

The torch functions in :mod:`fusion_ui.methods` define each method; a kernel here computes the
same float32 operations in the same order, one element at a time with every intermediate in
registers, so its output equals the reference bit for bit while reading each input once.
Kernels are optional: without numba (or for methods and options they do not cover) the engine
runs the reference.

Importing this package does not import numba; :func:`warm_up_in_background` does it on a
daemon thread while a merge is being planned.
"""

from __future__ import annotations

import threading

__all__ = ["is_warm", "warm_up_in_background"]

_warm: threading.Thread | None = None
_warm_lock = threading.Lock()
_loaded = threading.Event()  # set once the warm-up has loaded the kernels


def warm_up_in_background() -> threading.Thread:
    """Import numba and load the common kernels from numba's cache, once per process, on a thread.

    Otherwise the first fused merge of a process pays for it in the middle of the merge
    (measured: importing numba 0.26 s, loading the cached bf16 kernel 0.21 s). Started when
    planning begins, it overlaps with reading headers and the pre-flight sample.
    """
    global _warm
    with _warm_lock:
        if _warm is None:
            _warm = threading.Thread(target=_warm_up, name="fusion-ui-kernel-warm-up", daemon=True)
            _warm.start()
        return _warm


def _warm_up() -> None:
    try:
        from fusion_ui.kernels import cpu

        cpu.warm_up()
        _loaded.set()
    except Exception:  # noqa: BLE001 - only an optimisation; a real call reports any error itself
        pass


def is_warm() -> bool:
    """Whether this process has the kernels loaded (a warm-up finished): calling them costs
    nothing more, so even small tensors may take them."""
    return _loaded.is_set()
