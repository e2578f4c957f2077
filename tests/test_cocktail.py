"""LM-Cocktail's weights (fusion_ui.tune.cocktail): losses against a hand computation, the
softmax and the base floor on worked numbers, the edge cases, one model in memory at a time,
progress and cancel, and the recipe / mergekit / model card record of where weights came from."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factory import char_tokenizer, fine_tune_of, save, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    T5Config,
)

import fusion_ui.evals.run as evals_run
from fusion_ui.card import weights_from_section
from fusion_ui.errors import CancelledError, IncompatibleModelsError, RecipeError
from fusion_ui.evals import EvalItem
from fusion_ui.evals.perplexity import encode_scored
from fusion_ui.mergekit_compat import recipe_to_mergekit
from fusion_ui.recipe import WeightsFrom, load_recipe, recipe_from_dict
from fusion_ui.tune import (
    CocktailError,
    CocktailResult,
    UnsupportedModelError,
    cocktail_recipe,
    cocktail_weights,
    examples_sha256,
    softmax_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# Different lengths (padding in a batch of 8), all in the char tokenizer's alphabet.
EXAMPLES = [
    EvalItem("copy: abc =", "abc", "copy"),
    EvalItem("rev: hello =", "olleh", "rev"),
    EvalItem("x =", "1", "num"),
    EvalItem("add: 12+34 =", "46", "num"),
    EvalItem("copy: the quick brown fox =", "the quick brown fox", "copy"),
]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny float32 Llamas sharing factory's char tokenizer (no pad token; EOS, no BOS): a base,
    two fine-tunes far enough from it to score differently, and a GPT-2 pair (absolute positions)."""
    root = tmp_path_factory.mktemp("cocktail")
    base = tiny_model("llama", seed=0)
    paths = {"base": save(base, root / "base")}
    paths["ft_a"] = save(fine_tune_of(base, seed=1, sigma=0.05), root / "ft_a")
    paths["ft_b"] = save(fine_tune_of(base, seed=2, sigma=0.05), root / "ft_b")
    g = tiny_model("gpt2", seed=0)
    paths["gpt2_base"] = save(g, root / "gpt2_base")
    paths["gpt2_ft"] = save(fine_tune_of(g, seed=3, sigma=0.05), root / "gpt2_ft")
    return {k: Path(v) for k, v in paths.items()}


def refs(family: dict[str, Path], *names: str) -> list[str]:
    return [str(family[n]) for n in names]


@functools.cache
def load_alone(folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@torch.no_grad()
def hand_nll(folder: Path, prompt_ids: list[int], scored_ids: list[int]) -> float:
    """-sum log p(scored token | everything before it), one example alone, no padding."""
    model = load_alone(folder)
    ids = prompt_ids + scored_ids
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)  # (T, V)
    return -sum(logp[pos - 1, ids[pos]].item() for pos in range(len(prompt_ids), len(ids)))


