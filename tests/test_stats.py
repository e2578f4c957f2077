"""The statistics passes against sums done by hand on a tiny Llama, the artefact they are saved
as, and the checks that refuse statistics of another model (fusion_ui.stats)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factory import char_tokenizer, save, tiny_model
from transformers import AutoModelForCausalLM

from fusion_ui.compose.artefact import identify
from fusion_ui.errors import CancelledError, ExportError, RecipeError
from fusion_ui.evals import EvalItem
from fusion_ui.io.checkpoint import Checkpoint
from fusion_ui.progress import CancelToken
from fusion_ui.stats import (
    check_statistics,
    compute_statistics,
    dataset_of,
    fisher_pass,
    gram_pass,
    identify_checkpoint,
    read_statistic,
    read_statistics_info,
)
from fusion_ui.stats.artefact import CONFIG_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

# lengths differ, so batches of 3 pad: padding must change nothing
ITEMS = [
    EvalItem("abc =", "cba", "x"),
    EvalItem("hello world =", "dlrow", "x"),
    EvalItem("k =", "k", "x"),
    EvalItem("a1+b2 =", "3", "x"),
    EvalItem("zz =", "zz yy", "x"),
]


def _alone(tok, item: EvalItem) -> tuple[torch.Tensor, int]:
    """(1, T) ids of one example and its number of prompt tokens, as the passes encode it."""
    from fusion_ui.evals.perplexity import encode_scored

    pair = encode_scored(tok, item.prompt, item.answer, with_eos=True)
    return torch.tensor([pair.ids]), pair.n_prompt


def test_the_fisher_pass_is_the_mean_of_squared_per_example_gradients() -> None:
    model, tok = tiny_model("llama", 0), char_tokenizer()
    hand = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for item in ITEMS:  # one example at a time: no padding, its own gradient
        ids, n_prompt = _alone(tok, item)
        logits = model(input_ids=ids).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")[
            n_prompt - 1 :
        ]
        model.zero_grad()
        nll.mean().backward()
        for n, p in model.named_parameters():
            hand[n] += p.grad.square()
    result = fisher_pass(model, tok, dataset_of(ITEMS), batch_size=3, device="cpu")
    assert result.examples == len(ITEMS) and set(result.tensors) == set(hand)
    for name, f in result.tensors.items():
        torch.testing.assert_close(f, hand[name] / len(ITEMS), rtol=1e-4, atol=1e-9, msg=name)
    # per batch (square of the batch's gradient) would be another statistic: not what is stored
    model.zero_grad()
    from fusion_ui.stats.data import batches, encode
    from fusion_ui.stats.fisher import example_losses

    batch = next(
        batches(encode(tok, ITEMS, with_eos=True, max_length=None), pad_id=0, batch_size=5)
    )
    example_losses(model, batch).mean().backward()
    w = "model.layers.1.mlp.down_proj.weight"
    per_batch = dict(model.named_parameters())[w].grad.square()
    assert not torch.allclose(per_batch, result.tensors[w], rtol=1e-2)


def test_the_gram_pass_is_xtx_of_every_linear_input_over_real_tokens() -> None:
    model, tok = tiny_model("llama", 0), char_tokenizer()
    names = {m: n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    hand: dict[str, torch.Tensor] = {}

    def grab(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
        key = f"{names[module]}.weight"
        hand[key] = hand.get(key, 0) + x.T @ x

    handles = [m.register_forward_pre_hook(grab) for m in names]
    tokens = 0
    with torch.no_grad():
        for item in ITEMS:
            ids, _ = _alone(tok, item)
            tokens += ids.shape[1]
            model(input_ids=ids)
    for h in handles:
        h.remove()
    result = gram_pass(model, tok, dataset_of(ITEMS), batch_size=3, device="cpu")
    assert result.tokens == tokens and result.examples == len(ITEMS)
    assert (
        result.aliases["model.layers.0.self_attn.k_proj.weight"]
        == "model.layers.0.self_attn.q_proj.weight"
    )
    assert (
        result.aliases["model.layers.2.mlp.up_proj.weight"] == "model.layers.2.mlp.gate_proj.weight"
    )
    assert (
        "model.layers.0.self_attn.o_proj.weight" in result.tensors
        and "lm_head.weight" in result.tensors
    )
    for name, g in hand.items():
        stored = result.tensors[result.aliases.get(name, name)]
        assert stored.dtype == torch.float32 and stored.shape == g.shape
        torch.testing.assert_close(stored.double(), g, rtol=1e-5, atol=1e-6, msg=name)


def test_a_checkpoint_is_identified_as_its_loaded_model(llama_family: dict[str, Path]) -> None:
    with Checkpoint.open(llama_family["ft1"]) as ckpt:  # sharded float32
        got = identify_checkpoint(ckpt)
    model = AutoModelForCausalLM.from_pretrained(llama_family["ft1"])
    want = identify(model)
    assert (got.config_sha256, got.weights_sha256) == (want.config_sha256, want.weights_sha256)


def test_saved_statistics_read_back_lazily_and_are_checked(
    llama_family: dict[str, Path], tmp_path: Path
) -> None:
    data = dataset_of(ITEMS[:3])
    run = compute_statistics("gram", llama_family["ft0"], data, tmp_path / "g0", device="cpu")
    info = read_statistics_info(run.path)
    assert info.kind == "gram" and info.examples == 3 and info.dataset["sha256"] == data.sha256
    assert json.loads((run.path / CONFIG_FILE).read_text())["model"]["ref"] == str(
        llama_family["ft0"]
    )
    k = read_statistic(run.path, "model.layers.1.self_attn.k_proj.weight")
    q = read_statistic(run.path, "model.layers.1.self_attn.q_proj.weight")
    assert k is not None and torch.equal(k, q) and k.shape == (32, 32)
    assert read_statistic(run.path, "model.norm.weight") is None
    with Checkpoint.open(llama_family["ft0"]) as ckpt:
        assert (
            check_statistics(str(run.path), "gram", ckpt, identify_checkpoint(ckpt), who="m").kind
            == "gram"
        )
        with pytest.raises(
            RecipeError, match=r"m: .* holds Gram \(RegMean\) statistics, not Fisher"
        ):
            check_statistics(str(run.path), "fisher", ckpt, identify_checkpoint(ckpt), who="m")
        with pytest.raises(RecipeError, match="does not exist.*fusion-ui stats gram"):
            check_statistics(
                str(tmp_path / "nowhere"), "gram", ckpt, identify_checkpoint(ckpt), who="m"
            )
    with Checkpoint.open(llama_family["ft1"]) as other:  # same architecture, other weights
        with pytest.raises(RecipeError, match="stale"):
            check_statistics(str(run.path), "gram", other, identify_checkpoint(other), who="m")
    wide = save(_wider_llama(), tmp_path / "wide")
    with Checkpoint.open(wide) as foreign:
        with pytest.raises(RecipeError, match="another architecture"):
            check_statistics(str(run.path), "gram", foreign, identify_checkpoint(foreign), who="m")
    with pytest.raises(ExportError, match="already exists"):  # refused before the pass
        compute_statistics("gram", llama_family["ft0"], data, run.path, device="cpu")


def test_a_cancelled_pass_writes_nothing(llama_family: dict[str, Path], tmp_path: Path) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        compute_statistics(
            "fisher", llama_family["ft0"], dataset_of(ITEMS), tmp_path / "f", cancel=token
        )
    assert list(tmp_path.iterdir()) == []


def _wider_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=48,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()
