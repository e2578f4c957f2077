"""lm-evaluation-harness tasks on a loaded model: the scores a sweep cell records when its eval
is a real benchmark rather than the quick string evals.

An optional extra (``pip install "fusion-ui[lm-eval]"``): nothing here imports ``lm_eval`` until
a harness eval is asked for, and a missing install is an error that says how to add it.

    spec = HarnessSpec(tasks=["arc_easy"], limit=100, metric="acc")
    check_tasks(spec)                             # unknown task names fail before any merge
    scorer = HarnessScorer(model, tokenizer, spec)
    scorer.scores()                               # {"arc_easy": 0.61}: the model as it is now

The model is wrapped once (``HFLM(pretrained=model)``) and scored again after every in-place
merge: the harness reads the weights at each call. Its response cache stays off (a cell must
never be answered from the previous cell's outputs) and no stderr bootstrap is run (a sweep
compares cells by their means). Tasks are looked up in ``include_path`` alone when they are all
there (tens of milliseconds); the harness's whole built-in index (thousands of tasks, seconds to
build) is read only for a task that is not.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fusion_ui.errors import InputError, RecipeError

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

EXTRA = 'pip install "fusion-ui[lm-eval]"'


class HarnessSpec(BaseModel):
    """Which harness tasks score a model, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: list[str] = Field(min_length=1)  # harness task names (built-in or in include_path)
    include_path: str | None = None  # a folder of task YAMLs (e.g. over local JSONL files)
    limit: int | None = None  # the first N documents of each task; None: all
    num_fewshot: int | None = None  # None: each task's own default
    metric: str = "acc"  # the metric read from each task's results (its first filter)
    batch_size: int = 32

    @field_validator("tasks", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("limit", "batch_size")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be a whole number >= 1, got {v}")
        return v

    def fingerprint_data(self) -> dict[str, Any]:
        """The spec and the text of every task file under ``include_path``: what a results file
        made with another task definition must not be resumed from."""
        files: dict[str, str] = {}
        if self.include_path is not None:
            root = Path(self.include_path)
            for path in sorted(root.rglob("*.yaml")) if root.is_dir() else [root]:
                files[str(path.relative_to(root) if root.is_dir() else path.name)] = (
                    hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
                )
        return {**self.model_dump(mode="json", exclude={"include_path"}), "task_files": files}


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as exc:
        raise InputError(
            f"a harness eval needs lm-evaluation-harness, which is not installed: {EXTRA}"
        ) from exc
    return lm_eval


def task_manager(spec: HarnessSpec) -> Any:
    """The harness's task index: ``include_path`` alone when it has every task, else with the
    built-in tasks too. Unknown names are a :class:`RecipeError` that lists close ones."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    include = spec.include_path
    if include is not None and not Path(include).exists():
        raise RecipeError(f"eval.harness.include_path {include} does not exist")
    if include is not None:
        local = TaskManager(include_path=include, include_defaults=False)
        if all(t in local.all_tasks for t in spec.tasks):
            return local
    manager = TaskManager(include_path=include)
    unknown = [t for t in spec.tasks if t not in manager.all_tasks]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        where = f" or in {include}" if include is not None else " (set include_path for your own)"
        raise RecipeError(
            f"eval.harness: unknown task {'; '.join(hints)}: not a harness task{where}"
        )
    return manager


def check_tasks(spec: HarnessSpec) -> None:
    """Fail now, not at the first cell, when the harness is missing or a task is unknown."""
    task_manager(spec)


class HarnessScorer:
    """Scores one loaded model on the harness tasks, again after each in-place change."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        spec: HarnessSpec,
        *,
        device: Any = None,
    ) -> None:
        lm_eval = _lm_eval()
        from lm_eval.models.huggingface import HFLM

        self.spec = spec
        self._evaluate = lm_eval.simple_evaluate
        self._tasks = task_manager(spec)
        self._lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=spec.batch_size,
            device=str(device) if device is not None else None,
        )

    def scores(self) -> dict[str, float]:
        """Task name -> the spec's metric, for the model's current weights."""
        out = self._evaluate(
            model=self._lm,
            tasks=list(self.spec.tasks),
            num_fewshot=self.spec.num_fewshot,
            limit=self.spec.limit,
            task_manager=self._tasks,
            use_cache=None,
            cache_requests=False,
            bootstrap_iters=0,
            log_samples=False,
        )
        return {task: metric_of(out["results"], task, self.spec.metric) for task in self.spec.tasks}


def metric_of(results: dict[str, dict[str, Any]], task: str, metric: str) -> float:
    """``results[task]["<metric>,<filter>"]`` for the first filter, as a float; an error that
    lists the task's metrics when it has no such one."""
    row = results.get(task)
    if row is None:
        raise RecipeError(f"eval.harness: the harness returned no results for task {task!r}")
    keys = [k for k in row if k == metric or k.startswith(metric + ",")]
    if not keys:
        have = sorted({k.split(",")[0] for k in row if "," in k and "_stderr" not in k})
        raise RecipeError(
            f"eval.harness.metric {metric!r} is not a metric of task {task!r}; it reports "
            f"{', '.join(have) or 'none'}"
        )
    return float(row[keys[0]])


def harness_scores(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    spec: HarnessSpec,
    *,
    device: Any = None,
) -> dict[str, float]:
    """One-off scores of ``model`` (for repeated scoring keep a :class:`HarnessScorer`)."""
    return HarnessScorer(model, tokenizer, spec, device=device).scores()


__all__ = ["EXTRA", "HarnessScorer", "HarnessSpec", "check_tasks", "harness_scores", "metric_of"]
