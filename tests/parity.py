"""Parity with mergekit 0.1.5 without mergekit: the stored reference outputs
(``tests/data/make_mergekit_reference.py`` made them, in a venv of its own) and a float32 ulp
distance to compare against them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent / "data"


def _reference_module():  # noqa: ANN202 - a module loaded from a path
    spec = importlib.util.spec_from_file_location("make_mergekit_reference", DATA / "make_mergekit_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mk = _reference_module()


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance in float32 units in the last place (sign-magnitude bits made monotone)."""
    def ordered(t: torch.Tensor) -> np.ndarray:
        i = t.contiguous().view(torch.int32).numpy().astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return int(np.abs(ordered(a) - ordered(b)).max()) if a.numel() else 0
