"""The trained parts of the frozen-LM prompt methods (Levine et al. 2022, "Standing on the
Shoulders of Giant Frozen Language Models", arXiv 2204.10019): soft prompts of ``k`` vectors in
the frozen LM's embedding space.

- :class:`FixedPrompt`, plain prompt tuning (Lester et al. 2021): one learned prompt ``P`` (k, d),
  the same for every input. The baseline.
- :class:`PromptGenerator`, input-dependent prompt tuning (ID-PT): a frozen small *encoder*
  reads the input ``x`` after its own learned prompt; ``k`` learned queries cross-attend to the
  encoder's output and give ``p(x)``::

      p(x) = P + W_o · CrossAttn(Q, Enc([E; x]))        # (B, k, d_LM)

  ``W_o`` starts at zero, so an untrained generator gives exactly ``P`` for every input: ID-PT
  starts as plain prompt tuning from the same ``P`` (same seed, same vocabulary rows), and the
  input-dependent part grows from there.

Both start ``P`` from ``k`` rows of the LM's input embeddings (seeded), the usual prompt-tuning
init. Only these modules' parameters are trained and saved: the encoder is held by reference,
outside the module tree (it is never in :meth:`state_dict`). Putting the prompt in front of the
LM is :mod:`fusion_ui.frozen.model`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from fusion_ui.errors import RecipeError

PromptKind = Literal["idpt", "prompt"]
KINDS: tuple[PromptKind, ...] = ("idpt", "prompt")
DEFAULT_LENGTH = 8  # k: soft-prompt vectors in front of the LM's input
DEFAULT_ENCODER_PROMPT = 4  # learned vectors in front of the encoder's input (ID-PT)


@dataclass(frozen=True)
class PromptConfig:
    """The shape of a soft prompt (what ``prompt.json`` records besides the models)."""

    kind: PromptKind  # "idpt": input-dependent (generator); "prompt": one fixed learned prompt
    length: int  # k, the soft-prompt vectors prepended to the LM's input
    d_model: int  # the frozen LM's hidden size (the prompt vectors' width)
    d_encoder: int | None = None  # ID-PT: the encoder's hidden size (None for "prompt")
    encoder_prompt_length: int = 0  # ID-PT: learned vectors prepended to the encoder's input
    heads: int = 1  # ID-PT: cross-attention heads; d_model % heads == 0
    norm_eps: float = 1e-5  # ID-PT: the pre-norms' epsilon

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RecipeError(f"unknown prompt kind {self.kind!r}; use one of {', '.join(KINDS)}")
        problems = []
        if self.length < 1:
            problems.append(f"the prompt length must be >= 1 (got {self.length})")
        if self.d_model < 1:
            problems.append(f"d_model must be >= 1 (got {self.d_model})")
        if self.kind == "idpt":
            if self.d_encoder is None or self.d_encoder < 1:
                problems.append("ID-PT needs the encoder's hidden size (d_encoder)")
            if self.encoder_prompt_length < 1:
                problems.append(
                    f"ID-PT's encoder prompt length must be >= 1 (got {self.encoder_prompt_length}): "
                    "the queries always have it to attend to, even for an empty input"
                )
            if self.heads < 1 or self.d_model % self.heads:
                problems.append(
                    f"{self.heads} cross-attention heads do not divide the LM's hidden size "
                    f"{self.d_model}; pick a divisor of {self.d_model}"
                )
        if problems:
            raise RecipeError("invalid prompt settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptConfig:
        d_encoder = data.get("d_encoder")
        return cls(
            kind=data["kind"],
            length=int(data["length"]),
            d_model=int(data["d_model"]),
            d_encoder=None if d_encoder is None else int(d_encoder),
            encoder_prompt_length=int(data.get("encoder_prompt_length", 0)),
            heads=int(data.get("heads", 1)),
            norm_eps=float(data.get("norm_eps", 1e-5)),
        )


def vocabulary_rows(model: PreTrainedModel, n: int, *, seed: int) -> torch.Tensor:
    """``n`` rows of ``model``'s input embeddings (float32, CPU), drawn without replacement
    when the vocabulary allows: prompt tuning's usual init, a prompt that looks like tokens."""
    weight = model.get_input_embeddings().weight.detach()
    gen = torch.Generator().manual_seed(seed)
    rows = weight.shape[0]
    picks = (
        torch.randperm(rows, generator=gen)[:n]
        if n <= rows
        else torch.randint(rows, (n,), generator=gen)
    )
    return weight[picks.to(weight.device)].to("cpu", torch.float32).clone()  # (n, d)


