"""Delta analysis: statistics against known distributions, verdicts, cross-model measures,
cache, progress/cancel, and the DARE preview against the merge engine's own DARE."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from deltas_models import write_model

from fusion_ui.deltas import (
    OUTSIDE_BLOCKS,
    DeltaReport,
    analyze_deltas,
    dare_preview,
    dare_verdict,
)
from fusion_ui.deltas.analysis import _split
from fusion_ui.deltas.stats import HistogramCodec, bits_histogram
from fusion_ui.errors import CancelledError, IncompatibleModelsError, RecipeError
from fusion_ui.methods.sparsify import dare
from fusion_ui.progress import CancelToken

N = 1 << 18  # elements per synthetic tensor: share errors ~2e-4, quick on 2 cores
SIGMAS = {"q": 0.001, "k": 0.002, "v": 0.005, "o": 0.02}


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def share_above(t: float, sigma: float) -> float:
    """P(|X| > t) for X ~ N(0, sigma)."""
    return 2 * (1 - phi(t / sigma))


def gaussian_pair(root: Path, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[Path, Path]:
    """Base N(0, 0.02); fine-tune = base + N(0, σ) with σ per projection (layer 0), exact zeros
    in half of layer 1's q, an identical norm weight."""
    g = torch.Generator().manual_seed(seed)
    base, ft = {}, {}
    for kind, sigma in SIGMAS.items():
        name = f"model.layers.0.self_attn.{kind}_proj.weight"
        b = torch.randn(512, N // 512, generator=g) * 0.02
        base[name], ft[name] = b, b + torch.randn(b.shape, generator=g) * sigma
    name = "model.layers.1.self_attn.q_proj.weight"
    b = torch.randn(512, 512, generator=g) * 0.02
    d = torch.randn(b.shape, generator=g) * 0.002
    d[:256] = 0.0  # half the elements unchanged
    base[name], ft[name] = b, b + d
    base["model.norm.weight"] = ft["model.norm.weight"] = torch.ones(64)
    base = {k: v.to(dtype) for k, v in base.items()}
    ft = {k: v.to(dtype) for k, v in ft.items()}
    return write_model(root / "base", base), write_model(root / "ft", ft)


@pytest.fixture(scope="module")
def gaussian(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, DeltaReport]:
    base, ft = gaussian_pair(tmp_path_factory.mktemp("gauss"))
    return base, ft, analyze_deltas(base, [ft], cache=False, device="cpu")


# -- statistics --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(SIGMAS))
def test_shares_quantiles_match_the_normal_distribution(gaussian, kind: str) -> None:
    _, _, report = gaussian
    row = report.tensors.set_index("tensor").loc[f"model.layers.0.self_attn.{kind}_proj.weight"]
    sigma = SIGMAS[kind]
    for t in (0.002, 0.005, 0.01):
        p = share_above(t, sigma)
        se = math.sqrt(p * (1 - p) / N) + 1e-6
        assert abs(row[f"share_above_{t:g}"] - p) < 5 * se + 0.002 * p, (t, row[f"share_above_{t:g}"], p)
    # bf16 rounding of δ is 2^-9 relative; the sample median's error is ~0.2% at N = 2^18
    assert row["median_abs"] == pytest.approx(0.6745 * sigma, rel=0.01)
    assert row["mean_abs"] == pytest.approx(sigma * math.sqrt(2 / math.pi), rel=0.01)
    assert row["p99_abs"] == pytest.approx(2.5758 * sigma, rel=0.02)
    assert row["rel_norm"] == pytest.approx(sigma / 0.02, rel=0.02)
    assert row["numel"] == N and row["zeros"] == 0 and row["nonfinite"] == 0


def test_exact_zeros_counted(gaussian) -> None:
    _, _, report = gaussian
    row = report.tensors.set_index("tensor").loc["model.layers.1.self_attn.q_proj.weight"]
    assert row["zeros"] == 256 * 512
    norm = report.tensors.set_index("tensor").loc["model.norm.weight"]
    assert norm["zeros"] == 64 and norm["verdict"] == "safe"
    hist = report.histogram(report.models[0], tensor="model.norm.weight")
    assert hist["count"].iloc[0] == 64 and hist["count"].sum() == 64


def test_bf16_statistics_are_exact() -> None:
    """Deltas exactly representable in bf16: counts, median, max, shares are exact."""
    base = torch.full((1000,), 0.25, dtype=torch.bfloat16)
    delta = torch.tensor([0.0] * 500 + [2**-9] * 300 + [-(2**-7)] * 199 + [2**-4], dtype=torch.bfloat16)
    ft = base + delta  # all within a factor 2 of 0.25: the bf16 subtraction is exact
    d = ft - base
    assert torch.equal(d, delta)
    codec = HistogramCodec.for_dtype(torch.bfloat16)
    stats = codec.summarize(bits_histogram(d.abs()))
    assert stats.zeros == 500 and stats.numel == 1000
    assert stats.median_abs == 0.0  # lower median: rank 500 is a zero
    assert stats.max_abs == 2**-4
    assert stats.shares == (0.2, 0.2, 0.001)  # 2^-9 = 0.00195 is not above 0.002
    assert stats.mean_abs == pytest.approx((300 * 2**-9 + 199 * 2**-7 + 2**-4) / 1000, rel=1e-12)
    assert stats.sumsq == pytest.approx(300 * 2**-18 + 199 * 2**-14 + 2**-8, rel=1e-12)


def test_aggregates_are_exact_merges(gaussian) -> None:
    """Per-layer and per-model rows come from merged histograms, not averages of rows."""
    _, _, report = gaussian
    t = report.tensors
    layer0 = report.layers.set_index("layer").loc[0]
    assert layer0["numel"] == 4 * N
    expected = t[t["layer"] == 0]["share_above_0.005"].mean()  # equal sizes: mean of shares
    assert layer0["share_above_0.005"] == pytest.approx(expected, rel=1e-12)
    summary = report.summary.iloc[0]
    assert summary["numel"] == t["numel"].sum()
    assert summary["norm_delta"] == pytest.approx(math.sqrt((t["norm_delta"] ** 2).sum()), rel=1e-9)
    group = report.groups[(report.groups["layer"] == 0) & (report.groups["kind"] == "v")].iloc[0]
    assert group["median_abs"] == t.set_index("tensor").loc[
        "model.layers.0.self_attn.v_proj.weight", "median_abs"]
    outside = report.groups[report.groups["layer"] == OUTSIDE_BLOCKS]
    assert list(outside["kind"]) == ["norm"]
    # the display histograms add up to every element
    whole = report.histogram(report.models[0])
    assert whole["count"].sum() == summary["numel"]


def test_lanes_and_chunks_do_not_change_results(gaussian) -> None:
    base, ft, report = gaussian
    other = analyze_deltas(base, [ft], cache=False, device="cpu", lanes=1, chunk_elements=100_003)
    cols = ["numel", "zeros", "median_abs", "max_abs", "share_above_0.005", "norm_delta"]
    pd.testing.assert_frame_equal(report.tensors[cols], other.tensors[cols], rtol=1e-5)
    assert _split(10, 4, 2) == [(0, 4), (4, 8), (8, 10)]
    assert _split(0, 4, 2) == [(0, 0)]


# -- verdicts ----------------------------------------------------------------------------------


def test_verdicts_follow_the_dare_paper(gaussian) -> None:
    _, _, report = gaussian
    v = report.tensors.set_index("tensor")["verdict"]
    assert v["model.layers.0.self_attn.q_proj.weight"] == "safe"  # σ = 0.001
    assert v["model.layers.0.self_attn.k_proj.weight"] == "safe"  # σ = 0.002: 1.2% > 0.005
    assert v["model.layers.0.self_attn.v_proj.weight"] == "caution"  # σ = 0.005: 4.6% > 0.01
    assert v["model.layers.0.self_attn.o_proj.weight"] == "likely to fail"  # σ = 0.02
    verdict, reason = report.verdict(report.models[0])
    assert verdict == "likely to fail"  # 1/4 of elements have σ = 0.02: 15% above 0.01
    assert "0.01" in reason and "o" in reason


def test_rules() -> None:
    assert dare_verdict(0.01, 0.0, 0.05).verdict == "safe"
    assert dare_verdict(0.06, 0.0, 0.05).verdict == "caution"
    assert dare_verdict(0.02, 0.02, 0.05).verdict == "caution"
    assert dare_verdict(0.5, 0.2, 0.3).verdict == "likely to fail"
    assert "wrong base" in dare_verdict(0.0, 0.0, 1.4).reason
    assert "identical" in dare_verdict(0.0, 0.0, 0.0, zeros_share=1.0).reason


def test_wrong_base_is_flagged(tmp_path: Path) -> None:
    """An unrelated model of the same architecture: ‖δ‖/‖θ0‖ ≈ √2, likely to fail."""
    g = torch.Generator().manual_seed(1)
    shapes = {"model.layers.0.mlp.down_proj.weight": (64, 256), "model.embed_tokens.weight": (32, 64)}
    a = {k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    b = {k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    report = analyze_deltas(write_model(tmp_path / "a", a), [write_model(tmp_path / "b", b)], cache=False)
    row = report.summary.iloc[0]
    assert row["rel_norm"] == pytest.approx(math.sqrt(2), rel=0.05)
    assert row["verdict"] == "likely to fail" and "wrong base" in row["reason"]


# -- across fine-tunes -------------------------------------------------------------------------


def test_cosine_and_sign_conflicts_on_constructed_deltas(tmp_path: Path) -> None:
    """Hand-made deltas (exact in bf16): cosine and conflict counts equal the hand values."""
    base = torch.full((2, 8), 0.5)
    u = torch.tensor([1, 2, -1, 0, 3, -2, 1, 0], dtype=torch.float32) * 2**-8
    w = torch.tensor([1, -2, -1, 1, 0, 2, 1, 0], dtype=torch.float32) * 2**-8
    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"]
    d1 = {names[0]: u, names[1]: u}
    d2 = {names[0]: w, names[1]: -u}
    d3 = {names[0]: -w, names[1]: u}
    paths = []
    for k, d in enumerate((None, d1, d2, d3)):
        tensors = {n: (base[0] + (d[n] if d else 0)).to(torch.bfloat16) for n in names}
        paths.append(write_model(tmp_path / f"m{k}", tensors))
    report = analyze_deltas(paths[0], paths[1:], labels=["a", "b", "c"], cache=False)
    # layer 0: u·w = 1-4+1+0+0-4+1+0 = -5 (×2^-16); |u|² = 20, |w|² = 12
    cos_uw = -5 / math.sqrt(20 * 12)
    # sign conflicts u vs w: positions 1 (2,-2) and 5 (-2,2) -> 2 of 8
    by_layer = report.pairs_by_layer.set_index(["model_a", "model_b", "layer"])
    assert by_layer.loc[("a", "b", 0), "cosine"] == pytest.approx(cos_uw, abs=1e-7)
    assert by_layer.loc[("a", "b", 0), "sign_conflict"] == 2 / 8
    assert by_layer.loc[("a", "b", 1), "cosine"] == pytest.approx(-1.0)
    assert by_layer.loc[("a", "b", 1), "sign_conflict"] == 6 / 8  # every non-zero element
    assert by_layer.loc[("a", "c", 1), "cosine"] == pytest.approx(1.0)
    assert by_layer.loc[("a", "c", 1), "sign_conflict"] == 0
    # whole model a vs b: dot = -5 - 20, norms² 40 and 32
    whole = report.pairs.set_index(["model_a", "model_b"])
    assert whole.loc[("a", "b"), "cosine"] == pytest.approx(-25 / math.sqrt(40 * 32), abs=1e-7)
    assert whole.loc[("a", "b"), "sign_conflict"] == (2 + 6) / 16
    # all three: layer 0 has u, w, -w: every element where w != 0 or u,w disagree
    # u=[1,2,-1,0,3,-2,1,0], w=[1,-2,-1,1,0,2,1,0]: w and -w conflict wherever w != 0 -> 6
    all0 = report.conflict_all_by_layer.set_index("layer").loc[0, "sign_conflict_all"]
    assert all0 == 6 / 8
    per_tensor = report.pairs_by_tensor
    assert len(per_tensor) == 3 * 2  # three pairs, two tensors


def test_real_checkpoints_from_transformers(gpt2_family) -> None:
    """Tiny GPT-2 family saved by transformers (bf16): layers, kinds, pairs all present."""
    report = analyze_deltas(gpt2_family["base"], [gpt2_family["ft0"], gpt2_family["ft1"]], cache=False)
    assert set(report.groups["layer"]) == {OUTSIDE_BLOCKS, 0, 1, 2}
    assert {"qkv", "up", "down", "norm", "embed"} <= set(report.groups["kind"])
    assert set(report.summary["verdict"]) == {"safe"}  # σ = 0.002 fine-tunes
    cos = report.pairs["cosine"].iloc[0]
    assert abs(cos) < 0.05  # independent noise: nearly orthogonal
    assert report.pairs["sign_conflict"].iloc[0] == pytest.approx(0.5, abs=0.05)


# -- cache, progress, cancel, errors ----------------------------------------------------------


def test_cache_roundtrip_and_invalidation(tmp_path: Path) -> None:
    base, ft = gaussian_pair(tmp_path / "m", dtype=torch.bfloat16)
    first = analyze_deltas(base, [ft], cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache").glob("report-*.json.gz"))
    assert len(files) == 1 and first.meta["cache_file"] == str(files[0])
    calls = []
    second = analyze_deltas(base, [ft], cache_dir=tmp_path / "cache", progress=calls.append)
    assert calls == []  # served from disk
    for name in ("summary", "tensors", "groups", "tensor_hist", "bins", "pairs", "skipped"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name), check_dtype=False)
    assert second.models == first.models and second.meta["thresholds"] == [0.002, 0.005, 0.01]
    # a changed shard (new mtime) is a different checkpoint
    shard = ft / "model.safetensors"
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    analyze_deltas(base, [ft], cache_dir=tmp_path / "cache", progress=calls.append)
    assert calls and len(list((tmp_path / "cache").glob("report-*.json.gz"))) == 2


def test_corrupt_cache_file_is_recomputed(tmp_path: Path) -> None:
    base, ft = gaussian_pair(tmp_path / "m", dtype=torch.bfloat16)
    first = analyze_deltas(base, [ft], cache_dir=tmp_path / "c")
    Path(first.meta["cache_file"]).write_bytes(b"not gzip")
    again = analyze_deltas(base, [ft], cache_dir=tmp_path / "c")
    assert again.summary["numel"].iloc[0] == first.summary["numel"].iloc[0]


def test_progress_and_cancel(tmp_path: Path) -> None:
    base, ft = gaussian_pair(tmp_path / "m", dtype=torch.bfloat16)
    seen = []
    analyze_deltas(base, [ft], cache=False, progress=seen.append)
    assert [p.done for p in seen] == list(range(1, 7)) and seen[-1].total == 6
    token = CancelToken()

    def cancel_after_two(p) -> None:
        if p.done == 2:
            token.cancel()

    with pytest.raises(CancelledError):
        analyze_deltas(base, [ft], cache=False, progress=cancel_after_two, cancel=token)


def test_mismatched_tensors_are_skipped_with_reasons(tmp_path: Path) -> None:
    base = {"model.layers.0.mlp.up_proj.weight": torch.zeros(4, 4), "model.embed_tokens.weight": torch.zeros(10, 4),
            "model.layers.0.mlp.down_proj.weight": torch.zeros(4, 4)}
    ft = {"model.layers.0.mlp.up_proj.weight": torch.full((4, 4), 1e-3),
          "model.embed_tokens.weight": torch.zeros(12, 4), "extra.weight": torch.zeros(2)}
    report = analyze_deltas(write_model(tmp_path / "b", base), [write_model(tmp_path / "f", ft)], cache=False)
    reasons = report.skipped.set_index("tensor")["reason"]
    assert "differs" in reasons["model.embed_tokens.weight"]
    assert "missing" in reasons["model.layers.0.mlp.down_proj.weight"]
    assert "not in the base" in reasons["extra.weight"]
    assert list(report.tensors["tensor"]) == ["model.layers.0.mlp.up_proj.weight"]
    assert "not compared" in report.summary["reason"].iloc[0]
    unrelated = write_model(tmp_path / "u", {"other.weight": torch.zeros(3)})
    with pytest.raises(IncompatibleModelsError, match="no tensor with the same name"):
        analyze_deltas(tmp_path / "b", [unrelated], cache=False)
    with pytest.raises(RecipeError):
        analyze_deltas(tmp_path / "b", [], cache=False)


# -- DARE preview ------------------------------------------------------------------------------


def test_dare_preview_is_the_merge_engines_dare(gaussian) -> None:
    base, ft, _ = gaussian
    name = "model.layers.0.self_attn.k_proj.weight"
    p = dare_preview(base, ft, name, drop_rate=0.9, seed=3, model_index=1, device="cpu")
    # what a merge would do with the same key
    from fusion_ui.io import Checkpoint

    with Checkpoint.open(base) as b, Checkpoint.open(ft) as f:
        delta = f.tensor(name).float() - b.tensor(name).float()
    expected = dare(delta, 0.9, (3, name, 1))
    assert p.nonzero_after == int(torch.count_nonzero(expected))
    assert p.share_kept == pytest.approx(0.1, abs=0.005)
    assert p.keep_probability == pytest.approx(0.1, abs=1e-4)
    # E‖δ̂ − δ‖² = (p/(1−p))‖δ‖² for the inverse rescale
    assert p.rel_error == pytest.approx(3.0, rel=0.03)
    assert p.expected_rel_error == pytest.approx(3.0, rel=1e-3)
    # rescaling by 10 pushes σ = 0.002 deltas far above the 0.005 line
    assert p.shares_before[1] == pytest.approx(share_above(0.005, 0.002), abs=0.002)
    assert p.shares_after[1] > 5 * p.shares_before[1]
    before = p.hist[p.hist["stage"] == "before"]
    after = p.hist[p.hist["stage"] == "after"]
    assert before["count"].sum() == after["count"].sum() == N
    assert after["count"].iloc[0] == N - p.nonzero_after  # dropped = exact zeros
    same = dare_preview(base, ft, name, drop_rate=0.9, seed=3, model_index=1, device="cpu")
    assert same.rel_error == p.rel_error
    none = dare_preview(base, ft, [name], drop_rate=0.0, device="cpu")
    assert none.rel_error == 0.0 and none.share_kept == 1.0
    with pytest.raises(RecipeError):
        dare_preview(base, ft, name, drop_rate=1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_checkpoints(tmp_path: Path, dtype: torch.dtype) -> None:
    """fp16 models are counted on fp16 bit patterns, bf16 on bf16: same statistics."""
    base, ft = gaussian_pair(tmp_path, dtype=dtype)
    report = analyze_deltas(base, [ft], cache=False)
    assert report.meta["hist_dtype"] == str(dtype).removeprefix("torch.")
    row = report.tensors.set_index("tensor").loc["model.layers.0.self_attn.v_proj.weight"]
    # the stored fine-tune is rounded to 16 bits, so δ is σ-noise plus rounding of θ0 + δ
    assert row["median_abs"] == pytest.approx(0.6745 * 0.005, rel=0.03)
    assert row["share_above_0.01"] == pytest.approx(share_above(0.01, 0.005), rel=0.1)
