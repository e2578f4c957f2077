"""Frozen-LM prompts (fusion_ui.frozen): ID-PT's prompt generator and plain prompt tuning in
front of a tiny frozen Llama (or GPT-2), with a wider tiny Llama as the encoder.

Tests that need the generator to depend on its input first set its zero-initialised output
projection to random values (at init every input gets the same prompt ``P``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from calm_models import anchor_model, augment_model
from factory import char_tokenizer, save, tiny_model
from torch import nn

from fusion_ui.errors import (
    CancelledError,
    ExportError,
    IncompatibleModelsError,
    ModelSourceError,
    RecipeError,
)
from fusion_ui.evals import EvalItem, greedy_generate
from fusion_ui.evals.generate import left_pad
from fusion_ui.evals.perplexity import encode_scored
from fusion_ui.frozen import (
    PromptConfig,
    PromptedOutput,
    answer_nll,
    attach_prompt,
    load_prompted,
    prompt_model,
    read_prompt_info,
    save_prompt,
    train_frozen,
    train_prompt,
)
from fusion_ui.frozen.train import scored_logits
from fusion_ui.progress import CancelToken
from fusion_ui.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is much faster

K = 4
TASKS = [
    *(EvalItem(f"{k} =", v, "kv") for k, v in (("ab", "12"), ("cd", "34"), ("ef", "56"))),
    *(EvalItem(f"rev {w} =", w[::-1], "rev") for w in ("abc", "xyz")),
]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def ids_of(tok, text: str) -> torch.Tensor:
    return torch.tensor([tok.encode(text)])


def randomised(model, seed: int = 7, scale: float = 2.0):
    """The generator with a random (non-zero) output projection: p(x) now depends on x."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.prompt.out.weight
        w.copy_(torch.randn(w.shape, generator=g) * scale)
    return model


@pytest.fixture
def idpt(tok):
    return randomised(prompt_model(anchor_model(), tok, "idpt", encoder=augment_model(), length=K))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("frozen")
    return {
        "lm": save(anchor_model(), root / "lm"),
        "encoder": save(augment_model(), root / "encoder"),
    }


# -- the prompts and what is unchanged at init -------------------------------------------------


def test_prompt_shapes_are_batch_by_k_by_the_lm_width(tok, idpt) -> None:
    fixed = prompt_model(anchor_model(), tok, "prompt", length=K)
    ids, mask = left_pad([tok.encode("ab =1"), tok.encode("x")], tok.eos_token_id)
    for model in (idpt, fixed):
        p = model.soft_prompt(ids, mask)
        assert p.shape == (2, K, 32)  # the LM's width, not the encoder's (48)
        out = model(input_ids=ids, attention_mask=mask)
        assert isinstance(out, PromptedOutput) and out.logits.shape == (2, ids.shape[1], 48)
    assert not torch.allclose(idpt.soft_prompt(ids, mask)[0], idpt.soft_prompt(ids, mask)[1])


def test_a_fresh_generator_gives_p_for_every_input_exactly_plain_prompt_tuning(tok) -> None:
    """W_o starts at zero: p(x) = P whatever x, and P is the plain prompt's init of the same seed,
    so a fresh ID-PT model is bit for bit the plain-prompt baseline."""
    lm = anchor_model()
    idpt = prompt_model(lm, tok, "idpt", encoder=augment_model(), length=K, seed=3)
    fixed = prompt_model(anchor_model(), tok, "prompt", length=K, seed=3)
    ids, mask = left_pad([tok.encode("ab=12 cd"), tok.encode("x y")], tok.eos_token_id)
    with torch.no_grad():
        p = idpt.soft_prompt(ids, mask)
        assert torch.equal(p[0], p[1]) and torch.equal(p[0], idpt.prompt.prompt)
        assert torch.equal(idpt(input_ids=ids, attention_mask=mask).logits,
                           fixed(input_ids=ids, attention_mask=mask).logits)  # fmt: skip


