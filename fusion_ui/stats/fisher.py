"""The Fisher pass: the diagonal empirical Fisher of a causal LM on a few prompt/answer examples.

What is computed, per example (not per batch)::

    F[θ] = (1/N) Σ_n (∂ℓ_n / ∂θ)²

where ``ℓ_n`` is example n's mean negative log-likelihood of its answer tokens (prompt tokens
and padding are never scored). The examples run in right-padded batches; each example's own
gradient is taken with one batched backward pass (``torch.autograd.grad(...,
is_grads_batched=True)``: a vector-Jacobian product per row of an identity), so squaring
happens before summing over examples. Squaring the gradient of a batch's mean loss instead
(what some reference code does) gives a different, batch-size-dependent statistic.

Gradients are float32 and so is the accumulation; memory is about ``batch_size + 2`` copies of
the parameters (the per-example gradients of one batch), so lower ``batch_size`` on big models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from fusion_ui.device import resolve_device
from fusion_ui.progress import CancelToken, ProgressCallback, report
from fusion_ui.stats.data import Batch, Dataset, batches, encode, pad_id_of


@dataclass
class FisherResult:
    """The Fisher of every parameter, and what it was computed from."""

    tensors: dict[str, torch.Tensor]  # parameter name -> F, float32, the parameter's shape (CPU)
    examples: int  # N
    tokens: int  # answer tokens scored, over all examples


def example_losses(model: nn.Module, batch: Batch) -> torch.Tensor:
    """(B,) each example's mean negative log-likelihood of its scored (answer) tokens."""
    logits = model(input_ids=batch.ids, attention_mask=batch.mask).logits.float()  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts tokens 1..T-1
    token_lp = logp.gather(-1, batch.ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    keep = batch.scored[:, 1:]
    # where(), not a product: a -inf log-probability on a padded position must not become NaN
    nll = -torch.where(keep, token_lp, torch.zeros_like(token_lp)).sum(-1)
    return nll / keep.sum(-1).clamp(min=1)


def fisher_pass(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    *,
    batch_size: int = 4,
    device: str | torch.device | None = "auto",
    with_eos: bool = True,
    max_length: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> FisherResult:
    """The diagonal empirical Fisher of ``model`` on ``dataset`` (see the module docstring)."""
    dev = resolve_device(device)
    pairs = encode(tokenizer, dataset.items, with_eos=with_eos, max_length=max_length)
    model.to(dev)
    model.eval()
    named = list(model.named_parameters())  # shared (tied) parameters once, by their first name
    was = [p.requires_grad for _, p in named]
    for _, p in named:
        p.requires_grad_(True)
    acc = {name: torch.zeros(p.shape, dtype=torch.float32, device=dev) for name, p in named}
    done = tokens = 0
    try:
        for batch in batches(pairs, pad_id=pad_id_of(tokenizer), batch_size=batch_size):
            if cancel is not None:
                cancel.raise_if_cancelled()
            batch = batch.to(dev)
            losses = example_losses(model, batch)  # (B,)
            eye = torch.eye(batch.size, device=dev, dtype=losses.dtype)
            grads = torch.autograd.grad(
                losses,
                [p for _, p in named],
                grad_outputs=eye,
                is_grads_batched=True,
                allow_unused=True,
            )  # each (B, *shape): one gradient per example
            for (name, _), g in zip(named, grads, strict=True):
                if g is not None:
                    acc[name] += g.float().square().sum(0)
            del grads, losses
            done += batch.size
            tokens += int(batch.scored[:, 1:].sum())
            report(progress, done, len(pairs), f"{done}/{len(pairs)} examples")
    finally:
        for (_, p), flag in zip(named, was, strict=True):
            p.requires_grad_(flag)
    return FisherResult({name: (a / done).cpu() for name, a in acc.items()}, done, tokens)
