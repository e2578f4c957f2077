"""CALM's trained parts: the bridges between an augmenting model m_A and an anchor m_B.

Bansal et al. 2024, "LLM Augmented LLMs: Expanding Capabilities through Composition" (arXiv
2401.02412). At each chosen layer pair (i of m_A, j of m_B) a bridge projects m_A's hidden
states into m_B's width (``f_proj``) and lets m_B's states attend to them (``f_cross``, multi-head,
pre-norm); its output is added to m_B's residual stream after block j::

    H_B,j <- H_B,j + f_cross(f_proj(H_A,i), H_B,j)

The output projection starts at zero, so an untrained composition is the anchor exactly. This
module holds the modules and the choice of pairs; running the two models is
:mod:`fusion_ui.compose.calm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fusion_ui.errors import RecipeError

DEFAULT_EVERY = 4  # the paper's choice: every 4th layer of m_A


@dataclass(frozen=True)
class BridgeReading:
    """What one bridge attended in one call (recorded only on request, see
    :func:`fusion_ui.compose.attention.recording`)."""

    weights: torch.Tensor  # (B, H, T, S) float32: anchor queries x augmenting keys, rows sum to 1
    added: torch.Tensor  # (B, T): ||f_cross output|| at each anchor position
    anchor: torch.Tensor  # (B, T): ||m_B hidden state|| there, before the bridge's output is added


@dataclass(frozen=True)
class LayerPair:
    """One bridge's place: it reads block ``augment`` of m_A and writes after block ``anchor`` of m_B."""

    augment: int  # 0-based index of m_A's decoder block whose output is read
    anchor: int  # 0-based index of m_B's decoder block after which the bridge's output is added

    def __str__(self) -> str:
        return f"{self.augment}:{self.anchor}"


@dataclass(frozen=True)
class BridgeConfig:
    """The shape of a set of bridges (what ``bridges.json`` records besides the models)."""

    pairs: tuple[LayerPair, ...]  # one bridge per pair, in this order
    d_augment: int  # m_A's hidden size (f_proj's input)
    d_anchor: int  # m_B's hidden size (f_proj's output, the cross-attention's width)
    heads: int  # cross-attention heads; d_anchor % heads == 0
    norm_eps: float = 1e-5  # the pre-norms' epsilon

    def __post_init__(self) -> None:
        if not self.pairs:
            raise RecipeError("a composition needs at least one layer pair")
        if self.heads < 1 or self.d_anchor % self.heads:
            raise RecipeError(
                f"{self.heads} cross-attention heads do not divide the anchor's hidden size "
                f"{self.d_anchor}; pick a divisor of {self.d_anchor}"
            )

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["pairs"] = [asdict(p) for p in self.pairs]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> BridgeConfig:
        pairs = tuple(LayerPair(int(p["augment"]), int(p["anchor"])) for p in data["pairs"])
        return cls(
            pairs,
            int(data["d_augment"]),
            int(data["d_anchor"]),
            int(data["heads"]),
            float(data.get("norm_eps", 1e-5)),
        )


def default_pairs(
    n_augment: int, n_anchor: int, *, every: int = DEFAULT_EVERY, offset: int | None = None
) -> tuple[LayerPair, ...]:
    """The paper's default: m_A's blocks ``offset, offset + every, ...`` (offset ``every - 1``:
    the 4th, 8th, ... block), each paired with evenly spaced blocks of m_B ending at its last.

    A model shallower than ``every`` gets one pair, last block to last block.
    """
    if every < 1:
        raise RecipeError(f"every must be >= 1 (got {every})")
    if offset is not None and not 0 <= offset < n_augment:
        raise RecipeError(
            f"offset {offset} is outside the augmenting model's blocks 0..{n_augment - 1}"
        )
    augment = list(range(every - 1 if offset is None else offset, n_augment, every)) or [
        n_augment - 1
    ]
    n = len(augment)
    anchor = [
        max(0, math.floor((k + 1) * n_anchor / n + 0.5) - 1) for k in range(n)
    ]  # round half up
    return tuple(LayerPair(a, b) for a, b in zip(augment, anchor, strict=True))


def parse_pairs(text: str | Sequence[str]) -> tuple[LayerPair, ...]:
    """``"3:5,7:11"`` (or a list of ``"3:5"``) -> pairs (m_A block : m_B block)."""
    items = text.split(",") if isinstance(text, str) else [s for t in text for s in t.split(",")]
    pairs = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        a, sep, b = item.partition(":")
        try:
            if not sep:
                raise ValueError
            pairs.append(LayerPair(int(a), int(b)))
        except ValueError:
            raise RecipeError(
                f"layer pair {item!r} is not AUG:ANCHOR (two block indices, e.g. 3:5)"
            ) from None
    if not pairs:
        raise RecipeError("no layer pairs given; write them as AUG:ANCHOR, e.g. 3:5,7:11")
    return tuple(pairs)


