"""What CALM's bridges read: per bridge, which augmenting (m_A) positions each anchor (m_B)
token attends to, and how much the bridge adds to the anchor's residual stream there.

A normal forward never computes these: the bridges use the fused attention, which does not
return its weights. Inside :func:`recording` each bridge also works out its softmax weights
(the same scores and masks) and hands them to a recorder; the output it adds is computed the
usual way, so the logits with and without recording are identical. :func:`read_bridges` runs
one prompt (and optionally its greedy continuation) through a composition that way::

    reading = read_bridges(model, tokenizer, "hpg + amy =", max_new_tokens=4)
    reading.weights          # (bridges, heads, T_B, T_A): rows sum to 1 over the visible keys
    reading.contribution     # (bridges, T_B): ||f_cross output|| / ||m_B hidden state||
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from fusion_ui.compose.bridges import BridgeReading, LayerPair
from fusion_ui.compose.calm import CalmModel
from fusion_ui.errors import InputError
from fusion_ui.evals.generate import greedy_batch, pad_id_of

TINY = 1e-12  # below this an anchor state's norm counts as zero (its ratio is then 0)


@contextmanager
def recording(model: CalmModel) -> Iterator[list[list[BridgeReading]]]:
    """Record what each bridge attends while the block runs: ``readings[k]`` lists bridge
    ``k``'s :class:`~fusion_ui.compose.bridges.BridgeReading`, one per call of the model.

    Recording costs one more ``q @ k`` per bridge and keeps the weights on the CPU; outside the
    block the bridges are as fast as before. Not re-entrant (a bridge has one recorder).
    """
    items = list(model.bridges.items)
    if any(b.recorder is not None for b in items):
        raise InputError("the bridges are already being recorded; finish that recording first")
    readings: list[list[BridgeReading]] = [[] for _ in items]
    for bridge, kept in zip(items, readings, strict=True):
        bridge.recorder = kept.append
    try:
        yield readings
    finally:
        for bridge in items:
            bridge.recorder = None


@dataclass(frozen=True)
class BridgeAttention:
    """One prompt's reading of every bridge. The anchor and the augmenting model read the same
    tokens, so queries (T_B) and keys (T_A) are both ``tokens``."""

    tokens: tuple[str, ...]  # (T,) the tokens as the tokenizer spells them, BOS included
    prompt_tokens: int  # how many of ``tokens`` are the prompt; the rest is the greedy answer
    answer: str  # the greedy continuation, decoded ("" when none was asked for)
    pairs: tuple[LayerPair, ...]  # (bridges,) m_A block : m_B block of each bridge
    weights: np.ndarray  # (bridges, heads, T, T) float32: query (anchor) x key (augmenting)
    added: np.ndarray  # (bridges, T): ||f_cross output|| per anchor position
    anchor_norm: np.ndarray  # (bridges, T): ||m_B hidden state|| at the bridge's block

    @property
    def contribution(self) -> np.ndarray:
        """(bridges, T): the bridge's output relative to the anchor state it is added to."""
        safe = np.where(self.anchor_norm > TINY, self.anchor_norm, 1.0)
        return np.where(self.anchor_norm > TINY, self.added / safe, 0.0)

    def head_weights(self, head: int | None = None) -> np.ndarray:
        """(bridges, T, T): one head's weights, or (``None``) the mean over heads."""
        if head is None:
            return self.weights.mean(axis=1)
        if not 0 <= head < self.weights.shape[1]:
            raise InputError(f"head {head} is not one of the bridges' heads 0..{self.weights.shape[1] - 1}")
        return self.weights[:, head]


@torch.no_grad()
def read_bridges(
    model: CalmModel, tokenizer, prompt: str, *, max_new_tokens: int = 0
) -> BridgeAttention:
    """Each bridge's cross-attention weights and contribution for ``prompt``, and for its greedy
    continuation of up to ``max_new_tokens`` tokens (stopping at EOS).

    The continuation is decoded with both caches as usual, then prompt + continuation run once
    more, uncached and recorded: causal masks make the weights at each position what decoding
    saw there.
    """
    if not prompt:
        raise InputError("give a prompt to read the bridges on")
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0 (got {max_new_tokens})")
    ids = tokenizer.encode(prompt, add_special_tokens=True)
    device = model.device
    row = torch.tensor([ids], device=device)  # (1, T_prompt)
    answer_ids: list[int] = []
    if max_new_tokens:
        eos = tokenizer.eos_token_id
        new = greedy_batch(model, row, torch.ones_like(row), max_new_tokens=max_new_tokens, eos=eos,
                            pad=pad_id_of(tokenizer))[0].tolist()
        answer_ids = new[: new.index(eos)] if eos is not None and eos in new else new
    full = torch.tensor([ids + answer_ids], device=device)  # (1, T)
    limit = model.context_length
    if limit is not None and full.shape[1] > limit:
        raise InputError(f"prompt and answer are {full.shape[1]} tokens; the models read at most {limit}")
    with recording(model) as readings:
        model(input_ids=full)
    return BridgeAttention(
        tokens=tuple(tokenizer.convert_ids_to_tokens(full[0].tolist())),
        prompt_tokens=len(ids),
        answer=tokenizer.decode(answer_ids, skip_special_tokens=True),
        pairs=tuple(model.config.pairs),
        weights=np.stack([r[-1].weights[0].numpy() for r in readings]),
        added=np.stack([r[-1].added[0].numpy() for r in readings]),
        anchor_norm=np.stack([r[-1].anchor[0].numpy() for r in readings]),
    )


__all__ = ["BridgeAttention", "read_bridges", "recording"]
