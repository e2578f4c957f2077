"""The Merge tab's facade: method schemas, merges into the session's preview model (in memory),
and the DARE preview of what a recipe's random drop does to one tensor."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import torch

from fusion_ui import figures
from fusion_ui.app.context import AppContext, MergeRef, preview_key
from fusion_ui.app.deltas import DeltasFacade
from fusion_ui.app.selection import Selection, label_of, ref_of
from fusion_ui.deltas import dare_preview
from fusion_ui.deltas.preview import default_preview_tensor
from fusion_ui.errors import RecipeError
from fusion_ui.io import Checkpoint
from fusion_ui.io.writer import ModelSink
from fusion_ui.merge import plan_merge, run_merge
from fusion_ui.methods import METHODS
from fusion_ui.progress import ProgressCallback
from fusion_ui.recipe import Recipe, recipe_from_dict
from fusion_ui.runtime.jobs import Job, JobContext


@dataclass(frozen=True)
class MergeResult:
    recipe: Recipe
    seconds: float
    tensors: int
    warnings: list[str]
    allow_large_deltas: bool = False

    @property
    def merged(self) -> MergeRef:
        """What the session keeps: enough to rebuild this merge."""
        return MergeRef(self.recipe, self.allow_large_deltas)


class MergeFacade:
    def __init__(self, context: AppContext, deltas: DeltasFacade) -> None:
        self.context = context
        self.deltas = deltas

    @staticmethod
    def method_schemas() -> dict[str, dict[str, Any]]:
        return {name: m.schema() for name, m in METHODS.items()}

    @staticmethod
    def previewable(method: str) -> bool:
        """Whether the DARE preview has something to show for ``method`` (a random drop at a
        declared rate: the method's capabilities say)."""
        m = METHODS.get(method)
        return m is not None and m.capabilities.dare_preview

    # -- merging into the preview model -------------------------------------------------------

    def start(self, session: str, recipe: Recipe, *, allow_large_deltas: bool = False, record: bool = True,
              live: bool = False) -> Job[MergeResult]:
        """Merge into the session's preview model (in memory, nothing on disk), as a job.

        A new merge of the session replaces one still queued or running. ``record`` puts it in
        the history (merges the user asked for; live re-merges on slider release are not).
        """
        context = self.context

        def run(ctx: JobContext) -> MergeResult:
            start = time.perf_counter()
            context.merges.pop(session, None)
            item = context.preview_model(session, recipe.base or recipe.models[0].model)
            item.recipe_yaml = None  # a failed or cancelled merge leaves a mix: never reuse it
            with plan_merge(recipe, allow_large_deltas=allow_large_deltas) as plan:
                ctx.check()
                run_merge(plan, ModelSink(item.model), device=context.device, progress=ctx.progress,
                          cancel=ctx.cancel)
                warnings, tensors = list(plan.warnings), len(plan.jobs)
            item.recipe_yaml = recipe.to_yaml()
            if record:
                context.history.add("merge", recipe)
            result = MergeResult(recipe, time.perf_counter() - start, tensors, warnings, allow_large_deltas)
            context.merges[session] = result.merged
            return result

        return context.submit(session, "merge", run, label="live re-merge" if live else "merge")

    def merge(self, session: str, recipe: Recipe, *, progress: ProgressCallback | None = None,
              allow_large_deltas: bool = False, record: bool = True) -> MergeResult:
        """:meth:`start` and wait for it."""
        return self.context.wait(self.start(session, recipe, allow_large_deltas=allow_large_deltas, record=record),
                                 progress)

    def session_merge(self, session: str) -> MergeRef | None:
        """The merge the session's preview model holds, or None."""
        return self.context.merges.get(session)

    def preview_state(self, session: str) -> dict[str, torch.Tensor] | None:
        """The merged preview's weights (for tests and checks), or None if there is none."""
        item = self.context.cache.peek(preview_key(session))
        if item is None or item.recipe_yaml is None:
            return None
        return {k: v.detach().cpu() for k, v in item.model.state_dict().items()}

    def prepare(self, session: str, sel: Selection) -> Job[Any]:
        """Load the session's preview model ahead of its first merge, as a job."""
        base = sel["base"]
        return self.context.submit(session, "prepare", lambda ctx: self.context.preview_model(session, base),
                                   label="preview model")

    # -- the DARE preview ---------------------------------------------------------------------

    def start_dare_preview(
        self, session: str, recipe: Recipe, label_or_ref: str, *, sel: Selection | None = None,
        tensor: str | None = None,
    ) -> Job[tuple[go.Figure | None, str]]:
        """Before/after histogram of DARE on one tensor of one fine-tune, as the merge will do it.

        Taken from the merge's own plan (headers only): the model's index in the recipe is DARE's
        random key, and the tensor's drop rate and rescale come resolved with layer ramps and
        overrides, so the preview's mask is the merge's mask. ``label_or_ref``: a selection
        label or a model reference.
        """
        label = label_of(label_or_ref, sel)
        ref = ref_of(label_or_ref, sel)
        refs = [e.model for e in recipe.models]

        def run(ctx: JobContext) -> tuple[go.Figure | None, str]:
            if not self.previewable(recipe.method) or not recipe.base:
                return None, "The preview shows DARE's random drop: pick a DARE method."
            if ref not in refs:
                return None, f"**{label}** is not in the merge (tick “use in the merge” to preview it)."
            index = refs.index(ref)
            name = tensor or self._preview_tensor(sel, ref)
            with plan_merge(recipe, preflight=False) as plan:
                job = next((j for j in plan.jobs if j.name == name), None)
            if job is None:
                raise RecipeError(f"the base has no tensor named {name!r}")
            if not job.merged:
                return None, f"`{name}` is kept from the base (include/exclude): nothing is dropped."
            drop = plan.method.drop_settings(job.params, job.model_params[index])
            if drop is None:
                return None, "The preview shows DARE's random drop: pick a DARE method."
            drop_rate = drop.drop_rate
            preview = dare_preview(recipe.base, ref, name, drop_rate=drop_rate, seed=recipe.seed,
                                   model_index=index, rescale=drop.rescale, device=self.context.device)
            text = (
                f"**{label}**, `{name}`: p = {drop_rate:g} keeps "
                f"{100 * preview.share_kept:.1f}% of the non-zero deltas; relative error of δ "
                f"{preview.rel_error:.2f}, which moves the weights by {100 * preview.rel_change_weights:.3f}%."
            )
            return figures.dare_preview_histogram(preview), text

        return self.context.submit(session, "preview", run, label="DARE preview")

    def dare_preview(
        self, sel: Selection, index: int, *, drop_rate: float, seed: int = 0, rescale: str = "inverse",
        tensor: str | None = None,
    ) -> tuple[go.Figure | None, str]:
        """The DARE preview of fine-tune ``index`` in a one-off DARE recipe of the whole selection
        (``drop_rate`` for each), waited for."""
        if not 0 <= index < len(sel["models"]):
            raise RecipeError(f"no fine-tune number {index}; the selection has {len(sel['models'])}")
        recipe = recipe_from_dict({
            "method": "dare_linear", "base": sel["base"], "seed": seed, "parameters": {"rescale": rescale},
            "models": [{"model": m, "drop_rate": drop_rate} for m in sel["models"]],
        })
        return self.context.wait(self.start_dare_preview("", recipe, sel["models"][index], sel=sel, tensor=tensor))

    def _preview_tensor(self, sel: Selection | None, model: str) -> str:
        report = self.deltas.cached_report(sel) if sel else None
        if report is not None and model in sel["models"]:
            return default_preview_tensor(report.tensors, sel["labels"][sel["models"].index(model)])
        with Checkpoint.open(model) as ck:  # headers only: the largest matrix
            mats = [(i.numel, n) for n, i in ck.tensors.items() if len(i.shape) == 2 and "embed" not in n]
            if not mats:
                raise RecipeError("the fine-tune has no weight matrices to preview")
            return max(mats)[1]


__all__ = ["MergeFacade", "MergeResult"]
