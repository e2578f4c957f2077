"""The neural recursive LM (Levine et al. 2022, arXiv 2204.10019, section 4): two passes through
one frozen LM, joined by a small trained *connector*.

Pass 1 reads ``x`` and gives its last-layer hidden states ``H`` (the base model's
``last_hidden_state``, after the final norm). The connector maps them to input vectors of pass 2,
which reads them added to ``x``'s own embeddings, position by position::

    e2_t = E(x_t) + W2 · GELU(W1 · LN(H_t))        # (B, T, d): pass 2's inputs_embeds
    logits = LM(inputs_embeds=e2)                    # the same frozen LM, its head speaks

``W2`` starts at zero, so an untrained connector gives pass 2 exactly ``E(x)``: the recursive
model computes bit for bit what the frozen LM alone does, and training starts from the base.
This is why the connector's output is *added* at the token positions rather than prepended as
extra input vectors (the paper's layout): any prefix, even a learned one, moves the positions
and gives attention something new to read, so no init of it leaves the base's outputs as they
were. Position ``t`` of pass 2 reads ``H_≤t`` only (pass 1 is causal), so the model is a causal LM:
teacher-forced scoring is exact and decoding steps both passes in lockstep, one KV cache each.

Only the connector learns; the LM (both passes) is frozen and in eval mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from fusion_ui.compose.calm import hidden_size
from fusion_ui.errors import IncompatibleModelsError, InputError, RecipeError
from fusion_ui.evals.generate import cache_argument
from fusion_ui.frozen.model import _cache_of

DEFAULT_HIDDEN = 256  # the connector MLP's inner width


@dataclass(frozen=True)
class ConnectorConfig:
    """The connector's shape (what ``connector.json`` records besides the LM)."""

    d_model: int  # the frozen LM's hidden size (pass 1's output and pass 2's input width)
    hidden: int = DEFAULT_HIDDEN  # the MLP's inner width
    norm_eps: float = 1e-5  # the input LayerNorm's epsilon

    def __post_init__(self) -> None:
        problems = []
        if self.d_model < 1:
            problems.append(f"d_model must be >= 1 (got {self.d_model})")
        if self.hidden < 1:
            problems.append(f"the connector's hidden width must be >= 1 (got {self.hidden})")
        if problems:
            raise RecipeError("invalid connector settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ConnectorConfig:
        return cls(
            d_model=int(data["d_model"]),
            hidden=int(data.get("hidden", DEFAULT_HIDDEN)),
            norm_eps=float(data.get("norm_eps", 1e-5)),
        )


class Connector(nn.Module):
    """``H (B, T, d) -> W2 · GELU(W1 · LN(H)) (B, T, d)``, ``W2`` zero at init."""

    def __init__(self, config: ConnectorConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        d, h = config.d_model, config.hidden
        with torch.random.fork_rng(devices=[]):  # seeded init, the global generator untouched
            torch.manual_seed(seed)
            self.norm = nn.LayerNorm(d, eps=config.norm_eps)
            self.up = nn.Linear(d, h)  # W1
            self.down = nn.Linear(h, d)  # W2
        nn.init.zeros_(self.down.weight)  # step 0: the connector adds nothing
        nn.init.zeros_(self.down.bias)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(self.norm(states.float()))))


@dataclass
class ConnectorCache:
    """Both passes' KV caches after the tokens read so far; consumed by the next call."""

    first: Any  # pass 1's transformers cache (the base model's)
    second: Any  # pass 2's (the causal LM's)

    def get_seq_length(self) -> int:
        return int(self.second.get_seq_length())


@dataclass
class ConnectorOutput(ModelOutput):
    """A transformers output, so the evals read it as any model's."""

    logits: torch.Tensor | None = None  # (B, T, V): pass 2's logits
    cache: ConnectorCache | None = None  # set when called with use_cache=True

    @property
    def past_key_values(self) -> ConnectorCache | None:  # the name older transformers use
        return self.cache


class ConnectorLM(nn.Module):
    """The frozen ``lm`` run twice, pass 1's last hidden states fed to pass 2 through
    ``connector``. It has a causal LM's call signature, so the evals (greedy generation, answer
    perplexity) run it as they run any model."""

    def __init__(self, lm: PreTrainedModel, connector: Connector) -> None:
        super().__init__()
        if connector.config.d_model != hidden_size(lm):
            raise IncompatibleModelsError(
                f"hidden-size mismatch: the connector is {connector.config.d_model} wide, but the "
                f"LM is {hidden_size(lm)} wide; use the LM it was made for, or train a new connector"
            )
        self.lm = lm.requires_grad_(False).eval()
        self.connector = connector.to(lm.device)
        self._first_kw = cache_argument(lm.base_model)
        self._second_kw = cache_argument(lm)

    @property
    def config(self) -> ConnectorConfig:
        return self.connector.config

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def context_length(self) -> int | None:
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        return int(limit) if limit else None

    def train(self, mode: bool = True) -> ConnectorLM:
        super().train(mode)
        self.lm.eval()  # frozen: no dropout, whatever the connector does
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: ConnectorCache | None = None,
        use_cache: bool = False,
        cache: ConnectorCache | None = None,
        **_: Any,
    ) -> ConnectorOutput:
        """Logits (B, T, V) of ``input_ids`` (B, T) after what the cache has read;
        ``attention_mask`` (B, past + T) and ``position_ids`` (B, T) as for the LM alone."""
        past = cache if cache is not None else past_key_values
        done = past.get_seq_length() if past is not None else 0
        batch, new = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(
                batch, done + new, dtype=torch.long, device=input_ids.device
            )
        elif tuple(attention_mask.shape) != (batch, done + new):
            raise InputError(
                f"attention_mask is {tuple(attention_mask.shape)}, expected ({batch}, {done + new}): "
                "it covers the cached tokens and the new ones"
            )
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -new:]
        common = {
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "use_cache": use_cache,
        }
        first = self.lm.base_model(
            input_ids=input_ids,
            **common,
            **{self._first_kw: past.first if past is not None else None},
        )
        states = first.last_hidden_state  # (B, T, d): pass 1's output vectors
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, d)
        embeds = embeds + self.connector(states).to(embeds.dtype)  # pass 2's input vectors
        second = self.lm(
            inputs_embeds=embeds,
            **common,
            **{self._second_kw: past.second if past is not None else None},
        )
        kept = ConnectorCache(_cache_of(first), _cache_of(second)) if use_cache else None
        return ConnectorOutput(logits=second.logits, cache=kept)


def connector_model(
    lm: PreTrainedModel, *, hidden: int = DEFAULT_HIDDEN, seed: int = 0
) -> ConnectorLM:
    """The frozen ``lm`` with a fresh (zero-output) connector of inner width ``hidden``."""
    return ConnectorLM(lm, Connector(ConnectorConfig(hidden_size(lm), hidden), seed=seed))
