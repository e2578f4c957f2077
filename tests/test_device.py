"""Choosing the compute device: a device that is not there is a DeviceError naming the choices."""

from __future__ import annotations

import pytest
import torch

from fusion_ui.device import resolve_device
from fusion_ui.errors import DeviceError, FusionError, RecipeError


def test_auto_and_cpu_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_unknown_or_missing_devices_are_device_errors_not_recipe_errors() -> None:
    with pytest.raises(DeviceError, match="use auto, cpu, cuda or cuda:N") as info:
        resolve_device("tpu9")
    assert isinstance(info.value, FusionError) and not isinstance(info.value, RecipeError)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees no CUDA GPU"):
            resolve_device("cuda")
