"""One statistics pass from start to finish: load the model, read the examples, compute, save."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fusion_ui.device import resolve_device
from fusion_ui.progress import CancelToken, ProgressCallback
from fusion_ui.stats.artefact import Kind, check_target, identity_dict, save_statistics
from fusion_ui.stats.data import Dataset

DEFAULT_BATCH = {"fisher": 4, "gram": 16}  # Fisher holds one gradient per example of a batch


@dataclass(frozen=True)
class StatsRun:
    """What a pass wrote and what it took."""

    path: Path  # the statistics folder
    kind: Kind
    examples: int
    tokens: int
    tensors: int  # tensors stored
    nbytes: int  # bytes of the stored tensors
    seconds: float  # the pass alone (loading and saving excluded)


def compute_statistics(
    kind: Kind,
    model_ref: str | os.PathLike[str],
    dataset: Dataset,
    out: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    with_eos: bool = True,
    max_length: int | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> StatsRun:
    """``kind`` statistics of the model at ``model_ref`` on ``dataset``, saved into ``out``
    (refused before any work if ``out`` may not be written)."""
    from fusion_ui.compose.artefact import identify
    from fusion_ui.evals.run import load_causal_lm
    from fusion_ui.io.source import resolve_model
    from fusion_ui.stats.fisher import fisher_pass
    from fusion_ui.stats.gram import gram_pass

    if kind not in DEFAULT_BATCH:
        raise ValueError(f"unknown statistics kind {kind!r}; expected fisher or gram")
    check_target(out, force=force)
    dev = resolve_device(device)
    source = resolve_model(model_ref)
    model, tokenizer = load_causal_lm(str(source.path), device=dev, dtype=torch.float32)
    identity = identify(model, source)  # of the weights as loaded, before anything runs
    batch = batch_size or DEFAULT_BATCH[kind]
    options = {
        "batch_size": batch,
        "device": str(dev),
        "with_eos": with_eos,
        "max_length": max_length,
        "progress": progress,
        "cancel": cancel,
    }
    start = time.perf_counter()
    aliases: dict[str, str] = {}
    transposed: tuple[str, ...] = ()
    if kind == "fisher":
        fisher = fisher_pass(model, tokenizer, dataset, **options)
        tensors, examples, tokens = fisher.tensors, fisher.examples, fisher.tokens
    else:
        gram = gram_pass(model, tokenizer, dataset, **options)
        tensors, examples, tokens, aliases = gram.tensors, gram.examples, gram.tokens, gram.aliases
        transposed = gram.transposed
    seconds = time.perf_counter() - start
    if cancel is not None:
        cancel.raise_if_cancelled()
    path = save_statistics(
        out,
        tensors,
        kind=kind,
        model=identity_dict(identity),
        dataset={
            "source": dataset.source,
            "sha256": dataset.sha256,
            "examples": len(dataset.items),
        },
        tokens=tokens,
        examples=examples,
        aliases=aliases,
        transposed=transposed,
        force=force,
        settings={
            "batch_size": batch,
            "with_eos": with_eos,
            "max_length": max_length,
            "device": str(dev),
            "dtype": "float32",
            "seconds": round(seconds, 3),
        },
    )
    return StatsRun(
        path,
        kind,
        examples,
        tokens,
        len(tensors),
        sum(t.numel() * 4 for t in tensors.values()),
        seconds,
    )
