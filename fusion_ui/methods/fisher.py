"""Fisher merging (Matena & Raffel 2022): each element is the models' values weighted by how
much the loss on data cares about it, the diagonal of each model's Fisher information::

    θ = Σ ci Fi θi / Σ ci Fi          (per element; Fi floored at ε, optionally Fi / ‖Fi‖)

Where every model's Fisher is flat (ε everywhere) this is the weighted average. The Fisher of
each model is read from its statistics folder (``fisher: DIR``, ``fusion-ui stats fisher``), one
tensor at a time.
"""

from __future__ import annotations

import torch

from fusion_ui.methods.base import TensorContext
from fusion_ui.methods.data_aware import DataAwareMerge, weighted_average, weights_of
from fusion_ui.methods.params import ParamSpec

NORMALIZE_FISHER = ParamSpec(
    "normalize_fisher",
    False,
    kind="bool",
    label="normalize each Fisher",
    help="Divide each model's Fisher by its L2 norm over the whole model, so no model dominates by scale.",
)
FISHER_FLOOR = ParamSpec(
    "epsilon",
    1e-8,
    minimum=0.0,
    min_inclusive=False,
    maximum=1.0,
    step=1e-9,
    slider_range=(1e-10, 1e-6),
    label="ε (Fisher floor)",
    help="Least Fisher value an element gets: where no model's loss moves, the weighted average.",
)


class FisherMerge(DataAwareMerge):
    name = "fisher"
    title = "Fisher merging"
    summary = "Σ ci Fi θi / Σ ci Fi per element: weight each model by its diagonal Fisher on a few examples."
    reference = (
        "Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging (arXiv 2111.09832)"
    )
    kind = "fisher"

    def __init__(self) -> None:
        super().__init__((NORMALIZE_FISHER, FISHER_FLOOR))

    def notes(self, covered: list[str], averaged: list[str]) -> list[str]:
        out = [
            f"fisher: {len(covered)} tensor(s) weighted element by element by the models' Fisher"
        ]
        if averaged:
            out.append(
                f"fisher: {len(averaged)} tensor(s) without a Fisher in every model are the weighted "
                f"average: {', '.join(averaged[:8])}{' ...' if len(averaged) > 8 else ''}"
            )
        return out

    @torch.no_grad()
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        from fusion_ui.stats.artefact import read_fisher_norm

        thetas = self.inputs(ctx)
        weights = weights_of(ctx)
        fishers = self.statistics(ctx)
        if fishers is None:
            return weighted_average(thetas, weights)
        eps = float(ctx.params["epsilon"])
        num = torch.zeros_like(thetas[0])
        den = torch.zeros_like(thetas[0])
        for theta, f, w, mp in zip(thetas, fishers, weights, ctx.model_params, strict=True):
            if ctx.params["normalize_fisher"]:
                norm = read_fisher_norm(str(mp["fisher"]))
                if norm > 0:
                    f = f.div_(norm)
            f = f.clamp_min_(eps).mul_(w)  # ci Fi
            den += f
            num += f.mul_(theta)
        return num.div_(den)
