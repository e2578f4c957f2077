"""Device choice for evals, made when asked (never at import time)."""

from __future__ import annotations

import torch

from fusion_ui.errors import RecipeError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) is CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise RecipeError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    return resolved
