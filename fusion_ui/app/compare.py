"""The Compare tab's facade: one column per model (the base, every fine-tune, the session's
merge), a prompt continued by each as a job, and scoring every column on eval sets."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fusion_ui.app.context import AppContext, MergeRef
from fusion_ui.app.selection import LIMITS, Limits, Selection
from fusion_ui.errors import InputError, RecipeError
from fusion_ui.evals import EvalItem, limit_per_skill, load_eval_set
from fusion_ui.evals.run import predict, summarize
from fusion_ui.evals.stream import Sampling, check_fits, context_size, stream_continuation
from fusion_ui.io.writer import ModelSink
from fusion_ui.merge import plan_merge, run_merge
from fusion_ui.progress import CancelToken, Progress
from fusion_ui.recipe import Recipe
from fusion_ui.runtime.cache import LoadedModel
from fusion_ui.runtime.jobs import Job, JobContext

EVAL_CHUNK = 16  # items scored between two cancel checks and progress reports


@dataclass(frozen=True)
class Column:
    """One Compare column: a model folder / hub id, or this session's preview merge."""

    label: str
    source: str  # folder or hub id; for the merge, the recipe's reference model
    merge: MergeRef | None = None  # set for the merge column

    @property
    def is_merge(self) -> bool:
        return self.merge is not None


@dataclass(frozen=True)
class GenerationSettings:
    """How the Compare tab generates: greedy by default so columns are comparable."""

    max_new_tokens: int = 24
    greedy: bool = True
    temperature: float = 0.8  # only when not greedy
    seed: int = 0  # only when not greedy
    stop_at_newline: bool = True

    @classmethod
    def checked(cls, max_new_tokens: Any, greedy: Any, temperature: Any, seed: Any, stop_at_newline: Any,
                *, limits: Limits = LIMITS) -> GenerationSettings:
        """Settings from a form or an API call, every value checked (InputError naming it)."""
        n = _whole_number(max_new_tokens, "max new tokens")
        if not 1 <= n <= limits.max_new_tokens:
            raise InputError(f"max new tokens must be 1 to {limits.max_new_tokens}, got {n}")
        s = _whole_number(seed if seed is not None else 0, "the sampling seed")
        if not 0 <= s < 2**63:
            raise InputError(f"the sampling seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
        try:
            t = float(temperature)
        except (TypeError, ValueError):
            raise InputError(f"the temperature must be a number, got {temperature!r}") from None
        if not (math.isfinite(t) and 0 < t <= 10):
            raise InputError(f"the temperature must be above 0 and at most 10, got {temperature!r}")
        return cls(n, bool(greedy), t, s, bool(stop_at_newline))

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.greedy, self.temperature, self.seed)


