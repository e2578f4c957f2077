"""Choosing the compute device. Decided per call, never at import time."""

from __future__ import annotations

import threading

import torch

from fusion_ui.errors import RecipeError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) = CUDA if available, else CPU; asking for CUDA without one fails clearly."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise RecipeError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"device {device!r} asked for, but this torch build sees no CUDA GPU; use cpu or auto")
    return dev


def warm_up_in_background(device: torch.device) -> threading.Thread | None:
    """On a GPU, create the CUDA context on a daemon thread while the merge is being planned.

    The first CUDA call of a process takes about a second; started before planning, it overlaps
    with opening and checking the models instead of delaying the first tensor.
    """
    if device.type != "cuda":
        return None
    thread = threading.Thread(target=_init_cuda, args=(device,), name="fusion-ui-cuda-init", daemon=True)
    thread.start()
    return thread


def _init_cuda(device: torch.device) -> None:
    try:
        torch.empty(1, device=device)
        torch.empty(1, pin_memory=True)
    except Exception:  # noqa: BLE001 - only an optimisation; the merge itself reports any error
        pass
