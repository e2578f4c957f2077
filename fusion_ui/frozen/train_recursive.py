"""Training the recursive LMs' parts beside one frozen LM, on the shared loop
(:mod:`fusion_ui.train.loop`) with the answer-only loss (:mod:`fusion_ui.train.lm_loss`).

- neural: :func:`train_connector` trains only the connector; the recursive model is a causal LM,
  so the loss is the plain teacher-forced answer loss over both passes.
- textual: :func:`train_textual` has pass 1 write candidates for every *training* question, then
  trains pass 2's prompt on "question + candidates -> answer" (:func:`train_prompt`: ``p`` is a
  fixed prompt, so nothing reads the answer it is scored on).

The file-level runs (:func:`train_connector_run`, :func:`train_textual_run`) load the LM, train,
and write the artefact only at the end: a cancel or a failure writes nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fusion_ui.compose.train import items_sha256
from fusion_ui.device import resolve_device
from fusion_ui.errors import RecipeError
from fusion_ui.evals.sets import EvalItem
from fusion_ui.frozen.artefact import attach_prompt, read_prompt_info
from fusion_ui.frozen.connector import DEFAULT_HIDDEN, ConnectorLM, connector_model
from fusion_ui.frozen.model import PromptedLM, prompt_model
from fusion_ui.frozen.prompts import DEFAULT_LENGTH
from fusion_ui.frozen.recursion_artefact import save_connector, save_recursive
from fusion_ui.frozen.recursive import RecursionConfig, RecursiveLM, second_pass_items
from fusion_ui.frozen.train import DEFAULT_CONFIG as PROMPT_CONFIG
from fusion_ui.frozen.train import train_prompt
from fusion_ui.progress import CancelToken, ProgressCallback
from fusion_ui.train.answers import train_on_answers
from fusion_ui.train.loop import TrainConfig, TrainResult

# The connector is an MLP of ~2·d·hidden weights: the loop's default step (1e-3) suits it.
CONNECTOR_CONFIG = TrainConfig(lr=1e-3)


def train_connector(
    model: ConnectorLM,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    config: TrainConfig | None = None,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train ``model.connector`` in place on ``items``; the LM stays frozen."""
    return train_on_answers(
        model, model.connector.parameters(),
        lambda ids, mask, scored: model(input_ids=ids, attention_mask=mask).logits,
        tokenizer, items, config=config or CONNECTOR_CONFIG, device=model.device,
        max_length=max_length or model.context_length, progress=progress, cancel=cancel,
    )  # fmt: skip


def textual_model(
    first: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    *,
    recursion: RecursionConfig | None = None,
    length: int = DEFAULT_LENGTH,
    seed: int = 0,
) -> RecursiveLM:
    """A textual recursion with a fresh pass-2 prompt on the LM of ``first`` (the LM itself, or
    a :class:`PromptedLM` on it)."""
    lm = first.lm if isinstance(first, PromptedLM) else first
    second = prompt_model(lm, tokenizer, "prompt", length=length, seed=seed)
    return RecursiveLM(first, second, tokenizer, recursion or RecursionConfig(seed=seed))


