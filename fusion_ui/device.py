"""Choosing the compute device. Decided per call, never at import time."""

from __future__ import annotations

import torch

from fusion_ui.errors import DeviceError


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
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but this torch build sees no CUDA GPU; use cpu or auto")
    return dev

