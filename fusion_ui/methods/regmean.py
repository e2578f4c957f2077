"""RegMean (Jin et al. 2023): every linear layer is the least-squares fit of the models'
outputs on their own inputs. For ``y = x Wᵀ`` with W (out, in) and ``Gi = Xiᵀ Xi`` (in, in)::

    min_W Σ ci ‖Xi Wᵀ − Xi Wiᵀ‖²   ⇒   Wᵀ = (Σ ci Gi)⁻¹ Σ ci Gi Wiᵀ

with the off-diagonal entries of each Gi scaled by α (the paper's 0.9: α = 1 is the exact fit,
α = 0 a per-input-feature weighted average). Solved in float64 by Cholesky with a ridge that
grows until the factorisation holds (then ``lstsq``), never a raw inverse: ``(A + λI) Wᵀ = B +
λ W̄ᵀ`` with λ from 1e-8 of A's mean diagonal up, which pulls directions no input reached to the
weighted average W̄ instead of to zero.

Tensors that are not the weight of an ``nn.Linear`` with a Gram (embeddings, norms, biases) are
the weighted average; the model card lists how many. A weight the statistics mark ``transposed``
(transformers' ``Conv1D``, GPT-2's projections: ``y = x W`` with W (in, out)) is already Wᵀ, so it
is solved as it is stored.
"""

from __future__ import annotations

import torch

from fusion_ui.errors import RecipeError
from fusion_ui.methods.base import TensorContext
from fusion_ui.methods.data_aware import DataAwareMerge, weighted_average, weights_of
from fusion_ui.methods.params import ParamSpec

ALPHA = ParamSpec(
    "alpha",
    0.9,
    minimum=0.0,
    maximum=1.0,
    label="α (off-diagonal scale)",
    help="Scales the Gram matrices' off-diagonal entries: 1 is the exact least-squares fit, 0 a per-feature average.",
)
RIDGES = (1e-8, 1e-6, 1e-4, 1e-2)  # relative to the mean diagonal, tried in turn


def solve_regmean(
    grams: list[torch.Tensor], weights_t: list[torch.Tensor], coeffs: list[float], alpha: float
) -> torch.Tensor:
    """Wᵀ (in, out) from each model's Gram (in, in) and Wiᵀ (in, out), all float64."""
    total = sum(coeffs)
    a = torch.zeros_like(grams[0])
    b = torch.zeros_like(weights_t[0])
    mean_t = torch.zeros_like(weights_t[0])
    for g, wt, c in zip(grams, weights_t, coeffs, strict=True):
        if alpha != 1.0:
            g = g * alpha + torch.diag(torch.diagonal(g) * (1.0 - alpha))
        a += c * g
        b += c * (g @ wt)
        mean_t += (c / total) * wt
    scale = float(torch.diagonal(a).mean())
    if not scale > 0:  # no input reached the layer: nothing to fit
        return mean_t
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    for rel in RIDGES:
        ridge = rel * scale  # (A + λI) Wᵀ = B + λ W̄ᵀ: pulls toward the weighted average W̄
        chol, info = torch.linalg.cholesky_ex(a + ridge * eye)
        if int(info) == 0:
            return torch.cholesky_solve(b + ridge * mean_t, chol)
    ridge = RIDGES[-1] * scale
    return torch.linalg.lstsq(a + ridge * eye, b + ridge * mean_t).solution


class RegMeanMerge(DataAwareMerge):
    name = "regmean"
    title = "RegMean"
    summary = "Each linear layer solved as least squares on the models' inputs (Gram matrices); the rest averaged."
    reference = "Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language Models (arXiv 2212.09849)"
    kind = "gram"

    def __init__(self) -> None:
        super().__init__((ALPHA,))

    def uses_statistics(self, name: str, shape: tuple[int, ...]) -> bool:
        return len(shape) == 2

    def notes(self, covered: list[str], averaged: list[str]) -> list[str]:
        return [
            f"regmean: {len(covered)} linear weight(s) solved from the models' input Gram matrices",
            f"regmean: {len(averaged)} other tensor(s) (embeddings, norms, biases, layers without a Gram) "
            f"are the weighted average of the models, as RegMean prescribes",
        ]

    @torch.no_grad()
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        thetas = self.inputs(ctx)
        weights = weights_of(ctx)
        grams = self.statistics(ctx) if thetas[0].dim() == 2 else None
        if grams is None:
            return weighted_average(thetas, weights)
        transposed = self._transposed(ctx)  # stored (in, out): already Wᵀ
        inputs = thetas[0].shape[0] if transposed else thetas[0].shape[1]
        if grams[0].shape != (inputs, inputs):
            return weighted_average(thetas, weights)
        solved = solve_regmean(
            [g.double() for g in grams],
            [t.double() if transposed else t.double().T for t in thetas],
            weights,
            float(ctx.params["alpha"]),
        )  # (in, out)
        return (solved if transposed else solved.T).to(torch.float32).contiguous()

    def _transposed(self, ctx: TensorContext) -> bool:
        """Whether this weight is stored (in, out) (a Conv1D), as every model's statistics say."""
        from fusion_ui.stats.artefact import is_transposed

        seen = {is_transposed(str(mp[self.kind]), ctx.name) for mp in ctx.model_params}
        if len(seen) > 1:
            raise RecipeError(
                f"regmean: the models' gram statistics disagree on the layout of {ctx.name} "
                "(Conv1D in some, Linear in others): compute them again with `fusion-ui stats gram`"
            )
        return seen.pop()
