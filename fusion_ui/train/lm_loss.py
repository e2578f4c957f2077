"""The answer-only language-model loss, on batches of :class:`~fusion_ui.evals.perplexity.ScoredPair`.

The same convention as the evals' perplexity (:func:`fusion_ui.evals.perplexity.encode_scored`):
prompt tokens are context, answer tokens (and EOS) are scored, padding is masked out of attention
and never scored. Rows are right-padded, so every real token keeps the position it has alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fusion_ui.evals.perplexity import ScoredPair


def collate_scored(
    pairs: Sequence[ScoredPair], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and scored-token mask, each (B, T)."""
    width = max(len(p.ids) for p in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    scored = torch.zeros_like(ids, dtype=torch.bool)  # True where the token is a target to predict
    for i, pair in enumerate(pairs):
        ids[i, : len(pair.ids)] = torch.tensor(pair.ids)
        mask[i, : len(pair.ids)] = 1
        scored[i, pair.n_prompt : len(pair.ids)] = True
    return ids, mask, scored


def answer_loss(logits: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per scored token, pooled over the batch) of the scored tokens.

    ``logits`` (B, T, V) predict the next token; ``ids`` and ``scored`` are (B, T).
    """
    keep = scored[:, 1:]  # (B, T-1): targets are tokens 1..T-1
    if not bool(keep.any()):
        raise ValueError("no scored tokens in the batch")  # encode_scored always scores one
    pred = logits[:, :-1][keep].float()  # (N, V)
    target = ids[:, 1:][keep]  # (N,)
    return F.cross_entropy(pred, target)
