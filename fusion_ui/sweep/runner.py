"""One worker of a sweep: a loaded model of the base that cells are merged into, and the evals.

The local executor runs one :class:`CellRunner` in the process; the Ray executor runs one per
worker as an actor. Either way a cell is a recipe in and a :class:`CellResult` out.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusion_ui.progress import CancelToken
from fusion_ui.recipe import Recipe
from fusion_ui.sweep.cells import Cell

if TYPE_CHECKING:
    from fusion_ui.evals.harness import HarnessSpec
    from fusion_ui.evals.sets import EvalItem
    from fusion_ui.sweep.spec import Sweep


@dataclass(frozen=True)
class CellResult:
    """What one cell gave: a score per skill and where its time went."""

    key: str
    scores: dict[str, float]  # skill -> metric (0 to 1)
    merge_s: float  # merging into the loaded model
    eval_s: float  # generating and scoring
    warnings: tuple[str, ...] = ()  # the merge plan's (the first cell of each runner only)

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / len(self.scores)

    def row(self, cell: Cell, fingerprint: str) -> dict[str, Any]:
        return {
            "cell": cell.key,
            "sweep": fingerprint,
            **cell.values,
            **self.scores,
            "mean": self.mean,
            "merge_s": self.merge_s,
            "eval_s": self.eval_s,
            "seconds": self.merge_s + self.eval_s,
        }


class CellRunner:
    """One loaded model of the base's architecture that cells are merged into, and the evals.

    Used in the process by the local executor, and as a Ray actor (one per worker, models kept
    warm across cells) by the Ray executor: it takes a recipe, never weights, and reads the
    models itself, so the merge is the same bit for bit wherever it runs.
    """

    def __init__(
        self,
        model_ref: str,
        items: Sequence[EvalItem],
        *,
        metric: str = "exact_match",
        batch_size: int = 200,
        device: str = "auto",
        allow_large_deltas: bool = False,
        harness: HarnessSpec | None = None,
    ) -> None:
        from fusion_ui.device import resolve_device
        from fusion_ui.evals import load_causal_lm

        self.device = resolve_device(device)
        self.model, self.tokenizer = load_causal_lm(model_ref, device=self.device)
        self.harness = None
        if harness is not None:  # lm-evaluation-harness tasks score the cells, not the items
            from fusion_ui.evals.harness import HarnessScorer

            self.harness = HarnessScorer(self.model, self.tokenizer, harness, device=self.device)
        self.items = list(items)
        self.metric = metric
        self.batch_size = batch_size
        self.allow_large_deltas = allow_large_deltas
        self.cells_run = 0

    def run(
        self, recipe: Recipe | dict[str, Any], key: str, cancel: CancelToken | None = None
    ) -> CellResult:
        """Merge ``recipe`` into the model (every tensor is overwritten) and score it."""
        from fusion_ui.evals import evaluate
        from fusion_ui.io.writer import ModelSink
        from fusion_ui.merge import plan_merge, run_merge

        if not isinstance(recipe, Recipe):
            recipe = Recipe.model_validate(recipe)
        start = time.perf_counter()
        # The pre-flight check of the deltas (is each model a fine-tune of the base?) depends on
        # the models only, which no axis changes: once per runner.
        with plan_merge(
            recipe, allow_large_deltas=self.allow_large_deltas, preflight=self.cells_run == 0
        ) as plan:
            run_merge(plan, ModelSink(self.model), device=self.device, cancel=cancel)
            warnings = tuple(plan.warnings) if self.cells_run == 0 else ()
        self.cells_run += 1
        merged = time.perf_counter()
        if self.harness is not None:
            scores = self.harness.scores()
        else:
            table = evaluate(
                self.model,
                self.tokenizer,
                self.items,
                device=self.device,
                batch_size=self.batch_size,
            )
            scores = {str(row["skill"]): float(row[self.metric]) for _, row in table.iterrows()}
        return CellResult(key, scores, merged - start, time.perf_counter() - merged, warnings)


def model_ref(recipe: Recipe) -> str:
    """The model whose architecture every cell is merged into: the base (or the first model)."""
    return recipe.base or recipe.models[0].model


def runner_arguments(sweep: Sweep) -> dict[str, Any]:
    """What a :class:`CellRunner` of ``sweep`` is made from (plain data: a Ray actor gets it)."""
    return {
        "model_ref": model_ref(sweep.recipe),
        "items": list(sweep.items),
        "metric": sweep.spec.eval.metric,
        "batch_size": sweep.spec.eval.batch_size,
        "harness": sweep.harness,
    }


__all__ = ["CellResult", "CellRunner", "model_ref", "runner_arguments"]
