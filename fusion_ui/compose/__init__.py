"""Composition of frozen models: CALM (arXiv 2401.02412), an anchor m_B and an augmenting m_A
joined by small trained bridges. No Gradio here.

    from fusion_ui.compose import compose, train_bridges, save_bridges, load_composition
    model = compose(anchor, augment, tokenizer)          # fresh bridges: exactly the anchor
    train_bridges(model, tokenizer, items)               # only the bridges learn
    save_bridges(model, "bridges/", tokenizer=tokenizer) # bridges.safetensors + bridges.json
    model, tok = load_composition("anchor/", "augment/", "bridges/")
    greedy_generate(model, tok, ["key: abc ="])          # fusion_ui.evals runs it like any LM
    read_bridges(model, tok, "key: abc =")               # what each bridge attends, per token

The names load on first use, so importing the package does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "Bridge": "fusion_ui.compose.bridges",
    "BridgeAttention": "fusion_ui.compose.attention",
    "read_bridges": "fusion_ui.compose.attention",
    "recording": "fusion_ui.compose.attention",
    "BridgeConfig": "fusion_ui.compose.bridges",
    "BridgeReading": "fusion_ui.compose.bridges",
    "Bridges": "fusion_ui.compose.bridges",
    "LayerPair": "fusion_ui.compose.bridges",
    "default_pairs": "fusion_ui.compose.bridges",
    "parse_pairs": "fusion_ui.compose.bridges",
    "CalmCache": "fusion_ui.compose.calm",
    "CalmModel": "fusion_ui.compose.calm",
    "CalmOutput": "fusion_ui.compose.calm",
    "compose": "fusion_ui.compose.calm",
    "cross_attention_mask": "fusion_ui.compose.calm",
    "BridgesInfo": "fusion_ui.compose.artefact",
    "ModelIdentity": "fusion_ui.compose.artefact",
    "attach_bridges": "fusion_ui.compose.artefact",
    "load_composition": "fusion_ui.compose.artefact",
    "read_bridges_info": "fusion_ui.compose.artefact",
    "save_bridges": "fusion_ui.compose.artefact",
    "ComposeResult": "fusion_ui.compose.train",
    "train_bridges": "fusion_ui.compose.train",
    "train_composition": "fusion_ui.compose.train",
}

__all__ = [
    "Bridge",
    "BridgeAttention",
    "BridgeConfig",
    "BridgeReading",
    "Bridges",
    "BridgesInfo",
    "CalmCache",
    "CalmModel",
    "CalmOutput",
    "ComposeResult",
    "LayerPair",
    "ModelIdentity",
    "attach_bridges",
    "compose",
    "cross_attention_mask",
    "default_pairs",
    "load_composition",
    "parse_pairs",
    "read_bridges",
    "read_bridges_info",
    "recording",
    "save_bridges",
    "train_bridges",
    "train_composition",
]

if TYPE_CHECKING:
    from fusion_ui.compose.artefact import (
        BridgesInfo,
        ModelIdentity,
        attach_bridges,
        load_composition,
        read_bridges_info,
        save_bridges,
    )
    from fusion_ui.compose.attention import BridgeAttention, read_bridges, recording
    from fusion_ui.compose.bridges import (
        Bridge,
        BridgeConfig,
        BridgeReading,
        Bridges,
        LayerPair,
        default_pairs,
        parse_pairs,
    )
    from fusion_ui.compose.calm import (
        CalmCache,
        CalmModel,
        CalmOutput,
        compose,
        cross_attention_mask,
    )
    from fusion_ui.compose.train import ComposeResult, train_bridges, train_composition


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusion_ui.compose' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
