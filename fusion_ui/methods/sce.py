"""SCE: select the elements where the fine-tunes differ most, weight each task vector by its
energy, erase the minority signs.

From FuseChat 2.0 (Wan et al. 2024, arXiv 2408.07990). The paper states the three steps in
words; mergekit 0.1.5's ``sce`` merge method (``mergekit/merge_methods/sce.py``) is the
definition its users expect, and this module implements that definition (written from it, not
copied), checked against mergekit's own output on tiny float32 models
(``tests/test_methods_sce.py``, reference made by ``tests/data/make_mergekit_reference.py``):

1. Select: with ``select_topk`` < 1, every task vector δi = θi − θ0 keeps only the elements
   where the variance of the δi across models (population variance) is among the largest
   ``k = ⌊select_topk · n⌋``, ``n`` counting the elements of non-zero variance.
2. Calculate: model i's weight is its energy mean(δi²) over the summed energies (all equal,
   1/N, when the energies sum to less than 1e-6).
3. Erase: per element, the sign of Σ δi (ties to +) is elected, and only the δi of that sign
   count; the result is θ0 + Σ wi·δi / Σ wi over those, the divisor clamped to at least 1e-6
   (elements where no model agrees keep θ0).

Differences on purpose:

- A ``select_topk`` whose ``k`` rounds down to 0 on a tensor with differing elements keeps its
  single most-varying element; mergekit keeps none and silently returns θ0 for that tensor
  (small tensors, such as norms, at a low ``select_topk``). ``select_topk`` 0 is refused.
- Elements tied at the k-th variance are kept from the highest flat index down (the rule of
  every top-k here); mergekit takes ``torch.topk``'s order, which torch leaves unspecified.
- mergekit's ``int8_mask`` only stores its masks in less memory; it changes no result and is
  ignored on import.

``k`` itself is computed as mergekit computes it, ⌊n·select_topk⌋ with the product rounded to
float32 (so 100 elements at 0.29 keep 29, where double precision gives 28.999999999999996).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fusion_ui.methods.base import MergeMethod, TensorContext
from fusion_ui.methods.capabilities import Capabilities
from fusion_ui.methods.params import ParamSpec
from fusion_ui.methods.sparsify import rank_band_mask

SELECT_TOPK = ParamSpec(
    "select_topk", 1.0, minimum=0.0, maximum=1.0, min_inclusive=False,
    label="select top-k",
    help="Share of elements kept where the fine-tunes differ most (variance across models); 1 keeps all.",
)
# Energies summing below this give equal weights; a divisor below it is raised to it (mergekit's values).
TINY = 1e-6


def select_count(nonzero: int, select_topk: float) -> int:
    """How many of ``nonzero`` differing elements the select step keeps: ⌊nonzero·select_topk⌋
    with the product rounded to float32 (as mergekit), at least 1 when there is any."""
    k = math.floor(float(np.float32(nonzero) * np.float32(select_topk)))
    return max(1, min(k, nonzero)) if nonzero else 0


def variance_select_mask(deltas: torch.Tensor, select_topk: float) -> torch.Tensor:
    """Keep mask (bool, one element's shape) of the top-k variance across models of ``deltas``
    (N, ...): the elements where the fine-tunes disagree most."""
    variance = torch.var(deltas, dim=0, unbiased=False)  # (...)
    k = select_count(int(torch.count_nonzero(variance)), select_topk)
    n = variance.numel()
    return rank_band_mask(variance, n - k, n)


def energy_weights(deltas: torch.Tensor) -> torch.Tensor:
    """Each task vector's mean square over their sum, (N,) float32; equal when the sum is tiny."""
    energy = deltas.square().flatten(1).mean(dim=1)  # (N,)
    total = energy.sum()
    if abs(float(total)) < TINY:
        return torch.ones_like(energy) / energy.shape[0]
    return energy / total


class SceMerge(MergeMethod):
    name = "sce"
    title = "SCE (select, calculate, erase)"
    summary = "Keep where the fine-tunes differ most, weight each task vector by its energy, erase minority signs."
    reference = "Wan et al. 2024, FuseChat 2.0 (arXiv 2408.07990); mergekit's sce"
    capabilities = Capabilities(base="required")
    min_models = 1
    params = (SELECT_TOPK,)

    @torch.no_grad()
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        base = ctx.require_base(f"method {self.name!r}")
        deltas = torch.stack([theta - base for theta in ctx.models])  # (N, ...)
        select_topk = float(ctx.params["select_topk"])
        if select_topk < 1.0:
            deltas *= variance_select_mask(deltas, select_topk)
        sign = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0)  # (...): elected sign, ties to +
        weights = energy_weights(deltas).view(-1, *([1] * (deltas.dim() - 1)))  # (N, 1, ...)
        kept = weights * (torch.sign(deltas) == sign)  # (N, ...): wi where model i agrees, else 0
        mixed = (deltas * kept).sum(dim=0)
        return mixed.div_(kept.sum(dim=0).clamp_(min=TINY)).add_(base)
