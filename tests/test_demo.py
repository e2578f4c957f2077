"""The demo family pipeline: skills, tokenizer, a tiny seeded build that transformers loads,
bit-for-bit determinism, and the two CLI commands on it."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusion_ui.cli import demo as demo_cli
from fusion_ui.cli import eval as eval_cli
from fusion_ui.demo import DEMO_DIR, PRESETS, build_family, build_tokenizer
from fusion_ui.demo.skills import (
    EXPERT_SKILLS,
    GENERAL_SKILLS,
    HIDDEN_LETTERS,
    base_letters,
    eval_examples,
    get_skill,
    training_stream,
)
from fusion_ui.errors import ExportError, RecipeError
from fusion_ui.evals import evaluate, load_eval_sets

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = PRESETS["tiny"]
MODEL_FILES = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(scope="module")
def tiny_family(tmp_path_factory):
    return build_family(tmp_path_factory.mktemp("family"), TINY)


def test_skills_transform_as_documented():
    assert get_skill("upper").transform("abz") == "ABZ"
    assert get_skill("shift").transform("abz") == "bca"
    assert get_skill("mirror").transform("abc") == "zyx"
    assert get_skill("rot13").transform("an") == "na"
    assert get_skill("back").transform("ab") == "za"
    assert get_skill("capital").transform("cat") == "Cat"
    assert not set(EXPERT_SKILLS) & set(GENERAL_SKILLS)
    with pytest.raises(RecipeError, match="unknown demo skill"):
        get_skill("sing")


def test_eval_items_are_distinct_seeded_and_never_trained_on():
    items = eval_examples("upper", 100, seed=3, min_len=2, max_len=4)
    assert items == eval_examples("upper", 100, seed=3, min_len=2, max_len=4)
    words = {it.prompt.split(": ")[1][:-2] for it in items}
    assert len(words) == 100
    stream = training_stream(["upper"], seed=3, min_len=2, max_len=4, exclude=words)
    trained = {next(stream).prompt.split(": ")[1][:-2] for _ in range(3000)}
    assert not trained & words
    mixed = training_stream({"upper": 0.8, "copy": 0.2}, seed=3, min_len=2, max_len=4, exclude=set())
    share = sum(next(mixed).label == "upper" for _ in range(2000)) / 2000
    assert 0.75 < share < 0.85
    general = eval_examples("general", 8, seed=0, min_len=3, max_len=5)
    assert {it.label for it in general} == {"general"}
    assert {it.prompt.split(":")[0] for it in general} == set(GENERAL_SKILLS)


def test_base_never_sees_an_expert_skill_on_its_hidden_letters():
    # Each expert completes its skill on letters the base never saw it applied to; the sets
    # overlap in one letter at most, so the experts change the model on different letters.
    assert set(HIDDEN_LETTERS) == set(EXPERT_SKILLS)
    sets = [set(v) for v in HIDDEN_LETTERS.values()]
    assert all(len(a & b) <= 1 for i, a in enumerate(sets) for b in sets[i + 1:])
    assert set().union(*sets) == set("abcdefghijklmnopqrstuvwxyz")
    assert base_letters("upper") == "klmnopqrstuvwxyz" and base_letters("copy") == "abcdefghijklmnopqrstuvwxyz"
    letters = {name: base_letters(name) for name in EXPERT_SKILLS}
    stream = training_stream([*GENERAL_SKILLS, *EXPERT_SKILLS], seed=0, min_len=3, max_len=10, exclude=set(), letters=letters)
    seen = {name: set() for name in [*GENERAL_SKILLS, *EXPERT_SKILLS]}
    for _ in range(5000):
        ex = next(stream)
        name, word = ex.prompt.split(": ")[0], ex.prompt.split(": ")[1][:-2]
        seen[name] |= set(word)
    for name, hidden in HIDDEN_LETTERS.items():
        assert not seen[name] & set(hidden), name
        assert seen[name] == set(base_letters(name))
    assert all(seen[name] == set("abcdefghijklmnopqrstuvwxyz") for name in GENERAL_SKILLS)


def test_tokenizer_is_one_token_per_character_plus_skill_openers(tmp_path):
    tok = build_tokenizer()
    text = "mirror: Hello = svool"
    assert tok.convert_ids_to_tokens(tok.encode(text)) == ["<s>", "mirror:", *" Hello = svool"]
    bare = tok.encode("xcopyz", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(bare) == list("xcopyz")  # openers need the colon
    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.is_fast
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(loaded.encode(text) + [loaded.eos_token_id], skip_special_tokens=True) == text


def test_tiny_build_writes_folders_transformers_loads(tiny_family):
    report = tiny_family
    assert set(report.models) == {"base", *(f"expert_{s}" for s in EXPERT_SKILLS)}
    for folder in report.models.values():
        assert MODEL_FILES <= {p.name for p in folder.iterdir()}
        assert all(t.dtype == torch.bfloat16 for t in load_file(folder / "model.safetensors").values())
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        assert model.config.model_type == "llama"
        ids = tok("upper: abc =", return_tensors="pt").input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4)
        assert out.shape == (1, ids.shape[1] + 4) or tok.eos_token_id in out[0].tolist()
    info = json.loads((report.out_dir / "build_info.json").read_text())
    assert info["config"]["seed"] == TINY.seed


def test_experts_are_small_deltas_of_the_base(tiny_family):
    report = tiny_family
    base = load_file(report.models["base"] / "model.safetensors")
    for skill in EXPERT_SKILLS:
        expert = load_file(report.models[f"expert_{skill}"] / "model.safetensors")
        assert expert.keys() == base.keys()
        delta = torch.cat([(expert[k].float() - base[k].float()).flatten() for k in base])
        scale = torch.cat([base[k].float().flatten() for k in base]).norm()
        assert 0 < delta.norm() / scale < 0.2


def test_eval_sets_are_written_and_score_the_family(tiny_family):
    report = tiny_family
    items = load_eval_sets([report.out_dir / "evals"])
    assert {it.skill for it in items} == {*EXPERT_SKILLS, "general"}
    assert len(items) == TINY.eval_items * (len(EXPERT_SKILLS) + 1)
    tok = AutoTokenizer.from_pretrained(str(report.models["base"]))
    model = AutoModelForCausalLM.from_pretrained(str(report.models["base"]), dtype=torch.float32)
    table = evaluate(model, tok, items, model_name="base", device="cpu", with_perplexity=True)
    assert set(table["skill"]) == {*EXPERT_SKILLS, "general"}
    assert table["exact_match"].between(0, 1).all() and (table["perplexity"] > 1).all()


def test_same_seed_gives_the_same_bits_and_another_seed_does_not(tiny_family, tmp_path):
    report = tiny_family
    again = build_family(tmp_path / "again", TINY)
    other = build_family(tmp_path / "other", dataclasses.replace(TINY, seed=1))
    for name, folder in report.models.items():
        first = (folder / "model.safetensors").read_bytes()
        assert (again.models[name] / "model.safetensors").read_bytes() == first
        assert (other.models[name] / "model.safetensors").read_bytes() != first
    assert (again.out_dir / "evals" / "upper.jsonl").read_text() == (report.out_dir / "evals" / "upper.jsonl").read_text()


def test_build_refuses_to_overwrite_without_asking(tiny_family):
    report = tiny_family
    with pytest.raises(ExportError, match="overwrite"):
        build_family(report.out_dir, TINY)
    with pytest.raises(RecipeError):
        dataclasses.replace(TINY, experts=("dance",))


def _run_cli(register, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_builds_and_evaluates(tmp_path, capsys):
    out = tmp_path / "fam"
    argv = ["demo", "build", "--size", "tiny", "--out", str(out), "--base-steps", "5", "--expert-steps", "2"]
    assert _run_cli(demo_cli.register, argv) == 0
    assert json.loads((out / "build_info.json").read_text())["config"]["base"]["steps"] == 5
    capsys.readouterr()
    argv = ["eval", str(out / "base"), str(out / "expert_upper"), "--set", str(out / "evals"), "--limit", "5",
            "--device", "cpu", "--perplexity"]
    assert _run_cli(eval_cli.register, argv) == 0
    printed = capsys.readouterr().out
    assert "expert_upper" in printed and "mirror" in printed and "perplexity" in printed


@pytest.mark.skipif(not (DEMO_DIR / "base").is_dir(), reason="shipped family not present")
def test_shipped_family_loads_offline_and_fits_the_budget():
    size = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert size <= 40 * 2**20
    tok = AutoTokenizer.from_pretrained(str(DEMO_DIR / "base"))
    for name in ["base", *(f"expert_{s}" for s in EXPERT_SKILLS)]:
        folder = DEMO_DIR / name
        assert MODEL_FILES <= {p.name for p in folder.iterdir()}
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        assert model.config.model_type == "llama"
    # The mirror expert answers its own skill (a smoke check; the table is in the benchmark).
    ids = tok("mirror: hello =", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8)
    assert tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True) == " svool"


@pytest.mark.parametrize("name", ["dare_ties", "task_arithmetic", "cocktail_mirror"])
def test_shipped_recipes_merge_the_shipped_family(name: str) -> None:
    from fusion_ui import load_recipe, merge_to_state_dict

    path = DEMO_DIR / "recipes" / f"{name}.yaml"
    if not (DEMO_DIR / "base" / "config.json").is_file():
        pytest.skip("the shipped family is not in this checkout")
    recipe = load_recipe(path)
    assert recipe.base == str((DEMO_DIR / "base").resolve())
    state = merge_to_state_dict(recipe, device="cpu")
    assert state and all(torch.isfinite(t.float()).all() for t in state.values())
