"""What every training command shares (``fusion-ui compose train``, ``fusion-ui frozen train``):
the optimizer options, spelt once, and the :class:`fusion_ui.train.TrainConfig` they give.

Not a sub-command: no ``register``. Light at import (no torch).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fusion_ui.train import TrainConfig

# Defaults of fusion_ui.train.TrainConfig (not imported: torch); each command gives its own lr.
DEFAULT_STEPS = 200
DEFAULT_BATCH = 8
DEFAULT_WARMUP = 10


def add_train_options(p: argparse.ArgumentParser, *, lr: float, seeds: str, replaces: str) -> None:
    """``--steps --batch-size --lr --warmup --max-grad-norm --seed --max-length --force``.

    ``seeds``: what the seed initialises beside the batch order; ``replaces``: what ``--force``
    may replace in ``--out``."""
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps (default {DEFAULT_STEPS})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"rows per step (default {DEFAULT_BATCH})")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"warm-up steps (default {DEFAULT_WARMUP})")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help=f"seeds {seeds} and the batch order (default 0)")
    p.add_argument("--max-length", type=int, default=None, help="cut rows longer than this many tokens")
    p.add_argument("--force", action="store_true", help=f"replace --out if it holds {replaces}")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The training settings the options give."""
    from fusion_ui.train import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                       max_grad_norm=args.max_grad_norm, seed=args.seed)
