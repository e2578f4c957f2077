"""The composed model: frozen m_A and m_B run side by side, CALM's bridges between them.

:class:`CalmModel` has a causal LM's call signature (``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values``, ``use_cache``; ``.logits`` out), so the evals' greedy
generation and answer perplexity run it as they run any model.

How a call runs:

1. m_A's body (no LM head, no gradient) reads the tokens; forward hooks on the chosen blocks
   keep their outputs.
2. Each bridge turns those states into cross-attention keys and values (its *memory*).
3. m_B runs with forward hooks on the chosen blocks that add each bridge's output to the block's
   output. The hooks live only for that call, so the anchor used alone is the anchor.

Masks (the published code has neither): anchor column t attends m_A columns <= t only, and
never a padded column (``attention_mask`` 0). A padded query, which nothing reads, sees only
its own column, so no row of the softmax is empty.

Decoding keeps one cache per model, stepped in lockstep: each call feeds the new tokens to
both models (m_A reads every generated token too) with their own KV caches, and appends the
new columns' keys and values to each bridge's memory (:class:`CalmCache`). Column indices are
``past + arange(new)``, the same numbers as in one uncached pass, so the two agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from fusion_ui.compose.bridges import (
    DEFAULT_EVERY,
    BridgeConfig,
    Bridges,
    LayerPair,
    check_pairs,
    default_heads,
    default_pairs,
)
from fusion_ui.errors import IncompatibleModelsError, InputError
from fusion_ui.evals.generate import cache_argument

_LAYER_LISTS = ("layers", "h", "blocks", "decoder.layers", "encoder.layers")


def decoder_blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of decoder blocks of a Hugging Face causal LM (``model.model.layers`` for Llama,
    ``transformer.h`` for GPT-2, ...)."""
    body = model.base_model
    for path in _LAYER_LISTS:
        node: Any = body
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    n = getattr(model.config, "num_hidden_layers", None)
    for module in body.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise IncompatibleModelsError(
        f"cannot find the decoder blocks of {type(model).__name__}; CALM needs a causal LM whose "
        "blocks are a ModuleList (Llama, Mistral, Qwen, GPT-2, ...)"
    )


def hidden_size(model: PreTrainedModel) -> int:
    return int(model.get_input_embeddings().embedding_dim)


def cross_attention_mask(valid: torch.Tensor, past: int, new: int) -> torch.Tensor:
    """(B, 1, new, past + new) booleans: query column ``past + i`` may see key column ``s``.

    ``valid`` (B, past + new) is the attention mask (1 for real tokens). A key is visible when
    it is at or before the query's column and real; a query also sees its own column, so a
    padded query's row is never empty (its output is read by nobody).
    """
    total = past + new
    q_col = torch.arange(past, total, device=valid.device)[:, None]  # (new, 1)
    k_col = torch.arange(total, device=valid.device)[None, :]  # (1, total)
    causal = k_col <= q_col  # (new, total)
    seen = causal[None] & (valid[:, None, :].bool() | (k_col == q_col)[None])  # (B, new, total)
    return seen[:, None]


@dataclass
class CalmCache:
    """Everything decoding keeps between steps: each model's own KV cache, and per bridge the
    keys and values of the m_A columns read so far (each (B, H, S, d/H)).

    Like a transformers cache it is consumed by the next call (the two model caches grow in
    place): continue from the cache the last call returned, never from an older one.
    """

    augment: Any  # m_A's transformers Cache
    anchor: Any  # m_B's transformers Cache
    memory: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def get_seq_length(self) -> int:
        return int(self.memory[0][0].shape[2]) if self.memory else 0


@dataclass
class CalmOutput(ModelOutput):
    """What a call returns: a transformers output, so the evals read it as any model's."""

    logits: torch.Tensor | None = None  # (B, T, V): m_B's head on the composed residual stream
    cache: CalmCache | None = None  # set when called with use_cache=True

    @property
    def past_key_values(self) -> CalmCache | None:  # the name older transformers use
        return self.cache


def _cache_of(output: Any) -> Any:
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else getattr(output, "past_key_values", None)


