"""No silently wrong output: float16 overflow, overlapping safetensors data, an unrelated model
in a linear merge, and patterns or overrides that select nothing."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from factory import fine_tune_of, save, tiny_model
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fusion_ui import (
    Checkpoint,
    IncompatibleModelsError,
    ModelSourceError,
    RecipeError,
    TensorValueError,
    export_merge,
    merge_to_state_dict,
    recipe_from_dict,
)
from fusion_ui.io.safetensors_format import read_header
from fusion_ui.merge import plan_merge


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if "fusion-ui-tmp" in p.name or "fusion-ui-old" in p.name]


# -- float16 overflow ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """float32 models whose final norm holds 70000 at one element: past float16's 65504."""
    root = tmp_path_factory.mktemp("big")
    base = tiny_model("llama", 0)
    with torch.no_grad():
        base.model.norm.weight[3] = 70000.0
    return {"base": save(base, root / "base"), "ft": save(fine_tune_of(base, 1), root / "ft")}


@pytest.mark.parametrize("excluded", [False, True], ids=["merged", "taken-from-the-base"])
def test_float16_overflow_is_refused_naming_the_tensor(big_values: dict[str, Path], tmp_path: Path,
                                                       excluded: bool) -> None:
    r = recipe_from_dict({
        "method": "task_arithmetic", "base": str(big_values["base"]),
        "models": [{"model": str(big_values["ft"]), "weight": 1.0}], "dtype": "float16",
        "exclude": ["model.norm.weight"] if excluded else [],
    })
    out = tmp_path / "merged"
    with pytest.raises(TensorValueError, match=r"'model\.norm\.weight'.*1 value\(s\) beyond float16's range") as info:
        export_merge(r, out, device="cpu")
    assert "bfloat16" in str(info.value) and info.value.message_for("cli").endswith("--dtype bfloat16 (or float32)")
    assert not out.exists() and leftovers(tmp_path) == []
    # the same merge in bfloat16 holds the value
    state = merge_to_state_dict(r.updated(dtype="bfloat16"), device="cpu")
    assert torch.isfinite(state["model.norm.weight"]).all()
    assert float(state["model.norm.weight"][3]) == pytest.approx(70000, rel=0.01)


# -- safetensors data offsets ----------------------------------------------------------------


def write_raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


F32x4 = {"dtype": "F32", "shape": [4]}