def _whole_number(value: Any, what: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return int(f)


class CompareFacade:
    def __init__(self, context: AppContext) -> None:
        self.context = context

    def columns(self, sel: Selection | None, merged: MergeRef | None) -> list[Column]:
        """The Compare columns: base, every fine-tune, then the merge (if there is one)."""
        if not sel:
            return []
        cols = [Column("base", sel["base"])]
        cols += [Column(label, ref) for label, ref in zip(sel["labels"], sel["models"], strict=True)]
        if merged is not None:
            cols.append(Column("merge", merged.recipe.base or sel["base"], merged))
        return cols

    def model_for(self, column: Column, session: str, cancel: CancelToken | None = None) -> LoadedModel:
        """A column's model: from the cache, or the session's merge (merged again if it was evicted
        or replaced since)."""
        if column.merge is None:
            return self.context.model(column.source)
        recipe: Recipe = column.merge.recipe
        item = self.context.preview_model(session, recipe.base or recipe.models[0].model)
        if item.recipe_yaml != recipe.to_yaml():
            item.recipe_yaml = None
            with plan_merge(recipe, allow_large_deltas=column.merge.allow_large_deltas) as plan:
                run_merge(plan, ModelSink(item.model), device=self.context.device, cancel=cancel)
            item.recipe_yaml = recipe.to_yaml()
        return item

    def check_prompt(self, prompt: Any) -> str:
        """The prompt, if it may be generated from (not empty, within the character bound)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("type a prompt or pick an example first")
        if len(prompt) > self.context.limits.max_prompt_chars:
            raise InputError(
                f"the prompt has {len(prompt):,} characters; the app takes up to "
                f"{self.context.limits.max_prompt_chars:,}. Shorten it"
            )
        return prompt

    def start_generation(
        self,
        session: str,
        columns: Sequence[Column],
        prompt: str,
        settings: GenerationSettings = GenerationSettings(),  # noqa: B008 (frozen)
    ) -> Job[list[str]]:
        """Continue ``prompt`` with each column's model, one after another, as a job.

        The job emits ``(column, piece)`` as text appears and returns every column's text. A new
        generation of the session replaces one still running.
        """
        prompt = self.check_prompt(prompt)
        settings = GenerationSettings.checked(settings.max_new_tokens, settings.greedy, settings.temperature,
                                              settings.seed, settings.stop_at_newline, limits=self.context.limits)
        cols = list(columns)

        def run(ctx: JobContext) -> list[str]:
            texts = [""] * len(cols)
            for i, column in enumerate(cols):
                ctx.check()
                ctx.progress(Progress(i, len(cols), f"generating with {column.label}"))
                item = self.model_for(column, session, ctx.cancel)
                check_fits(item.model, item.tokenizer, prompt, settings.max_new_tokens, column.label)
                for piece in stream_continuation(item.model, item.tokenizer, prompt,
                                                 max_new_tokens=settings.max_new_tokens, sampling=settings.sampling,
                                                 stop_at_newline=settings.stop_at_newline, cancel=ctx.cancel):
                    texts[i] += piece
                    ctx.emit((i, piece))
            ctx.progress(Progress(len(cols), len(cols), "done"))
            return texts

        return self.context.submit(session, "generate", run, label="generation")

    def generate_side_by_side(
        self,
        session: str,
        columns: Sequence[Column],
        prompt: str,
        settings: GenerationSettings = GenerationSettings(),  # noqa: B008 (frozen)
    ) -> Iterator[list[str]]:
        """The texts so far (one per column) after every new piece, as :meth:`start_generation`
        writes them. Closing the iterator cancels the generation."""
        return watch_texts(self.start_generation(session, columns, prompt, settings), len(columns))

    def eval_items(self, skills: Sequence[str], upload: str | None) -> list[EvalItem]:
        """Items from the demo eval sets named in ``skills`` and/or an uploaded JSONL/CSV file."""
        items: list[EvalItem] = []
        demo = self.context.demo
        if demo is not None:
            for skill in skills:
                if skill in demo.eval_sets:
                    items += load_eval_set(demo.eval_sets[skill])
        if upload:
            try:
                size = Path(upload).stat().st_size
            except OSError as exc:
                raise InputError(f"cannot read the uploaded file: {exc.strerror or exc}") from None
            limit = self.context.limits.max_upload_bytes
            if size > limit:
                raise InputError(f"the uploaded eval set is {size / 2**20:.1f} MiB; the app takes up to "
                                 f"{limit / 2**20:.0f} MiB")
            items += load_eval_set(upload)
        if not items:
            raise RecipeError("choose at least one demo eval set or upload a .jsonl / .csv file")
        return items

    def start_evaluation(
        self, session: str, columns: Sequence[Column], items: Sequence[EvalItem], *, per_skill: int | None = 20,
    ) -> Job[pd.DataFrame]:
        """Score every column's model on ``items``, as a job: one row per model × skill."""
        items = limit_per_skill(items, per_skill)
        if not items:
            raise RecipeError("the eval set is empty")
        limit = self.context.limits.max_eval_items
        if len(items) > limit:
            raise InputError(
                f"{len(items):,} eval items; the app scores up to {limit:,} per model in one run. "
                "Lower “items per skill” or use `fusion-ui eval` for a full run"
            )
        cols = list(columns)

        def run(ctx: JobContext) -> pd.DataFrame:
            frames = []
            total, done = len(cols) * len(items), 0
            for column in cols:
                ctx.check()
                item = self.model_for(column, session, ctx.cancel)
                budget = max(len(item.tokenizer.encode(" " + it.answer, add_special_tokens=False)) for it in items) + 2
                _check_items_fit(item, items, budget, column.label)
                for k in range(0, len(items), EVAL_CHUNK):
                    ctx.check()
                    chunk = items[k : k + EVAL_CHUNK]
                    ctx.progress(Progress(done, total, f"scoring {column.label}"))
                    frames.append(predict(item.model, item.tokenizer, chunk, model_name=column.label,
                                          max_new_tokens=budget, device=self.context.device))
                    done += len(chunk)
            ctx.progress(Progress(total, total, "done"))
            return summarize(pd.concat(frames, ignore_index=True))

        return self.context.submit(session, "score", run, label="scoring")

    def evaluate(self, session: str, columns: Sequence[Column], items: Sequence[EvalItem], *,
                 per_skill: int | None = 20, progress: Any = None) -> pd.DataFrame:
        """:meth:`start_evaluation` and wait for it."""
        return self.context.wait(self.start_evaluation(session, columns, items, per_skill=per_skill), progress)


def _check_items_fit(item: LoadedModel, items: Sequence[EvalItem], budget: int, label: str) -> None:
    context = context_size(item.model)
    if context is None:
        return
    for k, it in enumerate(items):
        n = len(item.tokenizer(it.prompt)["input_ids"])
        if n + budget > context:
            raise InputError(f"eval item {k + 1} is {n} tokens long; {label} reads at most {context} "
                             f"(with {budget} tokens for the answer)")


def watch_texts(job: Job[list[str]], n_columns: int) -> Iterator[list[str]]:
    """Every column's text so far, after each piece a generation job emits; then the final texts.

    Closing the iterator (the caller went away, a new generation began) cancels the job.
    """
    texts = [""] * n_columns
    seen = 0
    try:
        for view in job.watch(every=0.25):
            pieces = job.items(seen)
            seen += len(pieces)
            for i, piece in pieces:
                texts[i] += piece
            if pieces:
                yield list(texts)
            if view.state.final:
                break
        job.outcome()  # raises the job's error (or CancelledError)
        yield list(texts)
    finally:
        if job._runner is not None and not job.state.final:
            job._runner.cancel_job(job)


__all__ = ["Column", "CompareFacade", "GenerationSettings", "watch_texts"]
