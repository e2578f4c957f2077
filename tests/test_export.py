"""End to end: merge real tiny checkpoints, export, reload with transformers, generate; and every
failure leaves nothing half-written."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from factory import fine_tune_of, save, tiny_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusion_ui import (
    CancelledError,
    CancelToken,
    DeviceError,
    ExportError,
    IncompatibleModelsError,
    TensorValueError,
    export_merge,
    merge_into_model,
    merge_to_state_dict,
    recipe_from_dict,
)
from fusion_ui.merge import plan_merge


def recipe(family: dict[str, Path], method: str = "dare_ties", **kw) -> object:
    models = [{"model": str(p), "weight": 0.5} for k, p in family.items() if k != "base"]
    data = {"method": method, "base": str(family["base"]), "models": models} | kw
    return recipe_from_dict(data)


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if "fusion-ui-tmp" in p.name or "fusion-ui-old" in p.name]


@pytest.mark.parametrize("family_name", ["llama_family", "gpt2_family"])
def test_export_reloads_and_generates(family_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    family = request.getfixturevalue(family_name)
    r = recipe(family, models=[{"model": str(family["ft0"]), "weight": 0.6, "drop_rate": 0.5},
                               {"model": str(family["ft1"]), "weight": 0.4, "drop_rate": 0.5}])
    out = tmp_path / "merged"
    seen = []
    result = export_merge(r, out, max_shard_size="16KB", device="cpu", progress=seen.append)
    files = set(result.files)
    assert {"config.json", "README.md", "fusion_ui_recipe.yaml", "mergekit_config.yml",
            "tokenizer.json", "generation_config.json", "model.safetensors.index.json"} <= files
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert seen[-1].done == seen[-1].total == len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("abc", return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, ids.shape[1] + 4)

    # the loaded weights are exactly what the engine computed in memory
    state = merge_to_state_dict(r, device="cpu")
    loaded = model.state_dict()
    for name, t in state.items():
        assert torch.equal(loaded[name], t), name
    assert model.dtype == next(iter(state.values())).dtype

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == str(family["base"])
    assert set(front["tags"]) == {"merge", "fusion_ui", "dare_ties"}
    assert "```yaml" in card and "drop_rate: 0.5" in card
    with safe_open(shards[0], "pt") as f:
        meta_recipe = yaml.safe_load(f.metadata()["fusion_ui_recipe"])
    assert meta_recipe == yaml.safe_load((out / "fusion_ui_recipe.yaml").read_text())
    assert meta_recipe["dtype"] == str(model.dtype).removeprefix("torch.")
    mk = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert mk["merge_method"] == "dare_ties" and mk["models"][0]["parameters"]["density"] == 0.5


def test_same_recipe_same_bits_and_seed_matters(llama_family: dict[str, Path]) -> None:
    a = merge_to_state_dict(recipe(llama_family, seed=1), device="cpu")
    b = merge_to_state_dict(recipe(llama_family, seed=1), device="cpu")
    c = merge_to_state_dict(recipe(llama_family, seed=2), device="cpu")
    name = "model.layers.0.mlp.up_proj.weight"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[name], c[name])


def test_excluded_tensors_come_from_the_base(llama_family: dict[str, Path]) -> None:
    state = merge_to_state_dict(recipe(llama_family, exclude=["*embed_tokens*"]), device="cpu")
    base = AutoModelForCausalLM.from_pretrained(llama_family["base"]).state_dict()
    assert torch.equal(state["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.equal(state["lm_head.weight"], base["lm_head.weight"])


def test_merge_into_a_loaded_preview_model(llama_family: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(llama_family["base"])
    r = recipe(llama_family, "task_arithmetic")
    merge_into_model(r, model, device="cpu")
    state = merge_to_state_dict(r, device="cpu")
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v)


def test_vocab_crop_end_to_end(tmp_path: Path) -> None:
    base = tiny_model("llama", 0)
    ft = fine_tune_of(base, 1)
    ft.resize_token_embeddings(52)
    fam = {"base": save(base, tmp_path / "base"), "ft": save(ft, tmp_path / "ft")}
    r = recipe(fam, "task_arithmetic")
    out = tmp_path / "out"
    result = export_merge(r, out, device="cpu")
    assert any("cropped" in w for w in result.warnings)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == 48
    expected = base.model.embed_tokens.weight + 0.5 * (ft.model.embed_tokens.weight[:48] - base.model.embed_tokens.weight)
    assert torch.allclose(model.get_input_embeddings().weight, expected, atol=1e-6)
    with pytest.raises(IncompatibleModelsError, match="vocab: error"):
        plan_merge(recipe(fam, "task_arithmetic", vocab="error"))


def test_atomic_on_injected_failure(llama_family: dict[str, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import fusion_ui.merge as merge_mod

    real = merge_mod.compute_tensor
    calls = {"n": 0}

    def failing(plan, job, device, inputs=None, out_pool=None):
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError("disk on fire")
        return real(plan, job, device, inputs, out_pool)

    monkeypatch.setattr(merge_mod, "compute_tensor", failing)
    out = tmp_path / "merged"
    with pytest.raises(OSError, match="disk on fire"):
        export_merge(recipe(llama_family), out, device="cpu")
    assert not out.exists() and leftovers(tmp_path) == []

    # with --force an existing export survives a failed replacement untouched
    monkeypatch.setattr(merge_mod, "compute_tensor", real)
    export_merge(recipe(llama_family), out, device="cpu")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls["n"] = 0
    monkeypatch.setattr(merge_mod, "compute_tensor", failing)
    with pytest.raises(OSError):
        export_merge(recipe(llama_family, seed=9), out, device="cpu", force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_cancel_between_tensors_leaves_nothing(llama_family: dict[str, Path], tmp_path: Path) -> None:
    token = CancelToken()

    def progress(p) -> None:
        if p.done == 3:
            token.cancel()

    out = tmp_path / "merged"
    with pytest.raises(CancelledError):
        export_merge(recipe(llama_family), out, device="cpu", progress=progress, cancel=token)
    assert not out.exists() and leftovers(tmp_path) == []


def test_existing_output_is_refused_unless_forced(llama_family: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists") as info:
        export_merge(recipe(llama_family), out, device="cpu")
    assert info.value.message_for("cli").endswith("pass --force to replace it")
    assert str(info.value).endswith("pass force=True")
    assert (out / "keep.txt").read_text() == "mine"
    # force replaces an earlier export or an empty folder, never a folder of someone's files
    with pytest.raises(ExportError, match="not a fusion_ui export"):
        export_merge(recipe(llama_family), out, device="cpu", force=True)
    assert (out / "keep.txt").read_text() == "mine" and leftovers(tmp_path) == []
    (out / "keep.txt").unlink()
    export_merge(recipe(llama_family), out, device="cpu", force=True)
    assert (out / "config.json").exists()
    export_merge(recipe(llama_family, seed=7), out, device="cpu", force=True)
    assert yaml.safe_load((out / "fusion_ui_recipe.yaml").read_text())["seed"] == 7
    assert leftovers(tmp_path) == []


def test_not_enough_disk_space(llama_family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fusion_ui.export as export_mod

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(export_mod.shutil, "disk_usage", lambda p: usage._replace(free=10_000))
    with pytest.raises(ExportError, match="not enough disk space"):
        export_merge(recipe(llama_family), tmp_path / "merged", device="cpu")
    assert not (tmp_path / "merged").exists() and leftovers(tmp_path) == []


def test_nan_in_an_input_tensor_is_named(llama_family: dict[str, Path], tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(llama_family["ft1"])
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[0, 0] = float("nan")
    bad = save(model, tmp_path / "bad")
    fam = {"base": llama_family["base"], "ft0": llama_family["ft0"], "bad": bad}
    out = tmp_path / "merged"
    with pytest.raises(TensorValueError, match=r"bad: tensor 'model.layers.2.mlp.up_proj.weight'.*NaN"):
        export_merge(recipe(fam), out, device="cpu")
    assert not out.exists() and leftovers(tmp_path) == []


def test_wrong_base_is_refused_with_the_delta_size(llama_family: dict[str, Path], tmp_path: Path) -> None:
    other = save(tiny_model("llama", seed=123), tmp_path / "unrelated")
    fam = {"base": other, "ft0": llama_family["ft0"]}
    with pytest.raises(IncompatibleModelsError, match=r"does not look like a fine-tune.*‖δ‖/‖θ0‖ = 1\.\d"):
        plan_merge(recipe(fam))
    with plan_merge(recipe(fam), allow_large_deltas=True) as plan:
        assert any("merging anyway" in w for w in plan.warnings)
        assert any("DARE works while deltas" in w for w in plan.warnings)


def test_dare_warning_for_large_but_related_deltas(tmp_path: Path) -> None:
    base = tiny_model("llama", 0)
    fam = {"base": save(base, tmp_path / "b"), "ft": save(fine_tune_of(base, 1, sigma=0.009), tmp_path / "f")}
    with plan_merge(recipe(fam)) as plan:
        assert any("DARE works while deltas" in w for w in plan.warnings)
    with plan_merge(recipe(fam, "ties")) as plan:
        assert not any("DARE" in w for w in plan.warnings)


def test_shape_mismatch_stops_the_merge_before_any_work(llama_family: dict[str, Path], tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    wide = save(LlamaForCausalLM(cfg), tmp_path / "wide")
    fam = {"base": llama_family["base"], "ft0": llama_family["ft0"], "wide": wide}
    out = tmp_path / "merged"
    with pytest.raises(IncompatibleModelsError) as info:
        export_merge(recipe(fam), out, device="cpu")
    message = str(info.value)
    # every mismatching tensor is named (gate/up/down of 3 layers), not just the first
    assert message.count("differs from the base's") == 9 and "mlp.up_proj" in message
    assert not out.exists() and leftovers(tmp_path) == []


def test_preview_model_of_another_architecture_is_refused_untouched(llama_family: dict[str, Path]) -> None:
    other = tiny_model("gpt2", seed=0)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(IncompatibleModelsError, match="preview model does not match"):
        merge_into_model(recipe(llama_family, "task_arithmetic"), other, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_asking_for_a_missing_gpu_fails_before_any_work(llama_family: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import fusion_ui.export as export_mod

    def no_planning(*a, **k):
        raise AssertionError("planned a merge for a device that is not there")

    monkeypatch.setattr(export_mod, "plan_merge", no_planning)
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        export_merge(recipe(llama_family), tmp_path / "out", device="cuda")
    assert list(tmp_path.iterdir()) == []


def test_read_workers_scale_with_cores() -> None:
    from fusion_ui.merge import read_workers

    assert read_workers(4, cores=2) == 1  # CI: the compute threads need both cores
    assert read_workers(4, cores=8) == 2
    assert read_workers(4, cores=16) == 4
    assert read_workers(3, cores=64) == 3  # never more threads than checkpoints


def test_checkpoints_read_side_by_side_give_the_same_merge(llama_family: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import fusion_ui.merge as merge_mod

    r = recipe(llama_family, seed=5)
    serial = merge_to_state_dict(r, device="cpu")
    readers: set[str] = set()
    real_read = merge_mod._read

    def spy(*a, **k):
        readers.add(threading.current_thread().name)
        return real_read(*a, **k)

    monkeypatch.setattr(merge_mod, "read_workers", lambda n, cores=None: n)
    monkeypatch.setattr(merge_mod, "_read", spy)
    parallel = merge_to_state_dict(r, device="cpu")
    # base + 3 fine-tunes go to a pool of 4 threads: several of them read (the main thread
    # reads only the planning's samples)
    merging = readers - {"MainThread"}
    assert len(merging) >= 2 and all(n.startswith("fusion-ui-read-ckpt") for n in merging), readers
    assert serial.keys() == parallel.keys()
    for name, t in serial.items():
        assert torch.equal(parallel[name], t), name


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_results_written_from_reused_buffers_are_exact(llama_family: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    """Kernels write into a few recycled buffers while the writer thread still writes the last
    result: the export and the preview model get exactly the in-memory merge."""
    import fusion_ui.merge as merge_mod

    made: list[int] = []

    class CountingPool(merge_mod.BufferPool):
        def take(self, nbytes: int) -> torch.Tensor:
            before = len(self._issued)
            buf = super().take(nbytes)
            made.append(len(self._issued) - before)
            return buf

    monkeypatch.setattr(merge_mod, "is_warm", lambda: True)  # the kernels, even on these tiny tensors
    r = recipe(llama_family, seed=2, dtype=dtype)
    expected = merge_to_state_dict(r, device="cpu")
    monkeypatch.setattr(merge_mod, "BufferPool", CountingPool)
    # slow sinks: the next tensor is computed while the last one is still being written, so a
    # buffer recycled too early would be overwritten under the writer
    from fusion_ui.io import writer as writer_mod

    for cls in (writer_mod.ShardedSafetensorsSink, writer_mod.ModelSink):
        def slow(self, name, tensor, _write=cls.write):
            time.sleep(0.01)
            return _write(self, name, tensor)

        monkeypatch.setattr(cls, "write", slow)
    made.clear()
    export_merge(r, tmp_path / "out", device="cpu")
    taken = len(made)
    assert sum(made) < taken / 3  # most buffers were reused (inputs and outputs)
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=getattr(torch, dtype)).state_dict()
    model = merge_into_model(r, AutoModelForCausalLM.from_pretrained(llama_family["base"], dtype=getattr(torch, dtype)))
    preview = model.state_dict()
    for name, t in expected.items():
        assert torch.equal(got[name], t) and torch.equal(preview[name], t), name
