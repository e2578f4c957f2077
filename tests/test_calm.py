"""CALM (fusion_ui.compose): bridges between two tiny frozen Llamas of different widths.

The masks, the two caches and the frozen models are what the published code gets wrong, so each
has a test that fails if it is missing (the bridges' output projections are set to random
non-zero values first: at their zero init every composition is the anchor and masks are moot).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from calm_models import anchor_model, augment_model, other_tokenizer
from factory import char_tokenizer, save, tiny_model
from torch import nn

from fusion_ui.compose import (
    LayerPair,
    attach_bridges,
    compose,
    cross_attention_mask,
    default_pairs,
    load_composition,
    parse_pairs,
    read_bridges_info,
    save_bridges,
    train_bridges,
    train_composition,
)
from fusion_ui.compose.artefact import identify
from fusion_ui.compose.calm import CalmOutput
from fusion_ui.errors import (
    CancelledError,
    ExportError,
    IncompatibleModelsError,
    ModelSourceError,
    RecipeError,
)
from fusion_ui.evals import EvalItem, greedy_generate
from fusion_ui.evals.generate import left_pad
from fusion_ui.progress import CancelToken
from fusion_ui.train import TrainConfig

PAIRS = (LayerPair(1, 0), LayerPair(3, 2), LayerPair(0, 2))  # two bridges into one anchor block too
# torch on one thread: these models are tiny, and on a shared 2-core machine two threads were
# measured 15-20x slower (they wait on each other)
pytestmark = pytest.mark.usefixtures("one_thread")

TASK = [
    EvalItem(f"{k} =", v, "kv") for k, v in (("ab", "12"), ("cd", "34"), ("ef", "56"), ("gh", "78"))
]


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def ids_of(tok, text: str) -> torch.Tensor:
    return torch.tensor([tok.encode(text)])


def randomised(model, seed: int = 7, scale: float = 0.5):
    """The composition with random (non-zero) bridge outputs: the bridges now change the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bridge in model.bridges.items:
            bridge.out.weight.copy_(torch.randn(bridge.out.weight.shape, generator=g) * scale)
    return model


@pytest.fixture
def calm(tok):
    return randomised(compose(anchor_model(), augment_model(), tok, pairs=PAIRS))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calm")
    return {
        "anchor": save(anchor_model(), root / "anchor"),
        "augment": save(augment_model(), root / "augment"),
        "other": save(augment_model(seed=2), root / "other"),
    }


# -- pairs ---------------------------------------------------------------------------------


def test_default_pairs_take_every_4th_augmenting_block_and_spread_the_anchor_blocks() -> None:
    assert [(p.augment, p.anchor) for p in default_pairs(24, 32)] == [
        (3, 4),
        (7, 10),
        (11, 15),
        (15, 20),
        (19, 26),
        (23, 31),
    ]
    assert [(p.augment, p.anchor) for p in default_pairs(12, 12, every=4, offset=1)] == [
        (1, 3),
        (5, 7),
        (9, 11),
    ]
    assert default_pairs(3, 3) == (LayerPair(2, 2),)  # shallower than `every`: last to last
    assert parse_pairs("3:5, 7:11") == (LayerPair(3, 5), LayerPair(7, 11))
    with pytest.raises(RecipeError, match="AUG:ANCHOR"):
        parse_pairs("3-5")


def test_the_cross_attention_mask_is_causal_and_skips_padding() -> None:
    valid = torch.tensor([[0, 1, 1, 1]])  # one left pad
    full = cross_attention_mask(valid, past=0, new=4)[0, 0]
    assert full.tolist() == [
        [True, False, False, False],  # a pad query sees only itself
        [False, True, False, False],
        [False, True, True, False],
        [False, True, True, True],
    ]
    step = cross_attention_mask(valid, past=3, new=1)[0, 0]  # the last query, decoding
    assert step.tolist() == [full[3].tolist()]


# -- the composed forward ------------------------------------------------------------------


def test_fresh_bridges_give_the_anchor_exactly(tok) -> None:
    anchor = anchor_model()
    model = compose(anchor, augment_model(), tok, pairs=PAIRS)
    ids, mask = left_pad([tok.encode("ab=12 cd"), tok.encode("x y")], tok.eos_token_id)
    with torch.no_grad():
        composed = model(input_ids=ids, attention_mask=mask).logits
        alone = anchor(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(composed, alone)


def test_anchor_position_t_sees_only_augmenting_positions_up_to_t(calm, tok) -> None:
    ids = ids_of(tok, "ab=12 cd ef")
    changed = ids.clone()
    changed[0, 6:] = torch.tensor(tok.encode("zz 9 "))
    with torch.no_grad():
        before, after = calm(ids).logits, calm(changed).logits
        anchor = calm.anchor(ids).logits
    assert not torch.allclose(before, anchor, atol=1e-3)  # the bridges matter
    torch.testing.assert_close(after[:, :6], before[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 6:], before[:, 6:], atol=1e-4)


def test_augmenting_states_reach_the_anchor_only_through_the_bridges_causally(calm, tok) -> None:
    """Perturbing m_A alone (the anchor unchanged) must not move earlier positions either: the
    leak the published code has is through m_A's states, not m_B's own attention."""
    ids = ids_of(tok, "ab=12 cd ef")
    t = 5
    with torch.no_grad():
        before = calm(ids).logits
        handle = calm.augment.model.layers[1].register_forward_hook(
            lambda m, a, out: (
                out + torch.nn.functional.pad(torch.ones_like(out[:, t + 1 :]), (0, 0, t + 1, 0))
            )
        )
        try:
            after = calm(ids).logits
        finally:
            handle.remove()
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-4)


