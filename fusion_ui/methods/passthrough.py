"""Passthrough: one model's tensor, optionally scaled; what `slices:` frankenmerges stack."""

from __future__ import annotations

import torch

from fusion_ui.methods.base import MergeMethod, TensorContext
from fusion_ui.methods.capabilities import Capabilities
from fusion_ui.methods.params import ParamSpec


class PassthroughMerge(MergeMethod):
    name = "passthrough"
    title = "Passthrough (layer stacking)"
    summary = (
        "Copy one model's tensors, times `scale`; with `slices:` it stacks layer ranges of "
        "several models into one deeper model (a frankenmerge)."
    )
    reference = "mergekit's passthrough method (Goddard et al. 2024, arXiv 2403.13257)"
    capabilities = Capabilities(base="unused")
    min_models = 1
    max_models = 1
    params = (
        ParamSpec("scale", 1.0, per_model=True, minimum=-10.0, maximum=10.0, slider_range=(0.0, 2.0),
                  label="scale",
                  help="Multiply the tensor by this (1: unchanged; 0 silences a layer's output projection)."),
    )

    @torch.no_grad()
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        (theta,) = ctx.models
        scale = float(ctx.model_params[0]["scale"])
        return theta.clone() if scale == 1.0 else theta * scale
