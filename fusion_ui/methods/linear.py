"""Linear merge (weighted average): model soups, and LM-Cocktail's mixing step."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fusion_ui.errors import RecipeError
from fusion_ui.methods.base import MergeMethod, NonFiniteInput, TensorContext
from fusion_ui.methods.capabilities import Capabilities
from fusion_ui.methods.params import WEIGHT, normalize_spec


class LinearMerge(MergeMethod):
    name = "linear"
    title = "Linear (weighted average)"
    summary = "Σ wi θi / Σ wi: average the models' weights; list the base as a model to mix it in."
    reference = "Wortsman et al. 2022 (model soups); Xiao et al. 2023, LM-Cocktail (arXiv 2311.13534)"
    capabilities = Capabilities(base="unused")  # θi themselves are mixed; list the base as a model
    params = (WEIGHT, normalize_spec(True))

    def check(self, params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
        if params["normalize"] and sum(mp["weight"] for mp in model_params) <= 0:
            raise RecipeError("linear: the weights sum to 0; give at least one model a positive weight")

    @torch.no_grad()
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        weights = [float(mp["weight"]) for mp in ctx.model_params]
        out = ctx.models[0] * weights[0]
        for theta, w in zip(ctx.models[1:], weights[1:], strict=True):
            out += theta * w  # not add_(alpha=w): that fuses multiply-add and rounds differently
        if ctx.params["normalize"]:
            out /= sum(weights)
        return out

    def merge_fused_cpu(self, ctx: TensorContext, out_dtype: torch.dtype) -> torch.Tensor | None:
        from fusion_ui.kernels import cpu
        from fusion_ui.kernels.arrays import as_torch, kernel_inputs, kernel_output

        arrays = kernel_inputs(ctx.models) if cpu.available() else None
        if arrays is None:
            return None
        weights = [float(mp["weight"]) for mp in ctx.model_params]
        out = kernel_output(ctx.models[0].numel(), out_dtype, ctx.out_buffer)
        bad = cpu.linear(arrays, out, np.array(weights, np.float32), bool(ctx.params["normalize"]), sum(weights))
        if bad:
            raise NonFiniteInput(bad - 2)
        return as_torch(out, ctx.models[0].shape, out_dtype, ctx.out_buffer)
