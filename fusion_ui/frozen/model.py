"""A frozen causal LM with a soft prompt in front: ``[p(x); x]`` through ``inputs_embeds``.

:class:`PromptedLM` has a causal LM's call signature (``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values``/``cache``, ``use_cache``; ``.logits`` out), so the evals'
greedy generation runs it as it runs any model. The LM is never changed: no hooks, no new
tokens; the prompt enters as input vectors.

How a call lays out the ``k`` prompt positions:

- *first call* (no cache): the LM reads ``[p(x); x]`` (B, k + T). ``p(x)`` is computed from the
  real tokens of ``input_ids`` (``attention_mask`` 1), or given as ``prompt_embeds``. The
  prompt always comes first, before any left padding: ``[p, pad, pad, x]`` with the mask
  ``[1..1, 0, 0, 1..1]``, so the LM sees each row as ``[p; x]`` alone.
- *attention mask*: ``k`` ones in front of the caller's mask (which covers the cached tokens and
  the new ones, as in transformers).
- *position ids*: the prompt takes positions ``0..k-1``; a token the caller puts at position
  ``i`` is at ``k + i``. Without ``position_ids`` they are counted over the mask (real tokens
  only), so left padding does not move them.
- *cache*: the LM's own cache, holding the ``k`` prompt positions too, wrapped in
  :class:`PromptCache`; a call with a cache feeds only the new tokens and never reruns the
  generator (``p(x)`` depends on the prompt that opened the generation, not on generated tokens).
- *logits*: those of the input tokens only (B, T, V); the prompt positions' are dropped.

``p(x)`` must see only the input, never the answer: teacher-forced scoring (training, answer
perplexity) computes ``p`` from the prompt tokens with :meth:`PromptedLM.soft_prompt` and passes
it as ``prompt_embeds`` (:mod:`fusion_ui.frozen.train` does). The generic
:func:`fusion_ui.evals.answer_nll` feeds prompt + answer in one call, so for ID-PT it would let
the generator read the answer: use :func:`fusion_ui.frozen.train.answer_nll` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from fusion_ui.compose.bridges import default_heads
from fusion_ui.compose.calm import check_vocab_fits, hidden_size
from fusion_ui.errors import IncompatibleModelsError, InputError, RecipeError
from fusion_ui.evals.generate import cache_argument
from fusion_ui.frozen.prompts import (
    DEFAULT_ENCODER_PROMPT,
    DEFAULT_LENGTH,
    FixedPrompt,
    PromptConfig,
    PromptGenerator,
    PromptKind,
    SoftPrompt,
    vocabulary_rows,
)


@dataclass
class PromptCache:
    """The LM's cache after ``[p(x); x ...]``: it holds the ``prompt_length`` prompt positions
    too. Consumed by the next call, as a transformers cache is."""

    lm: Any  # the LM's transformers Cache
    prompt_length: int  # k

    def get_seq_length(self) -> int:
        """Input tokens read so far (the prompt positions not counted)."""
        return int(self.lm.get_seq_length()) - self.prompt_length


@dataclass
class PromptedOutput(ModelOutput):
    """What a call returns: a transformers output, so the evals read it as any model's."""

    logits: torch.Tensor | None = None  # (B, T, V): the input tokens' logits (prompt's dropped)
    cache: PromptCache | None = None  # set when called with use_cache=True

    @property
    def past_key_values(self) -> PromptCache | None:  # the name older transformers use
        return self.cache


