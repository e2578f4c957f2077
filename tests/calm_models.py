"""Two tiny Llamas of different widths sharing the char tokenizer: an anchor and an augmenting
model for the CALM tests (built in milliseconds)."""

from __future__ import annotations

import torch
from factory import VOCAB, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def anchor_model(seed: int = 0) -> LlamaForCausalLM:
    """m_B: factory's tiny Llama (width 32, 3 blocks), its head scaled up 25x: a random init's
    logits span about +-0.5, too flat for any bridge to make the frozen anchor confident (a
    trained LM's span +-10), so a training test could not show the loss falling."""
    model = tiny_model("llama", seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(25)
    return model


def augment_model(seed: int = 1, *, vocab: int = VOCAB, layers: int = 4) -> LlamaForCausalLM:
    """m_A: a wider tiny Llama (width 48, 4 blocks) over the same vocabulary."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def other_tokenizer() -> PreTrainedTokenizerFast:
    """A char tokenizer over other characters (another tokenizer family)."""
    vocab = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;")}
    vocab["[UNK]"] = len(vocab)
    vocab["[EOS]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")