@contextmanager
def _hooks(blocks: nn.ModuleList, hooks: dict[int, Any]) -> Iterator[None]:
    handles = [blocks[i].register_forward_hook(fn) for i, fn in hooks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_first(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class CalmModel(nn.Module):
    """m_B (``anchor``) composed with m_A (``augment``) through trained ``bridges``.

    Both models are frozen here (``requires_grad`` off, always in eval mode); only the bridges
    train. Build one with :func:`compose` (fresh bridges) or
    :func:`fusion_ui.compose.artefact.load_composition` (saved ones).

    One call at a time: a call hooks the anchor's blocks while it runs, so the anchor must not
    serve another thread meanwhile (the app runs model work in one concurrency group).
    """

    def __init__(self, anchor: PreTrainedModel, augment: PreTrainedModel, bridges: Bridges) -> None:
        super().__init__()
        check_pairs(bridges.config.pairs, len(decoder_blocks(augment)), len(decoder_blocks(anchor)))
        widths = (hidden_size(augment), hidden_size(anchor))
        if (bridges.config.d_augment, bridges.config.d_anchor) != widths:
            raise IncompatibleModelsError(
                f"the bridges map width {bridges.config.d_augment} -> {bridges.config.d_anchor}, but the "
                f"models have widths {widths[0]} (augmenting) and {widths[1]} (anchor); "
                "load them with the models they were trained for"
            )
        if anchor.device != augment.device:
            raise IncompatibleModelsError(
                f"the anchor is on {anchor.device} and the augmenting model on {augment.device}; "
                "put both on one device (they read every token in lockstep)"
            )
        self.anchor = anchor.requires_grad_(False).eval()
        self.augment = augment.requires_grad_(False).eval()
        self.bridges = bridges
        self._anchor_blocks = decoder_blocks(anchor)
        self._augment_blocks = decoder_blocks(augment)
        self._augment_cache_kw = cache_argument(augment.base_model)
        self._anchor_cache_kw = cache_argument(anchor)

    @property
    def config(self) -> BridgeConfig:
        return self.bridges.config

    @property
    def context_length(self) -> int | None:
        """The shorter of the two models' position limits (None where neither states one)."""
        limits = [
            getattr(m.config, "max_position_embeddings", None) for m in (self.anchor, self.augment)
        ]
        known = [int(n) for n in limits if n]
        return min(known) if known else None

    @property
    def device(self) -> torch.device:
        return next(self.bridges.parameters()).device

    def train(self, mode: bool = True) -> CalmModel:
        super().train(mode)
        self.anchor.eval()  # frozen: no dropout, whatever the bridges do
        self.augment.eval()
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: CalmCache | None = None,
        use_cache: bool = False,
        cache: CalmCache | None = None,
        **_: Any,
    ) -> CalmOutput:
        """Logits (B, T, V) for ``input_ids`` (B, T) following what the cache has read.

        ``attention_mask`` (B, past + T) covers the past too, as in transformers. The cache comes
        as ``past_key_values`` or ``cache`` (both transformers spellings).
        """
        past = cache if cache is not None else past_key_values
        done = past.get_seq_length() if past is not None else 0
        batch, new = input_ids.shape
        if attention_mask is None:
            valid = torch.ones(batch, done + new, dtype=torch.bool, device=input_ids.device)
        else:
            if attention_mask.shape != (batch, done + new):
                raise InputError(
                    f"attention_mask is {tuple(attention_mask.shape)}, expected ({batch}, {done + new}): "
                    "it covers the cached tokens and the new ones"
                )
            valid = attention_mask.bool()
        mask = cross_attention_mask(valid, done, new)  # (B, 1, T, past + T)
        pairs = self.config.pairs

        # 1. m_A reads the tokens; its chosen blocks' outputs are kept (no gradient flows to m_A).
        states: dict[int, torch.Tensor] = {}

        def keep(i: int) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                states[i] = _first(output)

            return hook

        with (
            torch.no_grad(),
            _hooks(self._augment_blocks, {p.augment: keep(p.augment) for p in pairs}),
        ):
            out_a = self.augment.base_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **{self._augment_cache_kw: past.augment if past is not None else None},
            )

        # 2. Each bridge's keys and values for the new columns, after those already read.
        memory = []
        for k, (pair, bridge) in enumerate(zip(pairs, self.bridges.items, strict=True)):
            keys, values = bridge.memory(states[pair.augment], valid[:, done:])
            if past is not None and past.memory:
                keys = torch.cat([past.memory[k][0], keys], dim=2)
                values = torch.cat([past.memory[k][1], values], dim=2)
            memory.append((keys, values))

        # 3. m_B runs with each bridge's output added after its block.
        by_block: dict[int, list[int]] = {}
        for k, pair in enumerate(pairs):
            by_block.setdefault(pair.anchor, []).append(k)

        def inject(ks: Sequence[int]) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> Any:
                h = _first(output)  # (B, T, d_B)
                delta = sum(self.bridges.items[k].attend(h, *memory[k], mask) for k in ks)
                return _with_first(output, h + delta)

            return hook

        with _hooks(self._anchor_blocks, {j: inject(ks) for j, ks in by_block.items()}):
            out_b = self.anchor(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                **{self._anchor_cache_kw: past.anchor if past is not None else None},
            )
        kept = CalmCache(_cache_of(out_a), _cache_of(out_b), memory) if use_cache else None
        return CalmOutput(logits=out_b.logits, cache=kept)


