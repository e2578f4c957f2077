"""TIES' sign election and disjoint mean, as small pure functions."""

from __future__ import annotations

import torch


def elect_sign(weighted_deltas: list[torch.Tensor]) -> torch.Tensor:
    """Per element, the sign of the summed weighted deltas (+1 where the sum is 0), float32.

    Summed in model order, one addition at a time, so fused kernels can match it bit for bit.
    """
    total = weighted_deltas[0].clone()
    for wd in weighted_deltas[1:]:
        total += wd
    return torch.where(total >= 0, 1.0, -1.0).to(torch.float32)


def disjoint_sum(
    weighted_deltas: list[torch.Tensor], weights: list[float], sign: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the weighted deltas that agree with ``sign``, and the summed weights that agree.

    A zero delta agrees with nothing (its sign is 0), so it adds neither value nor weight.
    Elements where nobody agrees get a divisor of 1 (their sum is 0 anyway).
    """
    mixed = torch.zeros_like(sign)
    divisor = torch.zeros_like(sign)
    for wd, w in zip(weighted_deltas, weights, strict=True):
        agree = torch.sign(wd) == sign
        mixed += wd * agree
        divisor += agree * w
    divisor[divisor == 0] = 1.0
    return mixed, divisor
