"""Answer-only perplexity: how likely the model finds the expected answer after the prompt.

This is also the loss LM-Cocktail turns into merge weights (cross-entropy on answer tokens only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fusion_ui.device import resolve_device
from fusion_ui.evals.generate import pad_id_of
from fusion_ui.evals.sets import EvalItem


def continuation(prompt: str, answer: str) -> str:
    """The answer as text following the prompt: one space between them unless either has one."""
    if prompt and answer and not prompt[-1].isspace() and not answer[0].isspace():
        return " " + answer
    return answer


def encode_pair(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> tuple[list[int], int]:
    """Ids of prompt + answer and how many of them are the prompt (tokenized apart, so the
    boundary is exact even for BPE vocabularies that would merge across it)."""
    head = tokenizer.encode(prompt, add_special_tokens=True)
    tail = tokenizer.encode(continuation(prompt, answer), add_special_tokens=False)
    return head + tail, len(head)


@torch.no_grad()
def answer_nll(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
) -> list[tuple[float, int]]:
    """Per item: summed negative log-likelihood (nats) of the answer tokens, and their count."""
    dev = resolve_device(device)
    model.to(dev)
    model.eval()
    pad = pad_id_of(tokenizer)
    results: list[tuple[float, int]] = []
    for start in range(0, len(items), batch_size):
        chunk = [encode_pair(tokenizer, it.prompt, it.answer) for it in items[start : start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (B, T), right-padded
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)  # which target positions are answer tokens
        for i, (row, n_prompt) in enumerate(chunk):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            scored[i, n_prompt : len(row)] = True
        ids, mask, scored = ids.to(dev), mask.to(dev), scored.to(dev)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts tokens 1..T-1
        target = ids[:, 1:]
        token_lp = logp.gather(-1, target[..., None]).squeeze(-1)  # (B, T-1)
        keep = scored[:, 1:]
        nll = -(token_lp * keep).sum(-1)
        results.extend((float(n), int(k)) for n, k in zip(nll.tolist(), keep.sum(-1).tolist(), strict=True))
    return results


def perplexity(nll_and_counts: Sequence[tuple[float, int]]) -> float:
    """exp(total NLL / total answer tokens), pooled over items."""
    total = sum(n for n, _ in nll_and_counts)
    count = sum(k for _, k in nll_and_counts)
    if count == 0:
        return float("nan")
    return math.exp(total / count)