def check_pairs(pairs: Sequence[LayerPair], n_augment: int, n_anchor: int) -> None:
    """Refuse block indices outside either model, and a pair given twice."""
    bad = []
    for p in pairs:
        if not 0 <= p.augment < n_augment:
            bad.append(f"{p} (augmenting model has blocks 0..{n_augment - 1})")
        elif not 0 <= p.anchor < n_anchor:
            bad.append(f"{p} (anchor model has blocks 0..{n_anchor - 1})")
    if bad:
        raise RecipeError(
            "layer pair(s) out of range: "
            + "; ".join(bad)
            + "; pick block indices inside both models"
        )
    seen = set()
    for p in pairs:
        if p in seen:
            raise RecipeError(f"layer pair {p} is given twice; each pair gets one bridge")
        seen.add(p)


def default_heads(d_anchor: int, anchor_heads: int | None) -> int:
    """The anchor's own head count when it divides its width, else the largest divisor <= 8."""
    if anchor_heads and d_anchor % anchor_heads == 0:
        return anchor_heads
    return max(h for h in range(1, 9) if d_anchor % h == 0)


class Bridge(nn.Module):
    """``f_proj`` and ``f_cross`` of one layer pair."""

    def __init__(self, d_augment: int, d_anchor: int, heads: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.heads = heads
        self.proj = nn.Linear(d_augment, d_anchor)  # f_proj: m_A's width -> m_B's
        self.norm_memory = nn.LayerNorm(d_anchor, eps=eps)  # pre-norm of the projected m_A states
        self.norm_query = nn.LayerNorm(d_anchor, eps=eps)  # pre-norm of m_B's states
        self.query = nn.Linear(d_anchor, d_anchor, bias=False)
        self.key = nn.Linear(d_anchor, d_anchor, bias=False)
        self.value = nn.Linear(d_anchor, d_anchor, bias=False)
        self.out = nn.Linear(d_anchor, d_anchor, bias=False)
        nn.init.zeros_(self.out.weight)  # step 0 is the anchor exactly
        # Set only inside fusion_ui.compose.attention.recording(): called with what each call
        # attended, after the output is computed the usual way (that output is not changed).
        self.recorder: Callable[[BridgeReading], None] | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, d/H)

    def memory(
        self, h_augment: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values, each (B, H, S, d/H), of m_A's states ``h_augment`` (B, S, d_A).

        Columns where ``valid`` (B, S) is False (padding) are zeroed: whatever a model leaves
        at a padded position (even NaN) cannot reach a real one through a masked weight.
        """
        dtype = self.proj.weight.dtype
        x = self.norm_memory(self.proj(h_augment.to(dtype)))  # (B, S, d_B)
        x = torch.where(valid[..., None], x, torch.zeros_like(x))
        return self._split(self.key(x)), self._split(self.value(x))

    def attend(
        self, h_anchor: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """What the bridge adds to m_B's residual stream at ``h_anchor`` (B, T, d_B).

        ``mask`` (B, 1, T, S) is True where a query may see a key (see
        :func:`fusion_ui.compose.calm.cross_attention_mask`).
        """
        dtype = self.query.weight.dtype
        q = self._split(self.query(self.norm_query(h_anchor.to(dtype))))  # (B, H, T, d/H)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, H, T, d/H)
        b, _, t, _ = y.shape
        y = y.transpose(1, 2).reshape(b, t, -1)  # (B, T, d_B)
        delta = self.out(y).to(h_anchor.dtype)
        if self.recorder is not None:
            self.recorder(self._reading(q, keys, mask, delta, h_anchor))
        return delta

    @torch.no_grad()
    def _reading(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        delta: torch.Tensor,
        h_anchor: torch.Tensor,
    ) -> BridgeReading:
        """The softmax weights of this call, worked out again beside the fused attention (which
        does not return them), and the sizes of what was added and of what it was added to."""
        scale = 1.0 / math.sqrt(q.shape[-1])  # scaled_dot_product_attention's default
        scores = (q.float() @ keys.float().transpose(-1, -2)) * scale  # (B, H, T, S)
        scores = scores.masked_fill(~mask, float("-inf"))
        return BridgeReading(
            weights=scores.softmax(-1).detach().cpu(),
            added=delta.float().norm(dim=-1).detach().cpu(),
            anchor=h_anchor.float().norm(dim=-1).detach().cpu(),
        )


class Bridges(nn.Module):
    """All the bridges of a composition, in ``config.pairs`` order (what is trained and saved)."""

    def __init__(self, config: BridgeConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded init, the global generator untouched
            torch.manual_seed(seed)
            self.items = nn.ModuleList(
                Bridge(config.d_augment, config.d_anchor, config.heads, config.norm_eps)
                for _ in config.pairs
            )

    def __len__(self) -> int:
        return len(self.items)
