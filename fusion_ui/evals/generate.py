"""Batched greedy generation for any causal LM that returns ``.logits``.

A small explicit loop instead of ``model.generate``: it works for any module with the
causal-LM call signature (tests use stubs), left-pads with position ids so absolute-position
models (GPT-2) see the same positions as unpadded, and uses the KV cache when the model
returns one.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fusion_ui.device import resolve_device


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask, both (B, T), padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    device: str | torch.device | None = "auto",
    stop_at_newline: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, special tokens dropped, cut at EOS/newline)."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    dev = resolve_device(device)
    model.to(dev)
    model.eval()
    eos = tokenizer.eos_token_id
    pad = pad_id_of(tokenizer)
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rows = [tokenizer.encode(p, add_special_tokens=True) for p in chunk]
        ids, mask = left_pad(rows, pad)
        ids, mask = ids.to(dev), mask.to(dev)
        new = greedy_batch(model, ids, mask, max_new_tokens=max_new_tokens, eos=eos, pad=pad)
        for row in new.tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            text = tokenizer.decode(row, skip_special_tokens=True)
            if stop_at_newline:
                text = text.split("\n", 1)[0]
            outputs.append(text)
    return outputs


def cache_argument(model: nn.Module) -> str:
    """The keyword a model's forward takes for its KV cache: ``cache`` (transformers >= 5.23,
    where ``past_key_values`` is deprecated and goes in 5.40) or ``past_key_values`` (before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def greedy_batch(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, *, max_new_tokens: int, eos: int | None, pad: int
) -> torch.Tensor:
    """New token ids (B, max_new_tokens) for the left-padded ``ids``/``mask`` (B, T); rows that
    hit EOS keep emitting ``pad``. Greedy, one cache; any module with an LM's forward works
    (CALM's composition, a sampler that turns argmax into a Gumbel draw)."""
    batch = ids.shape[0]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    generated: list[torch.Tensor] = []
    past = None
    step_ids, step_pos = ids, positions
    name = cache_argument(model)
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True, **{name: past})
        nxt = out.logits[:, -1, :].argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        generated.append(nxt)
        if eos is not None:
            done |= nxt == eos
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        next_pos = positions[:, -1:] + 1
        positions = torch.cat([positions, next_pos], dim=1)
        past = getattr(out, name, None)  # the output names its cache as the forward does
        if past is not None:  # feed only the new token
            step_ids, step_pos = nxt[:, None], next_pos
        else:  # no cache: recompute the whole sequence
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            step_ids, step_pos = ids, positions
    new = torch.stack(generated, dim=1)
    if new.shape[1] < max_new_tokens:
        fill = torch.full((batch, max_new_tokens - new.shape[1]), pad, dtype=new.dtype, device=new.device)
        new = torch.cat([new, fill], dim=1)
    return new
