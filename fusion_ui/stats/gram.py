"""The Gram pass (RegMean): ``G = XᵀX`` of every linear layer's input over non-padding tokens.

A forward pre-hook on each linear module adds ``xᵀx`` of the rows ``x`` (one per real token,
prompt and answer: the layer sees both at inference) of its input, accumulated in float64 and
returned as float32, with the number of tokens. Modules fed the very same input tensor (q/k/v
of an attention block, gate/up of a SwiGLU MLP) share one Gram, stored once: ``aliases`` maps
each of the others to the one stored.

Keyed by the weight's name (``model.layers.0.mlp.up_proj.weight``); the weight of
``nn.Linear`` is (out, in), its Gram (in, in). GPT-2's projections are transformers' ``Conv1D``
(``y = x W + b``), whose weight is the transpose, (in, out): they are hooked too and listed in
``transposed``, so that RegMean solves on the right side (a square ``c_proj`` cannot be told
apart by its shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from fusion_ui.device import resolve_device
from fusion_ui.progress import CancelToken, ProgressCallback, report
from fusion_ui.stats.data import Dataset, batches, encode, pad_id_of

LINEAR_TYPES = (nn.Linear, Conv1D)  # Conv1D: GPT-2's projections, weight (in, out)


@dataclass
class GramResult:
    """Every linear layer's input Gram matrix, and what it was computed from."""

    tensors: dict[str, torch.Tensor]  # weight name -> G (in, in), float32 (CPU)
    aliases: dict[str, str] = field(
        default_factory=dict
    )  # weight name -> the name its G is stored under
    examples: int = 0
    tokens: int = 0  # non-padding tokens: the rows of each X
    transposed: tuple[str, ...] = ()  # weight names stored (in, out) (transformers' Conv1D)


class _Accumulator:
    """The hooks' state: Σ xᵀx per distinct input, and which modules share an input."""

    def __init__(self, names: dict[nn.Module, str], device: torch.device) -> None:
        self.names = names
        self.device = device
        self.rows: torch.Tensor | None = None  # (B, T) bool: the batch's real tokens
        self.sums: dict[str, torch.Tensor] = {}
        self.aliases: dict[str, str] | None = None  # fixed by the first batch
        self._seen: dict[
            int, tuple[torch.Tensor, str]
        ] = {}  # id(input) -> (input kept alive, owner)
        self._batch_aliases: dict[str, str] = {}

    def hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        name = self.names[module]
        x = inputs[0]
        seen = self._seen.get(id(x))
        if seen is not None and seen[0] is x:  # the same tensor object: the same Gram
            self._batch_aliases[name] = seen[1]
            return
        self._seen[id(x)] = (x, name)  # kept alive so that no later input reuses its id
        rows = self._rows(x, name)  # (N, in)
        g = rows.T.to(torch.float64) @ rows.to(torch.float64)  # (in, in)
        if name in self.sums:
            self.sums[name] += g
        else:
            self.sums[name] = g

    def _rows(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if self.rows is None:
            raise RuntimeError("internal: a linear layer ran outside a Gram pass batch")
        if x.dim() >= 2 and tuple(x.shape[:2]) == tuple(self.rows.shape):
            return x[self.rows]
        if x.shape[0] == self.rows.numel():  # flattened (B*T, in)
            return x.reshape(self.rows.numel(), -1)[self.rows.reshape(-1)]
        raise RuntimeError(
            f"{name}: its input has shape {tuple(x.shape)}, not (batch, tokens, features) of the "
            f"batch {tuple(self.rows.shape)}; the Gram pass supports decoder LMs whose linear "
            "layers see every token"
        )

    def end_batch(self) -> None:
        if self.aliases is None:
            self.aliases = dict(self._batch_aliases)
        elif self.aliases != self._batch_aliases:
            raise RuntimeError(
                "internal: linear layers shared inputs differently from batch to batch"
            )
        self._seen.clear()
        self._batch_aliases = {}
        self.rows = None


@torch.no_grad()
def gram_pass(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = "auto",
    with_eos: bool = True,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> GramResult:
    """``XᵀX`` of every linear layer's input over ``dataset``'s tokens (module docstring)."""
    dev = resolve_device(device)
    pairs = encode(tokenizer, dataset.items, with_eos=with_eos, max_length=max_length)
    model.to(dev)
    model.eval()
    linears = {m: f"{n}.weight" for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES)}
    if not linears:
        raise RuntimeError(
            f"{type(model).__name__} has no nn.Linear or Conv1D layer: RegMean has nothing to solve"
        )
    transposed = tuple(sorted(name for m, name in linears.items() if isinstance(m, Conv1D)))
    acc = _Accumulator(linears, dev)
    handles = [m.register_forward_pre_hook(acc.hook) for m in linears]
    done = tokens = 0
    try:
        for batch in batches(pairs, pad_id=pad_id_of(tokenizer), batch_size=batch_size):
            if cancel is not None:
                cancel.raise_if_cancelled()
            batch = batch.to(dev)
            acc.rows = batch.mask.bool()
            model(input_ids=batch.ids, attention_mask=batch.mask)
            acc.end_batch()
            done += batch.size
            tokens += int(batch.mask.sum())
            report(progress, done, len(pairs), f"{done}/{len(pairs)} examples")
    finally:
        for h in handles:
            h.remove()
    tensors = {name: g.to(torch.float32).cpu() for name, g in acc.sums.items()}
    return GramResult(tensors, dict(acc.aliases or {}), done, tokens, transposed)
