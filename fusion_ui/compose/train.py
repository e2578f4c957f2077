"""Training CALM's bridges on a composition set (prompt/answer rows), both models frozen.

The loss is m_B's LM loss on the answer tokens (and EOS) only, with the evals' encoding
(:func:`fusion_ui.evals.perplexity.encode_scored`); the loop is :mod:`fusion_ui.train.loop`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from fusion_ui.compose.artefact import load_models, save_bridges
from fusion_ui.compose.bridges import DEFAULT_EVERY, LayerPair
from fusion_ui.compose.calm import CalmModel, compose
from fusion_ui.device import resolve_device
from fusion_ui.evals.sets import EvalItem
from fusion_ui.progress import CancelToken, ProgressCallback
from fusion_ui.train.answers import train_on_answers
from fusion_ui.train.loop import TrainConfig, TrainResult


def items_sha256(items: Sequence[EvalItem]) -> str:
    """A fingerprint of the composition set (recorded beside the bridges)."""
    rows = [[it.prompt, it.answer] for it in items]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def train_bridges(
    model: CalmModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    config: TrainConfig | None = None,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train ``model.bridges`` in place on ``items``; only they change (both models are frozen).

    ``max_length`` (default: the shorter context of the two models) cuts long rows as
    :func:`~fusion_ui.evals.perplexity.encode_scored` does: the answer kept, the prompt's start cut.
    """
    return train_on_answers(
        model, model.bridges.parameters(),
        lambda ids, mask, scored: model(input_ids=ids, attention_mask=mask).logits,
        tokenizer, items, config=config or TrainConfig(), device=model.device,
        max_length=model.context_length if max_length is None else max_length,
        what="composition set", progress=progress, cancel=cancel,
    )  # fmt: skip


@dataclass(frozen=True)
class ComposeResult:
    """What :func:`train_composition` wrote."""

    folder: Path  # the bridges folder
    result: TrainResult
    pairs: tuple[LayerPair, ...]


def train_composition(
    anchor: str | os.PathLike[str],
    augment: str | os.PathLike[str],
    items: Sequence[EvalItem],
    out: str | os.PathLike[str],
    *,
    pairs: Sequence[LayerPair] | None = None,
    every: int = DEFAULT_EVERY,
    offset: int | None = None,
    heads: int | None = None,
    config: TrainConfig | None = None,
    max_length: int | None = None,
    device: str | torch.device | None = "auto",
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ComposeResult:
    """Load both models, train fresh bridges on ``items``, write them to ``out`` (only at the
    end: a cancel or a failure writes nothing)."""
    config = config or TrainConfig()
    dev = resolve_device(device)
    model_b, model_a, tok_b, tok_a, src_b, src_a = load_models(anchor, augment, device=dev)
    model = compose(
        model_b,
        model_a,
        tok_b,
        tok_a,
        pairs=pairs,
        every=every,
        offset=offset,
        heads=heads,
        seed=config.seed,
    )
    result = train_bridges(
        model, tok_b, items, config=config, max_length=max_length, progress=progress, cancel=cancel
    )
    training = {
        **config.to_dict(),
        "final_loss": result.final_loss,
        "first_loss": result.losses[0],
        "seconds": round(result.seconds, 3),
        "n_items": len(items),
        "items_sha256": items_sha256(items),
        "device": str(dev),
    }
    folder = save_bridges(
        model,
        out,
        tokenizer=tok_b,
        anchor_source=src_b,
        augment_source=src_a,
        training=training,
        force=force,
    )
    return ComposeResult(folder, result, model.config.pairs)
