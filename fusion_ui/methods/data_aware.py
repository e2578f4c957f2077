"""What Fisher merging and RegMean share: per-model statistics folders, DARE in front, the
weighted-average fallback.

Both read, for every model, statistics computed once on a few examples (``fusion-ui stats``)
and named by a per-model path parameter (``fisher: DIR`` / ``gram: DIR``). The folders are
checked against the opened models before any tensor is merged (:meth:`check_sources`: missing,
stale or foreign statistics are a RecipeError naming the model), then read one tensor at a time.

DARE in front (Yu et al. 2023, Table 3 applies it before Fisher merging and RegMean): with
``dare`` on, each model becomes ``θ0 + dare(θi − θ0)`` (drop rate p, survivors rescaled) before
the data-aware merge; the statistics are those of the fine-tunes as they are (the paper
recomputes them on the dropped models, which saved statistics cannot do).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fusion_ui.errors import RecipeError
from fusion_ui.methods.base import MergeMethod, TensorContext
from fusion_ui.methods.capabilities import Capabilities, DropSettings, RandomDrop
from fusion_ui.methods.params import DROP_RATE, RESCALE, WEIGHT, ParamSpec
from fusion_ui.methods.sparsify import dare

if TYPE_CHECKING:
    from fusion_ui.io.checkpoint import Checkpoint
    from fusion_ui.stats.artefact import StatsInfo

DARE_SWITCH = ParamSpec(
    "dare",
    False,
    kind="bool",
    label="DARE in front",
    help="Drop each delta element with probability p and rescale before the merge (reads the base).",
)
_DARE_REF = "DARE in front: Yu et al. 2023 (arXiv 2311.03099)"


def statistics_spec(kind: str, what: str) -> ParamSpec:
    return ParamSpec(
        kind,
        "",
        per_model=True,
        kind="path",
        label=f"{kind} statistics",
        help=f"Folder of this model's {what} (`fusion-ui stats {kind} MODEL --data FILE --out DIR`).",
    )


class DataAwareMerge(MergeMethod):
    """A merge that weighs each model by statistics of it on data (subclasses: Fisher, RegMean)."""

    kind: str  # "fisher" or "gram": the statistics and the per-model parameter naming them

    def __init__(self, extra: tuple[ParamSpec, ...]) -> None:
        self.params = (
            WEIGHT,
            statistics_spec(self.kind, self._what()),
            *extra,
            DARE_SWITCH,
            DROP_RATE,
            RESCALE,
        )
        self.capabilities = Capabilities(
            base="optional",
            base_switch="dare",
            random_drop=RandomDrop(rate="drop_rate"),
            rescale="rescale",
            statistics=self.kind,
        )
        self.reference = f"{self.reference}; {_DARE_REF}"

    def _what(self) -> str:
        return {"fisher": "diagonal Fisher", "gram": "linear layers' input Gram matrices"}[
            self.kind
        ]

    def check(self, params: dict[str, Any], model_params: list[dict[str, Any]]) -> None:
        if sum(mp["weight"] for mp in model_params) <= 0:
            raise RecipeError(
                f"{self.name}: the weights sum to 0; give at least one model a positive weight"
            )

    def drop_settings(
        self, params: dict[str, Any], model_params: dict[str, Any]
    ) -> DropSettings | None:
        if not params.get("dare", False):
            return None  # no drop while DARE is off: the preview has nothing to show
        return super().drop_settings(params, model_params)

    def check_sources(
        self, models: Sequence[Checkpoint], merged: Mapping[str, Sequence[Mapping[str, Any]]]
    ) -> list[str]:
        from fusion_ui.stats.check import check_statistics
        from fusion_ui.stats.identity import identify_checkpoint

        infos: list[dict[str, StatsInfo]] = []
        for i, ckpt in enumerate(models):
            folders = sorted({str(mps[i][self.kind]) for mps in merged.values()})
            identity = identify_checkpoint(ckpt)
            infos.append(
                {
                    f: check_statistics(
                        f, self.kind, ckpt, identity, who=f"models[{i}] ({ckpt.ref})"
                    )
                    for f in folders or [""]
                }
            )
        covered = [
            name
            for name, mps in merged.items()
            if self.uses_statistics(name, models[0].tensors[name].shape)
            and all(
                infos[i][str(mp[self.kind])].stored_name(name) is not None
                for i, mp in enumerate(mps)
            )
        ]
        return self.notes(covered, [n for n in merged if n not in set(covered)])

    def uses_statistics(self, name: str, shape: tuple[int, ...]) -> bool:
        """Whether this tensor is merged from statistics (the rest: the weighted average)."""
        return True

    def notes(self, covered: list[str], averaged: list[str]) -> list[str]:
        """What the model card says the method did with which tensors."""
        raise NotImplementedError

    # -- per tensor ----------------------------------------------------------------------

    def inputs(self, ctx: TensorContext) -> list[torch.Tensor]:
        """θi, or with DARE in front θ0 + dare(θi − θ0)."""
        if not ctx.params.get("dare", False):
            return ctx.models
        base = ctx.require_base(f"method {self.name!r} with dare: true")
        return [
            dare(theta - base, mp["drop_rate"], ctx.key(i), rescale=ctx.params["rescale"]).add_(
                base
            )
            for i, (theta, mp) in enumerate(zip(ctx.models, ctx.model_params, strict=True))
        ]

    def statistics(self, ctx: TensorContext) -> list[torch.Tensor] | None:
        """Every model's statistics for this tensor on its device, or None if one has none."""
        from fusion_ui.stats.artefact import read_statistic

        out = []
        rows = ctx.models[0].shape[0] if ctx.models[0].dim() else None
        for mp in ctx.model_params:
            folder = str(mp[self.kind])
            if not folder:
                raise RecipeError(f"method {self.name!r} needs `{self.kind}: DIR` for every model")
            t = read_statistic(folder, ctx.name, rows=rows, device=ctx.models[0].device)
            if t is None:
                return None
            out.append(t)
        return out


def weighted_average(models: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ wi θi / Σ wi, the fallback for tensors without statistics."""
    out = models[0] * weights[0]
    for theta, w in zip(models[1:], weights[1:], strict=True):
        out += theta * w
    return out.div_(sum(weights))


def weights_of(ctx: TensorContext) -> list[float]:
    return [float(mp["weight"]) for mp in ctx.model_params]
