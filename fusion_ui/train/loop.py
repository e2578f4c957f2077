"""One training loop for small trained parts beside frozen models (CALM's bridges, later the
frozen-LM methods' prompts and connectors).

AdamW, a linear warm-up then a cosine decay, gradient clipping, a seeded batch order; after each
step a :class:`TrainProgress` report (with the loss) and a cancel check. The loop knows only
"parameters" and "the loss of these example indices": the caller owns the model and the data.

``fusion_ui.demo.build`` keeps its own loop for now (it trains whole demo models with its own
schedule); moving it onto this one is a later change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from fusion_ui.errors import RecipeError
from fusion_ui.progress import CancelToken, Progress, ProgressCallback

# loss_of(indices) -> a scalar loss tensor for those examples (graph attached)
LossOf = Callable[[Sequence[int]], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """How to train; stored beside what was trained, so a run can be repeated."""

    steps: int = 200  # optimizer steps in all
    batch_size: int = 8  # examples per step
    lr: float = 1e-3  # peak learning rate, reached at the end of the warm-up
    warmup_steps: int = 10  # linear warm-up from lr / warmup_steps to lr
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    max_grad_norm: float | None = 1.0  # clip the global gradient norm (None: no clipping)
    seed: int = 0  # seeds the batch order (the caller seeds its own initialisation)

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be >= 1 (got {self.steps})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0 (got {self.weight_decay})")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            problems.append(f"max_grad_norm must be > 0 or None (got {self.max_grad_norm})")
        if problems:
            raise RecipeError("invalid training settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TrainProgress(Progress):
    """A step's report: ``done`` steps of ``total``, and that step's loss."""

    loss: float = math.nan  # the training loss of the step just done (mean over its batch)
    lr: float = math.nan  # the learning rate it used


@dataclass
class TrainResult:
    """What a finished run did."""

    config: TrainConfig
    losses: list[float] = field(default_factory=list)  # one per step
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan


def lr_factor(step: int, config: TrainConfig) -> float:
    """The multiplier of ``config.lr`` at ``step`` (0-based): linear warm-up, then cosine."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    decay_steps = config.steps - config.warmup_steps
    if decay_steps <= 1:
        return 1.0
    t = (step - config.warmup_steps) / (decay_steps - 1)  # 0 at the first decay step, 1 at the last
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def batch_order(n_items: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless batches of example indices: a seeded shuffle per epoch, every example once per
    epoch; the last batch of an epoch may be short (never empty). Same seed, same order."""
    if n_items < 1:
        raise RecipeError("no training examples: give at least one prompt/answer row")
    gen = torch.Generator().manual_seed(seed)
    size = min(batch_size, n_items)
    while True:
        perm = torch.randperm(n_items, generator=gen).tolist()
        for start in range(0, n_items, size):
            yield perm[start : start + size]


def train_loop(
    parameters: Iterable[nn.Parameter],
    loss_of: LossOf,
    *,
    n_items: int,
    config: TrainConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train ``parameters`` for ``config.steps`` steps on batches of ``range(n_items)``.

    Cancelling raises :class:`~fusion_ui.errors.CancelledError` between steps (the parameters
    keep what the finished steps did; writing nothing is the caller's part).
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise RecipeError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    result = TrainResult(config)
    start = time.perf_counter()
    batches = batch_order(n_items, config.batch_size, config.seed)
    for step in range(config.steps):
        if cancel is not None:
            cancel.raise_if_cancelled()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(next(batches))
        if not torch.isfinite(loss):
            raise RecipeError(
                f"the training loss became {float(loss)} at step {step + 1}; lower the learning "
                f"rate (it was {lr:.3g}) or check the data"
            )
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        value = float(loss.detach())
        result.losses.append(value)
        if progress is not None:
            progress(TrainProgress(step + 1, config.steps, f"loss {value:.4f}", loss=value, lr=lr))
    if cancel is not None:
        cancel.raise_if_cancelled()
    result.seconds = time.perf_counter() - start
    return result
