"""The Cocktail tab's facade: LM-Cocktail's merge weights from a few examples of the target task.

Each candidate's loss on the examples is computed as a job (one model loaded at a time);
weights follow from the losses without another model run whenever the temperature or the base
floor moves; the chosen weights become an ordinary ``linear`` recipe that records where they
came from, merged into the session's preview model like any other merge.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

from fusion_ui import figures
from fusion_ui.app.context import AppContext
from fusion_ui.errors import InputError
from fusion_ui.evals import EvalItem, load_eval_set
from fusion_ui.recipe import Recipe
from fusion_ui.runtime.jobs import Job, JobContext
from fusion_ui.tune.cocktail import CocktailResult, cocktail_recipe, cocktail_weights

MAX_EXAMPLES = 200  # the paper uses 5; each is scored by every candidate
DEFAULT_TEMPERATURE = 5.0  # the paper's code (its docstring says 3)
ARROW = "=>"  # a typed example: "prompt => answer"


class CocktailFacade:
    def __init__(self, context: AppContext) -> None:
        self.context = context

    def demo_examples(self) -> dict[str, Path]:
        """The example files shipped with the demo family (name -> file), e.g. 5 items of a skill."""
        demo = self.context.demo
        if demo is None:
            return {}
        return {p.stem: p for p in sorted((demo.root / "cocktail").glob("*.jsonl"))}

    def examples(self, text: str, upload: str | None = None, demo: str | None = None) -> list[EvalItem]:
        """Examples from typed lines (JSON objects with prompt and answer, or ``prompt => answer``),
        an uploaded JSONL/CSV file and/or a shipped example file."""
        items: list[EvalItem] = []
        if demo:
            files = self.demo_examples()
            if demo not in files:
                raise InputError(f"no demo example set {demo!r}; there are: {', '.join(files) or 'none'}")
            items += load_eval_set(files[demo])
        if upload:
            size = Path(upload).stat().st_size
            if size > self.context.limits.max_upload_bytes:
                raise InputError(f"the uploaded examples are {size / 2**20:.1f} MiB; the app takes up to "
                                 f"{self.context.limits.max_upload_bytes / 2**20:.0f} MiB")
            items += load_eval_set(upload)
        items += parse_typed_examples(text or "")
        if not items:
            raise InputError("give a few examples of the target task: type them (one per line, "
                             f"`prompt {ARROW} answer`), upload a JSONL/CSV file, or pick a demo set")
        if len(items) > MAX_EXAMPLES:
            raise InputError(f"{len(items)} examples; the app scores up to {MAX_EXAMPLES} (the paper uses 5)")
        return items

    def start(self, session: str, candidates: Sequence[str], examples: Sequence[EvalItem], *,
              temperature: float = DEFAULT_TEMPERATURE, base: str | None = None,
              base_floor: float = 0.0) -> Job[CocktailResult]:
        """Each candidate's loss on the examples, and the weights, as a job of the session."""
        temperature, base_floor = check_temperature(temperature), check_floor(base_floor)
        if len(candidates) < 2:
            raise InputError("pick at least two candidates (the fine-tune and its base, say): one model has "
                             "nothing to be mixed with")
        refs, items = list(candidates), list(examples)

        def run(ctx: JobContext) -> CocktailResult:
            return cocktail_weights(refs, items, temperature=temperature, base=base, base_floor=base_floor,
                                    device=self.context.device, progress=ctx.progress, cancel=ctx.cancel)

        return self.context.submit(session, "cocktail", run, label="cocktail losses")

    @staticmethod
    def reweight(result: CocktailResult, temperature: float, base_floor: float = 0.0) -> CocktailResult:
        """New weights from the same losses (no model runs)."""
        return result.reweight(check_temperature(temperature), check_floor(base_floor))

    @staticmethod
    def recipe(result: CocktailResult, weights: Sequence[float] | None = None) -> Recipe:
        """The ``linear`` recipe of these weights (the computed ones, or the user's edits)."""
        if weights is not None:
            checked = []
            for w, label in zip(weights, result.labels, strict=True):
                try:
                    value = float(w)
                except (TypeError, ValueError):
                    raise InputError(f"the weight of {label} must be a number, got {w!r}") from None
                if not math.isfinite(value) or value < 0:
                    raise InputError(f"the weight of {label} must be a number of 0 or more, got {w!r}")
                checked.append(value)
            if sum(checked) <= 0:
                raise InputError("at least one weight must be above 0")
            weights = checked
        return cocktail_recipe(result, weights=weights)

    @staticmethod
    def chart(result: CocktailResult) -> go.Figure:
        return figures.cocktail_chart(result.labels, result.losses, result.weights,
                                      temperature=result.temperature, n_examples=result.n_examples)


def parse_typed_examples(text: str) -> list[EvalItem]:
    """Examples typed one per line: a JSON object with ``prompt`` and ``answer``, or
    ``prompt => answer``. Blank lines are skipped; anything else is an InputError naming the line."""
    items = []
    for k, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"example line {k} is not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(
                    row.get("answer"), str):
                raise InputError(f"example line {k} needs string fields \"prompt\" and \"answer\"")
            items.append(EvalItem(row["prompt"], row["answer"], str(row.get("skill", "typed"))))
        elif ARROW in line:
            prompt, answer = line.split(ARROW, 1)
            if not prompt.strip() or not answer.strip():
                raise InputError(f"example line {k} has an empty prompt or answer: `{line}`")
            items.append(EvalItem(prompt.rstrip(), answer.strip(), "typed"))
        else:
            raise InputError(f"example line {k} is neither a JSON object nor `prompt {ARROW} answer`: `{line[:80]}`")
    return items


def check_temperature(value: float) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise InputError(f"the temperature must be a number, got {value!r}") from None
    if not (math.isfinite(t) and 0 < t <= 100):
        raise InputError(f"the temperature must be above 0 and at most 100, got {value!r}")
    return t


def check_floor(value: float) -> float:
    try:
        f = float(value or 0.0)
    except (TypeError, ValueError):
        raise InputError(f"the base floor must be a number, got {value!r}") from None
    if not (math.isfinite(f) and 0 <= f < 1):
        raise InputError(f"the base floor must be at least 0 and below 1, got {value!r}")
    return f


__all__ = ["DEFAULT_TEMPERATURE", "MAX_EXAMPLES", "CocktailFacade", "parse_typed_examples"]
