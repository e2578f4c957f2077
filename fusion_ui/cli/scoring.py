"""What every "score a trained composition" command shares (``fusion-ui compose eval|generate``,
``fusion-ui frozen eval|generate``): the rows of models to score side by side on an eval set, the
printed tables, and the printed greedy continuations.

Not a sub-command: no ``register``. Light at import (no torch).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# answer_nll(model, tokenizer, items, batch_size=...) -> [(summed nats, answer tokens)] per item
NllFn = Callable[..., list[tuple[float, int]]]


@dataclass(frozen=True)
class ScoredModel:
    """One row of the table: a model and how its answer perplexity is computed."""

    name: str  # the row label
    model: Any  # anything with a causal LM's call signature
    answer_nll: NllFn | None = None  # its own answer scorer (None: the evals' generic one)
    perplexity: bool = True  # False: no answer perplexity is defined for it (left blank)


def print_scores(
    rows: Sequence[ScoredModel],
    tokenizer: Any,
    items: Sequence[Any],
    *,
    metric: str,
    perplexity: bool,
    batch_size: int,
    device: str,
) -> None:
    """Greedy-generation scores (``metric``, %) of each model per skill, then (``perplexity``)
    answer-only perplexity, as tables with one row per model."""
    import pandas as pd

    from fusion_ui.evals import predict, score_table, summarize

    frames = []
    for row in rows:
        generic = perplexity and row.perplexity and row.answer_nll is None
        frame = predict(row.model, tokenizer, items, model_name=row.name, device=device,
                        batch_size=batch_size, with_perplexity=generic)  # fmt: skip
        if perplexity and row.perplexity and row.answer_nll is not None:
            nll = row.answer_nll(row.model, tokenizer, items, batch_size=batch_size)
            frame["answer_nll"] = [n for n, _ in nll]
            frame["answer_tokens"] = [k for _, k in nll]
        frames.append(frame)
    results = summarize(pd.concat(frames, ignore_index=True))
    print(f"{metric} (%), {len(items)} item(s)")
    print((score_table(results, metric) * 100).round(1).to_string())
    if perplexity:
        print("\nanswer-only perplexity")
        print(score_table(results, "perplexity").round(3).to_string())


def print_generations(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, device: str
) -> None:
    """Each prompt followed by the model's greedy continuation, one per line."""
    from fusion_ui.evals import greedy_generate

    texts = greedy_generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, device=device)
    for prompt, text in zip(prompts, texts, strict=True):
        print(f"{prompt}{text}")
    sys.stdout.flush()