def hand_ids(prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """The prompt's ids, and the scored ids: ' ' + answer, then EOS (written out, not encode_pair)."""
    tok = char_tokenizer()
    assert prompt.endswith("=") and not answer.startswith(" ")
    scored = tok.encode(" " + answer, add_special_tokens=False) + [tok.eos_token_id]
    return tok.encode(prompt), scored


# -- 1. the loss: answer tokens and EOS only, padding masked, pooled over tokens ----------------


@pytest.mark.parametrize("pair", [("base", "ft_a"), ("gpt2_base", "gpt2_ft")])
def test_losses_match_a_hand_computed_answer_only_cross_entropy(
    family: dict[str, Path], pair: tuple[str, str]
) -> None:
    tok = char_tokenizer()
    # no pad token: padding is masked, not skipped
    assert tok.pad_token_id is None and tok.bos_token_id is None
    cands = refs(family, *pair)
    # one batch of 8: the shorter examples are padded
    result = cocktail_weights(cands, EXAMPLES, base=cands[0], device="cpu", batch_size=8)
    for k, name in enumerate(pair):
        nlls, counts = [], []
        for ex in EXAMPLES:
            prompt_ids, scored = hand_ids(ex.prompt, ex.answer)
            nlls.append(hand_nll(family[name], prompt_ids, scored))
            counts.append(len(scored))
        assert counts == [len(ex.answer) + 2 for ex in EXAMPLES]  # space, one per character, EOS
        assert result.example_losses[k] == pytest.approx(
            [n / c for n, c in zip(nlls, counts, strict=True)], rel=1e-5
        )
        # pooled over tokens, not a mean of the examples' means
        assert result.losses[k] == pytest.approx(sum(nlls) / sum(counts), rel=1e-5)
        mean_of_means = sum(n / c for n, c in zip(nlls, counts, strict=True)) / len(nlls)
        assert result.losses[k] != pytest.approx(mean_of_means, rel=1e-4)
    # the models do score differently
    assert result.losses[0] != pytest.approx(result.losses[1], rel=1e-3)
    assert result.weights == pytest.approx(softmax_weights(result.losses, 5.0))
    assert result.warnings == ()
    assert result.n_examples == 5 and result.examples_sha256 == examples_sha256(EXAMPLES)


def test_losses_do_not_depend_on_the_batch_size(family: dict[str, Path]) -> None:
    cands = refs(family, "base", "ft_a")
    one = cocktail_weights(cands, EXAMPLES, device="cpu", batch_size=1)
    eight = cocktail_weights(cands, EXAMPLES, device="cpu", batch_size=8)
    assert eight.losses == pytest.approx(one.losses, rel=1e-5)
    for a, b in zip(eight.example_losses, one.example_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert eight.weights == pytest.approx(one.weights, rel=1e-6)


# -- 2. softmax(-loss / T) and the base floor, on worked numbers --------------------------------


def test_softmax_weights_worked_examples() -> None:
    # exp(-1/2) / (exp(-1/2) + exp(-3/2)) = 1 / (1 + e^-1) = 0.731059
    assert softmax_weights([1.0, 3.0], 2.0) == pytest.approx([0.731059, 0.268941], abs=1e-6)
    # the docstring's floor: 0.5 on candidate 1 (softmax gave it 0.269) -> [0.5, 0.5]
    assert softmax_weights([1.0, 3.0], 2.0, base_index=1, base_floor=0.5) == pytest.approx(
        [0.5, 0.5]
    )
    # three candidates, T = 1: e^-1, e^-2, e^-3 over their sum = 0.665241, 0.244728, 0.090031;
    # floor 0.3 on the last: the others share 0.7 as 0.665241 : 0.244728 -> 0.511741, 0.188259
    assert softmax_weights([1.0, 2.0, 3.0], 1.0) == pytest.approx(
        [0.665241, 0.244728, 0.090031], abs=1e-6
    )
    floored = softmax_weights([1.0, 2.0, 3.0], 1.0, base_index=2, base_floor=0.3)
    assert floored == pytest.approx([0.511741, 0.188259, 0.3], abs=1e-6)
    assert math.fsum(floored) == pytest.approx(1.0, abs=1e-12)
    # a base already above its floor keeps its weight: nothing changes
    assert softmax_weights([1.0, 3.0], 2.0, base_index=0, base_floor=0.5) == pytest.approx(
        [0.731059, 0.268941], abs=1e-6
    )
    # a floor of 1 gives the base everything
    assert softmax_weights([1.0, 3.0], 2.0, base_index=1, base_floor=1.0) == pytest.approx(
        [0.0, 1.0]
    )
    # identical losses: equal weights, whatever T
    for t in (0.1, 5.0, 1e3):
        assert softmax_weights([2.5, 2.5, 2.5, 2.5], t) == pytest.approx([0.25] * 4)
    # a lower temperature is sharper
    assert (
        softmax_weights([1.0, 3.0], 0.5)[0]
        > softmax_weights([1.0, 3.0], 2.0)[0]
        > softmax_weights([1.0, 3.0], 50.0)[0]
    )
    # huge losses never overflow exp(): shifted by the smallest
    assert softmax_weights([1e6, 0.0], 1.0) == [0.0, 1.0]
    assert softmax_weights([1e6 + 1, 1e6 + 3], 2.0) == pytest.approx([0.731059, 0.268941], abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "temperature must be a number above 0"),
        ({"temperature": -1.0}, "temperature must be a number above 0"),
        ({"temperature": float("nan")}, "temperature must be a number above 0"),
        ({"temperature": float("inf")}, "temperature must be a number above 0"),
        ({"base_index": 0, "base_floor": -0.1}, "base floor must be between 0 and 1"),
        ({"base_index": 0, "base_floor": 1.5}, "base floor must be between 0 and 1"),
        ({"base_floor": 0.2}, "a base floor needs a base"),
        ({"base_index": 2}, "base index 2 is not one of the 2 candidates"),
        ({"losses": [1.0, float("nan")]}, "loss nan of candidate 1 is not finite"),
        ({"losses": []}, "no losses to weight"),
    ],
)
def test_softmax_weights_refuses_bad_options(kwargs: dict, message: str) -> None:
    args = {"losses": [1.0, 3.0], "temperature": 2.0, **kwargs}
    with pytest.raises(CocktailError, match=re.escape(message)):
        softmax_weights(args.pop("losses"), args.pop("temperature"), **args)


