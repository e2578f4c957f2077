"""The demo family's architecture: a small standard Llama, so every tool treats it as real."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


@dataclass(frozen=True)
class ModelSize:
    """Shape of the demo Llama."""

    hidden_size: int  # residual width C
    num_layers: int  # decoder blocks
    num_heads: int  # attention heads (head dim = hidden_size / num_heads)
    intermediate_size: int  # SwiGLU MLP width
    max_positions: int = 64  # longest prompt + answer the demo needs, in characters


SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
    "full": ModelSize(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384),
}


def llama_config(size: ModelSize, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads,
        max_position_embeddings=size.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def new_model(size: ModelSize, tokenizer: PreTrainedTokenizerFast, *, seed: int) -> LlamaForCausalLM:
    """A freshly initialised float32 model; the seed fixes every initial weight."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(size, tokenizer))
    return model.float()


def generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    """Greedy and short: every demo answer is one transformed word."""
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=24,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
