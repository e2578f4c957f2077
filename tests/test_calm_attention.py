"""What CALM's bridges read (fusion_ui.compose.attention): recorded weights and contributions on
two tiny frozen Llamas, and that recording leaves the composition's math alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from calm_models import anchor_model, augment_model
from factory import char_tokenizer

from fusion_ui.compose import Bridge, LayerPair, compose, read_bridges, recording
from fusion_ui.compose.calm import cross_attention_mask
from fusion_ui.errors import InputError
from fusion_ui.evals import greedy_generate
from fusion_ui.evals.generate import left_pad

PAIRS = (LayerPair(1, 0), LayerPair(3, 2), LayerPair(0, 2))  # two bridges into one anchor block too
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def randomised(model, seed: int = 7, scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bridge in model.bridges.items:
            bridge.out.weight.copy_(torch.randn(bridge.out.weight.shape, generator=g) * scale)
    return model


@pytest.fixture
def calm(tok):
    return randomised(compose(anchor_model(), augment_model(), tok, pairs=PAIRS))


def padded_batch(tok):
    rows = [tok.encode(s) for s in ("ab=12 cd", "x", "hello 9")]
    ids, mask = left_pad(rows, tok.eos_token_id)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def test_recording_leaves_the_logits_and_the_cache_bit_identical(calm, tok) -> None:
    ids, mask, pos = padded_batch(tok)
    with torch.no_grad():
        plain = calm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        with recording(calm) as readings:
            seen = calm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    assert torch.equal(plain.logits, seen.logits)
    for (k0, v0), (k1, v1) in zip(plain.cache.memory, seen.cache.memory, strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    assert [len(r) for r in readings] == [1, 1, 1]
    assert all(b.recorder is None for b in calm.bridges.items)  # off again after the block
    # and generation reads the same tokens with recording on
    with recording(calm):
        recorded = greedy_generate(calm, tok, ["ab=1", "x"], max_new_tokens=4, device="cpu")
    assert recorded == greedy_generate(calm, tok, ["ab=1", "x"], max_new_tokens=4, device="cpu")


def test_outside_a_recording_the_bridges_do_no_extra_work(calm, tok, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("weights worked out without a recording")

    monkeypatch.setattr(Bridge, "_reading", fail)
    with torch.no_grad():
        calm(torch.tensor([tok.encode("hello 9")]))


def test_rows_sum_to_one_over_the_causal_real_keys_and_nothing_reaches_the_future(calm, tok) -> None:
    ids, mask, pos = padded_batch(tok)
    with torch.no_grad(), recording(calm) as readings:
        calm(input_ids=ids, attention_mask=mask, position_ids=pos)
    allowed = cross_attention_mask(mask.bool(), 0, ids.shape[1])  # (B, 1, T, T)
    batch, t = ids.shape
    for (reading,) in readings:
        w = reading.weights
        assert w.shape == (batch, 4, t, t)  # the anchor's 4 heads
        assert torch.all(w[~allowed.expand_as(w)] == 0)  # no weight on future or padded keys
        torch.testing.assert_close(w.sum(-1), torch.ones(batch, 4, t), rtol=0, atol=1e-5)
        future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        assert torch.all(w[..., future] == 0)
        assert reading.added.shape == reading.anchor.shape == (batch, t)


def test_the_recorded_weights_are_the_ones_the_fused_attention_used(calm, tok) -> None:
    """weights @ values gives back what the bridge added (through its output projection)."""
    bridge = calm.bridges.items[0]
    got: dict[str, torch.Tensor] = {}
    orig = bridge.attend

    def spy(h, keys, values, mask):
        got.update(h=h, values=values)
        return orig(h, keys, values, mask)

    bridge.attend = spy
    try:
        with torch.no_grad(), recording(calm) as readings:
            calm(torch.tensor([tok.encode("hello 9")]))
    finally:
        del bridge.attend
    w = readings[0][0].weights  # (1, H, T, T)
    y = (w @ got["values"]).transpose(1, 2).reshape(1, w.shape[2], -1)
    torch.testing.assert_close(bridge.out(y).norm(dim=-1), readings[0][0].added, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["h"].norm(dim=-1), readings[0][0].anchor, rtol=1e-5, atol=1e-6)


def test_read_bridges_on_a_prompt_and_its_greedy_answer(calm, tok) -> None:
    reading = read_bridges(calm, tok, "ab=1", max_new_tokens=3)
    assert reading.answer == greedy_generate(calm, tok, ["ab=1"], max_new_tokens=3, device="cpu")[0]
    t = len(reading.tokens)
    assert reading.prompt_tokens == len(tok.encode("ab=1")) and t == reading.prompt_tokens + 3
    assert reading.pairs == PAIRS
    assert reading.weights.shape == (3, 4, t, t) and reading.weights.dtype == np.float32
    assert reading.head_weights().shape == reading.contribution.shape[:1] + (t, t)
    np.testing.assert_allclose(reading.head_weights().sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(reading.head_weights(2), k=1) == 0)
    assert np.all(reading.contribution > 0)  # random output projections add something everywhere
    with pytest.raises(InputError, match="head 4"):
        reading.head_weights(4)


def test_the_zero_init_untrained_bridges_contribute_exactly_nothing(tok) -> None:
    fresh = compose(anchor_model(), augment_model(), tok, pairs=PAIRS)
    reading = read_bridges(fresh, tok, "hello 9")
    assert reading.answer == "" and len(reading.tokens) == reading.prompt_tokens
    assert np.all(reading.added == 0) and np.all(reading.contribution == 0)
    assert np.all(reading.anchor_norm > 0)
    np.testing.assert_allclose(reading.weights.sum(-1), 1.0, atol=1e-5)  # they still attend


def test_recording_is_not_reentrant_and_a_prompt_is_needed(calm, tok) -> None:
    with recording(calm), pytest.raises(InputError, match="already being recorded"), recording(calm):
        pass
    assert all(b.recorder is None for b in calm.bridges.items)
    with pytest.raises(InputError, match="give a prompt"):
        read_bridges(calm, tok, "")