def test_the_lm_reads_exactly_p_then_x_and_is_itself_unchanged(tok, idpt) -> None:
    """What the wrapper computes is the frozen LM on ``[p(x); x]`` (positions 0..k-1, then k..),
    and the LM used alone is the LM it was."""
    lm = idpt.lm
    ids = ids_of(tok, "ab=12 cd")
    with torch.no_grad():
        before = lm(ids).logits.clone()
        p = idpt.soft_prompt(ids)
        by_hand = lm(inputs_embeds=torch.cat([p, lm.get_input_embeddings()(ids)], dim=1)).logits
        assert torch.equal(idpt(ids).logits, by_hand[:, K:])
        assert torch.equal(lm(ids).logits, before)
    assert all(not p.requires_grad for p in lm.parameters())


def test_invalid_settings_are_refused_with_the_fix(tok) -> None:
    with pytest.raises(RecipeError, match="use one of idpt, prompt"):
        PromptConfig("lora", 4, 32)  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="do not divide"):
        prompt_model(anchor_model(), tok, "idpt", heads=5)
    with pytest.raises(RecipeError, match="length must be >= 1"):
        prompt_model(anchor_model(), tok, "prompt", length=0)
    with pytest.raises(RecipeError, match="reads no encoder"):
        prompt_model(anchor_model(), tok, "prompt", encoder=augment_model())
    with pytest.raises(IncompatibleModelsError, match="encoder model embeds 20 token ids"):
        prompt_model(anchor_model(), tok, "idpt", encoder=augment_model(vocab=20))


# -- padding and caches --------------------------------------------------------------------------


def test_a_left_padded_batch_gives_each_row_its_logits_alone(idpt, tok) -> None:
    rows = [tok.encode(s) for s in ("ab=12 cd", "x", "hello 9")]
    ids, mask = left_pad(rows, tok.eos_token_id)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch = idpt(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        p_batch = idpt.soft_prompt(ids, mask)
        for i, row in enumerate(rows):
            alone_ids = torch.tensor([row])
            torch.testing.assert_close(
                p_batch[i], idpt.soft_prompt(alone_ids)[0], rtol=0, atol=1e-5
            )
            alone = idpt(alone_ids).logits[0]
            torch.testing.assert_close(batch[i, -len(row) :], alone, rtol=0, atol=1e-5)


def test_a_right_padded_training_batch_reads_p_from_each_prompt_alone(idpt, tok) -> None:
    pairs = [
        encode_scored(tok, it.prompt, it.answer, with_eos=True) for it in TASKS[:3] + TASKS[3:4]
    ]
    with torch.no_grad():
        logits, _, _ = scored_logits(idpt, pairs, tok.eos_token_id)
        for i, pair in enumerate(pairs):
            ids = torch.tensor([pair.ids])
            p = idpt.soft_prompt(ids[:, : pair.n_prompt])  # the prompt's tokens only
            alone = idpt(ids, prompt_embeds=p).logits[0]
            torch.testing.assert_close(logits[i, : len(pair.ids)], alone, rtol=0, atol=1e-5)


def test_the_generator_never_reads_the_answer_it_is_scored_on(idpt, tok) -> None:
    a, b = (encode_scored(tok, "ab =", ans, with_eos=True) for ans in ("12", "19"))
    with torch.no_grad():
        la, _, _ = scored_logits(idpt, [a], tok.eos_token_id)
        lb, _, _ = scored_logits(idpt, [b], tok.eos_token_id)
    # up to the last answer token the two rows are the same text: same p, same logits
    assert torch.equal(la[:, : len(a.ids) - 2], lb[:, : len(b.ids) - 2])
    nll = answer_nll(idpt, tok, [EvalItem("ab =", "12", "kv")])
    assert nll[0][1] == 3 and nll[0][0] > 0  # ' ', '1', '2' scored (no EOS)


class Recorder(nn.Module):
    """Keeps each step's last-position logits. ``cached=False`` drops the cache and recomputes the
    whole sequence with the p(x) of the first call (p reads the prompt, never generated tokens)."""

    def __init__(self, model, *, cached: bool) -> None:
        super().__init__()
        self.model, self.cached, self.steps, self.p = model, cached, [], None

    def forward(self, input_ids, attention_mask, position_ids, **kw):
        if self.cached:
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw
            )
        else:
            if self.p is None:
                self.p = self.model.soft_prompt(input_ids, attention_mask)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             prompt_embeds=self.p)  # fmt: skip
            out = PromptedOutput(logits=out.logits)
        self.steps.append(out.logits[:, -1].detach().clone())
        return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_greedy_generation_equals_the_uncached_one(family, tok) -> None:
    lm = anchor_model() if family == "llama" else tiny_model("gpt2", 0)
    model = randomised(prompt_model(lm, tok, "idpt", encoder=augment_model(), length=K))
    prompts = ["ab=1", "hello wor", "x"]
    runs = {}
    for cached in (True, False):
        rec = Recorder(model, cached=cached)
        texts = greedy_generate(
            rec, tok, prompts, max_new_tokens=5, device="cpu", stop_at_newline=False
        )
        runs[cached] = (texts, torch.stack(rec.steps))
    assert runs[True][0] == runs[False][0] and any(runs[True][0])
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=0, atol=1e-4)
    alone = greedy_generate(
        model, tok, prompts[1:2], max_new_tokens=5, device="cpu", stop_at_newline=False
    )
    assert alone == [runs[True][0][1]]  # a row generates in a padded batch as it does alone
    assert runs[True][0] != greedy_generate(lm, tok, prompts, max_new_tokens=5, device="cpu",
                                            stop_at_newline=False)  # fmt: skip


