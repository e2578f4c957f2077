"""Compatibility from headers: every mismatch reported, vocab crops offered."""

from __future__ import annotations

from pathlib import Path

import torch
from factory import fine_tune_of, save, tiny_model

from fusion_ui.inspect import inspect_models


def test_compatible_family(llama_family: dict[str, Path]) -> None:
    report = inspect_models([str(llama_family["base"]), str(llama_family["ft0"]), str(llama_family["ft1"])])
    assert report.verdict == "compatible"
    table = report.table()
    assert list(table["role"]) == ["base", "model 1", "model 2"]
    assert set(table["type"]) == {"llama"} and set(table["dtype"]) == {"float32"}
    assert "verdict: compatible" in report.format()


def test_every_shape_mismatch_and_family_is_reported(llama_family: dict[str, Path], gpt2_family: dict[str, Path],
                                                     tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    wide = save(LlamaForCausalLM(cfg), tmp_path / "wide")
    report = inspect_models([str(llama_family["base"]), str(wide), str(gpt2_family["ft0"])])
    assert report.verdict == "incompatible"
    shape_errors = [f for f in report.errors if "shape" in f.message and f.model == str(wide)]
    # gate/up/down of each of the 3 layers: 9 mismatches, all listed
    assert len(shape_errors) == 9
    assert any("architecture family 'gpt2'" in f.message for f in report.errors)


def test_extra_vocabulary_rows_are_cropped_with_a_warning(tmp_path: Path) -> None:
    base = tiny_model("llama", 0)
    ft = fine_tune_of(base, 1)
    ft.resize_token_embeddings(52)
    save(base, tmp_path / "base")
    save(ft, tmp_path / "ft")
    report = inspect_models([str(tmp_path / "base"), str(tmp_path / "ft")])
    assert report.verdict == "compatible with adjustments"
    assert sorted(report.vocab_crops[1]) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert any("cropped to the base's rows" in f.message for f in report.findings)


def test_dtype_difference_is_information(tmp_path: Path) -> None:
    base = tiny_model("gpt2", 0)
    save(base, tmp_path / "base")
    save(fine_tune_of(base, 1).to(torch.bfloat16), tmp_path / "ft")
    report = inspect_models([str(tmp_path / "base"), str(tmp_path / "ft")])
    assert report.verdict == "compatible"
    assert any(f.severity == "info" and "bfloat16" in f.message for f in report.findings)
