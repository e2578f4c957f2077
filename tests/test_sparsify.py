"""DARE, magnitude pruning, breadcrumbs and DELLA against hand-worked values and their definitions."""

from __future__ import annotations

import pytest
import torch

from fusion_ui import rng
from fusion_ui.methods.sparsify import (
    breadcrumbs,
    dare,
    dare_keep_mask,
    della,
    della_keep_probabilities,
    magnitude_prune,
)
from fusion_ui.rng import quantized_keep, random16, stream_key

M64 = (1 << 64) - 1


def splitmix64_word(key: int, counter: int) -> int:
    """Plain-Python SplitMix64: output ``counter`` (1-based) of the stream seeded with ``key``."""
    z = (key + counter * 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_dare_keeps_about_one_minus_p(p: float) -> None:
    n = 1_000_000
    kept = dare_keep_mask((n,), p, (0, "w", 0)).float().mean().item()
    std = ((1 - p) * p / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * std


def test_dare_preserves_the_expectation() -> None:
    delta = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 0.003
    draws = 1000
    total = torch.zeros_like(delta)
    for seed in range(draws):
        total += dare(delta, 0.9, (seed, "t", 0))
    mean = total / draws
    # one draw has std 3|δ| per element at p = 0.9; the mean of 1000 has ~0.095 |δ|.
    rel = ((mean - delta).norm() / delta.norm()).item()
    assert rel < 0.13
    # aggregated over elements, the mean keeps the delta's mass: Σ sign(δ)·mean / Σ|δ| ≈ 1
    assert abs((mean * delta.sign()).sum().item() / delta.abs().sum().item() - 1) < 0.02


def test_dare_without_rescale_shrinks_by_keep_probability() -> None:
    delta = torch.full((200_000,), 0.004)
    out = dare(delta, 0.75, (1, "t", 0), rescale="none")
    assert out.mean().item() == pytest.approx(0.25 * 0.004, rel=0.02)
    assert torch.equal(out.unique(), torch.tensor([0.0, 0.004]))


def test_dare_l1_rescale_matches_the_l1_norm() -> None:
    delta = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    out = dare(delta, 0.8, (2, "t", 0), rescale="l1")
    assert out.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)


def test_dare_inverse_rescale_is_one_over_keep() -> None:
    delta = torch.ones(1000)
    out = dare(delta, 0.5, (3, "t", 0))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    _, keep = quantized_keep(0.9)
    assert keep == pytest.approx(0.1, abs=1 / 65536)
    out = dare(delta, 0.9, (3, "t", 0))
    assert out.max().item() == pytest.approx(1 / keep)


def test_same_key_same_bits_other_key_other_mask() -> None:
    a = dare_keep_mask((300, 300), 0.9, (7, "layer.0.q", 1))
    assert torch.equal(a, dare_keep_mask((300, 300), 0.9, (7, "layer.0.q", 1)))
    assert not torch.equal(a, dare_keep_mask((300, 300), 0.9, (8, "layer.0.q", 1)))
    assert not torch.equal(a, dare_keep_mask((300, 300), 0.9, (7, "layer.1.q", 1)))
    assert not torch.equal(a, dare_keep_mask((300, 300), 0.9, (7, "layer.0.q", 2)))


def test_draws_are_splitmix64_of_key_and_index(monkeypatch: pytest.MonkeyPatch) -> None:
    # SplitMix64's first output from state 0 is 0xE220A8397B1DCDAF (its published test vector)
    monkeypatch.setattr(rng, "stream_key", lambda key: 0)
    assert random16(4, ("any",)).tolist() == [0xCDAF, 0x7B1D, 0xA839, 0xE220]
    monkeypatch.undo()
    key = (3, "model.layers.0.mlp.up_proj.weight", 2)
    k = stream_key(key)
    draws = random16(4 * 50, key).tolist()
    for c in range(50):
        word = splitmix64_word(k, c + 1)
        assert draws[4 * c : 4 * c + 4] == [(word >> (16 * q)) & 0xFFFF for q in range(4)]


def test_draws_do_not_depend_on_length() -> None:
    long = random16(1_000_003, (0, "x", 0))
    assert torch.equal(long[:777], random16(777, (0, "x", 0)))
    # uniform over all 65536 values
    assert abs(long.float().mean().item() - 32767.5) < 100
    assert long.min().item() < 200 and long.max().item() > 65300
    counts = torch.bincount(long >> 12, minlength=16).float()
    assert (counts / counts.mean() - 1).abs().max().item() < 0.02


def test_drop_rate_zero_is_identity_and_one_is_refused() -> None:
    delta = torch.randn(100)
    assert torch.equal(dare(delta, 0.0, (0, "t", 0)), delta)
    with pytest.raises(ValueError, match="drop_rate"):
        dare(delta, 1.0, (0, "t", 0))


def test_magnitude_prune_keeps_the_largest() -> None:
    delta = torch.tensor([0.1, -0.5, 0.3, 0.2, -0.05])
    assert torch.equal(magnitude_prune(delta, 0.4), torch.tensor([0.0, -0.5, 0.3, 0.0, 0.0]))
    rescaled = magnitude_prune(delta, 0.4, rescale="inverse")
    assert torch.allclose(rescaled, torch.tensor([0.0, -1.25, 0.75, 0.0, 0.0]))


def test_magnitude_prune_breaks_ties_to_exactly_k_and_never_keeps_zero() -> None:
    out = magnitude_prune(torch.ones(10), 0.3)
    assert int((out != 0).sum()) == 3
    # a density that would round to 0 elements still keeps one
    assert int((magnitude_prune(torch.tensor([1.0, 2.0, 3.0]), 0.01) != 0).sum()) == 1


def test_breadcrumbs_drops_outliers_and_smallest() -> None:
    delta = torch.tensor([0.1, -0.5, 0.3, 0.2, -0.05, 0.01, 0.7, -0.02, 0.04, 0.03])
    # keep 5 of 10; the largest 1 (0.7) goes as an outlier, the smallest 4 go too
    out = breadcrumbs(delta, 0.5, 0.1)
    expected = torch.tensor([0.1, -0.5, 0.3, 0.2, -0.05, 0, 0, 0, 0, 0])
    assert torch.equal(out, expected)
    # density + gamma > 1: fewer outliers are removed so the density holds
    assert int((breadcrumbs(delta, 0.95, 0.1) != 0).sum()) == 10


def test_della_probabilities_rise_with_rank_in_each_row() -> None:
    delta = torch.tensor([[0.1, -0.4, 0.2, 0.3], [4.0, 3.0, 2.0, 1.0]])
    p = della_keep_probabilities(delta, 0.5, 0.2)
    assert torch.allclose(p[0], torch.tensor([0.3, 0.7, 0.3 + 0.4 / 3, 0.3 + 0.8 / 3]))
    assert torch.allclose(p[1], torch.tensor([0.7, 0.3 + 0.8 / 3, 0.3 + 0.4 / 3, 0.3]))


def test_della_preserves_the_expectation() -> None:
    delta = torch.randn(64, 64, generator=torch.Generator().manual_seed(2)) * 0.003
    mean = sum(della(delta, 0.5, 0.2, (s, "t", 0)) for s in range(600)) / 600
    assert ((mean - delta).norm() / delta.norm()).item() < 0.1
    with pytest.raises(ValueError, match="epsilon"):
        della(delta, 0.9, 0.2, (0, "t", 0))
