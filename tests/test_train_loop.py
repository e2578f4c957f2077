"""fusion_ui.train.loop: the schedule, the seeded batch order, clipping, cancel."""

from __future__ import annotations

import math

import pytest
import torch

from fusion_ui.errors import CancelledError, RecipeError
from fusion_ui.progress import CancelToken
from fusion_ui.train import TrainConfig, batch_order, train_loop
from fusion_ui.train.loop import lr_factor


def test_warm_up_is_linear_then_cosine_down_to_the_floor() -> None:
    c = TrainConfig(steps=12, warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, c) for s in range(c.steps)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and math.isclose(factors[-1], 0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))


def test_batch_order_is_seeded_and_covers_each_epoch() -> None:
    take = lambda seed: [b for _, b in zip(range(6), batch_order(5, 2, seed), strict=False)]  # noqa: E731
    assert take(1) == take(1) and take(1) != take(2)
    first_epoch = take(1)[:3]
    assert (
        sorted(i for b in first_epoch for i in b) == [0, 1, 2, 3, 4] and len(first_epoch[-1]) == 1
    )


def test_the_loop_fits_a_line_clips_and_cancels() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    xs = torch.linspace(-1, 1, 8)
    loss_of = lambda idx: ((w * xs[idx] - 3 * xs[idx]) ** 2).mean()  # noqa: E731
    result = train_loop(
        [w], loss_of, n_items=8, config=TrainConfig(steps=60, batch_size=4, lr=0.2, warmup_steps=2)
    )
    assert result.losses[-1] < 1e-3 * result.losses[0] and abs(w.item() - 3) < 0.05
    cancel = CancelToken()
    with pytest.raises(CancelledError):
        train_loop(
            [w],
            loss_of,
            n_items=8,
            config=TrainConfig(steps=5),
            cancel=cancel,
            progress=lambda p: cancel.cancel(),
        )
    with pytest.raises(RecipeError, match="steps must be >= 1.*lr must be > 0"):
        TrainConfig(steps=0, lr=0)
    with pytest.raises(RecipeError, match="nothing to train"):
        train_loop(
            [torch.nn.Parameter(torch.zeros(1), requires_grad=False)],
            loss_of,
            n_items=8,
            config=TrainConfig(steps=1),
        )
