"""Evaluate models on eval sets and return pandas tables (one row per model x skill)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from fusion_ui.device import resolve_device
from fusion_ui.errors import ModelSourceError
from fusion_ui.evals.generate import greedy_generate
from fusion_ui.evals.perplexity import answer_nll, perplexity
from fusion_ui.evals.scoring import METRICS, metric_fn
from fusion_ui.evals.sets import EvalItem


def load_causal_lm(
    source: str, *, device: str | torch.device | None = "auto", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """A model and its tokenizer from a folder or hub id (the hub only if online access is allowed)."""
    dev = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load a causal LM from {source!r}: {exc}") from exc
    return model.to(dev).eval(), tokenizer


def answer_budget(tokenizer: PreTrainedTokenizerBase, items: Sequence[EvalItem], slack: int = 2) -> int:
    """Enough new tokens for the longest expected answer, plus a little slack."""
    return max(len(tokenizer.encode(" " + it.answer, add_special_tokens=False)) for it in items) + slack


@torch.no_grad()
def predict(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    model_name: str = "model",
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = "auto",
    with_perplexity: bool = False,
) -> pd.DataFrame:
    """One row per item: prompt, answer, prediction and its scores (and answer NLL if asked)."""
    budget = max_new_tokens if max_new_tokens is not None else answer_budget(tokenizer, items)
    preds = greedy_generate(
        model, tokenizer, [it.prompt for it in items], max_new_tokens=budget, batch_size=batch_size, device=device
    )
    frame = pd.DataFrame(
        {
            "model": model_name,
            "skill": [it.skill for it in items],
            "prompt": [it.prompt for it in items],
            "answer": [it.answer for it in items],
            "prediction": [p.strip() for p in preds],
        }
    )
    for name in METRICS:
        fn = metric_fn(name)
        frame[name] = [fn(p, a) for p, a in zip(preds, frame["answer"], strict=True)]
    if with_perplexity:
        nll = answer_nll(model, tokenizer, items, batch_size=batch_size, device=device)
        frame["answer_nll"] = [n for n, _ in nll]
        frame["answer_tokens"] = [k for _, k in nll]
    return frame


def summarize(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per model x skill: item count, exact-match and contains rates, pooled answer perplexity."""
    rows = []
    for (model, skill), group in predictions.groupby(["model", "skill"], sort=False):
        row = {"model": model, "skill": skill, "n": len(group)}
        for name in METRICS:
            row[name] = float(group[name].mean())
        if "answer_nll" in group:
            row["perplexity"] = perplexity(list(zip(group["answer_nll"], group["answer_tokens"], strict=True)))
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    model_name: str = "model",
    **options: object,
) -> pd.DataFrame:
    """``summarize(predict(...))``: the per-skill result table of one model."""
    return summarize(predict(model, tokenizer, items, model_name=model_name, **options))  # type: ignore[arg-type]


def evaluate_sources(
    sources: Sequence[str] | Mapping[str, str],
    items: Sequence[EvalItem],
    *,
    device: str | torch.device | None = "auto",
    **options: object,
) -> pd.DataFrame:
    """Load each model (folder or hub id), evaluate it, free it; one stacked result table."""
    named = dict(sources) if isinstance(sources, Mapping) else {s: s for s in sources}
    tables = []
    for name, source in named.items():
        model, tokenizer = load_causal_lm(source, device=device)
        tables.append(evaluate(model, tokenizer, items, model_name=name, device=device, **options))
        del model
    return pd.concat(tables, ignore_index=True)


def score_table(results: pd.DataFrame, metric: str = "exact_match") -> pd.DataFrame:
    """Model x skill pivot of one metric, in the order models and skills first appear."""
    table = results.pivot(index="model", columns="skill", values=metric)
    return table.loc[results["model"].unique(), results["skill"].unique()]
