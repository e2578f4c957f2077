"""The export's tokenizer is settled before any heavy work: one with more tokens than the
embeddings is refused, a source without tokenizer files points at a model that has them, and
models without any tokenizer export without one (as mergekit does), saying so."""

from __future__ import annotations

from pathlib import Path

import pytest
from factory import char_tokenizer, fine_tune_of, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusion_ui import ModelSourceError, RecipeError, export_merge, recipe_from_dict
from fusion_ui.io.checkpoint import tokenizer_size


def no_heavy_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import fusion_ui.export as export_mod

    def refuse(*a, **k):
        raise AssertionError("the merge ran before the tokenizer was checked")

    monkeypatch.setattr(export_mod, "run_merge", refuse)


def ta(base: Path, *models: Path, **kw: object):
    return recipe_from_dict({"method": "task_arithmetic", "base": str(base),
                             "models": [{"model": str(m), "weight": 0.5} for m in models], **kw})


@pytest.fixture(scope="module")
def bare_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base and two fine-tunes saved without tokenizer files (like mergekit's test models)."""
    root = tmp_path_factory.mktemp("bare")
    base = tiny_model("llama", 0)
    paths = {"base": root / "base"}
    base.save_pretrained(paths["base"])
    for i in range(2):
        paths[f"ft{i}"] = root / f"ft{i}"
        fine_tune_of(base, 10 + i).save_pretrained(paths[f"ft{i}"])
    return paths


@pytest.fixture(scope="module")
def big_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer-only folder with 53 tokens (10 added), for models with 48 embedding rows."""
    tok = char_tokenizer()
    tok.add_tokens([f"<extra_{i}>" for i in range(10)])
    folder = tmp_path_factory.mktemp("tok") / "big"
    tok.save_pretrained(folder)
    return folder


def test_token_counts_include_added_tokens(big_tokenizer: Path, llama_family: dict[str, Path]) -> None:
    assert tokenizer_size(big_tokenizer) == len(AutoTokenizer.from_pretrained(big_tokenizer)) == 53
    assert tokenizer_size(llama_family["base"]) == len(char_tokenizer()) == 43


def test_a_tokenizer_folder_larger_than_the_embeddings_is_refused_up_front(
        llama_family: dict[str, Path], big_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = ta(llama_family["base"], llama_family["ft0"], tokenizer_source=str(big_tokenizer))
    no_heavy_work(monkeypatch)
    with pytest.raises(RecipeError, match="has 53 tokens .* 48 embedding rows: token ids 48..52") as info:
        export_merge(r, tmp_path / "out", device="cpu")
    assert info.value.message_for("cli").endswith("set `tokenizer_source: base` in the recipe")
    assert list(tmp_path.iterdir()) == []


def test_a_model_whose_tokenizer_outgrew_its_embeddings_is_refused_as_model_n(
        llama_family: dict[str, Path], big_tokenizer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # same config vocab_size as the base, but 10 added tokens beyond its rows
    ft = tmp_path / "ft"
    AutoModelForCausalLM.from_pretrained(llama_family["ft1"]).save_pretrained(ft)
    AutoTokenizer.from_pretrained(big_tokenizer).save_pretrained(ft)
    r = ta(llama_family["base"], llama_family["ft0"], ft, tokenizer_source="model:1")
    no_heavy_work(monkeypatch)
    with pytest.raises(RecipeError, match="tokenizer_source model:1 .* has 53 tokens"):
        export_merge(r, tmp_path / "out", device="cpu")


def test_a_tokenizer_only_folder_is_a_valid_source(llama_family: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "tok"
    tok = char_tokenizer()
    tok.add_tokens(["<x>"])  # 44 tokens: fits in 48 rows
    tok.save_pretrained(folder)
    r = ta(llama_family["base"], llama_family["ft0"], tokenizer_source=str(folder))
    result = export_merge(r, tmp_path / "out", device="cpu")
    assert len(AutoTokenizer.from_pretrained(result.path)) == 44


def test_models_without_tokenizers_export_without_one_and_say_so(bare_family: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    r = ta(bare_family["base"], bare_family["ft0"], bare_family["ft1"])
    result = export_merge(r, tmp_path / "out", device="cpu")
    (warning,) = [w for w in result.warnings if "no input model has tokenizer files" in w]
    assert str(result.path) in warning
    assert not any((result.path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    assert (result.path / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(result.path)
    assert model.get_input_embeddings().weight.shape[0] == 48


def test_a_source_without_tokenizer_names_the_model_that_has_one(
        bare_family: dict[str, Path], llama_family: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the base has no tokenizer files, the second fine-tune does
    r = ta(bare_family["base"], bare_family["ft0"], llama_family["ft1"])
    with monkeypatch.context() as m:
        no_heavy_work(m)
        with pytest.raises(ModelSourceError, match=f"has no tokenizer files, but {llama_family['ft1']} has them") as info:
            export_merge(r, tmp_path / "out", device="cpu")
    assert info.value.message_for("cli").endswith("set `tokenizer_source: model:1` in the recipe")
    assert "“model:1”" in info.value.message_for("app")
    assert list(tmp_path.iterdir()) == []
    result = export_merge(r.updated(tokenizer_source="model:1"), tmp_path / "out", device="cpu")
    assert (result.path / "tokenizer.json").read_bytes() == (llama_family["ft1"] / "tokenizer.json").read_bytes()
    with pytest.raises(ModelSourceError, match="tokenizer_source .* has no tokenizer files"):
        export_merge(r.updated(tokenizer_source=str(bare_family["ft0"])), tmp_path / "out2", device="cpu")