@pytest.mark.parametrize(("header", "data_len", "why"), [
    ({"a": {**F32x4, "data_offsets": [0, 16]}, "b": {**F32x4, "data_offsets": [8, 24]}}, 24, "overlaps"),
    ({"a": {**F32x4, "data_offsets": [0, 16]}, "b": {**F32x4, "data_offsets": [0, 16]}}, 16, "overlaps"),
    ({"a": {**F32x4, "data_offsets": [0, 16]}, "b": {**F32x4, "data_offsets": [24, 40]}}, 40, "gap"),
    ({"a": {**F32x4, "data_offsets": [8, 24]}}, 24, "gap"),
    ({"a": {**F32x4, "data_offsets": [0, 16]}}, 24, "bytes after its last tensor"),
    ({"a": {**F32x4, "data_offsets": [0.0, 16.0]}}, 16, "two whole numbers"),
    ({"a": {**F32x4, "data_offsets": [0, 16, 32]}}, 16, "two whole numbers"),
    ({"a": {"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}}, 16, "shape must be"),
], ids=["overlap", "same-bytes", "gap", "not-from-zero", "trailing-bytes", "float-offsets",
        "three-offsets", "float-shape"])
def test_headers_safetensors_refuses_are_refused(tmp_path: Path, header: dict, data_len: int, why: str) -> None:
    path = write_raw(tmp_path / "x.safetensors", header, bytes(data_len))
    with pytest.raises(SafetensorError):  # what the library (and so transformers) does with it
        load_file(path)
    with pytest.raises(ModelSourceError, match=why) as info:
        read_header(path)
    assert "corrupt" in str(info.value)


def test_headers_safetensors_accepts_are_accepted(tmp_path: Path) -> None:
    # out of order in the JSON, and an empty tensor sharing an offset: both fine for the library
    header = {"b": {**F32x4, "data_offsets": [16, 32]}, "a": {**F32x4, "data_offsets": [0, 16]},
              "e": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}
    path = write_raw(tmp_path / "x.safetensors", header, bytes(32))
    assert set(load_file(path)) == {"a", "b", "e"}
    entries, _, start = read_header(path)
    assert set(entries) == {"a", "b", "e"} and start == path.stat().st_size - 32


def test_a_model_with_overlapping_tensors_cannot_be_opened(llama_family: dict[str, Path], tmp_path: Path) -> None:
    model = shutil.copytree(llama_family["base"], tmp_path / "m")
    tensors = load_file(model / "model.safetensors")
    save_file(tensors, model / "model.safetensors")
    raw = (model / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    # two norm weights of one size: the second now reads the first one's bytes
    a, b = header["model.layers.0.input_layernorm.weight"], header["model.layers.1.input_layernorm.weight"]
    b["data_offsets"] = list(a["data_offsets"])
    write_raw(model / "model.safetensors", header, raw[8 + n:])
    with pytest.raises(ModelSourceError, match="overlaps|gap"):
        Checkpoint.open(model)


# -- an unrelated model, with a method that does not use deltas --------------------------------


@pytest.fixture(scope="module")
def unrelated(llama_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    other = save(tiny_model("llama", seed=123), tmp_path_factory.mktemp("unrelated") / "other")
    return {"base": llama_family["base"], "ft0": llama_family["ft0"], "other": other}


def test_linear_and_slerp_warn_about_a_model_that_is_no_fine_tune(unrelated: dict[str, Path]) -> None:
    data = {"base": str(unrelated["base"]), "models": [{"model": str(unrelated["ft0"])},
                                                      {"model": str(unrelated["other"])}]}
    for method in ("linear", "slerp"):
        with plan_merge(recipe_from_dict({"method": method, **data})) as plan:
            (warning,) = [w for w in plan.warnings if "does not look like a fine-tune" in w]
            assert str(unrelated["other"]) in warning and method in warning
            assert not any(str(unrelated["ft0"]) in w for w in plan.warnings)
    # slerp of task vectors uses the deltas: there a wrong base is refused, as for TIES or DARE
    with pytest.raises(IncompatibleModelsError, match="does not look like a fine-tune") as info:
        plan_merge(recipe_from_dict({"method": "slerp", "parameters": {"on_deltas": True}, **data}))
    assert info.value.message_for("cli").endswith("pass --allow-large-deltas to merge anyway")
    assert "merge even if a model does not look like a fine-tune" in info.value.message_for("app")
    assert str(info.value).endswith("allow_large_deltas=True to merge anyway")


def test_a_linear_merge_of_fine_tunes_gets_no_such_warning(llama_family: dict[str, Path]) -> None:
    r = recipe_from_dict({"method": "linear", "base": str(llama_family["base"]),
                          "models": [{"model": str(llama_family["ft0"])}, {"model": str(llama_family["ft1"])}]})
    with plan_merge(r) as plan:
        assert plan.warnings == [] and len(plan.delta_stats) == 2


# -- selections that select nothing ------------------------------------------------------------


def test_patterns_and_overrides_that_select_nothing_are_reported(llama_family: dict[str, Path]) -> None:
    r = recipe_from_dict({
        "method": "dare_ties", "base": str(llama_family["base"]),
        "models": [{"model": str(llama_family["ft0"]), "weight": 0.5}],
        "exclude": ["lm_head.*", "*lm_haed*"],
        "include": ["model.*", "re:^transformer\\."],
        "overrides": [
            {"match": "*.self_attn.*", "layers": [0, 1], "parameters": {"drop_rate": 0.5}},  # fine
            {"match": "*.self_atn.*", "parameters": {"drop_rate": 0.5}},  # a typo
            {"match": "*.mlp.*", "layers": [5, 9], "parameters": {"drop_rate": 0.5}},  # 3 layers
            {"match": "lm_head.*", "parameters": {"drop_rate": 0.5}},  # excluded
        ],
    })
    with plan_merge(r) as plan:
        found = [w for w in plan.warnings if "matches no tensor" in w or "changes nothing" in w]
    assert len(found) == 5, found
    text = "\n".join(found)
    assert "exclude pattern '*lm_haed*'" in text and "include pattern 're:^transformer\\\\.'" in text
    assert "overrides[1] (match '*.self_atn.*') selects no tensor" in text
    assert "overrides[2] (match '*.mlp.*', layers [5, 9]) selects no tensor (the model has layers 0..2)" in text
    assert "overrides[3] (match 'lm_head.*') selects only tensors that are not merged" in text
    assert "overrides[0]" not in text


def test_include_patterns_that_leave_nothing_to_merge_are_refused(llama_family: dict[str, Path]) -> None:
    r = recipe_from_dict({"method": "task_arithmetic", "base": str(llama_family["base"]),
                          "models": [{"model": str(llama_family["ft0"])}], "include": ["transformer.h.*"]})
    with pytest.raises(RecipeError, match="leave no tensor to merge"):
        plan_merge(r)