class SoftPrompt(nn.Module):
    """What the LM wrapper asks of a prompt: ``k`` vectors per input row."""

    config: PromptConfig

    @property
    def length(self) -> int:
        return self.config.length

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The prompt (B, k, d_LM), float32, for ``input_ids`` (B, T) where ``attention_mask``
        (B, T) is 1 (the tokens that make up ``x``)."""
        raise NotImplementedError


class FixedPrompt(SoftPrompt):
    """Plain prompt tuning: one learned prompt for every input."""

    def __init__(self, config: PromptConfig, init: torch.Tensor) -> None:
        super().__init__()
        if config.kind != "prompt":
            raise RecipeError(f"FixedPrompt is plain prompt tuning, not {config.kind!r}")
        _check_init(init, config)
        self.config = config
        self.prompt = nn.Parameter(init.detach().to(torch.float32).clone())  # (k, d_LM)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.prompt[None].expand(input_ids.shape[0], -1, -1)  # (B, k, d_LM)


class PromptGenerator(SoftPrompt):
    """ID-PT's prompt generator: frozen encoder + learned encoder prompt + one cross-attention
    from ``k`` learned queries, added to a learned base prompt ``P``.

    ``encoder`` is any Hugging Face model whose body (``base_model``) takes ``inputs_embeds`` and
    returns ``last_hidden_state`` (a small causal LM, the LM itself, an encoder-only model); it
    reads the LM's token ids, so it must share the LM's tokenizer. It stays frozen and in eval
    mode; gradients pass through it to the encoder prompt.
    """

    def __init__(
        self,
        config: PromptConfig,
        encoder: PreTrainedModel,
        init: torch.Tensor,
        encoder_init: torch.Tensor,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if config.kind != "idpt":
            raise RecipeError(f"PromptGenerator is ID-PT, not {config.kind!r}")
        _check_init(init, config)
        d, d_enc = config.d_model, int(config.d_encoder or 0)
        if tuple(encoder_init.shape) != (config.encoder_prompt_length, d_enc):
            raise RecipeError(
                f"the encoder prompt's init is {tuple(encoder_init.shape)}, expected "
                f"({config.encoder_prompt_length}, {d_enc})"
            )
        self.config = config
        self._encoder = [encoder.requires_grad_(False).eval()]  # a list: kept out of state_dict
        with torch.random.fork_rng(devices=[]):  # seeded init, the global generator untouched
            torch.manual_seed(seed)
            self.prompt = nn.Parameter(init.detach().to(torch.float32).clone())  # P: (k, d_LM)
            self.encoder_prompt = nn.Parameter(encoder_init.detach().to(torch.float32).clone())  # E
            self.queries = nn.Parameter(torch.randn(config.length, d) * d**-0.5)  # Q: (k, d_LM)
            self.norm_memory = nn.LayerNorm(d_enc, eps=config.norm_eps)
            self.norm_query = nn.LayerNorm(d, eps=config.norm_eps)
            self.query = nn.Linear(d, d, bias=False)
            self.key = nn.Linear(d_enc, d, bias=False)  # the encoder's width -> the LM's
            self.value = nn.Linear(d_enc, d, bias=False)
            self.out = nn.Linear(d, d, bias=False)  # W_o
        nn.init.zeros_(self.out.weight)  # step 0: p(x) = P for every x

    @property
    def encoder(self) -> PreTrainedModel:
        return self._encoder[0]

    def train(self, mode: bool = True) -> PromptGenerator:
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout
        return self

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's last hidden states over ``[E; x]`` (B, e + T, d_enc), float32, padded
        columns zeroed, and which columns are real (B, e + T)."""
        encoder = self.encoder
        embeds = encoder.get_input_embeddings()(input_ids)  # (B, T, d_enc)
        batch, e = input_ids.shape[0], self.config.encoder_prompt_length
        lead = self.encoder_prompt.to(embeds.dtype)[None].expand(batch, -1, -1)  # (B, e, d_enc)
        valid = torch.cat(
            [
                torch.ones(batch, e, dtype=torch.bool, device=input_ids.device),
                attention_mask.bool(),
            ],
            dim=1,
        )  # (B, e + T)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)  # a row's real tokens as alone
        states = encoder.base_model(
            inputs_embeds=torch.cat([lead, embeds], dim=1),
            attention_mask=valid.long(),
            position_ids=positions,
        ).last_hidden_state.float()
        # whatever the encoder leaves at a padded column (even NaN) cannot reach a real one
        states = torch.where(valid[..., None], states, torch.zeros_like(states))
        return states, valid

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states, valid = self.encode(input_ids, attention_mask)  # (B, S, d_enc), (B, S)
        batch = states.shape[0]
        memory = self.norm_memory(states)
        keys, values = (
            self._split(self.key(memory)),
            self._split(self.value(memory)),
        )  # (B, H, S, d/H)
        q = self.query(self.norm_query(self.queries))[None].expand(batch, -1, -1)  # (B, k, d)
        y = F.scaled_dot_product_attention(
            self._split(q), keys, values, attn_mask=valid[:, None, None, :]
        )  # (B, H, k, d/H)
        y = y.transpose(1, 2).reshape(batch, self.config.length, -1)  # (B, k, d)
        return self.prompt[None] + self.out(y)  # (B, k, d_LM)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.config.heads
        return x.view(b, t, h, d // h).transpose(1, 2)


def _check_init(init: torch.Tensor, config: PromptConfig) -> None:
    if tuple(init.shape) != (config.length, config.d_model):
        raise RecipeError(
            f"the prompt's init is {tuple(init.shape)}, expected ({config.length}, {config.d_model})"
        )