def train_textual(
    model: RecursiveLM,
    items: Sequence[EvalItem],
    *,
    config: TrainConfig | None = None,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> tuple[TrainResult, list[EvalItem]]:
    """Pass 1's candidates on ``items``, then pass 2's prompt trained on them in place. Returns
    the run and the rows pass 2 was trained on (question + candidates, answer)."""
    if not items:
        raise RecipeError("the training set is empty: give at least one prompt/answer row")
    rows = second_pass_items(model.first, model.tokenizer, items, model.recursion)
    result = train_prompt(model.second, model.tokenizer, rows, config=config or PROMPT_CONFIG,
                          max_length=max_length, progress=progress, cancel=cancel)  # fmt: skip
    return result, rows


@dataclass(frozen=True)
class RecursionRun:
    """What a file-level run wrote."""

    folder: Path
    result: TrainResult
    kind: str  # "connector" or "recursive"
    trainable: int  # trained parameters


def _training_record(config: TrainConfig, result: TrainResult, items: Sequence[EvalItem],
                     dev: torch.device) -> dict:  # fmt: skip
    return {
        **config.to_dict(),
        "final_loss": result.final_loss,
        "first_loss": result.losses[0],
        "seconds": round(result.seconds, 3),
        "n_items": len(items),
        "tasks": dict(Counter(it.skill for it in items)),
        "items_sha256": items_sha256(items),
        "device": str(dev),
    }


def train_connector_run(
    lm: str | os.PathLike[str],
    items: Sequence[EvalItem],
    out: str | os.PathLike[str],
    *,
    hidden: int = DEFAULT_HIDDEN,
    config: TrainConfig | None = None,
    max_length: int | None = None,
    device: str | torch.device | None = "auto",
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> RecursionRun:
    """Load the LM, train a fresh connector on ``items``, write it to ``out``."""
    from fusion_ui.frozen.artefact import load_lm_and_encoder

    config = config or CONNECTOR_CONFIG
    if not items:
        raise RecipeError("the training set is empty: give at least one prompt/answer row")
    dev = resolve_device(device)
    model_lm, tokenizer, source, _, _ = load_lm_and_encoder(lm, None, device=dev)
    model = connector_model(model_lm, hidden=hidden, seed=config.seed)
    result = train_connector(model, tokenizer, items, config=config, max_length=max_length,
                             progress=progress, cancel=cancel)  # fmt: skip
    folder = save_connector(model, out, tokenizer=tokenizer, lm_source=source,
                            training=_training_record(config, result, items, dev), force=force)  # fmt: skip
    n = sum(p.numel() for p in model.connector.parameters())
    return RecursionRun(folder, result, "connector", n)


def train_textual_run(
    lm: str | os.PathLike[str],
    items: Sequence[EvalItem],
    out: str | os.PathLike[str],
    *,
    first_prompt: str | os.PathLike[str] | None = None,
    recursion: RecursionConfig | None = None,
    length: int = DEFAULT_LENGTH,
    config: TrainConfig | None = None,
    max_length: int | None = None,
    device: str | torch.device | None = "auto",
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> RecursionRun:
    """Load the LM (and pass 1's plain prompt ``first_prompt``, a folder of ``frozen train
    prompt``; default: pass 1 is the LM alone), write candidates for ``items``, train pass 2's
    prompt, write the recursion to ``out``."""
    from fusion_ui.frozen.artefact import load_lm_and_encoder

    config = config or PROMPT_CONFIG
    if not items:
        raise RecipeError("the training set is empty: give at least one prompt/answer row")
    if first_prompt is not None and read_prompt_info(first_prompt).prompt.kind != "prompt":
        raise RecipeError(
            "pass 1's prompt must be a plain prompt (`frozen train prompt`), not ID-PT"
        )
    dev = resolve_device(device)
    model_lm, tokenizer, source, _, _ = load_lm_and_encoder(lm, None, device=dev)
    first: nn.Module = (
        model_lm if first_prompt is None else attach_prompt(first_prompt, model_lm, tokenizer)
    )
    recursion = recursion or RecursionConfig(seed=config.seed)
    model = textual_model(first, tokenizer, recursion=recursion, length=length, seed=config.seed)
    result, _ = train_textual(model, items, config=config, max_length=max_length,
                              progress=progress, cancel=cancel)  # fmt: skip
    training = _training_record(config, result, items, dev)
    training["first_prompt"] = None if first_prompt is None else str(Path(first_prompt).absolute())
    folder = save_recursive(model, out, lm_source=source, training=training, force=force)
    n = sum(p.numel() for p in model.second.prompt.parameters())
    return RecursionRun(folder, result, "recursive", n)