# -- training ------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_leaves_the_lm_and_encoder_bit_identical(tok) -> None:
    lm, encoder = anchor_model(), augment_model()
    frozen = {"lm": copy.deepcopy(lm.state_dict()), "encoder": copy.deepcopy(encoder.state_dict())}
    model = prompt_model(lm, tok, "idpt", encoder=encoder, length=K, seed=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"prompt.{n}" for n, _ in model.prompt.named_parameters()}
    assert {
        "prompt.prompt",
        "prompt.encoder_prompt",
        "prompt.queries",
        "prompt.out.weight",
    } <= trainable
    reports = []
    result = train_prompt(model, tok, TASKS, config=TrainConfig(steps=8, batch_size=5, lr=3e-2, warmup_steps=1),
                          progress=reports.append)  # fmt: skip
    assert [r.done for r in reports] == list(range(1, 9)) and reports[-1].loss == result.losses[-1]
    assert max(result.losses[-2:]) < 0.75 * result.losses[0]
    for name, module in (("lm", lm), ("encoder", encoder)):
        state = module.state_dict()
        assert state.keys() == frozen[name].keys()
        assert all(torch.equal(state[k], frozen[name][k]) for k in state), name
        assert all(p.grad is None for p in module.parameters()) and not module.training
    assert model.prompt.out.weight.abs().sum() > 0  # the input-dependent part learned


def test_plain_prompt_tuning_trains_only_its_prompt(tok) -> None:
    lm = anchor_model()
    before = copy.deepcopy(lm.state_dict())
    model = prompt_model(lm, tok, "prompt", length=K)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt.prompt"]
    result = train_prompt(
        model, tok, TASKS, config=TrainConfig(steps=6, batch_size=5, lr=5e-2, warmup_steps=1)
    )
    assert result.losses[-1] < result.losses[0]
    assert all(torch.equal(v, before[k]) for k, v in lm.state_dict().items())


def test_cancel_stops_training_and_writes_nothing(folders, tmp_path) -> None:
    cancel = CancelToken()
    seen = []

    def progress(p) -> None:
        seen.append(p.done)
        cancel.cancel()

    with pytest.raises(CancelledError):
        train_frozen("idpt", folders["lm"], TASKS, tmp_path / "prompt", encoder=folders["encoder"],
                     length=K, config=TrainConfig(steps=50, warmup_steps=1), device="cpu",
                     progress=progress, cancel=cancel)  # fmt: skip
    assert seen == [1]
    assert list(tmp_path.iterdir()) == []  # no prompt, no working folder


# -- the artefact --------------------------------------------------------------------------------


