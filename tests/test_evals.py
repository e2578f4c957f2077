"""fusion_ui.evals: scoring on hand-made cases, generation against stubs and unbatched runs,
answer-only perplexity against a hand computation."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fusion_ui.demo.tokenizer import build_tokenizer
from fusion_ui.errors import DeviceError
from fusion_ui.evals import (
    EvalItem,
    EvalSetError,
    answer_nll,
    contains,
    evaluate,
    exact_match,
    greedy_generate,
    load_eval_set,
    load_eval_sets,
    perplexity,
    predict,
    resolve_device,
    score_table,
)
from fusion_ui.evals.perplexity import continuation, encode_pair

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


class ScriptedLM(nn.Module):
    """A stub causal LM that answers each known prompt with a scripted string, then EOS.

    It returns no KV cache, so it also exercises the recompute path of the generation loop.
    """

    def __init__(self, tokenizer, script: dict[str, str]) -> None:
        super().__init__()
        self.tok = tokenizer
        self.script = script
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, **_: object):
        self.calls += 1
        vocab = len(self.tok)
        logits = torch.zeros(*input_ids.shape, vocab)
        for i, row in enumerate(input_ids):
            ids = row[attention_mask[i].bool()].tolist()
            text = self.tok.decode(ids, skip_special_tokens=True)
            prompt = next(p for p in self.script if text.startswith(p))
            target = self.tok.encode(" " + self.script[prompt], add_special_tokens=False) + [self.tok.eos_token_id]
            done = len(ids) - len(self.tok.encode(prompt))
            nxt = target[done] if done < len(target) else self.tok.pad_token_id
            logits[i, -1, nxt] = 1.0
        return SimpleNamespace(logits=logits)


def test_exact_match_and_contains_on_hand_cases():
    assert exact_match(" CAT ", "CAT")
    assert not exact_match("CATS", "CAT")
    assert not exact_match("cat", "CAT")  # case is part of some skills
    assert contains("the answer is CAT.", "CAT")
    assert not contains("C A T", "CAT")


def test_load_jsonl_and_csv(tmp_path):
    rows = [{"prompt": "upper: ab =", "answer": "AB", "skill": "upper"}, {"prompt": "x", "answer": "y", "skill": "s"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    pd.DataFrame({"prompt": ["2+2=", "1+1="], "answer": ["4", "2"]}).to_csv(tmp_path / "math.csv", index=False)
    items = load_eval_set(tmp_path / "a.jsonl")
    assert items == [EvalItem("upper: ab =", "AB", "upper"), EvalItem("x", "y", "s")]
    csv_items = load_eval_set(tmp_path / "math.csv")
    assert csv_items[0] == EvalItem("2+2=", "4", "math")  # skill defaults to the file stem
    assert len(load_eval_sets([tmp_path])) == 4


def test_bad_eval_sets_raise_clear_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(EvalSetError, match="prompt"):
        load_eval_set(tmp_path / "bad.jsonl")
    with pytest.raises(EvalSetError, match="does not exist"):
        load_eval_set(tmp_path / "missing.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(EvalSetError, match="jsonl or .csv"):
        load_eval_set(tmp_path / "x.txt")


def test_scripted_model_scores_are_exact(tok):
    items = [
        EvalItem("upper: cat =", "CAT", "upper"),
        EvalItem("upper: dog =", "DOG", "upper"),
        EvalItem("shift: ab =", "bc", "shift"),
        EvalItem("shift: abcdef =", "bcdefg", "shift"),
    ]
    # Right, wrong (case), right, and a longer answer that contains the expected one.
    script = {"upper: cat =": "CAT", "upper: dog =": "dog", "shift: ab =": "bc", "shift: abcdef =": "bcdefg h"}
    model = ScriptedLM(tok, script)
    frame = predict(model, tok, items, max_new_tokens=12, batch_size=3, device="cpu")
    assert frame["prediction"].tolist() == ["CAT", "dog", "bc", "bcdefg h"]
    assert frame["exact_match"].tolist() == [True, False, True, False]
    assert frame["contains"].tolist() == [True, False, True, True]
    table = evaluate(model, tok, items, model_name="stub", max_new_tokens=12, device="cpu")
    assert table.set_index("skill")["exact_match"].to_dict() == {"upper": 0.5, "shift": 0.5}
    assert score_table(table).loc["stub", "shift"] == 0.5


def test_generation_stops_when_every_row_is_done(tok):
    model = ScriptedLM(tok, {"copy: a =": "a"})
    assert greedy_generate(model, tok, ["copy: a ="], max_new_tokens=50, device="cpu") == [" a"]
    assert model.calls == 3  # " ", "a", EOS


def _tiny_llama(tok) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg).eval()


def _tiny_gpt2(tok) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("make", [_tiny_llama, _tiny_gpt2], ids=["llama", "gpt2"])
def test_batched_left_padded_generation_matches_unbatched(tok, make):
    """Padding, position ids and the KV cache must not change what a real model generates."""
    model = make(tok)
    prompts = ["upper: a =", "mirror: abcdefghij =", "copy: xyz ="]
    batched = greedy_generate(model, tok, prompts, max_new_tokens=8, batch_size=3, device="cpu")
    single = [greedy_generate(model, tok, [p], max_new_tokens=8, device="cpu")[0] for p in prompts]
    assert batched == single
    # And the unpadded run agrees with transformers' own greedy decoding.
    ids = torch.tensor([tok.encode(prompts[1])])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    ref_ids = ref[0, ids.shape[1]:].tolist()
    if tok.eos_token_id in ref_ids:
        ref_ids = ref_ids[: ref_ids.index(tok.eos_token_id)]
    assert single[1] == tok.decode(ref_ids, skip_special_tokens=True).split("\n")[0]


def test_answer_perplexity_matches_hand_computation(tok):
    model = _tiny_llama(tok)
    items = [EvalItem("upper: ab =", "AB", "upper"), EvalItem("copy: abcdefg =", "abcdefg", "general")]
    got = answer_nll(model, tok, items, batch_size=2, device="cpu")
    for item, (nll, count) in zip(items, got, strict=True):
        ids, n_prompt = encode_pair(tok, item.prompt, item.answer)
        assert count == len(ids) - n_prompt == len(" " + item.answer)  # one token per character
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        hand = 0.0
        for pos in range(n_prompt, len(ids)):
            hand -= math.log(torch.softmax(logits[pos - 1].double(), -1)[ids[pos]].item())
        assert nll == pytest.approx(hand, rel=1e-4)
    total = sum(n for n, _ in got) / sum(k for _, k in got)
    assert perplexity(got) == pytest.approx(math.exp(total))


def test_continuation_adds_one_space_only_when_needed():
    assert continuation("upper: ab =", "AB") == " AB"
    assert continuation("Q: hi\nA:\n", "yes") == "yes"
    assert continuation("x =", " y") == " y"


def test_device_auto_and_errors():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA"):
            resolve_device("cuda")
