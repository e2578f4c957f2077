"""The shipped CALM demo (fusion_ui/assets/demo/calm): it loads, its bridges fit its models, its
key split holds, and a tiny build runs end to end. Mechanism, not accuracy (one cheap check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusion_ui.compose import load_composition, read_bridges_info
from fusion_ui.compose.artefact import identify
from fusion_ui.demo import DEMO_DIR
from fusion_ui.demo.calm_build import CALM_PRESETS, build_calm_demo, preset
from fusion_ui.demo.calm_tasks import (
    KV_ARITHMETIC,
    KV_SUBSTITUTION,
    NUMERIC_ARITHMETIC,
    TASKS,
    all_numeric,
    apply,
    build_calm_tokenizer,
    composition_set,
    eval_sets,
    keys_in,
    make_keys,
)
from fusion_ui.evals import greedy_generate, load_eval_set

CALM_DIR = DEMO_DIR / "calm"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shipped():
    model, tok = load_composition(CALM_DIR / "anchor", CALM_DIR / "augment", CALM_DIR / "bridges", device="cpu")
    return model, tok


def test_every_folder_is_a_complete_hf_checkpoint():
    vocabs = []
    for name in ("anchor", "augment"):
        folder = CALM_DIR / name
        for file in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / file).is_file(), f"{name}/{file}"
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.get_input_embeddings().num_embeddings >= len(tok)
        vocabs.append(tok.get_vocab())
    assert vocabs[0] == vocabs[1] == build_calm_tokenizer().get_vocab()  # one shared tokenizer
    total = sum(f.stat().st_size for f in CALM_DIR.rglob("*") if f.is_file())
    assert total < 8_000_000  # a few MB at most


def test_shipped_composition_loads_and_fingerprints_match(shipped):
    model, _ = shipped
    info = read_bridges_info(CALM_DIR / "bridges")
    assert info.anchor.weights_sha256 == identify(model.anchor).weights_sha256
    assert info.augment.weights_sha256 == identify(model.augment).weights_sha256
    assert info.anchor.hidden_size > info.augment.hidden_size  # m_B is the bigger one
    assert info.training["n_items"] == sum(1 for _ in (CALM_DIR / "train" / "composition.jsonl").open())


def test_key_split_holds_in_the_shipped_files():
    keys = json.loads((CALM_DIR / "train" / "keys.json").read_text())
    comp, held = set(keys["composition"]), set(keys["held_out"])
    assert comp and held and not comp & held
    assert comp | held == set(keys["values"])
    assert len(comp) == round(0.2 * len(keys["values"]))
    train = load_eval_set(CALM_DIR / "train" / "composition.jsonl")
    named = {k for it in train for k in keys_in(it)}
    assert named and named <= comp  # no held-out key in the composition set
    for task in (KV_SUBSTITUTION, KV_ARITHMETIC):
        items = load_eval_set(CALM_DIR / "evals" / f"{task}.jsonl")
        assert items and all(k in held for it in items for k in keys_in(it))
    for it in load_eval_set(CALM_DIR / "evals" / f"{KV_ARITHMETIC}.jsonl"):  # answers are right
        k1, op, k2 = it.prompt[:-2].split()
        assert int(it.answer) == apply(keys["values"][k1], op, keys["values"][k2])
    assert len(load_eval_set(CALM_DIR / "evals" / f"{NUMERIC_ARITHMETIC}.jsonl")) == len(all_numeric())


def test_split_is_seeded_and_disjoint():
    a, b = make_keys(100, 0.2, seed=3), make_keys(100, 0.2, seed=3)
    assert a == b and len(a.composition) == 20 and not set(a.composition) & set(a.held_out)
    sets = eval_sets(a, 30, seed=3)
    assert all(k in a.held_out for t in (KV_SUBSTITUTION, KV_ARITHMETIC) for it in sets[t] for k in keys_in(it))
    assert all(k in a.composition for it in composition_set(a, 50, seed=3) for k in keys_in(it))


def test_shipped_calm_beats_the_anchor_on_kv_arithmetic(shipped):
    model, tok = shipped
    items = load_eval_set(CALM_DIR / "evals" / f"{KV_ARITHMETIC}.jsonl")[:40]
    prompts = [it.prompt for it in items]

    def hits(m) -> int:
        preds = greedy_generate(m, tok, prompts, max_new_tokens=5, device="cpu")
        return sum(p.strip() == it.answer.strip() for p, it in zip(preds, items, strict=True))

    assert hits(model) > hits(model.anchor)


def test_tiny_build_runs_end_to_end(tmp_path: Path):
    out = tmp_path / "calm"
    report = build_calm_demo(out, CALM_PRESETS["tiny"], evaluate=True)
    for name in ("anchor", "augment", "bridges", "train"):
        assert (out / name).is_dir()
    for task in TASKS:
        assert (out / "evals" / f"{task}.jsonl").is_file()
    assert set(report.table) == {"m_A", "m_B", "CALM"}
    info = json.loads((out / "build_info.json").read_text())
    assert set(info["seconds"]) >= {"augment", "anchor", "bridges"}
    model, _ = load_composition(out / "anchor", out / "augment", out / "bridges", device="cpu")
    assert len(model.bridges) == len(preset("tiny").pairs)


def test_tiny_ablations_match_the_bridges_parameter_count(tmp_path: Path):
    from fusion_ui.demo.calm_build import build_ablations

    out = tmp_path / "calm"
    cfg = CALM_PRESETS["tiny"]
    build_calm_demo(out, cfg, evaluate=False)
    report = build_ablations(out, cfg, evaluate=False)
    assert (out / "ablations" / "random_augment" / "config.json").is_file()
    assert (out / "ablations" / "lora_anchor.safetensors").is_file()
    lora = next(v for k, v in report.items() if k.startswith("m_B + LoRA"))
    per_rank = lora["parameters"] / lora["rank"]
    assert abs(lora["parameters"] - lora["bridges_parameters"]) <= per_rank / 2  # the nearest rank
    # the random m_A's bridges have the shipped bridges' shape
    rand, _ = load_composition(out / "anchor", out / "ablations" / "random_augment",
                               out / "ablations" / "bridges_random_augment", device="cpu")
    assert sum(p.numel() for p in rand.bridges.parameters()) == lora["bridges_parameters"]