def test_a_left_padded_batch_gives_each_sequence_its_logits_alone(calm, tok) -> None:
    rows = [tok.encode(s) for s in ("ab=12 cd", "x", "hello 9")]
    ids, mask = left_pad(rows, tok.eos_token_id)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch = calm(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        for i, row in enumerate(rows):
            alone = calm(torch.tensor([row])).logits[0]
            torch.testing.assert_close(batch[i, -len(row) :], alone, rtol=0, atol=1e-5)


class Recorder(nn.Module):
    """Keeps each step's last-position logits; ``cached=False`` drops the cache (full recompute)."""

    def __init__(self, model, *, cached: bool) -> None:
        super().__init__()
        self.model, self.cached, self.steps = model, cached, []

    def forward(self, **kw):
        out = self.model(**kw)
        self.steps.append(out.logits[:, -1].detach().clone())
        return out if self.cached else CalmOutput(logits=out.logits)


def test_cached_decoding_steps_both_caches_like_a_full_recompute(calm, tok) -> None:
    prompts = ["ab=1", "hello wor", "x"]
    runs = {}
    for cached in (True, False):
        rec = Recorder(calm, cached=cached)
        texts = greedy_generate(
            rec, tok, prompts, max_new_tokens=6, device="cpu", stop_at_newline=False
        )
        runs[cached] = (texts, torch.stack(rec.steps))
    assert runs[True][0] == runs[False][0]
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=0, atol=1e-4)
    assert any(runs[True][0])  # something was generated
    # and the composition differs from the anchor alone, so the caches of m_A and the bridges mattered
    assert runs[True][0] != greedy_generate(
        calm.anchor, tok, prompts, max_new_tokens=6, device="cpu", stop_at_newline=False
    )


def test_a_gpt2_anchor_with_absolute_positions_composes_too(tok) -> None:
    """Another block layout (``transformer.h``) and absolute positions: padding and the two
    caches must still line up."""
    gpt2 = tiny_model("gpt2", 0)
    model = compose(gpt2, augment_model(), tok, pairs=[LayerPair(2, 1)])
    ids = ids_of(tok, "ab=12")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gpt2(ids).logits)
    randomised(model)
    prompts = ["ab=1", "x"]
    runs = {}
    for cached in (True, False):
        rec = Recorder(model, cached=cached)
        texts = greedy_generate(
            rec, tok, prompts, max_new_tokens=4, device="cpu", stop_at_newline=False
        )
        runs[cached] = (texts, torch.stack(rec.steps))
    assert runs[True][0] == runs[False][0]
    torch.testing.assert_close(runs[True][1], runs[False][1], rtol=0, atol=1e-4)
    alone = Recorder(model, cached=True)
    assert greedy_generate(
        alone, tok, prompts[1:], max_new_tokens=4, device="cpu", stop_at_newline=False
    ) == [runs[True][0][1]]
    torch.testing.assert_close(
        torch.stack(alone.steps)[:, 0], runs[True][1][:, 1], rtol=0, atol=1e-5
    )


# -- training ------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_leaves_both_models_bit_identical(tok) -> None:
    anchor, augment = anchor_model(), augment_model()
    frozen = {
        "anchor": copy.deepcopy(anchor.state_dict()),
        "augment": copy.deepcopy(augment.state_dict()),
    }
    model = compose(anchor, augment, tok, pairs=PAIRS, seed=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("bridges.") for n in trainable)
    assert trainable == {f"bridges.{n}" for n, _ in model.bridges.named_parameters()}
    reports = []
    result = train_bridges(
        model,
        tok,
        TASK,
        config=TrainConfig(steps=10, batch_size=4, lr=2e-2, warmup_steps=2),
        progress=reports.append,
    )
    assert len(result.losses) == 10 and [r.done for r in reports] == list(range(1, 11))
    assert reports[-1].loss == result.losses[-1]
    assert max(result.losses[-3:]) < 0.5 * result.losses[0]
    for name, state in (("anchor", anchor.state_dict()), ("augment", augment.state_dict())):
        assert state.keys() == frozen[name].keys()
        assert all(torch.equal(state[k], frozen[name][k]) for k in state), name
    assert all(p.grad is None for p in (*anchor.parameters(), *augment.parameters()))
    assert not model.anchor.training and not model.augment.training


