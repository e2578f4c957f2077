"""Frozen-LM methods (Levine et al. 2022, "Standing on the Shoulders of Giant Frozen Language
Models", arXiv 2204.10019): one LM stays frozen, small modules around it learn. This package
holds input-dependent prompt tuning (ID-PT) and its baseline, plain prompt tuning. No Gradio here.

    from fusion_ui.frozen import prompt_model, train_prompt, save_prompt, load_prompted
    model = prompt_model(lm, tokenizer, "idpt", encoder=small, length=8)  # or "prompt"
    train_prompt(model, tokenizer, items)                 # only the prompt (generator) learns
    save_prompt(model, "prompt/", tokenizer=tokenizer)    # prompt.safetensors + prompt.json
    model, tok = load_prompted("lm/", "prompt/")          # the encoder found from prompt.json
    greedy_generate(model, tok, ["key: abc ="])           # fusion_ui.evals runs it like any LM
    answer_nll(model, tok, items)                         # p(x) from the prompt only

The names load on first use, so importing the package does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "KINDS": "fusion_ui.frozen.prompts",
    "FixedPrompt": "fusion_ui.frozen.prompts",
    "PromptConfig": "fusion_ui.frozen.prompts",
    "PromptGenerator": "fusion_ui.frozen.prompts",
    "SoftPrompt": "fusion_ui.frozen.prompts",
    "PromptCache": "fusion_ui.frozen.model",
    "PromptedLM": "fusion_ui.frozen.model",
    "PromptedOutput": "fusion_ui.frozen.model",
    "prompt_model": "fusion_ui.frozen.model",
    "PromptInfo": "fusion_ui.frozen.artefact",
    "attach_prompt": "fusion_ui.frozen.artefact",
    "load_prompted": "fusion_ui.frozen.artefact",
    "read_prompt_info": "fusion_ui.frozen.artefact",
    "save_prompt": "fusion_ui.frozen.artefact",
    "FrozenResult": "fusion_ui.frozen.train",
    "answer_nll": "fusion_ui.frozen.train",
    "train_frozen": "fusion_ui.frozen.train",
    "train_prompt": "fusion_ui.frozen.train",
}

__all__ = [
    "KINDS",
    "FixedPrompt",
    "FrozenResult",
    "PromptCache",
    "PromptConfig",
    "PromptGenerator",
    "PromptInfo",
    "PromptedLM",
    "PromptedOutput",
    "SoftPrompt",
    "answer_nll",
    "attach_prompt",
    "load_prompted",
    "prompt_model",
    "read_prompt_info",
    "save_prompt",
    "train_frozen",
    "train_prompt",
]

if TYPE_CHECKING:
    from fusion_ui.frozen.artefact import (
        PromptInfo,
        attach_prompt,
        load_prompted,
        read_prompt_info,
        save_prompt,
    )
    from fusion_ui.frozen.model import PromptCache, PromptedLM, PromptedOutput, prompt_model
    from fusion_ui.frozen.prompts import (
        KINDS,
        FixedPrompt,
        PromptConfig,
        PromptGenerator,
        SoftPrompt,
    )
    from fusion_ui.frozen.train import FrozenResult, answer_nll, train_frozen, train_prompt


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion_ui.frozen' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
