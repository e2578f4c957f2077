"""Synthetic Llama-family checkpoints for benchmarks: a random base and fine-tunes of it.

Real Hugging Face folders (config.json, sharded bf16 safetensors with an index, a tokenizer),
written tensor by tensor through the engine's streaming shard writer, so building the 0.9B
family needs little memory. Fine-tune i is base + N(0, sigma_delta) noise, what SFT deltas look
like to a merge (small and dense).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from fusion_ui.io.writer import ShardedSafetensorsSink, TensorSpec, parse_size

# name -> (hidden, layers, intermediate, vocab); "full" is the 0.9B family of the speed issue
SIZES: dict[str, tuple[int, int, int, int]] = {
    "full": (2048, 16, 5632, 32000),
    "small": (512, 4, 1408, 8000),
    "tiny": (64, 2, 176, 256),
}


def llama_specs(hidden: int, layers: int, intermediate: int, vocab: int, dtype: torch.dtype) -> list[TensorSpec]:
    """Tensor names and shapes of a Llama checkpoint, in save_pretrained's (sorted) order."""
    shapes: dict[str, tuple[int, ...]] = {
        "lm_head.weight": (vocab, hidden),
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (hidden, hidden),
            p + "self_attn.v_proj.weight": (hidden, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
        }
    return [TensorSpec(n, s, dtype) for n, s in sorted(shapes.items())]


def llama_config(hidden: int, layers: int, intermediate: int, vocab: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "num_key_value_heads": max(1, hidden // 64),
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    }


def _write_tokenizer(folder: Path) -> None:
    vocab = {chr(ord("a") + i): i for i in range(26)} | {"[UNK]": 26}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}) + "\n"
    )


@torch.no_grad()
def build_family(
    root: Path, size: str = "full", n_finetunes: int = 3, *, sigma_base: float = 0.02,
    sigma_delta: float = 0.002, shard_size: str = "500MB", seed: int = 0,
) -> dict[str, Path]:
    """Write ``root/base`` and ``root/ft0..`` unless a finished family of that shape is there."""
    dims = SIZES[size]
    marker = root / "family.json"
    want = {"size": size, "n": n_finetunes, "sigma_base": sigma_base, "sigma_delta": sigma_delta, "seed": seed}
    names = ["base"] + [f"ft{i}" for i in range(n_finetunes)]
    paths = {n: root / n for n in names}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return paths
    specs = llama_specs(*dims, torch.bfloat16)
    sinks = {}
    for name, folder in paths.items():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(llama_config(*dims), indent=2) + "\n")
        _write_tokenizer(folder)
        sinks[name] = ShardedSafetensorsSink(folder, max_shard_bytes=parse_size(shard_size))
        sinks[name].begin(specs)
    gen = torch.Generator().manual_seed(seed)
    for spec in specs:
        if spec.name.endswith("norm.weight"):
            base = 1.0 + torch.randn(spec.shape, generator=gen) * sigma_base
        else:
            base = torch.randn(spec.shape, generator=gen) * sigma_base
        sinks["base"].write(spec.name, base.to(torch.bfloat16))
        for name in names[1:]:
            noise = torch.randn(spec.shape, generator=gen).mul_(sigma_delta)
            sinks[name].write(spec.name, noise.add_(base).to(torch.bfloat16))
    for sink in sinks.values():
        sink.finish()
    marker.write_text(json.dumps(want) + "\n")
    return paths
