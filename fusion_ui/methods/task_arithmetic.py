"""Task arithmetic and the methods that are settings of it: TIES, DARE, breadcrumbs, DELLA.

Every one of them is ``θ0 + λ · mix(w_i · sparsify(δ_i))`` with ``δ_i = θ_i − θ0``:
``sparsify`` is nothing, top-k magnitude (TIES), a random Bernoulli drop (DARE), a magnitude
band (breadcrumbs), a magnitude-ranked random drop (DELLA) or a magnitude prune (the DARE
paper's ablation); ``mix`` is a plain sum, or TIES' sign election and disjoint sum. With
``normalize`` the sum is divided by the summed weights (for TIES: of the agreeing models).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from fusion_ui.errors import RecipeError
from fusion_ui.methods.base import MergeMethod, NonFiniteInput, TensorContext
from fusion_ui.methods.capabilities import Capabilities, RandomDrop
from fusion_ui.methods.consensus import disjoint_sum, elect_sign
from fusion_ui.methods.params import (
    DROP_RATE,
    LAMBDA,
    PRUNE_RESCALE,
    RESCALE,
    SIGNED_WEIGHT,
    WEIGHT,
    ParamSpec,
    density_spec,
    normalize_spec,
)
from fusion_ui.methods.sparsify import (
    breadcrumbs,
    breadcrumbs_band,
    dare,
    della,
    della_keep_probabilities,
    exact_l1,
    keep_count,
    l1_scale,
    magnitude_prune,
)
from fusion_ui.rng import LEVELS, keep_levels, quantized_keep, stream_key

Sparsifier = Literal["none", "magnitude", "dare", "magnitude_prune", "breadcrumbs", "della"]
SPARSIFIERS: tuple[str, ...] = ("none", "magnitude", "dare", "magnitude_prune", "breadcrumbs", "della")

# What each sparsifier makes the method: a random drop (DARE's has one rate per model, which
# the DARE preview shows) and a rescale chosen by the `rescale` parameter.
_RANDOM_DROPS = {"dare": RandomDrop(rate="drop_rate"), "della": RandomDrop(rate=None)}
_RESCALED = ("dare", "magnitude_prune", "della")

GAMMA = ParamSpec(
    "gamma", 0.01, per_model=True, minimum=0.0, maximum=1.0, max_inclusive=False, step=0.001,
    label="γ (outliers)", help="Share of the largest-|δ| elements dropped as outliers.",
)
EPSILON = ParamSpec(
    "epsilon", 0.15, per_model=True, minimum=0.0, maximum=0.5,
    label="ε (spread)", help="Keep probability ranges over density ± ε, rising with |δ| rank in each row.",
)
COUNT_ROUNDING = ParamSpec(
    "count_rounding", "round", kind="choice", choices=("round", "floor"),
    label="kept count",
    help="How density·n becomes a count of kept elements: round (fusion_ui) or floor (mergekit, PEFT).",
)
PRUNE_DROP_RATE = ParamSpec(
    "drop_rate", 0.9, per_model=True, minimum=0.0, maximum=1.0, max_inclusive=False,
    label="drop rate p", help="Share of the smallest-|δ| elements of this model's delta dropped.",
    complement="density",
)


class TaskArithmeticFamily(MergeMethod):
    """One configurable method; the registry holds its named settings."""

    def __init__(
        self,
        *,
        name: str,
        title: str,
        summary: str,
        reference: str,
        sparsifier: Sparsifier,
        consensus: bool,
        params: tuple[ParamSpec, ...],
    ) -> None:
        if sparsifier not in SPARSIFIERS:
            raise ValueError(f"unknown sparsifier {sparsifier!r}; expected one of {SPARSIFIERS}")
        self.name = name
        self.title = title
        self.summary = summary
        self.reference = reference
        self.sparsifier = sparsifier
        self.consensus = consensus
        self.params = params
        self.capabilities = Capabilities(
            base="required",
            random_drop=_RANDOM_DROPS.get(sparsifier),
            rescale="rescale" if sparsifier in _RESCALED else None,
        )

    def check(self, params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
        if self.sparsifier == "della":
            for i, mp in enumerate(model_params):
                d, e = mp["density"], mp["epsilon"]
                if d < 1.0 and not (d - e > 0.0 and d + e <= 1.0):
                    raise RecipeError(
                        f"model {i}: density ± epsilon must stay inside (0, 1]; got density={d}, "
                        f"epsilon={e}. Lower epsilon or move density away from 0 and 1"
                    )
        if params["normalize"] and not self.consensus:
            if abs(sum(mp["weight"] for mp in model_params)) < 1e-8:
                raise RecipeError(
                    "the weights sum to 0, so normalize would divide by 0: change a weight or "
                    "turn normalize off"
                )

    def sparsify(self, delta: torch.Tensor, mp: dict[str, Any], ctx: TensorContext, i: int) -> torch.Tensor:
        s = self.sparsifier
        if s == "none":
            return delta
        if s == "magnitude":
            return magnitude_prune(delta, mp["density"], rounding=ctx.params.get("count_rounding", "round"))
        if s == "dare":
            return dare(delta, mp["drop_rate"], ctx.key(i), rescale=ctx.params["rescale"])
        if s == "magnitude_prune":
            return magnitude_prune(delta, 1.0 - mp["drop_rate"], rescale=ctx.params["rescale"])
        if s == "breadcrumbs":
            return breadcrumbs(delta, mp["density"], mp["gamma"], rounding=ctx.params.get("count_rounding", "round"))
        if s == "della":
            return della(delta, mp["density"], mp["epsilon"], ctx.key(i), rescale=ctx.params["rescale"])
        raise ValueError(f"unknown sparsifier {s!r}; expected one of {SPARSIFIERS}")  # refused in __init__

    @torch.no_grad()
    def merge(self, ctx: TensorContext) -> torch.Tensor:
        base = ctx.require_base(f"method {self.name!r}")
        weighted: list[torch.Tensor] = []
        weights: list[float] = []
        for i, (theta, mp) in enumerate(zip(ctx.models, ctx.model_params, strict=True)):
            delta = self.sparsify(theta - base, mp, ctx, i)
            weighted.append(delta.mul_(mp["weight"]))
            weights.append(float(mp["weight"]))
        if self.consensus:
            sign = elect_sign(weighted)
            mixed, divisor = disjoint_sum(weighted, weights, sign)
            if ctx.params["normalize"]:
                mixed /= divisor
        else:
            mixed = weighted[0]
            for wd in weighted[1:]:
                mixed += wd
            if ctx.params["normalize"]:
                mixed /= sum(weights)
        lam = ctx.params["lambda"]
        if lam != 1.0:
            mixed *= lam
        return mixed.add_(base)

    def merge_fused_cpu(self, ctx: TensorContext, out_dtype: torch.dtype) -> torch.Tensor | None:
        from fusion_ui.kernels import cpu
        from fusion_ui.kernels.arrays import as_torch, kernel_inputs, kernel_output

        rescale = ctx.params[self.capabilities.rescale] if self.capabilities.rescale else "none"
        if not cpu.available():
            return None
        if rescale == "l1" and self.sparsifier not in ("dare", "della"):  # top-k with L1: the reference only
            return None
        base = ctx.require_base(f"method {self.name!r}")
        n = base.numel()
        cols = base.shape[-1] if base.dim() else 1
        if self.sparsifier == "della" and not 0 < cols <= cpu.CHUNK:  # rows longer than a chunk
            return None
        arrays = kernel_inputs([base, *ctx.models])
        if arrays is None:
            return None
        m = len(ctx.models)
        mode = np.zeros(m, np.int64)
        thr = np.zeros(m, np.int64)
        scale = np.ones(m, np.float32)
        apply_scale = np.zeros(m, np.bool_)
        keys = np.zeros(m, np.uint64)
        bands: list[tuple[int, int] | None] = [None] * m
        levels = factors = None
        l1_models: list[int] = []  # random drops with the L1 rescale: norms first, in one exact pass
        count_rounding = ctx.params.get("count_rounding", "round")
        for i, mp in enumerate(ctx.model_params):
            if self.sparsifier == "dare":
                t, keep = quantized_keep(mp["drop_rate"])
                if t > 0:
                    mode[i], thr[i], keys[i] = cpu.SPARSE_DARE, t, stream_key(ctx.key(i))
                    if rescale == "inverse":
                        scale[i], apply_scale[i] = 1.0 / keep, True
                    elif rescale == "l1":
                        l1_models.append(i)
            elif self.sparsifier in ("magnitude", "magnitude_prune"):
                if self.sparsifier == "magnitude":
                    k = keep_count(n, mp["density"], count_rounding)
                else:
                    k = keep_count(n, 1.0 - mp["drop_rate"])
                if k < n:
                    mode[i], bands[i] = cpu.SPARSE_TOPK, (n - k, n)
                    if self.sparsifier == "magnitude_prune" and rescale == "inverse":
                        scale[i], apply_scale[i] = 1.0 / (k / n), True
            elif self.sparsifier == "breadcrumbs":
                density, gamma = mp["density"], mp["gamma"]
                if not (0.0 < density <= 1.0 and 0.0 <= gamma < 1.0):
                    return None  # the reference says what is wrong
                if density < 1.0 and n:
                    mode[i], bands[i] = cpu.SPARSE_TOPK, breadcrumbs_band(n, density, gamma, count_rounding)
            elif self.sparsifier == "della":
                density, epsilon = mp["density"], mp["epsilon"]
                if not (0.0 < density <= 1.0 and 0.0 <= epsilon and density - epsilon > 0.0 and density + epsilon <= 1.0):
                    return None  # the reference says what is wrong
                if density < 1.0:
                    if levels is None:
                        levels, factors = np.ones((m, cols), np.int32), np.ones((m, cols), np.float32)
                    # the reference's own keep levels and survivor factors, for ranks 0..cols-1
                    level = keep_levels(della_keep_probabilities(torch.arange(cols, dtype=torch.float32), density, epsilon))
                    levels[i] = level.to(torch.int32).numpy()
                    factors[i] = (LEVELS / level).numpy()
                    mode[i], keys[i] = cpu.SPARSE_DELLA, stream_key(ctx.key(i))
                    if rescale == "inverse":
                        apply_scale[i] = True
                    elif rescale == "l1":
                        l1_models.append(i)
        weights = [float(mp["weight"]) for mp in ctx.model_params]
        lam = float(ctx.params["lambda"])
        spec = cpu.TaskArithmeticSpec(
            weights=np.array(weights, np.float32), mode=mode, dare_threshold=thr, keys=keys,
            scale=scale, apply_scale=apply_scale, consensus=self.consensus,
            normalize=bool(ctx.params["normalize"]), weight_sum=sum(weights), lam=lam,
            apply_lam=lam != 1.0, cols=cols, levels=levels, factors=factors,
            masks=np.zeros((m, (n + 7) // 8), np.uint8) if l1_models and self.sparsifier == "della" else None,
        )
        if l1_models:
            wanted = np.zeros(m, np.bool_)
            wanted[l1_models] = True
            norms = cpu.random_drop_l1_norms(arrays[0], arrays[1:], wanted, spec)
            for i in l1_models:
                if self.sparsifier == "della":
                    mode[i] = cpu.SPARSE_MASK  # the keep bits are in spec.masks now
                factor = l1_scale(exact_l1(norms[i, 0]), exact_l1(norms[i, 1]))
                if factor is not None:
                    scale[i], apply_scale[i] = factor, True
        out = kernel_output(n, out_dtype, ctx.out_buffer)
        bad = cpu.task_arithmetic(arrays[0], arrays[1:], out, spec, bands)
        if bad:
            raise NonFiniteInput(None if bad == 1 else bad - 2)
        return as_torch(out, base.shape, out_dtype, ctx.out_buffer)


def _family(
    name: str, title: str, summary: str, reference: str, sparsifier: Sparsifier, consensus: bool,
    extra: tuple[ParamSpec, ...],
) -> TaskArithmeticFamily:
    weight = WEIGHT if consensus else SIGNED_WEIGHT
    # TIES' disjoint mean divides by the agreeing weights by definition; plain sums do not.
    params = (weight, *extra, LAMBDA, normalize_spec(consensus))
    return TaskArithmeticFamily(
        name=name, title=title, summary=summary, reference=reference,
        sparsifier=sparsifier, consensus=consensus, params=params,
    )


_TIES_REF = "Yadav et al. 2023, TIES-Merging (arXiv 2306.01708)"
_DARE_REF = "Yu et al. 2023, Language Models are Super Mario (arXiv 2311.03099)"
_BREAD_REF = "Davari & Belilovsky 2023, Model Breadcrumbs (arXiv 2312.06795)"
_DELLA_REF = "Deep et al. 2024, DELLA-Merging (arXiv 2406.11617)"
_TIES_DENSITY = density_spec(0.2, "Share of largest-|δ| elements each model keeps (TIES' top-k; the paper uses 0.2).")

TASK_ARITHMETIC_METHODS: tuple[TaskArithmeticFamily, ...] = (
    _family(
        "task_arithmetic", "Task arithmetic", "θ0 + λ Σ wi δi: add the fine-tunes' task vectors to the base.",
        "Ilharco et al. 2023, Editing Models with Task Arithmetic (arXiv 2212.04089)", "none", False, (),
    ),
    _family(
        "ties", "TIES", "Trim each delta to its top-k, elect a sign per element, average the agreeing deltas.",
        _TIES_REF, "magnitude", True, (_TIES_DENSITY, COUNT_ROUNDING),
    ),
    _family(
        "dare_linear", "DARE + task arithmetic", "Drop each delta element with probability p, rescale by 1/(1-p), add up.",
        _DARE_REF, "dare", False, (DROP_RATE, RESCALE),
    ),
    _family(
        "dare_ties", "DARE + TIES", "DARE's random drop and rescale, then TIES' sign election and disjoint mean.",
        _DARE_REF, "dare", True, (DROP_RATE, RESCALE),
    ),
    _family(
        "magnitude_prune", "Magnitude prune (DARE ablation)", "Keep the largest 1-p of each delta instead of a random 1-p.",
        _DARE_REF + ", Fig. 8", "magnitude_prune", False, (PRUNE_DROP_RATE, PRUNE_RESCALE),
    ),
    _family(
        "breadcrumbs", "Model Breadcrumbs", "Drop the largest γ and the smallest deltas, keep the middle band, add up.",
        _BREAD_REF, "breadcrumbs", False,
        (density_spec(0.9, "Share of delta elements kept after removing outliers and the smallest."), GAMMA,
         COUNT_ROUNDING),
    ),
    _family(
        "breadcrumbs_ties", "Model Breadcrumbs + TIES", "Breadcrumbs' band, then TIES' sign election and disjoint mean.",
        _BREAD_REF, "breadcrumbs", True,
        (density_spec(0.9, "Share of delta elements kept after removing outliers and the smallest."), GAMMA,
         COUNT_ROUNDING),
    ),
    _family(
        "della", "DELLA", "Random drop whose keep probability rises with |δ| rank in each row, rescaled, added up.",
        _DELLA_REF, "della", False,
        (density_spec(0.5, "Mean keep probability of delta elements."), EPSILON, RESCALE),
    ),
    _family(
        "della_ties", "DELLA + TIES", "DELLA's ranked random drop, then TIES' sign election and disjoint mean.",
        _DELLA_REF, "della", True,
        (density_spec(0.5, "Mean keep probability of delta elements."), EPSILON, RESCALE),
    ),
)
