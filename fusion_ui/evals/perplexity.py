"""Answer-only perplexity: how likely the model finds the expected answer after the prompt.

This is also the loss LM-Cocktail turns into merge weights (cross-entropy on answer tokens only,
with EOS after the answer: ``with_eos=True``; see :mod:`fusion_ui.tune.cocktail`). One scoring
path for both: :func:`encode_scored` turns an item into the ids to run and the positions to
score, :func:`score_pairs` runs them in batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fusion_ui.device import resolve_device
from fusion_ui.evals.generate import pad_id_of
from fusion_ui.evals.sets import EvalItem

# on_batch(items_done, items_total), called after each batch: progress, and a place to cancel
BatchCallback = Callable[[int, int], None]


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


@dataclass(frozen=True)
class ScoredPair:
    """One item as the model reads it: ``ids[n_prompt:]`` are scored, the rest is context."""

    ids: tuple[int, ...]  # (T,) prompt tokens, then the scored answer tokens (and EOS)
    n_prompt: int  # context tokens before the first scored one (>= 1: something predicts it)
    dropped_prompt: int = 0  # prompt tokens cut to fit the context (from the prompt's start)
    dropped_answer: int = 0  # scored tokens cut from the end (only when the answer alone overflows)

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_prompt or self.dropped_answer)


def encode_scored(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    answer: str,
    *,
    with_eos: bool = False,
    max_length: int | None = None,
) -> ScoredPair:
    """Ids to run and score for one item (:func:`encode_pair`, plus EOS and the context limit).

    ``with_eos`` scores the tokenizer's EOS after the answer (as a model trained on
    ``prompt answer EOS`` was taught to stop); a tokenizer without one scores the answer only.

    Past ``max_length`` tokens the item is cut, never dropped: it keeps a leading BOS (when the
    tokenizer adds one), then the *end* of the prompt, then the whole answer (and EOS). Only
    when the answer alone does not fit beside BOS and one prompt token is the answer's end cut.
    """
    ids, n_prompt = encode_pair(tokenizer, prompt, answer)
    if with_eos and tokenizer.eos_token_id is not None:
        ids = ids + [int(tokenizer.eos_token_id)]
    if max_length is None or len(ids) <= max_length:
        return ScoredPair(tuple(ids), n_prompt)
    head, tail = ids[:n_prompt], ids[n_prompt:]
    bos = tokenizer.bos_token_id
    keep_bos = 1 if bos is not None and head and head[0] == bos and len(head) > 1 else 0
    room = max_length - keep_bos - len(tail)  # prompt tokens that fit beside the whole answer
    if room >= 1:
        kept_head = head[:keep_bos] + head[len(head) - room :]
        return ScoredPair(tuple(kept_head + tail), len(kept_head), dropped_prompt=len(head) - len(kept_head))
    # The answer alone overflows: BOS, the prompt's last token, the start of the answer.
    if max_length < keep_bos + 2:
        keep_bos = 0
    kept_head = head[:keep_bos] + head[-1:]
    kept_tail = tail[: max(1, max_length - len(kept_head))]
    return ScoredPair(
        tuple(kept_head + kept_tail), len(kept_head),
        dropped_prompt=len(head) - len(kept_head), dropped_answer=len(tail) - len(kept_tail),
    )


def encode_items(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    with_eos: bool = False,
    max_length: int | None = None,
) -> list[ScoredPair]:
    """:func:`encode_scored` of every item."""
    return [encode_scored(tokenizer, it.prompt, it.answer, with_eos=with_eos, max_length=max_length) for it in items]


@torch.no_grad()
def score_pairs(
    model: nn.Module,
    pairs: Sequence[ScoredPair],
    *,
    pad_id: int,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
    on_batch: BatchCallback | None = None,
) -> list[tuple[float, int]]:
    """Per pair: summed negative log-likelihood (nats) of its scored tokens, and their count.

    Rows are right-padded with ``pad_id`` (any id: padding is masked out of attention and never
    scored, so a tokenizer without a pad token is fine), which keeps every real token at the
    position it has alone (absolute-position models such as GPT-2 included).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    dev = resolve_device(device)
    model.to(dev)
    model.eval()
    results: list[tuple[float, int]] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        width = max(len(p.ids) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (B, T), right-padded
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)  # which target positions are answer tokens
        for i, pair in enumerate(chunk):
            ids[i, : len(pair.ids)] = torch.tensor(pair.ids)
            mask[i, : len(pair.ids)] = 1
            scored[i, pair.n_prompt : len(pair.ids)] = True
        ids, mask, scored = ids.to(dev), mask.to(dev), scored.to(dev)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts tokens 1..T-1
        target = ids[:, 1:]
        token_lp = logp.gather(-1, target[..., None]).squeeze(-1)  # (B, T-1)
        keep = scored[:, 1:]
        # where(), not a product: a -inf log-probability on a padded position must not become NaN
        nll = -torch.where(keep, token_lp, torch.zeros_like(token_lp)).sum(-1)
        results.extend((float(n), int(k)) for n, k in zip(nll.tolist(), keep.sum(-1).tolist(), strict=True))
        if on_batch is not None:
            on_batch(len(results), len(pairs))
    return results


def answer_nll(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    batch_size: int = 32,
    device: str | torch.device | None = "auto",
    with_eos: bool = False,
    max_length: int | None = None,
    on_batch: BatchCallback | None = None,
) -> list[tuple[float, int]]:
    """Per item: summed negative log-likelihood (nats) of the answer tokens, and their count
    (``with_eos``: EOS counted too; ``max_length``: cut as :func:`encode_scored` says)."""
    pairs = encode_items(tokenizer, items, with_eos=with_eos, max_length=max_length)
    return score_pairs(
        model, pairs, pad_id=pad_id_of(tokenizer), batch_size=batch_size, device=device, on_batch=on_batch
    )


def perplexity(nll_and_counts: Sequence[tuple[float, int]]) -> float:
    """exp(total NLL / total answer tokens), pooled over items."""
    total = sum(n for n, _ in nll_and_counts)
    count = sum(k for _, k in nll_and_counts)
    if count == 0:
        return float("nan")
    return math.exp(total / count)
