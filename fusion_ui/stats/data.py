"""The examples a statistics pass reads: prompt/answer rows, encoded and padded in batches.

Rows come from a JSONL/CSV eval-set file (:func:`fusion_ui.evals.load_eval_set`) and are encoded
exactly as answer-only scoring encodes them (:func:`fusion_ui.evals.perplexity.encode_items`):
the answer's tokens (and EOS, ``with_eos``) are the scored ones, the prompt is context.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from fusion_ui.evals.generate import pad_id_of
from fusion_ui.evals.perplexity import ScoredPair, encode_items
from fusion_ui.evals.sets import EvalItem, EvalSetError, load_eval_set
from fusion_ui.tune.cocktail import examples_sha256


@dataclass(frozen=True)
class Batch:
    """One right-padded batch of encoded examples."""

    ids: torch.Tensor  # (B, T) token ids, padding filled with the pad id
    mask: torch.Tensor  # (B, T) 1 on real tokens, 0 on padding
    scored: torch.Tensor  # (B, T) bool: answer tokens, whose prediction the loss counts

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device: torch.device) -> Batch:
        return Batch(self.ids.to(device), self.mask.to(device), self.scored.to(device))


@dataclass(frozen=True)
class Dataset:
    """The examples as read, and what identifies them in a statistics artefact."""

    items: tuple[EvalItem, ...]
    source: str  # the file they came from (or "examples" when given in Python)
    sha256: str  # of the prompt/answer pairs in order (fusion_ui.tune.examples_sha256)


def read_dataset(path: str | Path, *, limit: int | None = None) -> Dataset:
    """The first ``limit`` rows (all when None) of a .jsonl/.csv file with prompt and answer."""
    items = load_eval_set(path)
    if limit is not None:
        if limit < 1:
            raise EvalSetError(f"the number of examples must be at least 1, got {limit}")
        items = items[:limit]
    return dataset_of(items, source=str(path))


def dataset_of(items: Sequence[EvalItem], *, source: str = "examples") -> Dataset:
    if not items:
        raise EvalSetError(
            f"{source} has no examples: statistics need at least one prompt/answer row"
        )
    return Dataset(tuple(items), source, examples_sha256(items))


def encode(
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    with_eos: bool,
    max_length: int | None,
) -> list[ScoredPair]:
    """Every item as the scoring path encodes it; an item with no scored token is refused."""
    pairs = encode_items(tokenizer, items, with_eos=with_eos, max_length=max_length)
    for i, pair in enumerate(pairs):
        if len(pair.ids) <= pair.n_prompt:
            raise EvalSetError(
                f"example {i} ({items[i].prompt!r}) has no answer tokens; give it an answer"
            )
    return pairs


def batches(pairs: Sequence[ScoredPair], *, pad_id: int, batch_size: int) -> Iterator[Batch]:
    """Right-padded batches (padding is masked out of attention and never scored)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        width = max(len(p.ids) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for i, pair in enumerate(chunk):
            ids[i, : len(pair.ids)] = torch.tensor(pair.ids)
            mask[i, : len(pair.ids)] = 1
            scored[i, pair.n_prompt : len(pair.ids)] = True
        yield Batch(ids, mask, scored)


__all__ = ["Batch", "Dataset", "batches", "dataset_of", "encode", "pad_id_of", "read_dataset"]
