"""Model Stock: pull the fine-tunes' average back toward the base by their angle."""

from __future__ import annotations

import itertools

import torch

from fusion_ui.methods.base import MergeMethod, TensorContext
from fusion_ui.methods.capabilities import Capabilities
from fusion_ui.methods.params import ParamSpec


def model_stock_t(
    deltas: list[torch.Tensor], *, filter_wise: bool = False, clamp_negative: bool = True
) -> torch.Tensor:
    """``t = N·cos / (1 + (N−1)·cos)`` from the mean pairwise cosine of the deltas.

    One t for the tensor, shape (1, 1); or with ``filter_wise`` one per row (output unit) along
    the last dimension, shape (..., 1), a 1-D tensor counting as one row (mergekit's option).
    A pair where either delta (row) is zero counts cosine 0. ``clamp_negative``: a negative mean
    cosine gives t = 0 (keep the base), where the paper's geometry does not apply and the formula
    divides by values near zero; mergekit extrapolates instead (False).
    """
    if filter_wise:
        rows = [d if d.dim() >= 2 else d.reshape(1, -1) for d in deltas]
    else:
        rows = [d.reshape(1, -1) for d in deltas]
    cosines = []
    for a, b in itertools.combinations(rows, 2):
        na, nb = a.norm(dim=-1), b.norm(dim=-1)  # (...,)
        cos = ((a * b).sum(dim=-1) / (na * nb)).clamp(-1.0, 1.0)
        cosines.append(torch.where((na < 1e-12) | (nb < 1e-12), torch.zeros_like(cos), cos))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)  # (..., 1)
    if clamp_negative:
        cos = cos.clamp(min=0.0)
    n = len(deltas)
    return n * cos / (1.0 + (n - 1) * cos)


def model_stock_ratio(deltas: list[torch.Tensor]) -> float:
    """The one t of a whole tensor (see :func:`model_stock_t`)."""
    return float(model_stock_t(deltas))


class ModelStockMerge(MergeMethod):
    name = "model_stock"
    title = "Model Stock"
    summary = "t·mean(θi) + (1−t)·θ0 with t from the fine-tunes' pairwise angle, per tensor."
    reference = "Jang et al. 2024, Model Stock (arXiv 2403.19522)"
    capabilities = Capabilities(base="required")
    min_models = 2
    params = (
        ParamSpec("filter_wise", False, kind="bool", label="one t per row",
                  help="t from each row's angle (an output unit of a weight) instead of the whole tensor's"),
        ParamSpec("clamp_negative", True, kind="bool", label="t = 0 on negative cosines",
                  help="keep the base where the fine-tunes point apart; off: extrapolate as mergekit does"),
    )

    @torch.no_grad()
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        base = ctx.require_base(f"method {self.name!r}")
        filter_wise = bool(ctx.params.get("filter_wise", False))
        t = model_stock_t([m - base for m in ctx.models], filter_wise=filter_wise,
                          clamp_negative=bool(ctx.params.get("clamp_negative", True)))
        mean = torch.stack(ctx.models).mean(dim=0)
        if not filter_wise or base.dim() < 2:
            t = t.reshape(())  # one t for the tensor (a 1-D tensor is one row)
        return (t * mean + (1.0 - t) * base).reshape(base.shape)