def test_training_is_seeded(tok) -> None:
    config = TrainConfig(steps=3, batch_size=2, lr=1e-2, warmup_steps=1, seed=5)
    runs = [
        train_bridges(
            compose(anchor_model(), augment_model(), tok, pairs=PAIRS, seed=5),
            tok,
            TASK,
            config=config,
        ).losses
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_cancel_stops_training_and_writes_nothing(folders, tmp_path) -> None:
    cancel = CancelToken()
    seen = []

    def progress(p) -> None:
        seen.append(p.done)
        cancel.cancel()

    out = tmp_path / "bridges"
    with pytest.raises(CancelledError):
        train_composition(
            folders["anchor"],
            folders["augment"],
            TASK,
            out,
            config=TrainConfig(steps=50, warmup_steps=1),
            device="cpu",
            progress=progress,
            cancel=cancel,
        )
    assert seen == [1]
    assert list(tmp_path.iterdir()) == []  # no bridges, no working folder


# -- the artefact --------------------------------------------------------------------------


def test_saved_bridges_load_back_to_the_same_logits_and_hold_only_the_bridges(
    calm, tok, tmp_path
) -> None:
    folder = save_bridges(calm, tmp_path / "b", tokenizer=tok, training={"steps": 0})
    assert sorted(p.name for p in folder.iterdir()) == ["bridges.json", "bridges.safetensors"]
    assert (folder / "bridges.safetensors").stat().st_size < 100_000  # no frozen model inside
    info = read_bridges_info(folder)
    assert (
        info.bridges == calm.config
        and info.anchor.hidden_size == 32
        and info.augment.hidden_size == 48
    )
    loaded = attach_bridges(folder, anchor_model(), augment_model(), tok)
    ids = ids_of(tok, "ab=12 cd")
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, calm(ids).logits)
    with pytest.raises(ExportError, match="already exists"):
        save_bridges(calm, folder, tokenizer=tok)
    save_bridges(calm, folder, tokenizer=tok, force=True)  # earlier bridges may be replaced
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="not a bridges folder"):
        save_bridges(calm, tmp_path / "model", tokenizer=tok, force=True)


def test_load_composition_from_folders(folders, tok, tmp_path) -> None:
    model = randomised(compose(anchor_model(), augment_model(), tok, pairs=PAIRS))
    save_bridges(model, tmp_path / "b", tokenizer=tok)
    loaded, tokenizer = load_composition(
        folders["anchor"], folders["augment"], tmp_path / "b", device="cpu"
    )
    ids = ids_of(tokenizer, "ab=12")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    with pytest.raises(ModelSourceError, match="no bridges.json"):
        load_composition(folders["anchor"], folders["augment"], tmp_path, device="cpu")


def test_bridges_for_other_models_are_refused(calm, tok, tmp_path) -> None:
    folder = save_bridges(calm, tmp_path / "b", tokenizer=tok)
    with pytest.raises(
        IncompatibleModelsError,
        match="trained for other models.*augmenting model given.*other weights",
    ):
        attach_bridges(folder, anchor_model(), augment_model(seed=2), tok)
    with pytest.raises(IncompatibleModelsError, match="another architecture"):
        attach_bridges(folder, anchor_model(), augment_model(layers=5), tok)
    with pytest.raises(IncompatibleModelsError, match="swapped"):
        attach_bridges(folder, augment_model(), anchor_model(), tok)
    # the same model in bfloat16 is the same model
    assert (
        identify(anchor_model().to(torch.bfloat16)).weights_sha256
        == identify(anchor_model()).weights_sha256
    )


def test_different_tokenizers_and_out_of_range_layers_are_refused(tok) -> None:
    anchor, augment = anchor_model(), augment_model()
    with pytest.raises(IncompatibleModelsError, match="different tokenizers"):
        compose(anchor, augment, tok, other_tokenizer())
    with pytest.raises(IncompatibleModelsError, match="embeds 20 token ids"):
        compose(anchor, augment_model(vocab=20), tok)
    with pytest.raises(RecipeError, match=r"4:0 \(augmenting model has blocks 0..3\)"):
        compose(anchor, augment, tok, pairs=[LayerPair(4, 0)])
    with pytest.raises(RecipeError, match=r"0:3 \(anchor model has blocks 0..2\)"):
        compose(anchor, augment, tok, pairs=[LayerPair(0, 3)])
    with pytest.raises(RecipeError, match="do not divide"):
        compose(anchor, augment, tok, heads=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_the_gpu_composition_matches_the_cpu_one(calm, tok) -> None:
    ids = ids_of(tok, "ab=12 cd")
    with torch.no_grad():
        cpu = calm(ids).logits
        gpu = copy.deepcopy(calm).to("cuda")(ids.to("cuda")).logits.cpu()
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4)
    result = train_bridges(
        calm.to("cuda"), tok, TASK, config=TrainConfig(steps=3, batch_size=4, warmup_steps=1)
    )
    assert len(result.losses) == 3
