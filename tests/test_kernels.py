"""Fused CPU kernels give exactly the reference methods' bits (the reference defines the method)."""

from __future__ import annotations

import pytest
import torch

from fusion_ui.kernels import cpu
from fusion_ui.methods import get_method
from fusion_ui.methods.base import NonFiniteInput, TensorContext

pytestmark = pytest.mark.skipif(not cpu.available(), reason="numba not installed")

NAME = "model.layers.1.mlp.up_proj.weight"


def contexts(method: str, dtype: torch.dtype, n: int, model_params: dict, params: dict,
             *, dtypes: list[torch.dtype] | None = None, coarse: bool = False):
    g = torch.Generator().manual_seed(n)
    base = torch.randn(n, generator=g)
    deltas = [torch.randn(n, generator=g) * 0.003 for _ in range(3)]
    if coarse:  # few distinct magnitudes: many ties at the top-k threshold, across chunks
        deltas = [torch.round(d * 2000) / 2000 for d in deltas]
    dtypes = dtypes or [dtype] * 4
    base_s = base.to(dtypes[0])
    models_s = [(base_s.float() + d).to(t) for d, t in zip(deltas, dtypes[1:], strict=True)]
    m = get_method(method)
    gp = {p.name: p.default for p in m.global_params()} | params
    mps = [{p.name: p.default for p in m.model_params()} | model_params | {"weight": w}
           for w in (0.5, 0.3, 0.2)]
    uses_base = m.needs_base
    raw = TensorContext(NAME, base_s if uses_base else None, models_s, mps, gp, seed=11)
    f32 = TensorContext(NAME, base_s.float() if uses_base else None, [x.float() for x in models_s], mps, gp, seed=11)
    return m, raw, f32


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view({2: torch.int16, 4: torch.int32}[t.element_size()])


CASES = [
    ("task_arithmetic", {}, {}),
    ("task_arithmetic", {}, {"normalize": True, "lambda": 0.7}),
    ("ties", {"density": 0.2}, {}),
    ("ties", {"density": 0.5}, {"normalize": False, "lambda": 1.5}),
    ("dare_ties", {"drop_rate": 0.9}, {}),
    ("dare_ties", {"drop_rate": 0.5}, {"rescale": "none", "normalize": False}),
    ("dare_linear", {"drop_rate": 0.99}, {"lambda": 2.0}),
    ("dare_ties", {"drop_rate": 0.9}, {"rescale": "l1"}),  # mergekit's DARE (every DARE mergekit YAML)
    ("dare_linear", {"drop_rate": 0.3}, {"rescale": "l1", "lambda": 0.8}),
    ("magnitude_prune", {"drop_rate": 0.7}, {"rescale": "inverse"}),
    ("linear", {}, {}),
    ("linear", {}, {"normalize": False}),
]


