"""Frozen-LM methods (Levine et al. 2022, "Standing on the Shoulders of Giant Frozen Language
Models", arXiv 2204.10019): one LM stays frozen, small modules around it learn. This package
holds input-dependent prompt tuning (ID-PT) and its baseline, plain prompt tuning, and the
recursive LMs: textual (pass 1 writes candidates, a prompt-tuned pass 2 reads them) and neural
(a trained connector feeds pass 1's last hidden states to pass 2). No Gradio here.

    from fusion_ui.frozen import prompt_model, train_prompt, save_prompt, load_prompted
    model = prompt_model(lm, tokenizer, "idpt", encoder=small, length=8)  # or "prompt"
    train_prompt(model, tokenizer, items)                 # only the prompt (generator) learns
    save_prompt(model, "prompt/", tokenizer=tokenizer)    # prompt.safetensors + prompt.json
    model, tok = load_prompted("lm/", "prompt/")          # the encoder found from prompt.json
    greedy_generate(model, tok, ["key: abc ="])           # fusion_ui.evals runs it like any LM
    answer_nll(model, tok, items)                         # p(x) from the prompt only

    rec = connector_model(lm)                             # neural recursion, zero-init connector
    train_connector(rec, tokenizer, items); save_connector(rec, "conn/", tokenizer=tokenizer)
    txt = textual_model(lm, tokenizer)                    # textual recursion (pass 1: lm)
    train_textual(txt, items); save_recursive(txt, "rec/")
    model, tok = load_frozen("lm/", "conn/")              # any of prompt/, conn/, rec/
    [m.label for m in FROZEN_METHODS]                     # every method, as a UI offers it

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
    "Connector": "fusion_ui.frozen.connector",
    "ConnectorConfig": "fusion_ui.frozen.connector",
    "ConnectorLM": "fusion_ui.frozen.connector",
    "connector_model": "fusion_ui.frozen.connector",
    "RecursionConfig": "fusion_ui.frozen.recursive",
    "RecursiveLM": "fusion_ui.frozen.recursive",
    "second_pass_text": "fusion_ui.frozen.recursive",
    "ARTEFACT_KINDS": "fusion_ui.frozen.recursion_artefact",
    "artefact_kind": "fusion_ui.frozen.recursion_artefact",
    "attach_connector": "fusion_ui.frozen.recursion_artefact",
    "attach_recursive": "fusion_ui.frozen.recursion_artefact",
    "load_frozen": "fusion_ui.frozen.recursion_artefact",
    "save_connector": "fusion_ui.frozen.recursion_artefact",
    "save_recursive": "fusion_ui.frozen.recursion_artefact",
    "FROZEN_METHODS": "fusion_ui.frozen.methods",
    "METHOD_KINDS": "fusion_ui.frozen.methods",
    "FrozenMethod": "fusion_ui.frozen.methods",
    "frozen_method": "fusion_ui.frozen.methods",
    "method_of_folder": "fusion_ui.frozen.methods",
    "RecursionRun": "fusion_ui.frozen.train_recursive",
    "textual_model": "fusion_ui.frozen.train_recursive",
    "train_connector": "fusion_ui.frozen.train_recursive",
    "train_connector_run": "fusion_ui.frozen.train_recursive",
    "train_textual": "fusion_ui.frozen.train_recursive",
    "train_textual_run": "fusion_ui.frozen.train_recursive",
}

__all__ = [
    "ARTEFACT_KINDS",
    "FROZEN_METHODS",
    "KINDS",
    "METHOD_KINDS",
    "Connector",
    "ConnectorConfig",
    "ConnectorLM",
    "FixedPrompt",
    "FrozenMethod",
    "FrozenResult",
    "PromptCache",
    "PromptConfig",
    "PromptGenerator",
    "PromptInfo",
    "PromptedLM",
    "PromptedOutput",
    "RecursionConfig",
    "RecursionRun",
    "RecursiveLM",
    "SoftPrompt",
    "answer_nll",
    "artefact_kind",
    "attach_connector",
    "attach_prompt",
    "attach_recursive",
    "connector_model",
    "frozen_method",
    "load_frozen",
    "load_prompted",
    "method_of_folder",
    "prompt_model",
    "read_prompt_info",
    "save_connector",
    "save_prompt",
    "save_recursive",
    "second_pass_text",
    "textual_model",
    "train_connector",
    "train_connector_run",
    "train_frozen",
    "train_prompt",
    "train_textual",
    "train_textual_run",
]

if TYPE_CHECKING:
    from fusion_ui.frozen.artefact import (
        PromptInfo,
        attach_prompt,
        load_prompted,
        read_prompt_info,
        save_prompt,
    )
    from fusion_ui.frozen.connector import (
        Connector,
        ConnectorConfig,
        ConnectorLM,
        connector_model,
    )
    from fusion_ui.frozen.methods import (
        FROZEN_METHODS,
        METHOD_KINDS,
        FrozenMethod,
        frozen_method,
        method_of_folder,
    )
    from fusion_ui.frozen.model import PromptCache, PromptedLM, PromptedOutput, prompt_model
    from fusion_ui.frozen.prompts import (
        KINDS,
        FixedPrompt,
        PromptConfig,
        PromptGenerator,
        SoftPrompt,
    )
    from fusion_ui.frozen.recursion_artefact import (
        ARTEFACT_KINDS,
        artefact_kind,
        attach_connector,
        attach_recursive,
        load_frozen,
        save_connector,
        save_recursive,
    )
    from fusion_ui.frozen.recursive import RecursionConfig, RecursiveLM, second_pass_text
    from fusion_ui.frozen.train import FrozenResult, answer_nll, train_frozen, train_prompt
    from fusion_ui.frozen.train_recursive import (
        RecursionRun,
        textual_model,
        train_connector,
        train_connector_run,
        train_textual,
        train_textual_run,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion_ui.frozen' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
