"""Answer-only causal-LM training of the demo models (pretraining and fine-tuning alike)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from fusion_ui.demo.skills import Example


@dataclass(frozen=True)
class TrainConfig:
    """One optimisation run."""

    steps: int  # optimizer steps
    batch_size: int  # examples per step
    lr: float  # peak AdamW learning rate
    warmup: int  # linear warm-up steps before the cosine decay
    weight_decay: float = 0.0  # 0 for fine-tunes: decay would move every weight of the delta
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # global grad-norm clip


def encode_batch(
    examples: list[Example], tokenizer: PreTrainedTokenizerFast
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels that score only the answer and EOS.

    The prompt is encoded as at inference (with the tokenizer's special tokens, e.g. BOS),
    the answer as a bare continuation.
    """
    rows: list[tuple[list[int], int]] = []
    for ex in examples:
        prompt = tokenizer.encode(ex.prompt, add_special_tokens=True)
        answer = tokenizer.encode(ex.answer, add_special_tokens=False)
        rows.append((prompt + answer + [tokenizer.eos_token_id], len(prompt)))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, n_prompt) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, n_prompt : len(row)] = ids[i, n_prompt : len(row)]
    return ids, mask, labels


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.min_lr_ratio
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    stream: Iterator[Example],
    cfg: TrainConfig,
    *,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train in place; returns the loss of every step. Deterministic given the stream and seed."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    model.train()
    losses: list[float] = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        ids, mask, labels = encode_batch([next(stream) for _ in range(cfg.batch_size)], tokenizer)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses
