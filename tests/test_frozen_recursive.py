"""The recursive LMs (fusion_ui.frozen): the neural connector between two passes of one frozen
tiny Llama, and the textual recursion (pass 1 writes candidates, a prompt-tuned pass 2 reads
them); their artefacts; the composition task's generator; the CLI end to end.

Tests that need an untrained connector to change anything first set its zero-initialised output
layer to random values.
"""

from __future__ import annotations

import json

import pytest
import torch
from calm_models import anchor_model
from factory import char_tokenizer, save, tiny_model

from fusion_ui.cli import main
from fusion_ui.demo.compositions import composition_item, composition_items
from fusion_ui.errors import IncompatibleModelsError, ModelSourceError, RecipeError
from fusion_ui.evals import EvalItem, evaluate, greedy_generate
from fusion_ui.evals.generate import left_pad
from fusion_ui.frozen import (
    ConnectorLM,
    RecursionConfig,
    RecursiveLM,
    artefact_kind,
    attach_connector,
    attach_recursive,
    connector_model,
    load_frozen,
    prompt_model,
    save_connector,
    save_recursive,
    second_pass_text,
    textual_model,
    train_connector,
    train_textual,
)
from fusion_ui.frozen.recursive import question_candidates, second_pass_items
from fusion_ui.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is much faster

ITEMS = [EvalItem(f"{k} =", v, "kv") for k, v in (("ab", "12"), ("cd", "34"), ("ef", "56"))]
QUICK = TrainConfig(steps=3, batch_size=4, warmup_steps=1, lr=1e-2)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def randomised(model: ConnectorLM, seed: int = 5) -> ConnectorLM:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.connector.down.weight
        w.copy_(torch.randn(w.shape, generator=g))
    return model


def batch(tok):
    ids, mask = left_pad([tok.encode("ab =1"), tok.encode("x")], tok.eos_token_id)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


# -- neural recursion ------------------------------------------------------------------------


def test_an_untrained_connector_leaves_the_lm_outputs_unchanged(tok) -> None:
    """W2 starts at zero: pass 2 reads exactly E(x), so the two-pass model is the LM alone, bit
    for bit, teacher-forced and in cached greedy decoding."""
    lm = anchor_model()
    model = connector_model(lm, hidden=16)
    ids, mask, pos = batch(tok)
    with torch.no_grad():
        two = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        one = lm(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.equal(two, one)
    prompts = ["ab =", "rev abc ="]
    assert greedy_generate(model, tok, prompts, max_new_tokens=4, device="cpu") == greedy_generate(
        lm, tok, prompts, max_new_tokens=4, device="cpu"
    )


def test_connector_outputs_are_pass_two_inputs_of_the_lm_width(tok) -> None:
    model = randomised(connector_model(anchor_model(), hidden=16))
    ids, mask, pos = batch(tok)
    states = model.lm.base_model(
        input_ids=ids, attention_mask=mask, position_ids=pos
    ).last_hidden_state
    with torch.no_grad():
        added = model.connector(states)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        by_hand = model.lm(
            inputs_embeds=model.lm.get_input_embeddings()(ids) + added,
            attention_mask=mask,
            position_ids=pos,
        ).logits
    assert added.shape == (2, ids.shape[1], 32)  # (B, T, d_LM)
    assert out.shape == (2, ids.shape[1], 48)  # (B, T, V)
    assert torch.equal(out, by_hand)
    assert (
        sum(p.numel() for p in model.connector.parameters()) == 2 * 32 + 32 * 16 + 16 + 16 * 32 + 32
    )


def test_cached_decoding_matches_one_uncached_pass(tok) -> None:
    """Both passes keep a cache; greedy generation with them gives the logits one full pass does."""
    model = randomised(connector_model(anchor_model(), hidden=16))
    ids = torch.tensor([tok.encode("ab =12")])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        head = model(input_ids=ids[:, :4], use_cache=True)
        step = model(input_ids=ids[:, 4:], attention_mask=torch.ones(1, 6, dtype=torch.long),
                     cache=head.cache, use_cache=True)  # fmt: skip
    torch.testing.assert_close(step.logits, full[:, 4:], rtol=1e-5, atol=1e-5)


def test_training_the_connector_leaves_the_frozen_lm_bit_identical(tok) -> None:
    lm = anchor_model()
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    model = connector_model(lm, hidden=16)
    start = {k: v.clone() for k, v in model.connector.state_dict().items()}
    result = train_connector(model, tok, ITEMS, config=QUICK)
    assert len(result.losses) == 3 and result.losses[-1] < result.losses[0]
    assert all(torch.equal(v, before[k]) for k, v in lm.state_dict().items())
    assert all(not p.requires_grad for p in lm.parameters())
    assert not torch.equal(model.connector.down.weight, start["down.weight"])  # it learned


def test_connector_round_trip_and_refusals(tok, tmp_path) -> None:
    lm = anchor_model()
    model = randomised(connector_model(lm, hidden=16))
    folder = save_connector(model, tmp_path / "conn", tokenizer=tok, training={"steps": 0})
    assert artefact_kind(folder) == "connector"
    info = json.loads((folder / "connector.json").read_text())
    assert info["connector"] == {"d_model": 32, "hidden": 16, "norm_eps": 1e-5}
    again = attach_connector(folder, anchor_model(), tok)  # a fresh copy of the same LM
    ids, mask, pos = batch(tok)
    with torch.no_grad():
        assert torch.equal(again(ids, mask, pos).logits, model(ids, mask, pos).logits)
    with pytest.raises(IncompatibleModelsError, match="trained for another LM"):
        attach_connector(folder, anchor_model(seed=3), tok)
    with pytest.raises(IncompatibleModelsError, match="hidden-size mismatch"):
        from calm_models import augment_model

        attach_connector(folder, augment_model(), tok)
    with pytest.raises(ModelSourceError, match="holds no prompt.json"):
        artefact_kind(tmp_path)


# -- textual recursion -------------------------------------------------------------------------


def test_second_pass_text_is_the_question_then_the_candidates() -> None:
    assert (
        second_pass_text("back: rot13: abc =", ["zoop", " nop "])
        == "back: rot13: abc = zoop - nop ="
    )
    assert second_pass_text("q =", ["a"], separator=" | ") == "q = a ="


def test_second_pass_rows_hold_pass_one_candidates_exactly(tok) -> None:
    """The rows pass 2 trains on are built from what pass 1 really writes: candidate 0 its
    greedy answer, the others seeded samples (the same seed, the same rows)."""
    lm = anchor_model()
    config = RecursionConfig(candidates=3, max_new_tokens=3, seed=4)
    rows = second_pass_items(lm, tok, ITEMS, config)
    cands = question_candidates(lm, tok, [it.prompt for it in ITEMS], config)
    greedy = greedy_generate(lm, tok, [it.prompt for it in ITEMS], max_new_tokens=3, device="cpu")
    for item, row, c, g in zip(ITEMS, rows, cands, greedy, strict=True):
        assert len(c) == 3 and c[0] == g.strip()
        assert row.prompt == f"{item.prompt} {c[0]} - {c[1]} - {c[2]} ="
        assert (row.answer, row.skill) == (item.answer, item.skill)
    assert second_pass_items(lm, tok, ITEMS, config) == rows
    assert any(c[1] != c[0] or c[2] != c[0] for c in cands)  # sampling samples


def test_recursive_lm_answers_from_the_second_pass_text(tok) -> None:
    """Greedy generation through the RecursiveLM is pass 2's greedy continuation of the text it
    builds (question + candidates), and it trains and scores through the evals."""
    lm = anchor_model()
    model = textual_model(lm, tok, recursion=RecursionConfig(candidates=2, max_new_tokens=3),
                          length=3)  # fmt: skip
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    result, rows = train_textual(model, ITEMS, config=QUICK)
    assert len(result.losses) == 3
    assert all(torch.equal(v, before[k]) for k, v in lm.state_dict().items())
    prompts = [it.prompt for it in ITEMS]
    through = greedy_generate(model, tok, prompts, max_new_tokens=3, device="cpu")
    direct = greedy_generate(model.second, tok, [r.prompt for r in rows], max_new_tokens=3,
                             device="cpu")  # fmt: skip
    assert through == direct
    table = evaluate(model, tok, ITEMS, device="cpu")
    assert list(table["skill"]) == ["kv"] and table["n"].iloc[0] == 3


def test_recursive_round_trip_with_a_first_pass_prompt(tok, tmp_path) -> None:
    lm = anchor_model()
    first = prompt_model(lm, tok, "prompt", length=2, seed=1)
    model = textual_model(first, tok, recursion=RecursionConfig(candidates=2, max_new_tokens=3),
                          length=3)  # fmt: skip
    train_textual(model, ITEMS, config=QUICK)
    folder = save_recursive(model, tmp_path / "rec")
    info = json.loads((folder / "recursive.json").read_text())
    assert info["first"]["length"] == 2 and info["second"]["length"] == 3
    assert info["recursion"]["candidates"] == 2
    again = attach_recursive(folder, anchor_model(), tok)
    assert isinstance(again, RecursiveLM)
    prompts = [it.prompt for it in ITEMS]
    assert greedy_generate(again, tok, prompts, max_new_tokens=3, device="cpu") == greedy_generate(
        model, tok, prompts, max_new_tokens=3, device="cpu"
    )
    with pytest.raises(IncompatibleModelsError, match="trained for another LM"):
        attach_recursive(folder, anchor_model(seed=2), tok)


def test_invalid_recursion_settings_and_mixed_lms_are_refused(tok) -> None:
    with pytest.raises(RecipeError, match="candidates must be >= 1"):
        RecursionConfig(candidates=0)
    with pytest.raises(RecipeError, match="temperature must be > 0"):
        RecursionConfig(temperature=0)
    second = prompt_model(anchor_model(), tok, "prompt", length=2)
    with pytest.raises(IncompatibleModelsError, match="same frozen LM"):
        RecursiveLM(anchor_model(), second, tok, RecursionConfig())


# -- the demo's composition task --------------------------------------------------------------


def test_composition_items_apply_inner_then_outer_on_held_out_words() -> None:
    item = composition_item("back", "rot13", "abc")
    assert (item.prompt, item.answer, item.skill) == ("back: rot13: abc =", "mno", "back.rot13")
    test = composition_items("back", "rot13", 20, seed=1)
    train = composition_items(
        "back", "rot13", 50, seed=0, exclude=[t.prompt.split()[2] for t in test]
    )
    assert not {t.prompt for t in test} & {t.prompt for t in train}
    assert composition_items("back", "rot13", 20, seed=1) == test


# -- the CLI end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("recursive_cli")
    data = root / "kv.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": it.prompt, "answer": it.answer}) + "\n" for it in ITEMS)
    )
    return {"lm": str(save(anchor_model(), root / "lm")), "other": str(save(tiny_model("llama", 9), root / "other")),
            "data": str(data)}  # fmt: skip


def test_cli_train_connector_then_eval_and_generate(cli_files, tmp_path, capsys) -> None:
    out = tmp_path / "conn"
    train = ["frozen", "train", "connector", cli_files["lm"], "--data", cli_files["data"], "--out", str(out),
             "--hidden", "8", "--steps", "3", "--batch-size", "4", "--warmup", "1", "--device", "cpu"]  # fmt: skip
    assert main(train) == 0
    printed = capsys.readouterr().out
    assert "trained a connector of 616 parameter(s) on 3 row(s) of 1 task(s)" in printed
    info = json.loads((out / "connector.json").read_text())
    assert info["training"]["lr"] == 1e-3 and info["training"]["steps"] == 3
    ev = ["frozen", "eval", cli_files["lm"], "--prompt-dir", str(out), "--data", cli_files["data"],
          "--perplexity", "--device", "cpu"]  # fmt: skip
    assert main(ev) == 0
    table = capsys.readouterr().out
    assert "connector (2 passes)" in table and "LM alone" in table and "perplexity" in table
    gen = ["frozen", "generate", cli_files["lm"], "--prompt-dir", str(out), "--prompt", "ab =",
           "--max-new-tokens", "2", "--device", "cpu"]  # fmt: skip
    assert main(gen) == 0 and capsys.readouterr().out.startswith("ab =")
    # another LM is refused by name
    assert main([*ev[:2], cli_files["other"], *ev[3:]]) == 2
    assert "trained for another LM" in capsys.readouterr().err


def test_cli_train_recursive_then_eval(cli_files, tmp_path, capsys) -> None:
    out = tmp_path / "rec"
    train = ["frozen", "train", "recursive", cli_files["lm"], "--data", cli_files["data"], "--out", str(out),
             "--candidates", "2", "--candidate-tokens", "3", "--prompt-length", "2", "--steps", "2",
             "--batch-size", "4", "--warmup", "1", "--device", "cpu"]  # fmt: skip
    assert main(train) == 0
    assert "trained a textual recursion (pass 2's prompt of 2 vector(s))" in capsys.readouterr().out
    assert json.loads((out / "recursive.json").read_text())["recursion"]["candidates"] == 2
    ev = ["frozen", "eval", cli_files["lm"], "--prompt-dir", str(out), "--data", cli_files["data"],
          "--no-base", "--device", "cpu"]  # fmt: skip
    assert main(ev) == 0
    assert "textual recursion (2 passes)" in capsys.readouterr().out
    model, _ = load_frozen(cli_files["lm"], out, device="cpu")
    assert isinstance(model, RecursiveLM)


def test_cli_sigterm_while_training_a_connector_writes_nothing(
    cli_files, tmp_path, capsys, monkeypatch
) -> None:
    import os
    import signal

    import fusion_ui.cli.frozen as frozen_cli
    from fusion_ui.cli.exporting import ProgressBar

    class TerminatingBar(ProgressBar):
        def __call__(self, p) -> None:
            super().__call__(p)
            if p.done == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(frozen_cli, "ProgressBar", TerminatingBar)
    args = ["frozen", "train", "connector", cli_files["lm"], "--data", cli_files["data"],
            "--out", str(tmp_path / "conn"), "--hidden", "8", "--steps", "50", "--device", "cpu"]  # fmt: skip
    assert main(args) == 143
    assert "training was cancelled, and nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_textual_recursion_refuses_teacher_forced_scoring(tok) -> None:
    from fusion_ui.errors import InputError

    model = textual_model(
        anchor_model(), tok, recursion=RecursionConfig(candidates=1, max_new_tokens=2)
    )
    with pytest.raises(InputError, match="no answer perplexity"):
        evaluate(model, tok, ITEMS, device="cpu", with_perplexity=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_the_gpu_recursive_lms_match_the_cpu_ones(tok) -> None:
    import copy

    conn = randomised(connector_model(anchor_model(), hidden=16))
    ids = torch.tensor([tok.encode("ab =12")])
    with torch.no_grad():
        cpu = conn(ids).logits
        gpu_model = copy.deepcopy(conn).to("cuda")
        gpu = gpu_model(ids.to("cuda")).logits.cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4)
    assert len(train_connector(gpu_model, tok, ITEMS, config=QUICK).losses) == 3
    rec = textual_model(
        anchor_model(), tok, recursion=RecursionConfig(candidates=2, max_new_tokens=3)
    )
    prompts = [it.prompt for it in ITEMS]
    on_cpu = greedy_generate(rec, tok, prompts, max_new_tokens=3, device="cpu")
    assert greedy_generate(rec, tok, prompts, max_new_tokens=3, device="cuda") == on_cpu
