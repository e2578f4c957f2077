"""One model's continuation of a prompt, piece by piece as it is generated, for the side-by-side
view; and the check that a prompt fits a model's context."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from fusion_ui.errors import GenerationError, InputError
from fusion_ui.evals.generate import pad_id_of
from fusion_ui.progress import CancelToken


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: greedy (comparable runs) or sampled with a temperature and a seed."""

    greedy: bool = True
    temperature: float = 0.8  # only when not greedy
    seed: int = 0  # only when not greedy


def context_size(model: torch.nn.Module) -> int | None:
    """The most tokens the model reads (its position limit), if its config says."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str, new_tokens: int,
               name: str) -> None:
    """Refuse a prompt that, with ``new_tokens`` to generate, does not fit the model's context:
    past it, attention grows with the square of a length the model was never trained for."""
    context = context_size(model)
    if context is None:
        return
    n = len(tokenizer(prompt)["input_ids"])
    if n + new_tokens > context:
        raise InputError(
            f"the prompt is {n:,} tokens and {new_tokens} more are to be generated, but {name} "
            f"reads at most {context:,} tokens. Shorten the prompt or generate fewer tokens"
        )


@torch.no_grad()
def stream_continuation(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),  # noqa: B008 (frozen)
    stop_at_newline: bool = True,
    cancel: CancelToken | None = None,
) -> Iterator[str]:
    """Pieces of text as ``model.generate`` produces them (transformers' TextIteratorStreamer).

    Stops within one token of a cancel (then raises CancelledError). Sampling draws from a fork
    of torch's random state, so the process's own state is left as it was.
    """
    done = threading.Event()
    cancel = cancel or CancelToken()

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
            stop = cancel.cancelled or done.is_set()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    dev = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=120)
    kwargs: dict[str, Any] = {
        "input_ids": enc["input_ids"].to(dev),
        "attention_mask": enc["attention_mask"].to(dev),
        "max_new_tokens": max_new_tokens,
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList([_Stop()]),
        "pad_token_id": pad_id_of(tokenizer),
        "do_sample": not sampling.greedy,
    }
    if sampling.greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(temperature=max(sampling.temperature, 1e-3), top_k=0, top_p=1.0)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            devices = [dev] if dev.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                if not sampling.greedy:
                    torch.manual_seed(sampling.seed)
                model.generate(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors.append(exc)
            streamer.end()

    worker = threading.Thread(target=run, name="fusion-ui-generate-model", daemon=True)
    worker.start()
    try:
        for piece in streamer:
            if stop_at_newline and "\n" in piece:
                piece = piece.split("\n", 1)[0]
                done.set()  # generate() stops at its next step; the streamer then ends
            if piece:
                yield piece
            if done.is_set() or cancel.cancelled:
                break
    finally:
        done.set()
        worker.join()  # the stopping criterion ends generate() within one token
    if errors:
        raise GenerationError(f"generation failed: {errors[0]}") from errors[0]
    cancel.raise_if_cancelled()


__all__ = ["Sampling", "check_fits", "context_size", "stream_continuation"]