def check_same_tokenizer(
    anchor_tokenizer: PreTrainedTokenizerBase, augment_tokenizer: PreTrainedTokenizerBase
) -> None:
    """Refuse two tokenizers that do not map text to the same ids (both models read one stream)."""
    va, vb = anchor_tokenizer.get_vocab(), augment_tokenizer.get_vocab()
    if va != vb:
        only_a = len(set(va) - set(vb))
        only_b = len(set(vb) - set(va))
        moved = sum(1 for t in set(va) & set(vb) if va[t] != vb[t])
        raise IncompatibleModelsError(
            f"the two models have different tokenizers (anchor {len(va)} tokens, augmenting {len(vb)}: "
            f"{only_a} only in the anchor's, {only_b} only in the augmenting model's, {moved} with "
            "other ids); CALM runs both on one token stream, so pick two models of one tokenizer family"
        )
    for name in ("bos_token_id", "eos_token_id"):
        a, b = getattr(anchor_tokenizer, name), getattr(augment_tokenizer, name)
        if a != b:
            raise IncompatibleModelsError(
                f"the tokenizers agree on their vocabulary but not on {name} ({a} vs {b}); "
                "use the same tokenizer files for both models"
            )


def check_vocab_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, role: str) -> None:
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise IncompatibleModelsError(
            f"the {role} model embeds {rows} token ids, but the tokenizer has {len(tokenizer)}; "
            "it is not this tokenizer's model"
        )


def compose(
    anchor: PreTrainedModel,
    augment: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    augment_tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    pairs: Sequence[LayerPair] | None = None,
    every: int = DEFAULT_EVERY,
    offset: int | None = None,
    heads: int | None = None,
    seed: int = 0,
) -> CalmModel:
    """m_B = ``anchor`` composed with m_A = ``augment`` through fresh (untrained) bridges.

    ``pairs`` default to :func:`~fusion_ui.compose.bridges.default_pairs` (``every``,
    ``offset``); ``heads`` to the anchor's head count. ``seed`` seeds the bridges' init. The
    bridges are put on the anchor's device.
    """
    check_same_tokenizer(
        tokenizer, augment_tokenizer if augment_tokenizer is not None else tokenizer
    )
    check_vocab_fits(anchor, tokenizer, "anchor")
    check_vocab_fits(augment, tokenizer, "augmenting")
    n_a, n_b = len(decoder_blocks(augment)), len(decoder_blocks(anchor))
    chosen = (
        tuple(pairs) if pairs is not None else default_pairs(n_a, n_b, every=every, offset=offset)
    )
    check_pairs(chosen, n_a, n_b)
    d_b = hidden_size(anchor)
    config = BridgeConfig(
        pairs=chosen,
        d_augment=hidden_size(augment),
        d_anchor=d_b,
        heads=heads
        if heads is not None
        else default_heads(d_b, getattr(anchor.config, "num_attention_heads", None)),
    )
    bridges = Bridges(config, seed=seed).to(anchor.device)
    return CalmModel(anchor, augment, bridges)