class PromptedLM(nn.Module):
    """The frozen ``lm`` with the soft ``prompt`` in front (and, for ID-PT, its frozen encoder).

    Build one with :func:`prompt_model` (a fresh prompt) or
    :func:`fusion_ui.frozen.artefact.attach_prompt` (a saved one). Only ``prompt``'s parameters
    require gradients; the LM and the encoder stay frozen and in eval mode.
    """

    def __init__(self, lm: PreTrainedModel, prompt: SoftPrompt) -> None:
        super().__init__()
        config = prompt.config
        if config.d_model != hidden_size(lm):
            raise IncompatibleModelsError(
                f"hidden-size mismatch: the prompt is {config.d_model} wide, but the LM's embeddings "
                f"are {hidden_size(lm)} wide; use the LM it was made for, or train a new prompt for this one"
            )
        self.lm = lm.requires_grad_(False).eval()
        self.prompt = prompt
        self.encoder = prompt.encoder if isinstance(prompt, PromptGenerator) else None
        if self.encoder is not None:
            if hidden_size(self.encoder) != config.d_encoder:
                raise IncompatibleModelsError(
                    f"hidden-size mismatch: the prompt generator reads an encoder {config.d_encoder} "
                    f"wide, but the encoder given is {hidden_size(self.encoder)} wide; give the "
                    "encoder it was trained with"
                )
            if self.encoder.device != lm.device:
                raise IncompatibleModelsError(
                    f"the LM is on {lm.device} and the encoder on {self.encoder.device}; put both on one device"
                )
        self._cache_kw = cache_argument(lm)

    @property
    def config(self) -> PromptConfig:
        return self.prompt.config

    @property
    def prompt_length(self) -> int:
        return self.config.length

    @property
    def context_length(self) -> int | None:
        """Input tokens that fit beside the prompt (None where the LM states no limit)."""
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        return int(limit) - self.prompt_length if limit else None

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def train(self, mode: bool = True) -> PromptedLM:
        super().train(mode)
        self.lm.eval()  # frozen: no dropout, whatever the prompt does
        if self.encoder is not None:
            self.encoder.eval()
        return self

    def soft_prompt(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``p(x)`` (B, k, d_LM) in the LM's dtype, ``x`` being the tokens of ``input_ids`` (B, T)
        where ``attention_mask`` is 1 (give the prompt's tokens only, never an answer's)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        dtype = self.lm.get_input_embeddings().weight.dtype
        return self.prompt(input_ids, attention_mask).to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: PromptCache | None = None,
        use_cache: bool = False,
        cache: PromptCache | None = None,
        prompt_embeds: torch.Tensor | None = None,
        **_: Any,
    ) -> PromptedOutput:
        """Logits (B, T, V) of ``input_ids`` (B, T) after the prompt and what the cache has read.

        ``attention_mask`` (B, past + T) and ``position_ids`` (B, T) are the caller's, as for the
        LM alone (the prompt positions are added here). ``prompt_embeds`` (B, k, d_LM): use this
        ``p`` instead of computing it from ``input_ids`` (first call only).
        """
        past = cache if cache is not None else past_key_values
        done = past.get_seq_length() if past is not None else 0
        batch, new = input_ids.shape
        k = self.prompt_length
        dev = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones(batch, done + new, dtype=torch.long, device=dev)
        elif tuple(attention_mask.shape) != (batch, done + new):
            raise InputError(
                f"attention_mask is {tuple(attention_mask.shape)}, expected ({batch}, {done + new}): "
                "it covers the cached tokens and the new ones"
            )
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, d)
        if past is None:
            if prompt_embeds is None:
                prompt_embeds = self.soft_prompt(input_ids, attention_mask)
            if tuple(prompt_embeds.shape) != (batch, k, embeds.shape[-1]):
                raise InputError(
                    f"prompt_embeds is {tuple(prompt_embeds.shape)}, expected ({batch}, {k}, {embeds.shape[-1]})"
                )
            embeds = torch.cat([prompt_embeds.to(embeds.dtype), embeds], dim=1)  # (B, k + T, d)
        elif prompt_embeds is not None:
            raise InputError(
                "prompt_embeds is for the first call; the cache already holds the prompt"
            )
        lead = torch.ones(batch, k, dtype=attention_mask.dtype, device=dev)
        full_mask = torch.cat([lead, attention_mask], dim=1)  # (B, k + past + T)
        width = embeds.shape[1]  # k + T on the first call, T after
        if position_ids is None:
            positions = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -width:]
        else:
            positions = position_ids + k
            if past is None:
                head = torch.arange(k, device=dev, dtype=positions.dtype)[None].expand(batch, -1)
                positions = torch.cat([head, positions], dim=1)
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=full_mask,
            position_ids=positions,
            use_cache=use_cache,
            **{self._cache_kw: past.lm if past is not None else None},
        )
        logits = out.logits[:, k:] if past is None else out.logits
        kept = PromptCache(_cache_of(out), k) if use_cache else None
        return PromptedOutput(logits=logits, cache=kept)


def _cache_of(output: Any) -> Any:
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else getattr(output, "past_key_values", None)


def prompt_model(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    kind: PromptKind = "idpt",
    *,
    encoder: PreTrainedModel | None = None,
    length: int = DEFAULT_LENGTH,
    encoder_prompt_length: int = DEFAULT_ENCODER_PROMPT,
    heads: int | None = None,
    seed: int = 0,
) -> PromptedLM:
    """The frozen ``lm`` with a fresh prompt of ``length`` vectors: ``kind`` "idpt" (a prompt
    generator reading the input through ``encoder``; default: the LM itself) or "prompt" (plain
    prompt tuning). ``seed`` seeds the init; the same seed gives both kinds the same ``P``, so a
    fresh ID-PT model computes exactly what a fresh plain prompt does.

    The encoder reads the LM's token ids, so it must embed every id of ``tokenizer``.
    """
    check_vocab_fits(lm, tokenizer, "language")
    d = hidden_size(lm)
    init = vocabulary_rows(lm, length, seed=seed)
    dev = lm.device
    if kind == "prompt":
        if encoder is not None:
            raise RecipeError(
                "plain prompt tuning reads no encoder; drop the encoder, or use kind 'idpt'"
            )
        return PromptedLM(lm, FixedPrompt(PromptConfig("prompt", length, d), init).to(dev))
    encoder = encoder if encoder is not None else lm
    check_vocab_fits(encoder, tokenizer, "encoder")
    config = PromptConfig(
        kind,
        length,
        d,
        d_encoder=hidden_size(encoder),
        encoder_prompt_length=encoder_prompt_length,
        heads=heads
        if heads is not None
        else default_heads(d, getattr(lm.config, "num_attention_heads", None)),
    )
    encoder_init = vocabulary_rows(encoder, encoder_prompt_length, seed=seed + 1)
    generator = PromptGenerator(config, encoder, init, encoder_init, seed=seed).to(dev)
    return PromptedLM(lm, generator)
