"""Fused breadcrumbs and DELLA give exactly the reference's bits (tests/test_kernels.py's rule).

Breadcrumbs keeps a band of |δ| ranks (two thresholds, ties ranked by flat index); DELLA ranks
|δ| within each row and keeps with a probability rising with the rank, drawn from the keyed RNG.
Deltas are coarse (few distinct magnitudes), so thresholds fall inside runs of ties that span
chunks, and rows of odd length straddle chunk boundaries.
"""

from __future__ import annotations

import pytest
import torch

from fusion_ui.kernels import cpu
from fusion_ui.methods import get_method
from fusion_ui.methods.base import NonFiniteInput, TensorContext

pytestmark = pytest.mark.skipif(not cpu.available(), reason="numba not installed")

NAME = "model.layers.0.mlp.down_proj.weight"
SHAPE = (61, 3001)  # 183 061 elements: 3 chunks and a ragged tail; rows cross chunk boundaries


def contexts(method: str, dtype: torch.dtype, shape: tuple[int, ...], model_params: dict, params: dict,
             *, coarse: bool = True) -> tuple:
    g = torch.Generator().manual_seed(sum(shape))
    base = torch.randn(shape, generator=g)
    deltas = [torch.randn(shape, generator=g) * 0.003 for _ in range(3)]
    if coarse:
        deltas = [torch.round(d * 2000) / 2000 for d in deltas]
    base_s = base.to(dtype)
    models_s = [(base_s.float() + d).to(dtype) for d in deltas]
    m = get_method(method)
    gp = {p.name: p.default for p in m.global_params()} | params
    mps = [{p.name: p.default for p in m.model_params()} | model_params | {"weight": w} for w in (0.5, 0.3, 0.2)]
    raw = TensorContext(NAME, base_s, models_s, mps, gp, seed=5)
    f32 = TensorContext(NAME, base_s.float(), [x.float() for x in models_s], mps, gp, seed=5)
    return m, raw, f32


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view({2: torch.int16, 4: torch.int32}[t.element_size()])


def assert_fused_is_reference(m, raw: TensorContext, f32: TensorContext, dtype: torch.dtype) -> None:  # noqa: ANN001
    fused = m.merge_fused_cpu(raw, dtype)
    assert fused is not None, "the fused path should cover this case"
    assert fused.shape == raw.base.shape
    assert torch.equal(bits(fused), bits(m.merge(f32).to(dtype)))


BREADCRUMBS = [
    ("breadcrumbs", {"density": 0.9, "gamma": 0.01}, "round"),
    ("breadcrumbs", {"density": 0.3, "gamma": 0.2}, "floor"),
    ("breadcrumbs_ties", {"density": 0.5, "gamma": 0.05}, "round"),
    ("breadcrumbs_ties", {"density": 0.9, "gamma": 0.3}, "floor"),  # density + γ > 1: fewer outliers dropped
]


@pytest.mark.parametrize(("method", "model_params", "rounding"), BREADCRUMBS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_breadcrumbs_band_matches_reference(method: str, model_params: dict, rounding: str, dtype: torch.dtype) -> None:
    m, raw, f32 = contexts(method, dtype, SHAPE, model_params, {"count_rounding": rounding})
    assert_fused_is_reference(m, raw, f32, dtype)


@pytest.mark.parametrize(("density", "gamma", "rounding"), [
    (1e-6, 0.0, "floor"),  # ⌊density·n⌋ = 0: nothing kept
    (1e-6, 0.0, "round"),  # one element kept
    (0.999, 0.0, "round"),  # no outliers: the band is a plain top-k
    (1.0, 0.5, "round"),  # density 1: the delta as it is, whatever γ
])
def test_breadcrumbs_edge_bands(density: float, gamma: float, rounding: str) -> None:
    m, raw, f32 = contexts("breadcrumbs", torch.float32, (3, 7777),
                           {"density": density, "gamma": gamma}, {"count_rounding": rounding})
    assert_fused_is_reference(m, raw, f32, torch.float32)


def test_breadcrumbs_band_of_all_equal_magnitudes_goes_by_flat_index() -> None:
    # every |δ| equal: both thresholds fall in one run of ties across chunks; the band is the
    # flat indices [n_bottom, n - n_top), as the reference ranks them
    n = 2 * cpu.CHUNK + 11
    base = torch.zeros(n)
    delta = torch.full((n,), 0.5)
    delta[::3] = -0.5
    m = get_method("breadcrumbs")
    mps = [{"weight": 1.0, "density": 0.4, "gamma": 0.25}]
    gp = {"lambda": 1.0, "normalize": False, "count_rounding": "round"}
    fused = m.merge_fused_cpu(TensorContext(NAME, base, [base + delta], mps, gp), torch.float32)
    ref = m.merge(TensorContext(NAME, base.clone(), [base + delta], mps, gp))
    lo, hi = n - round(0.4 * n) - round(0.25 * n), n - round(0.25 * n)
    want = torch.zeros(n)
    want[lo:hi] = delta[lo:hi]
    assert torch.equal(ref, want)
    assert torch.equal(fused, want)


@pytest.mark.parametrize("method", ["della", "della_ties"])
@pytest.mark.parametrize("rescale", ["inverse", "l1", "none"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_della_matches_reference(method: str, rescale: str, dtype: torch.dtype) -> None:
    m, raw, f32 = contexts(method, dtype, SHAPE, {"density": 0.45, "epsilon": 0.2}, {"rescale": rescale})
    assert_fused_is_reference(m, raw, f32, dtype)


@pytest.mark.parametrize(("shape", "rescale"), [((5000,), "inverse"), ((2, 3, 1), "l1"), ((7, 1), "inverse")])
def test_della_rows_of_other_shapes(shape: tuple[int, ...], rescale: str) -> None:
    # a 1-D tensor is one row; rows of one element keep with probability density
    m, raw, f32 = contexts("della_ties", torch.bfloat16, shape, {"density": 0.6, "epsilon": 0.3},
                           {"rescale": rescale}, coarse=False)
    assert_fused_is_reference(m, raw, f32, torch.bfloat16)


def test_della_density_one_and_mixed_models() -> None:
    # density 1 leaves a delta as it is; the others are ranked and drawn
    m, raw, f32 = contexts("della", torch.float32, (9, 1001), {"density": 0.5, "epsilon": 0.1}, {"rescale": "l1"})
    for ctx in (raw, f32):
        ctx.model_params[1] = ctx.model_params[1] | {"density": 1.0, "epsilon": 0.0}
    assert_fused_is_reference(m, raw, f32, torch.float32)


@pytest.mark.parametrize(("method", "model_params", "params"), [
    ("breadcrumbs_ties", {"density": 0.8, "gamma": 0.1}, {}),
    ("della", {"density": 0.5, "epsilon": 0.1}, {"rescale": "inverse"}),
    ("della_ties", {"density": 0.5, "epsilon": 0.1}, {"rescale": "l1"}),
])
def test_non_finite_input_is_refused(method: str, model_params: dict, params: dict) -> None:
    m, raw, _ = contexts(method, torch.bfloat16, SHAPE, model_params, params)
    raw.models[2].view(-1)[123_456] = float("nan")
    with pytest.raises(NonFiniteInput, match="model 2") as info:
        m.merge_fused_cpu(raw, torch.bfloat16)
    assert info.value.index == 2
