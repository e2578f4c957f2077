"""What a tensor name says about its place in a transformer: layer index and module kind.

Recognises the common Hugging Face layouts (Llama/Mistral/Qwen ``model.layers.N``, GPT-2
``transformer.h.N``, BERT ``encoder.layer.N``, GPT-NeoX ``gpt_neox.layers.N``). Used by
recipe overrides (layer ranges, ramps) and by the delta analysis (layer x module heatmaps).
"""

from __future__ import annotations

import re
from typing import Literal

ModuleKind = Literal[
    "embed", "q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down", "norm", "lm_head", "other"
]

# Order of kinds for tables and heatmap columns.
MODULE_KINDS: tuple[ModuleKind, ...] = (
    "embed", "q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down", "norm", "lm_head", "other"
)

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)")

# (pattern searched in the name, kind); first match wins, so specific names come first.
_KIND_RULES: tuple[tuple[re.Pattern[str], ModuleKind], ...] = tuple(
    (re.compile(p), k)
    for p, k in (
        (r"(^|\.)lm_head\.|(^|\.)embed_out\.", "lm_head"),
        (r"embed_tokens|(^|\.)wte\.|(^|\.)wpe\.|word_embeddings|position_embeddings|token_type_embeddings|embed_positions|(^|\.)embed_in\.", "embed"),
        (r"norm|(^|\.)ln_\w*\.|layernorm|LayerNorm", "norm"),
        (r"q_proj|\.query\.|(^|\.)wq\.", "q"),
        (r"k_proj|\.key\.|(^|\.)wk\.", "k"),
        (r"v_proj|\.value\.|(^|\.)wv\.", "v"),
        (r"c_attn|qkv_proj|query_key_value|Wqkv|W_pack", "qkv"),
        (r"o_proj|out_proj|attn\.c_proj|attention\.dense|attention\.output\.dense|(^|\.)wo\.|self_attn\.dense", "o"),
        (r"gate_up_proj", "gate_up"),
        (r"gate_proj|(^|\.)w1\.", "gate"),
        (r"up_proj|c_fc|intermediate\.dense|dense_h_to_4h|(^|\.)w3\.|fc1", "up"),
        (r"down_proj|mlp\.c_proj|output\.dense|dense_4h_to_h|(^|\.)w2\.|fc2", "down"),
    )
)


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to, or ``None`` for embeddings, final norm, head."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def module_kind(name: str) -> ModuleKind:
    """The kind of module a tensor belongs to (``q``, ``down``, ``norm``, ``embed``...)."""
    for pattern, kind in _KIND_RULES:
        if pattern.search(name):
            return kind
    return "other"


def is_input_side(name: str) -> bool:
    """True for tensors that sit before the first block (embeddings)."""
    return module_kind(name) == "embed"


def num_layers_from_config(config: dict) -> int | None:
    """Number of transformer blocks declared by a Hugging Face config, if it says."""
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    text = config.get("text_config")
    if isinstance(text, dict):
        return num_layers_from_config(text)
    return None