@pytest.mark.parametrize(("method", "model_params", "params"), CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_matches_reference_bit_for_bit(method: str, model_params: dict, params: dict, dtype: torch.dtype) -> None:
    n = 3 * cpu.CHUNK + 12_345  # several chunks and a ragged tail
    m, raw, f32 = contexts(method, dtype, n, model_params, params, coarse=method in ("ties", "magnitude_prune"))
    fused = m.merge_fused_cpu(raw, dtype)
    assert fused is not None
    assert torch.equal(bits(fused), bits(m.merge(f32).to(dtype)))


def test_mixed_input_dtypes_and_float16_output() -> None:
    m, raw, f32 = contexts("dare_ties", torch.float32, 200_003, {"drop_rate": 0.8}, {},
                           dtypes=[torch.bfloat16, torch.float16, torch.float32, torch.bfloat16])
    fused = m.merge_fused_cpu(raw, torch.float16)
    assert torch.equal(bits(fused), bits(m.merge(f32).to(torch.float16)))


def test_ties_exactly_at_the_threshold_are_kept_like_the_reference() -> None:
    # every |δ| equal: top-k must still keep exactly k, the same k elements as the reference
    base = torch.zeros(2 * cpu.CHUNK + 7)
    models = [base + 0.25, base - 0.25, base + 0.25]
    m = get_method("ties")
    mps = [{"weight": 1.0, "density": 0.3}] * 3
    gp = {"lambda": 1.0, "normalize": True}
    fused = m.merge_fused_cpu(TensorContext(NAME, base, models, mps, gp), torch.float32)
    ref = m.merge(TensorContext(NAME, base.clone(), [x.clone() for x in models], mps, gp))
    assert torch.equal(fused, ref)


def test_uncovered_settings_fall_back_to_the_reference() -> None:
    m, raw, _ = contexts("magnitude_prune", torch.bfloat16, 1000, {"drop_rate": 0.5}, {"rescale": "l1"})
    assert m.merge_fused_cpu(raw, torch.bfloat16) is None
    m, raw, _ = contexts("della", torch.bfloat16, cpu.CHUNK + 1, {}, {})  # a row longer than a chunk
    assert m.merge_fused_cpu(raw, torch.bfloat16) is None


def test_kernel_reports_the_non_finite_input() -> None:
    m, raw, _ = contexts("task_arithmetic", torch.bfloat16, 100_000, {}, {})
    raw.models[1][77_777] = float("inf")
    with pytest.raises(NonFiniteInput, match="model 1") as info:
        m.merge_fused_cpu(raw, torch.bfloat16)
    assert info.value.index == 1


def test_warm_up_loads_the_bf16_kernels_on_a_thread_and_the_package_import_stays_light() -> None:
    import subprocess
    import sys

    from fusion_ui.kernels import warm_up_in_background

    thread = warm_up_in_background()
    assert thread is warm_up_in_background()  # once per process
    thread.join(timeout=600)
    assert not thread.is_alive()
    loaded = [tuple(str(t) for t in sig) for sig in cpu._task_arithmetic.signatures]
    assert any(sig[0].startswith("array(uint16") and sig[3].startswith("array(uint16") for sig in loaded), loaded
    # importing the package (as every engine module does) must not pay for numba
    code = "import sys, fusion_ui.kernels, fusion_ui.merge; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr


def test_l1_rescale_uses_the_exact_norms_and_the_kernel_draws_the_reference_mask() -> None:
    # Hand-checkable: deltas of 1, 2, 3, 4 repeated; the factor is Σ|δ| / Σ|kept δ| exactly,
    # from the reference's own mask, and the fused pass gives the same bits.
    n = cpu.CHUNK + 1001
    base = torch.zeros(n)
    delta = torch.tensor([1.0, 2.0, 3.0, 4.0]).repeat(n // 4 + 1)[:n]
    m = get_method("dare_linear")
    mps = [{"weight": 1.0, "drop_rate": 0.5}]
    gp = {"lambda": 1.0, "normalize": False, "rescale": "l1"}
    ctx = TensorContext(NAME, base, [base + delta], mps, gp, seed=3)
    from fusion_ui.methods.sparsify import dare_keep_mask

    kept = dare_keep_mask((n,), 0.5, ctx.key(0))
    factor = float(torch.tensor(float(delta.sum()) / float(delta[kept].sum()), dtype=torch.float32))
    want = torch.where(kept, delta * factor, torch.zeros(n))
    ref = m.merge(TensorContext(NAME, base.clone(), [base + delta], mps, gp, seed=3))
    assert torch.equal(ref, want)
    fused = m.merge_fused_cpu(TensorContext(NAME, base, [base + delta], mps, gp, seed=3), torch.float32)
    assert torch.equal(fused, want)


def test_exact_l1_norm_of_awkward_values() -> None:
    from fractions import Fraction

    from fusion_ui.methods.sparsify import abs_sum_buckets, exact_l1

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, generator=g) * torch.logspace(-30, 30, 50_000)
    x[:4] = torch.tensor([1e-45, 0.0, -3.4e38, -0.0])  # a subnormal, zeros, near the largest float32
    want = sum(Fraction(abs(v)) for v in x.tolist())
    assert Fraction(exact_l1(abs_sum_buckets(x)), 2**149) == want


def test_small_tensors_wait_for_no_compile_and_take_the_kernels_once_they_are_loaded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh install's first kernel call compiles for ~20 s: a merge of the demo family (largest
    # tensor 49k elements) must not wait for it, and gets the same bits the kernels give.
    import fusion_ui.merge as merge_mod
    from fusion_ui.recipe import load_recipe
    from fusion_ui.resources import demo_recipe

    recipe = load_recipe(demo_recipe("dare_ties"))
    calls: list[int] = []
    real = cpu.task_arithmetic

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpu, "task_arithmetic", counting)
    monkeypatch.setattr(merge_mod, "warm_up_in_background", lambda: None)  # counted calls are the merge's
    monkeypatch.setattr(merge_mod, "is_warm", lambda: False)  # a process that has not loaded them
    reference = merge_mod.merge_to_state_dict(recipe)
    assert calls == []
    monkeypatch.setattr(merge_mod, "is_warm", lambda: True)  # loaded (the app warms them at start)
    warm = merge_mod.merge_to_state_dict(recipe)
    assert len(calls) == len(warm) == 39
    monkeypatch.setattr(merge_mod, "is_warm", lambda: False)
    monkeypatch.setattr(merge_mod, "FUSED_MIN_ELEMENTS", 0)  # as large tensors are
    large = merge_mod.merge_to_state_dict(recipe)
    assert len(calls) == 78
    for got in (warm, large):
        assert got.keys() == reference.keys()
        assert all(torch.equal(bits(got[k]), bits(reference[k])) for k in got)