def test_save_then_load_gives_the_same_logits_and_holds_only_the_prompt(
    idpt, tok, folders, tmp_path
) -> None:
    folder = save_prompt(idpt, tmp_path / "p", tokenizer=tok, training={"steps": 0})
    assert sorted(p.name for p in folder.iterdir()) == ["prompt.json", "prompt.safetensors"]
    assert (folder / "prompt.safetensors").stat().st_size < 100_000  # no frozen model inside
    info = read_prompt_info(folder)
    assert (
        info.prompt == idpt.config and info.lm.hidden_size == 32 and info.encoder.hidden_size == 48
    )
    ids = ids_of(tok, "ab=12 cd")
    loaded = attach_prompt(folder, anchor_model(), tok, encoder=augment_model())
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, idpt(ids).logits)
    # from folders: the LM given, the encoder found (here: passed) by path
    from_disk, tokenizer = load_prompted(
        folders["lm"], folder, encoder=folders["encoder"], device="cpu"
    )
    with torch.no_grad():
        torch.testing.assert_close(from_disk(ids).logits, idpt(ids).logits, rtol=0, atol=1e-6)
    with pytest.raises(ExportError, match="already exists"):
        save_prompt(idpt, folder, tokenizer=tok)
    save_prompt(idpt, folder, tokenizer=tok, force=True)  # an earlier prompt may be replaced
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="not a prompt folder"):
        save_prompt(idpt, tmp_path / "model", tokenizer=tok, force=True)
    with pytest.raises(ModelSourceError, match="no prompt.json"):
        read_prompt_info(tmp_path)


def test_a_prompt_whose_encoder_was_the_lm_loads_with_the_lm_alone(tok, tmp_path) -> None:
    model = randomised(prompt_model(anchor_model(), tok, "idpt", length=K))
    assert model.encoder is model.lm and model.config.d_encoder == 32
    folder = save_prompt(model, tmp_path / "p", tokenizer=tok)
    assert read_prompt_info(folder).encoder_is_lm
    loaded = attach_prompt(folder, anchor_model(), tok)
    ids = ids_of(tok, "cd=34")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_prompts_for_another_lm_or_encoder_are_refused(idpt, tok, tmp_path) -> None:
    folder = save_prompt(idpt, tmp_path / "p", tokenizer=tok)
    with pytest.raises(IncompatibleModelsError, match="trained for another LM.*other weights"):
        attach_prompt(folder, anchor_model(seed=5), tok, encoder=augment_model())
    with pytest.raises(IncompatibleModelsError, match="hidden-size mismatch.*width 32.*48 wide"):
        attach_prompt(folder, augment_model(), tok, encoder=augment_model())
    with pytest.raises(IncompatibleModelsError, match="another encoder"):
        attach_prompt(folder, anchor_model(), tok, encoder=augment_model(seed=2))
    with pytest.raises(IncompatibleModelsError, match="hidden-size mismatch.*encoder of width 48"):
        attach_prompt(folder, anchor_model(), tok, encoder=anchor_model())
    with pytest.raises(RecipeError, match="give that encoder"):
        attach_prompt(folder, anchor_model(), tok)
    fixed = save_prompt(
        prompt_model(anchor_model(), tok, "prompt", length=K), tmp_path / "f", tokenizer=tok
    )
    with pytest.raises(IncompatibleModelsError, match="hidden-size mismatch"):
        attach_prompt(fixed, augment_model(), tok)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_the_gpu_prompted_lm_matches_the_cpu_one(idpt, tok) -> None:
    ids = ids_of(tok, "ab=12 cd")
    with torch.no_grad():
        cpu = idpt(ids).logits
        gpu_model = copy.deepcopy(idpt).to("cuda")  # the LM, the encoder and the generator
        gpu = gpu_model(ids.to("cuda")).logits.cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4)
    texts = greedy_generate(gpu_model, tok, ["ab=1", "x"], max_new_tokens=4, device="cuda")
    assert texts == greedy_generate(idpt, tok, ["ab=1", "x"], max_new_tokens=4, device="cpu")
    result = train_prompt(
        gpu_model, tok, TASKS, config=TrainConfig(steps=3, batch_size=5, warmup_steps=1)
    )
    assert len(result.losses) == 3
