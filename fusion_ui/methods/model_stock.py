"""Model Stock: pull the fine-tunes' average back toward the base by their angle."""

from __future__ import annotations

import itertools

import torch

from fusion_ui.methods.base import MergeMethod, TensorContext
from fusion_ui.methods.capabilities import Capabilities


def model_stock_ratio(deltas: list[torch.Tensor]) -> float:
    """``t = N·cos / (1 + (N−1)·cos)`` from the mean pairwise cosine of the deltas.

    A negative mean cosine is clamped to 0 (t = 0: keep the base), where the paper's geometry
    does not apply and the formula would divide by values near zero.
    """
    n = len(deltas)
    flat = [d.reshape(-1) for d in deltas]
    cosines = []
    for a, b in itertools.combinations(flat, 2):
        na, nb = a.norm(), b.norm()
        cosines.append(0.0 if na < 1e-12 or nb < 1e-12 else float(torch.dot(a, b) / (na * nb)))
    cos = max(0.0, sum(cosines) / len(cosines))
    return n * cos / (1.0 + (n - 1) * cos)


class ModelStockMerge(MergeMethod):
    name = "model_stock"
    title = "Model Stock"
    summary = "t·mean(θi) + (1−t)·θ0 with t from the fine-tunes' pairwise angle, per tensor."
    reference = "Jang et al. 2024, Model Stock (arXiv 2403.19522)"
    capabilities = Capabilities(base="required")
    min_models = 2
    params = ()

    @torch.no_grad()
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        base = ctx.require_base(f"method {self.name!r}")
        t = model_stock_ratio([m - base for m in ctx.models])
        mean = torch.stack(ctx.models).mean(dim=0)
        return mean.mul_(t).add_(base, alpha=1.0 - t)
