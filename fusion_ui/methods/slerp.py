"""SLERP: spherical interpolation between two models (or two task vectors on a base)."""

from __future__ import annotations

import math

import torch

from fusion_ui.methods.base import MergeMethod, TensorContext
from fusion_ui.methods.capabilities import Capabilities
from fusion_ui.methods.params import ParamSpec

# Above this |cos| the two tensors are treated as colinear and interpolated linearly
# (the angle is too small for sin() to be divided by safely); mergekit uses the same value.
COLINEAR_COS = 0.9995


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Interpolate along the great circle from ``v0`` (t=0) to ``v1`` (t=1), lerp when colinear.

    The angle comes from the flattened, normalised tensors; the weights apply to the originals.
    """
    n0, n1 = v0.norm(), v1.norm()
    if n0 < 1e-12 or n1 < 1e-12:
        return torch.lerp(v0, v1, t)
    cos = float(torch.dot(v0.reshape(-1), v1.reshape(-1)) / (n0 * n1))
    if abs(cos) > COLINEAR_COS:
        return torch.lerp(v0, v1, t)
    theta = math.acos(max(-1.0, min(1.0, cos)))
    s0 = math.sin((1.0 - t) * theta) / math.sin(theta)
    s1 = math.sin(t * theta) / math.sin(theta)
    return v0 * s0 + v1 * s1


class SlerpMerge(MergeMethod):
    name = "slerp"
    title = "SLERP"
    summary = "Spherical interpolation between exactly two models; t=0 gives the first, t=1 the second."
    reference = "Shoemake 1985; popularised for LLMs by mergekit"
    capabilities = Capabilities(base="optional", base_switch="on_deltas")
    min_models = 2
    max_models = 2
    params = (
        ParamSpec("t", 0.5, minimum=0.0, maximum=1.0, label="t",
                  help="Position between the first model (0) and the second (1)."),
        ParamSpec("on_deltas", False, kind="bool", label="interpolate task vectors",
                  help="Interpolate the two deltas from the base instead of the weights (needs a base)."),
    )

    @torch.no_grad()
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        t = float(ctx.params["t"])
        a, b = ctx.models
        if ctx.params["on_deltas"]:
            base = ctx.require_base("slerp with on_deltas: true")  # recipes without one are refused earlier
            return slerp(t, a - base, b - base).add_(base)
        return slerp(t, a, b)
