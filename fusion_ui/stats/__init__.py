"""Statistics of models on data, for data-aware merges (Fisher merging, RegMean). No Gradio here.

    from fusion_ui.stats import read_dataset, compute_statistics, read_statistics_info
    data = read_dataset("examples.jsonl", limit=200)          # prompt/answer rows
    compute_statistics("fisher", "expert_a/", data, "stats/a_fisher")  # or "gram"
    read_statistics_info("stats/a_fisher")                    # kind, model identity, counts

``fisher``: the diagonal empirical Fisher, mean over examples of each example's squared gradient
of its answer-token loss (:mod:`.fisher`). ``gram``: ``XᵀX`` of every ``nn.Linear`` (and GPT-2
``Conv1D``) input over the non-padding tokens (:mod:`.gram`). Saved once as safetensors + JSON (:mod:`.artefact`) and
checked against the model a merge gives them to (:mod:`.check`).

The names load on first use, so importing the package does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "Batch": "fusion_ui.stats.data",
    "Dataset": "fusion_ui.stats.data",
    "dataset_of": "fusion_ui.stats.data",
    "read_dataset": "fusion_ui.stats.data",
    "FisherResult": "fusion_ui.stats.fisher",
    "example_losses": "fusion_ui.stats.fisher",
    "fisher_pass": "fusion_ui.stats.fisher",
    "GramResult": "fusion_ui.stats.gram",
    "gram_pass": "fusion_ui.stats.gram",
    "KINDS": "fusion_ui.stats.artefact",
    "StatsInfo": "fusion_ui.stats.artefact",
    "read_statistic": "fusion_ui.stats.artefact",
    "read_statistics_info": "fusion_ui.stats.artefact",
    "save_statistics": "fusion_ui.stats.artefact",
    "check_statistics": "fusion_ui.stats.check",
    "identify_checkpoint": "fusion_ui.stats.identity",
    "StatsRun": "fusion_ui.stats.run",
    "compute_statistics": "fusion_ui.stats.run",
}

__all__ = [
    "KINDS",
    "Batch",
    "Dataset",
    "FisherResult",
    "GramResult",
    "StatsInfo",
    "StatsRun",
    "check_statistics",
    "compute_statistics",
    "dataset_of",
    "example_losses",
    "fisher_pass",
    "gram_pass",
    "identify_checkpoint",
    "read_dataset",
    "read_statistic",
    "read_statistics_info",
    "save_statistics",
]

if TYPE_CHECKING:
    from fusion_ui.stats.artefact import (
        KINDS,
        StatsInfo,
        read_statistic,
        read_statistics_info,
        save_statistics,
    )
    from fusion_ui.stats.check import check_statistics
    from fusion_ui.stats.data import Batch, Dataset, dataset_of, read_dataset
    from fusion_ui.stats.fisher import FisherResult, example_losses, fisher_pass
    from fusion_ui.stats.gram import GramResult, gram_pass
    from fusion_ui.stats.identity import identify_checkpoint
    from fusion_ui.stats.run import StatsRun, compute_statistics


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion_ui.stats' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
