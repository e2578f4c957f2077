"""The GPU path gives the CPU path's results. Skipped where torch sees no CUDA GPU (as on CI).

On a machine with one: ``python -m pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from fusion_ui import merge_to_state_dict, recipe_from_dict
from fusion_ui.deltas import analyze_deltas
from fusion_ui.errors import TensorValueError
from fusion_ui.methods import METHODS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

# Element-wise methods whose reference is a fixed sequence of IEEE float32 operations, and whose
# random draws are integer hashes: the GPU must give the CPU kernels' bits exactly.
EXACT = {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune",
         "breadcrumbs", "breadcrumbs_ties", "passthrough"}


def recipe_for(method: str, family: dict[str, Path], **extra: Any) -> dict:
    fts = [str(family[k]) for k in sorted(family) if k != "base"]
    if method == "slerp":
        fts = fts[:2]
    if method == "passthrough":  # one model's tensors, times its scale
        fts = fts[:1]
    models = [{"model": m, "weight": w} for m, w in zip(fts, (0.5, 0.3, 0.2), strict=False)]
    if method == "passthrough":
        models = [{"model": fts[0], "scale": 0.5}]
    elif not METHODS[method].model_params():  # SLERP and Model Stock take no weights
        models = [{"model": m} for m in fts]
    recipe = {"method": method, "models": models, "seed": 3, **extra}
    if METHODS[method].needs_base:
        recipe["base"] = str(family["base"])
    return recipe


# Data-aware methods read statistics folders as well (tests/test_methods_datamerge.py).
@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].capabilities.statistics is None))
def test_every_method_merges_on_the_gpu_as_on_the_cpu(llama_family: dict[str, Path], method: str) -> None:
    recipe = recipe_from_dict(recipe_for(method, llama_family))
    cpu = merge_to_state_dict(recipe, device="cpu")
    gpu = merge_to_state_dict(recipe, device="cuda")
    assert cpu.keys() == gpu.keys()
    for name, t in cpu.items():
        g = gpu[name]
        assert g.device.type == "cpu" and g.dtype == t.dtype and g.shape == t.shape
        if method in EXACT:
            assert torch.equal(g, t), (method, name, (g - t).abs().max().item())
        else:  # norms, dot products and sums are reduced in another order on the GPU
            torch.testing.assert_close(g, t, rtol=1e-5, atol=1e-6, msg=f"{method} {name}")


def test_bf16_family_dare_ties_on_the_gpu_is_bit_identical(gpt2_family: dict[str, Path]) -> None:
    """bf16 checkpoints cross to the GPU as bf16 (pinned, asynchronous) and are widened there."""
    recipe = recipe_from_dict({
        "method": "dare_ties", "base": str(gpt2_family["base"]), "seed": 7, "dtype": "bfloat16",
        "models": [{"model": str(gpt2_family[k]), "weight": 0.5, "drop_rate": 0.9} for k in ("ft0", "ft1")],
    })
    cpu = merge_to_state_dict(recipe, device="cpu")
    gpu = merge_to_state_dict(recipe, device="cuda")
    for name, t in cpu.items():
        assert gpu[name].dtype == torch.bfloat16 and torch.equal(gpu[name], t), name


def test_a_nan_is_named_on_the_gpu(llama_family: dict[str, Path], tmp_path: Path) -> None:
    from factory import save

    broken = AutoModelForCausalLM.from_pretrained(llama_family["ft1"])
    with torch.no_grad():
        broken.model.layers[0].mlp.up_proj.weight[3, 5] = float("nan")
    path = save(broken, tmp_path / "broken")
    recipe = recipe_from_dict({
        "method": "ties", "base": str(llama_family["base"]),
        "models": [{"model": str(llama_family["ft0"])}, {"model": str(path)}],
    })
    with pytest.raises(TensorValueError, match=r"broken.*up_proj.*1 NaN/inf"):
        merge_to_state_dict(recipe, device="cuda")


def test_cli_export_on_the_gpu_loads_in_transformers(llama_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(recipe_for("dare_ties", llama_family)))
    out = tmp_path / "merged"
    subprocess.run([sys.executable, "-m", "fusion_ui.cli", "merge", str(recipe), "--out", str(out),
                    "--device", "cuda"], check=True, capture_output=True)
    model = AutoModelForCausalLM.from_pretrained(out)
    expected = merge_to_state_dict(recipe_from_dict(recipe_for("dare_ties", llama_family)), device="cpu")
    for name, p in model.state_dict().items():
        if name in expected:
            assert torch.equal(p, expected[name]), name


def test_delta_report_on_the_gpu_matches_the_cpu(llama_family: dict[str, Path]) -> None:
    fts = [llama_family["ft0"], llama_family["ft1"]]
    cpu = analyze_deltas(llama_family["base"], fts, device="cpu", cache=False)
    gpu = analyze_deltas(llama_family["base"], fts, device="cuda", cache=False)
    hist = [c for c in cpu.tensor_hist.columns if c.isdigit()]
    assert (cpu.tensor_hist[hist].to_numpy() == gpu.tensor_hist[hist].to_numpy()).all()
    num = cpu.summary.select_dtypes("number").columns
    assert (abs(cpu.summary[num] - gpu.summary[num]) <= 1e-5 * (1 + abs(cpu.summary[num]))).all().all()
    assert cpu.summary["verdict"].tolist() == gpu.summary["verdict"].tolist()


@pytest.mark.parametrize("sink", ["export", "model"])
def test_reused_pinned_buffers_give_the_cpu_result(
    llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sink: str
) -> None:
    """Every buffer pinned and recycled (the path 0.9B merges take): no result is overwritten early."""
    import fusion_ui.merge as merge_mod
    from fusion_ui import export_merge, merge_into_model

    monkeypatch.setattr(merge_mod, "PIN_MIN_BYTES", 0)
    recipe = recipe_from_dict(recipe_for("dare_ties", llama_family))
    expected = merge_to_state_dict(recipe, device="cpu")
    if sink == "export":
        export_merge(recipe, tmp_path / "out", device="cuda")
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    else:
        model = AutoModelForCausalLM.from_pretrained(llama_family["base"])
        got = merge_into_model(recipe, model, device="cuda").state_dict()
    for name, t in expected.items():
        assert torch.equal(got[name], t), name
