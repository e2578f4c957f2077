"""Training a soft prompt (ID-PT's generator, or a plain prompt) beside a frozen LM, and scoring
answers with it.

Multi-task training is a mix of rows of several tasks (``skill``) in one shuffled set: one
generator learns to write a prompt per input for all of them. The loss is the LM's answer-only
loss (:mod:`fusion_ui.train.lm_loss`, the evals' encoding); ``p(x)`` is computed from the
*prompt* tokens only, so the generator never reads the answer it is scored on. The loop is
:mod:`fusion_ui.train.loop`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from fusion_ui.compose.train import items_sha256
from fusion_ui.device import resolve_device
from fusion_ui.errors import RecipeError
from fusion_ui.evals.generate import pad_id_of
from fusion_ui.evals.perplexity import ScoredPair, encode_items
from fusion_ui.evals.sets import EvalItem
from fusion_ui.frozen.artefact import load_lm_and_encoder, save_prompt
from fusion_ui.frozen.model import PromptedLM, prompt_model
from fusion_ui.frozen.prompts import DEFAULT_ENCODER_PROMPT, DEFAULT_LENGTH, KINDS, PromptKind
from fusion_ui.progress import CancelToken, ProgressCallback
from fusion_ui.train.answers import train_on_answers
from fusion_ui.train.lm_loss import collate_scored
from fusion_ui.train.loop import TrainConfig, TrainResult

# Prompt tuning wants a larger step than the loop's default (1e-3): a few vectors learn alone.
DEFAULT_CONFIG = TrainConfig(lr=1e-2)


def prompted_logits(
    model: PromptedLM, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor
) -> torch.Tensor:
    """Logits (B, T, V) of right-padded rows, ``p(x)`` read from each row's prompt tokens alone."""
    prompt_only = mask * (~scored).long()  # (B, T): the prompt's tokens, not the answer's
    p = model.soft_prompt(ids, prompt_only)  # (B, k, d)
    return model(input_ids=ids, attention_mask=mask, prompt_embeds=p).logits


def scored_logits(
    model: PromptedLM, pairs: Sequence[ScoredPair], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (B, T, V), ids and scored mask of right-padded ``pairs`` (see :func:`prompted_logits`)."""
    dev = model.device
    ids, mask, scored = collate_scored(pairs, pad_id)
    ids, mask, scored = ids.to(dev), mask.to(dev), scored.to(dev)
    return prompted_logits(model, ids, mask, scored), ids, scored


def train_prompt(
    model: PromptedLM,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    config: TrainConfig | None = None,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train ``model.prompt`` in place on ``items``; only it changes (LM and encoder frozen).

    ``max_length`` (default: the LM's context less the prompt) cuts long rows as
    :func:`~fusion_ui.evals.perplexity.encode_scored` does.
    """
    return train_on_answers(
        model, model.prompt.parameters(),
        lambda ids, mask, scored: prompted_logits(model, ids, mask, scored),
        tokenizer, items, config=config or DEFAULT_CONFIG, device=model.device,
        max_length=model.context_length if max_length is None else max_length,
        progress=progress, cancel=cancel,
    )  # fmt: skip


@torch.no_grad()
def answer_nll(
    model: PromptedLM,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    batch_size: int = 32,
    with_eos: bool = False,
    max_length: int | None = None,
) -> list[tuple[float, int]]:
    """Per item: summed NLL (nats) of the answer tokens and their count, as
    :func:`fusion_ui.evals.answer_nll` but with ``p(x)`` read from the prompt only."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    model.eval()
    pairs = encode_items(tokenizer, items, max_length=max_length, with_eos=with_eos)
    pad = pad_id_of(tokenizer)
    results: list[tuple[float, int]] = []
    for start in range(0, len(pairs), batch_size):
        logits, ids, scored = scored_logits(model, pairs[start : start + batch_size], pad)
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # predicts tokens 1..T-1
        token_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
        keep = scored[:, 1:]
        nll = -torch.where(keep, token_lp, torch.zeros_like(token_lp)).sum(-1)
        results.extend(
            (float(n), int(c)) for n, c in zip(nll.tolist(), keep.sum(-1).tolist(), strict=True)
        )
    return results


@dataclass(frozen=True)
class FrozenResult:
    """What :func:`train_frozen` wrote."""

    folder: Path  # the prompt folder
    result: TrainResult
    kind: PromptKind


def train_frozen(
    kind: PromptKind,
    lm: str | os.PathLike[str],
    items: Sequence[EvalItem],
    out: str | os.PathLike[str],
    *,
    encoder: str | os.PathLike[str] | None = None,
    length: int = DEFAULT_LENGTH,
    encoder_prompt_length: int = DEFAULT_ENCODER_PROMPT,
    heads: int | None = None,
    config: TrainConfig | None = None,
    max_length: int | None = None,
    device: str | torch.device | None = "auto",
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FrozenResult:
    """Load the LM (and for ID-PT the ``encoder``; default: the LM itself), train a fresh
    prompt of ``kind`` on ``items``, write it to ``out`` (only at the end: a cancel or a failure
    writes nothing)."""
    config = config or DEFAULT_CONFIG
    if kind not in KINDS:
        raise RecipeError(f"unknown prompt kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "prompt" and encoder is not None:
        raise RecipeError(
            "plain prompt tuning reads no encoder; drop the encoder, or use kind 'idpt'"
        )
    if not items:
        raise RecipeError("the training set is empty: give at least one prompt/answer row")
    dev = resolve_device(device)
    model_lm, tokenizer, source, model_enc, enc_source = load_lm_and_encoder(
        lm, encoder, device=dev
    )
    model = prompt_model(
        model_lm,
        tokenizer,
        kind,
        encoder=model_enc,
        length=length,
        encoder_prompt_length=encoder_prompt_length,
        heads=heads,
        seed=config.seed,
    )
    result = train_prompt(
        model,
        tokenizer,
        items,
        config=config,
        max_length=max_length,
        progress=progress,
        cancel=cancel,
    )
    training = {
        **config.to_dict(),
        "final_loss": result.final_loss,
        "first_loss": result.losses[0],
        "seconds": round(result.seconds, 3),
        "n_items": len(items),
        "tasks": dict(Counter(it.skill for it in items)),
        "items_sha256": items_sha256(items),
        "device": str(dev),
    }
    folder = save_prompt(
        model,
        out,
        tokenizer=tokenizer,
        lm_source=source,
        encoder_source=enc_source,
        training=training,
        force=force,
    )
    return FrozenResult(folder, result, kind)
