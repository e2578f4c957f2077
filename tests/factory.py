"""Tiny real Hugging Face checkpoints built in seconds, for the engine tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

VOCAB = 48


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz0123456789 =:+-")}
    vocab["[UNK]"] = len(vocab)
    vocab["[EOS]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


def tiny_model(family: str, seed: int, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    torch.manual_seed(seed)
    if family == "llama":
        cfg = LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    elif family == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(family)
    return model.to(dtype).eval()


def save(model: PreTrainedModel, folder: Path, shard: str | None = None) -> Path:
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    char_tokenizer().save_pretrained(folder)
    return folder


@torch.no_grad()
def fine_tune_of(base: PreTrainedModel, seed: int, sigma: float = 0.002) -> PreTrainedModel:
    """A 'fine-tune': the base plus small Gaussian deltas (what SFT deltas look like)."""
    model = type(base)(copy.deepcopy(base.config)).to(base.dtype).eval()
    model.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_((torch.randn(p.shape, generator=g) * sigma).to(p.dtype))
    return model


def build_family(root: Path, family: str, n: int = 3, *, dtype: torch.dtype = torch.float32,
                 shard: str | None = None) -> dict[str, Path]:
    """base + n fine-tunes as HF folders under ``root``; returns their paths."""
    base = tiny_model(family, seed=0, dtype=dtype)
    paths = {"base": save(base, root / "base")}
    for i in range(n):
        paths[f"ft{i}"] = save(fine_tune_of(base, seed=100 + i), root / f"ft{i}", shard=shard)
    return paths


SKILLS = ("alpha", "beta")


def demo_like_family(root: Path) -> Path:
    """A family laid out like assets/demo (base/, expert_<skill>/, evals/) from tiny random Llamas.

    Random weights generate varied characters, so generation columns show real text; the shipped
    demo family is far too slow to build in tests.
    """
    base = tiny_model("llama", seed=0)
    save(base, root / "base")
    for i, skill in enumerate(SKILLS):
        save(fine_tune_of(base, seed=100 + i), root / f"expert_{skill}")
    (root / "evals").mkdir(parents=True, exist_ok=True)
    for skill in SKILLS:
        rows = [{"prompt": f"{skill}: {w} =", "answer": w[::-1], "skill": skill} for w in ("abc", "dog", "sun")]
        (root / "evals" / f"{skill}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def dare_ties(sel: dict, drop_rate: float = 0.9, seed: int = 0) -> dict:
    return {
        "method": "dare_ties", "base": sel["base"], "seed": seed, "parameters": {"lambda": 1.0},
        "models": [{"model": m, "weight": 0.5, "drop_rate": drop_rate} for m in sel["models"]],
    }
