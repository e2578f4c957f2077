"""Training a small part on prompt/answer rows with the answer-only loss: what CALM's bridges,
soft prompts and the connector share (each gives only how its model turns a batch into logits).

The rows are encoded as the evals encode them (:func:`fusion_ui.evals.perplexity.encode_items`,
EOS scored after the answer), right-padded per batch (:func:`~fusion_ui.train.lm_loss.collate_scored`)
and scored on their answer tokens; the loop is :func:`~fusion_ui.train.loop.train_loop`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fusion_ui.errors import RecipeError
from fusion_ui.evals.generate import pad_id_of
from fusion_ui.evals.perplexity import encode_items
from fusion_ui.evals.sets import EvalItem
from fusion_ui.progress import CancelToken, ProgressCallback
from fusion_ui.train.lm_loss import answer_loss, collate_scored
from fusion_ui.train.loop import TrainConfig, TrainResult, train_loop

# (ids, mask, scored), each (B, T) on the model's device -> logits (B, T, V), graph attached
LogitsOf = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def train_on_answers(
    model: nn.Module,
    parameters: Iterable[nn.Parameter],
    logits_of: LogitsOf,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    config: TrainConfig,
    device: torch.device,
    max_length: int | None = None,
    what: str = "training set",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train ``parameters`` (the small part of ``model``) on ``items``; ``model`` is in train mode
    while it runs and in eval mode after, whatever happens. ``what`` names the set in the error
    an empty one gives."""
    if not items:
        raise RecipeError(f"the {what} is empty: give at least one prompt/answer row")
    pairs = encode_items(tokenizer, items, max_length=max_length, with_eos=True)
    pad = pad_id_of(tokenizer)

    def loss_of(indices: Sequence[int]) -> torch.Tensor:
        ids, mask, scored = collate_scored([pairs[i] for i in indices], pad)
        ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
        return answer_loss(logits_of(ids, mask, scored), ids, scored)

    model.train()
    try:
        return train_loop(parameters, loss_of, n_items=len(pairs), config=config, progress=progress,
                          cancel=cancel)  # fmt: skip
    finally:
        model.eval()


__all__ = ["LogitsOf", "train_on_answers"]