def test_bad_temperature_or_floor_fails_before_any_model_is_loaded(family, monkeypatch) -> None:
    loads = count_loads(monkeypatch)
    cands = refs(family, "base", "ft_a")
    with pytest.raises(CocktailError, match="temperature must be a number above 0"):
        cocktail_weights(cands, EXAMPLES, temperature=0, device="cpu")
    with pytest.raises(CocktailError, match="base floor must be between 0 and 1"):
        cocktail_weights(cands, EXAMPLES, base=cands[0], base_floor=2, device="cpu")
    with pytest.raises(CocktailError, match="batch size must be a whole number"):
        cocktail_weights(cands, EXAMPLES, batch_size=0, device="cpu")
    assert loads == []


def test_reweight_needs_no_model_run(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cands = refs(family, "base", "ft_a", "ft_b")
    result = cocktail_weights(cands, EXAMPLES[:2], base=cands[0], device="cpu")
    loads = count_loads(monkeypatch)
    sharp = result.reweight(0.01, base_floor=0.4)
    assert loads == []
    assert sharp.losses == result.losses and sharp.temperature == 0.01 and sharp.base_floor == 0.4
    assert sharp.weights == pytest.approx(
        softmax_weights(result.losses, 0.01, base_index=0, base_floor=0.4)
    )
    assert sharp.weights[0] >= 0.4 and math.fsum(sharp.weights) == pytest.approx(1.0)
    assert result.reweight(0.01).base_floor == 0.0  # None keeps the floor
    table = sharp.table()
    assert list(table.columns) == ["label", "model", "loss", "weight"]
    assert table["label"].tolist() == ["base", "ft_a", "ft_b"] and table["weight"].tolist() == list(
        sharp.weights
    )


# -- 3. edge cases -------------------------------------------------------------------------------


def test_one_example_is_enough(family: dict[str, Path]) -> None:
    cands = refs(family, "base", "ft_a")
    result = cocktail_weights(cands, EXAMPLES[:1], device="cpu")
    prompt_ids, scored = hand_ids(EXAMPLES[0].prompt, EXAMPLES[0].answer)
    for k, name in enumerate(("base", "ft_a")):
        assert result.losses[k] == pytest.approx(
            hand_nll(family[name], prompt_ids, scored) / len(scored), rel=1e-5
        )
        assert result.example_losses[k] == (result.losses[k],)
    assert result.n_examples == 1


def test_no_examples_is_an_error(family: dict[str, Path]) -> None:
    with pytest.raises(CocktailError, match="no examples: LM-Cocktail weights need a few examples"):
        cocktail_weights(refs(family, "base", "ft_a"), [], device="cpu")
    with pytest.raises(CocktailError, match="example 1 is not a prompt/answer pair"):
        cocktail_weights(refs(family, "base", "ft_a"), [("a", "b")], device="cpu")  # type: ignore[list-item]


def test_an_example_longer_than_the_context_is_cut_with_a_warning(family: dict[str, Path]) -> None:
    # 64 positions. Example 2: an 88-token prompt before " xyz" + EOS (5 scored tokens): it keeps
    # the prompt's last 59 tokens. Example 3: a 70-character answer that does not fit even alone.
    long_prompt = "copy: " + "abcdefghij" * 8 + " ="
    items = [
        EXAMPLES[0],
        EvalItem(long_prompt, "xyz", "copy"),
        EvalItem("copy: ab =", "k" * 70, "copy"),
    ]
    cands = refs(family, "base", "ft_a")
    result = cocktail_weights(cands, items, device="cpu")
    assert len(result.warnings) == 2
    assert result.warnings[0] == (
        "example 2 is 93 tokens, more than the 64-token context of base: scored on the whole answer "
        "(and EOS) after the prompt's last 59 tokens; dropped 29 tokens from the prompt's start"
    )
    assert result.warnings[1].startswith(
        "example 3 is 82 tokens, more than the 64-token context of base, and its answer alone"
    )
    assert "the first 63 of 72 answer tokens" in result.warnings[1]
    prompt_ids, scored = hand_ids(long_prompt, "xyz")
    assert len(prompt_ids) == 88 and len(scored) == 5
    cut_prompt, cut_scored = hand_ids("copy: ab =", "k" * 70)
    for k, name in enumerate(("base", "ft_a")):
        # the scored tokens are the answer's (and EOS), after the end of the prompt
        assert result.example_losses[k][1] == pytest.approx(
            hand_nll(family[name], prompt_ids[-59:], scored) / 5, rel=1e-5
        )
        assert result.example_losses[k][2] == pytest.approx(
            hand_nll(family[name], cut_prompt[-1:], cut_scored[:63]) / 63, rel=1e-5
        )


def test_many_cut_examples_are_counted_not_listed(family: dict[str, Path]) -> None:
    items = [EvalItem("copy: " + "ab" * (40 + i) + " =", "ab", "copy") for i in range(7)]
    result = cocktail_weights(refs(family, "base", "ft_a"), items, device="cpu")
    assert [w.split(" is ")[0] for w in result.warnings[:5]] == [
        f"example {k}" for k in range(1, 6)
    ]
    assert result.warnings[5:] == ("2 more examples were cut the same way",)


def test_a_cut_example_keeps_bos_and_scores_the_answer_on_the_demo_models() -> None:
    from fusion_ui.demo import DEMO_DIR
    from fusion_ui.demo.tokenizer import build_tokenizer

    tok = build_tokenizer()  # the demo's: BOS <s>, EOS </s>, a pad token; 64 positions
    cands = [str(DEMO_DIR / "base"), str(DEMO_DIR / "forgetful" / "expert_upper")]
    prompt = "upper: " + "abcdefgh" * 10 + " ="
    result = cocktail_weights(cands, [EvalItem(prompt, "xyz", "upper")], device="cpu")
    head = tok.encode(prompt)
    scored = tok.encode(" xyz", add_special_tokens=False) + [tok.eos_token_id]
    assert head[0] == tok.bos_token_id and len(scored) == 5
    room = 64 - 1 - len(scored)  # beside BOS and the whole answer
    assert result.warnings == (
        f"example 1 is {len(head) + 5} tokens, more than the 64-token context of base: scored on "
        f"the whole answer (and EOS) after BOS and the prompt's last {room} tokens; dropped "
        f"{len(head) - 1 - room} tokens from the prompt's start",
    )
    # the answer and EOS, scored after BOS and the prompt's end
    for k, folder in enumerate(cands):
        hand = hand_nll(Path(folder), head[:1] + head[-room:], scored) / len(scored)
        assert result.example_losses[k][0] == pytest.approx(hand, rel=1e-5)


def test_a_tokenizer_without_eos_or_pad_scores_the_answer_only(tmp_path: Path) -> None:
    raw = char_tokenizer().backend_tokenizer
    no_eos = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    assert no_eos.eos_token_id is None and no_eos.pad_token_id is None
    folders = []
    for seed in (0, 1):
        model = tiny_model("llama", seed=seed)
        model.config.eos_token_id = None
        model.save_pretrained(tmp_path / f"m{seed}")
        no_eos.save_pretrained(tmp_path / f"m{seed}")
        folders.append(tmp_path / f"m{seed}")
    result = cocktail_weights([str(f) for f in folders], EXAMPLES[:3], device="cpu")
    assert result.warnings == (
        "the tokenizer has no EOS token: only the answer tokens are scored, not the end of the answer",
    )
    for k, folder in enumerate(folders):
        nlls, counts = [], []
        for ex in EXAMPLES[:3]:
            scored = no_eos.encode(" " + ex.answer, add_special_tokens=False)
            nlls.append(hand_nll(folder, no_eos.encode(ex.prompt), scored))
            counts.append(len(scored))
        assert result.losses[k] == pytest.approx(sum(nlls) / sum(counts), rel=1e-5)
    with pytest.raises(CocktailError, match="example 2 has nothing to score: its answer is empty"):
        cocktail_weights(
            [str(f) for f in folders], [EXAMPLES[0], EvalItem("x =", "", "num")], device="cpu"
        )


def test_encode_scored_keeps_bos_when_cutting() -> None:
    from fusion_ui.demo.tokenizer import build_tokenizer

    tok = build_tokenizer()  # the demo's: BOS <s>, EOS </s>, a pad token
    full = encode_scored(tok, "copy: " + "abcdefgh" * 10 + " =", "abc", with_eos=True)
    cut = encode_scored(tok, "copy: " + "abcdefgh" * 10 + " =", "abc", with_eos=True, max_length=20)
    tail = full.ids[full.n_prompt :]
    assert full.ids[0] == tok.bos_token_id and tail[-1] == tok.eos_token_id and not full.truncated
    assert len(cut.ids) == 20 and cut.ids[0] == tok.bos_token_id
    assert cut.ids[cut.n_prompt :] == tail  # the whole answer and EOS are still scored
    # after BOS, the end of the prompt
    kept = cut.n_prompt - 1
    assert cut.ids[1 : cut.n_prompt] == full.ids[full.n_prompt - kept : full.n_prompt]
    assert cut.dropped_prompt == full.n_prompt - cut.n_prompt and cut.dropped_answer == 0


def test_candidates_with_another_vocabulary_are_refused_by_name(
    family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    cfg.save_pretrained(tmp_path / "wide_vocab")  # a config is all it takes: no weights read
    char_tokenizer().save_pretrained(tmp_path / "wide_vocab")
    loads = count_loads(monkeypatch)
    with pytest.raises(
        IncompatibleModelsError,
        match=r"wide_vocab \(.*wide_vocab\) has a vocabulary of 50 tokens, base of 48",
    ):
        cocktail_weights(
            [*refs(family, "base"), str(tmp_path / "wide_vocab")], EXAMPLES, device="cpu"
        )
    # same size, another tokenizer (ids shuffled): the same tokens would not be scored
    other = tmp_path / "shuffled_tok"
    other.mkdir()
    for f in family["ft_a"].iterdir():
        if f.name.endswith((".json", ".safetensors")) and "token" not in f.name:
            (other / f.name).write_bytes(f.read_bytes())
    vocab = {c: i for i, c in enumerate(reversed("abcdefghijklmnopqrstuvwxyz0123456789 =:+-"))}
    vocab["[UNK]"], vocab["[EOS]"] = len(vocab), len(vocab) + 1
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", eos_token="[EOS]"
    ).save_pretrained(other)
    with pytest.raises(
        IncompatibleModelsError,
        match=r"shuffled_tok \(.*\) has a different tokenizer from base .*: "
        r"the same 43 tokens with other ids \(e\.g\. ' ' is 4 in shuffled_tok, 36 in base\)\. "
        r".*leave shuffled_tok out of the candidates",
    ):
        cocktail_weights([*refs(family, "base"), str(other)], EXAMPLES, device="cpu")
    assert loads == []  # both found from configs and tokenizers, before any weights


def test_a_candidate_with_nan_weights_is_named(family: dict[str, Path], tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(family["ft_a"], dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")
    save(model, tmp_path / "broken_ft")
    with pytest.raises(
        CocktailError,
        match=r"broken_ft \(.*broken_ft\) gives NaN loss on example 1: .*"
        "leave it out of the candidates",
    ):
        cocktail_weights(
            [*refs(family, "base"), str(tmp_path / "broken_ft")], EXAMPLES, device="cpu"
        )


def test_encoders_are_unsupported_with_a_clear_message(
    family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bert = BertConfig(
        vocab_size=48,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        architectures=["BertModel"],
    )
    bert.save_pretrained(tmp_path / "bge_small")
    T5Config(vocab_size=48, d_model=32, d_ff=64, num_layers=1, num_heads=2).save_pretrained(
        tmp_path / "t5_tiny"
    )
    loads = count_loads(monkeypatch)
    with pytest.raises(UnsupportedModelError) as err:
        cocktail_weights(
            [*refs(family, "base"), str(tmp_path / "bge_small")], EXAMPLES, device="cpu"
        )
    msg = str(err.value)
    assert msg.startswith("bge_small (") and "is an encoder (BertModel)" in msg
    assert "causal LMs (decoders such as Llama or GPT-2) only" in msg and "not supported yet" in msg
    with pytest.raises(
        UnsupportedModelError, match=r"t5_tiny .* is an encoder-decoder model \(t5\)"
    ):
        cocktail_weights([str(tmp_path / "t5_tiny"), *refs(family, "base")], EXAMPLES, device="cpu")
    assert isinstance(err.value, CocktailError) and loads == []


def test_candidate_list_errors(family: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    loads = count_loads(monkeypatch)
    base, ft = refs(family, "base", "ft_a")
    with pytest.raises(
        CocktailError, match=r"is listed twice among the candidates.*; list each model once"
    ):
        cocktail_weights([base, ft, base], EXAMPLES, device="cpu")
    with pytest.raises(
        CocktailError, match=r"is listed twice among the candidates.*; list each model once"
    ):
        cocktail_weights(
            [base, ft, base + "/"], EXAMPLES, device="cpu"
        )  # one folder, two spellings
    with pytest.raises(CocktailError, match=r"the base .*ft_b is not one of the candidates"):
        cocktail_weights([base, ft], EXAMPLES, base=str(family["ft_b"]), device="cpu")
    with pytest.raises(CocktailError, match="LM-Cocktail mixes at least 2 models, got 1"):
        cocktail_weights([base], EXAMPLES, device="cpu")
    assert loads == []


# -- 4. one candidate in memory at a time; 5. progress and cancel ------------------------------


def count_loads(monkeypatch: pytest.MonkeyPatch, on_load=None) -> list[int]:
    """Wrap the loader cocktail_weights uses: each load appends how many of the models it loaded
    before are still alive (weakrefs) when the next one is asked for."""
    real = evals_run.load_causal_lm
    alive: list[weakref.ref] = []
    loads: list[int] = []

    def counting(path, **kwargs):
        loads.append(sum(r() is not None for r in alive))
        model, tok = real(path, **kwargs)
        alive.append(weakref.ref(model))
        if on_load is not None:
            on_load(len(loads))
        return model, tok

    monkeypatch.setattr(evals_run, "load_causal_lm", counting)
    counting.alive = alive  # type: ignore[attr-defined]
    return loads


def test_candidates_are_loaded_one_at_a_time(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = count_loads(monkeypatch)
    cands = refs(family, "base", "ft_a", "ft_b")
    result = cocktail_weights(cands, EXAMPLES, device="cpu", batch_size=2)
    assert loads == [0, 0, 0]  # each earlier candidate was freed before the next was loaded
    assert all(r() is None for r in evals_run.load_causal_lm.alive)  # and the last one after
    assert len(result.losses) == 3


def test_progress_is_reported_and_cancel_stops(
    family: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusion_ui.progress import CancelToken

    cands = refs(family, "base", "ft_a")
    seen = []
    cocktail_weights(cands, EXAMPLES, device="cpu", batch_size=2, progress=seen.append)
    # per candidate: its load, then 3 batches (2 + 2 + 1 examples)
    assert [(p.done, p.total) for p in seen] == [(i, 8) for i in range(1, 9)]
    assert [p.message for p in seen[:4]] == [
        "base: loaded",
        "base: 2/5 examples scored",
        "base: 4/5 examples scored",
        "base: 5/5 examples scored",
    ]
    assert seen[-1].fraction == 1.0

    loads = count_loads(monkeypatch)
    token = CancelToken()
    reports = []

    def cancel_on_second_model(p) -> None:
        reports.append(p)
        if p.message == "ft_a: loaded":
            token.cancel()

    with pytest.raises(CancelledError):
        cocktail_weights(
            cands,
            EXAMPLES,
            device="cpu",
            batch_size=2,
            progress=cancel_on_second_model,
            cancel=token,
        )
    # stopped at the next batch, and the model was freed on the way out
    assert len(loads) == 2 and reports[-1].message == "ft_a: 2/5 examples scored"
    assert all(r() is None for r in evals_run.load_causal_lm.alive)

    loads.clear()
    with pytest.raises(CancelledError):
        cocktail_weights(cands, EXAMPLES, device="cpu", cancel=token)  # already: nothing loads
    assert loads == []


# -- 6. the recipe, its YAML, mergekit's and the model card ------------------------------------


def made_up_result(family: dict[str, Path], **changes) -> CocktailResult:
    """A result as cocktail_weights returns it, without running models."""
    losses = (2.0, 0.5, 1.25)
    fields = dict(
        candidates=tuple(refs(family, "base", "ft_a", "ft_b")),
        labels=("base", "ft_a", "ft_b"),
        losses=losses,
        example_losses=tuple((x,) * 5 for x in losses),
        temperature=1.0,
        weights=tuple(softmax_weights(losses, 1.0)),
        examples_sha256=examples_sha256(EXAMPLES),
        n_examples=5,
        base=str(family["base"]),
        base_floor=0.0,
    )
    fields.update(changes)
    return CocktailResult(**fields)


def test_recipe_round_trip_keeps_weights_from(family: dict[str, Path], tmp_path: Path) -> None:
    result = made_up_result(family)
    recipe = cocktail_recipe(result)
    assert recipe.method == "linear" and recipe.base == str(family["base"])
    assert recipe.parameters["normalize"] is True
    assert recipe.name == "LM-Cocktail of base + ft_a + ft_b"
    # softmax([-2, -0.5, -1.25]) = e^-2, e^-0.5, e^-1.25 (0.135335, 0.606531, 0.286505) over their
    # sum 1.028371: 0.131602, 0.589798, 0.278601
    assert [e.parameters["weight"] for e in recipe.models] == pytest.approx(
        [0.131602, 0.589798, 0.278601], abs=1e-6
    )
    source = recipe.weights_from
    assert isinstance(source, WeightsFrom) and source.method == "lm_cocktail"
    assert (source.examples, source.examples_sha256, source.temperature, source.base_floor) == (
        5,
        examples_sha256(EXAMPLES),
        1.0,
        0.0,
    )
    assert [(c.label, c.loss) for c in source.candidates] == [
        ("base", 2.0),
        ("ft_a", 0.5),
        ("ft_b", 1.25),
    ]
    path = tmp_path / "cocktail.yaml"
    path.write_text(recipe.to_yaml())
    assert "weights_from:" in path.read_text()
    again = load_recipe(path)
    assert again.weights_from == recipe.weights_from
    assert again.models == recipe.models and again.base == recipe.base
    # a recipe without it writes no weights_from key
    plain = recipe_from_dict({"method": "linear", "models": [{"model": str(family["base"])}]})
    assert plain.weights_from is None and "weights_from" not in plain.to_yaml()
    assert weights_from_section(plain) == []


def test_edited_weights_and_wrong_counts(family: dict[str, Path]) -> None:
    result = made_up_result(family)
    edited = cocktail_recipe(result, weights=[0.0, 3.0, 1.0], name="mine")
    assert [e.parameters["weight"] for e in edited.models] == [0.0, 3.0, 1.0]
    assert edited.name == "mine"
    # weights_from keeps the weights as computed
    computed = [c.weight for c in edited.weights_from.candidates]
    assert computed == pytest.approx(result.weights, abs=1e-6)
    with pytest.raises(
        CocktailError, match="2 weights for 3 candidates: give one weight per candidate"
    ):
        cocktail_recipe(result, weights=[0.5, 0.5])
    with pytest.raises(CocktailError, match=r"weight -0.1 of ft_a must be a number >= 0"):
        cocktail_recipe(result, weights=[0.5, -0.1, 0.6])
    with pytest.raises(CocktailError, match=r"weight nan of ft_b must be a number >= 0"):
        cocktail_recipe(result, weights=[0.5, 0.1, float("nan")])
    with pytest.raises(CocktailError, match=r"weight True of base must be a number >= 0"):
        cocktail_recipe(result, weights=[True, 0.5, 0.5])
    # numpy's numbers are numbers: an edited table often holds them
    as_numpy = cocktail_recipe(result, weights=np.array([1, 3, 1], dtype=np.float32))
    assert [e.parameters["weight"] for e in as_numpy.models] == [1.0, 3.0, 1.0]
    assert (
        cocktail_recipe(result, weights=list(np.array([0, 2, 1]))).models[1].parameters["weight"]
        == 2.0
    )
    with pytest.raises(CocktailError, match="the weights sum to 0"):
        cocktail_recipe(result, weights=[0, 0, 0])
    # weights_from records one candidate per model: a different count is a validation error
    data = yaml.safe_load(cocktail_recipe(result).to_yaml())
    data["models"] = data["models"][:2]
    with pytest.raises(
        RecipeError, match=r"weights_from lists 3 candidates for 2 models; .*drop weights_from"
    ):
        recipe_from_dict(data)
    recipe = cocktail_recipe(result)
    with pytest.raises(RecipeError, match="weights_from lists 3 candidates for 2 models"):
        recipe.updated(models=[e.model_dump() for e in recipe.models[:2]])
    bad = yaml.safe_load(recipe.to_yaml())
    bad["weights_from"]["candidates"][0]["loss"] = -1.0
    with pytest.raises(RecipeError, match="a loss is a finite number >= 0"):
        recipe_from_dict(bad)
    bad["weights_from"]["candidates"][0]["loss"] = 1.0
    bad["weights_from"]["examples_sha256"] = "abc"
    with pytest.raises(RecipeError, match="examples_sha256 must be a SHA-256 digest"):
        recipe_from_dict(bad)


def test_model_card_shows_the_table_and_says_when_weights_were_edited(
    family: dict[str, Path],
) -> None:
    result = made_up_result(
        family,
        base_floor=0.2,
        weights=tuple(softmax_weights((2.0, 0.5, 1.25), 1.0, base_index=0, base_floor=0.2)),
    )
    card = "\n".join(weights_from_section(cocktail_recipe(result)))
    assert "## Where the weights came from" in card
    assert "on 5 example(s) of the target task" in card and "T = 1, base floor 0.2" in card
    assert examples_sha256(EXAMPLES) in card
    # floor 0.2 on the base (softmax 0.131602): the others share 0.8 as 0.589798 : 0.278601,
    # 0.8 / 0.868398 times theirs: 0.543343, 0.256657
    assert f"| base (`{family['base']}`) | 2.0000 | 0.2000 | 0.2000 |" in card
    assert f"| ft_a (`{family['ft_a']}`) | 0.5000 | 0.5433 | 0.5433 |" in card
    assert f"| ft_b (`{family['ft_b']}`) | 1.2500 | 0.2567 | 0.2567 |" in card
    assert "edited" not in card
    scaled = "\n".join(
        weights_from_section(cocktail_recipe(result, weights=[2 * w for w in result.weights]))
    )
    assert "edited" not in scaled  # normalized: the same shares
    edited = "\n".join(weights_from_section(cocktail_recipe(result, weights=[1, 1, 2])))
    assert f"| ft_b (`{family['ft_b']}`) | 1.2500 | 0.2567 | 0.5000 |" in edited
    assert (
        "The weights were edited after they were computed: the merge used the last column."
        in edited
    )


def test_mergekit_export_carries_weights_from_as_comments(
    family: dict[str, Path], tmp_path: Path
) -> None:
    recipe = cocktail_recipe(made_up_result(family))
    text, notes = recipe_to_mergekit(recipe)
    assert text is not None
    comments = [line for line in text.splitlines() if line.startswith("# weights from: ")]
    assert comments == [
        f"# weights from: LM-Cocktail: softmax(-loss / T), T = 1, from 5 example(s), sha256 {examples_sha256(EXAMPLES)}",
        "# weights from: base: loss 2 -> weight 0.131602",
        "# weights from: ft_a: loss 0.5 -> weight 0.589798",
        "# weights from: ft_b: loss 1.25 -> weight 0.278601",
    ]
    assert any("weights_from" in n and "not read back on import" in n for n in notes)
    data = yaml.safe_load(text)  # still a mergekit config
    assert data["merge_method"] == "linear"
    assert [m["parameters"]["weight"] for m in data["models"]] == pytest.approx(
        [0.131602, 0.589798, 0.278601]
    )
    (tmp_path / "mk.yml").write_text(text)
    back = load_recipe(tmp_path / "mk.yml")
    assert back.method == "linear" and back.weights_from is None
    assert [e.parameters["weight"] for e in back.models] == pytest.approx(
        [0.131602, 0.589798, 0.278601]
    )


def test_examples_hash_is_of_prompt_and_answer_only() -> None:
    rows = [{"answer": "abc", "prompt": "copy: abc ="}]
    expected = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
    assert examples_sha256([EvalItem("copy: abc =", "abc", "copy")]) == expected
    assert examples_sha256([EvalItem("copy: abc =", "abc", "other skill")]) == expected
    assert examples_sha256([EvalItem("copy: abc =", "abd", "copy")]) != expected
    assert examples_sha256(EXAMPLES[::-1]) != examples_sha256(EXAMPLES)  # in order
