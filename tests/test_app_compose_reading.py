"""What the bridges read, from the Compose tab's facade: the demo pair's recorded cross-attention
for one prompt, its figures, and the layer diagram of the loaded bridges."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from calm_models import anchor_model, augment_model
from factory import char_tokenizer

from fusion_ui import figures
from fusion_ui.app import Engine
from fusion_ui.app.compose import READ_PROMPT, Composition
from fusion_ui.compose import LayerPair, compose, read_bridges
from fusion_ui.errors import InputError
from fusion_ui.figures.calm import token_labels
from fusion_ui.resources import demo_dir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    state = tmp_path_factory.mktemp("state")
    e = Engine(demo_dir=demo_dir(), device="cpu", state_dir=state, export_root=state / "exports")
    yield e
    e.close()


def test_the_demo_example_is_read_and_answered_as_the_demo_set_says(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    read = engine.context.wait(engine.compose.start_reading("r", pair, READ_PROMPT))
    r = read.reading
    assert read.expected == "14" == r.answer.strip() and read.right  # a held-out item the demo's CALM gets right
    assert r.tokens[: r.prompt_tokens] == ("<s>", *READ_PROMPT)
    assert r.weights.shape == (3, 4, len(r.tokens), len(r.tokens))  # 3 bridges, 4 heads
    assert [str(p) for p in r.pairs] == ["3:0", "3:1", "3:2"]
    assert np.all(r.contribution > 0)  # trained bridges add something at every token
    fig = engine.compose.attention_chart(read)
    assert len([t for t in fig.data if t.type == "heatmap"]) == 3
    assert [t.name for t in fig.data if t.type == "scatter"] == ["bridge 1 (3:0)", "bridge 2 (3:1)", "bridge 3 (3:2)"]
    assert "“14”" in figures.figure_title(fig)
    assert fig.layout.yaxis.ticktext[0] == "&lt;s&gt;"  # a tag plotly would otherwise swallow


def test_a_prompt_outside_the_demo_sets_has_no_expected_answer_and_bad_input_is_a_message(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    read = engine.context.wait(engine.compose.start_reading("r", pair, "abc", max_new_tokens=0))
    assert read.expected is None is read.right and read.reading.answer == "" and len(read.reading.tokens) == 4
    with pytest.raises(InputError, match="type a prompt"):
        engine.compose.start_reading("r", pair, "  ")
    with pytest.raises(InputError, match="answer tokens must be from 0"):
        engine.compose.start_reading("r", pair, "abc", max_new_tokens=-1)
    with pytest.raises(InputError, match="holds no bridges.json"):
        engine.compose.start_reading("r", Composition(pair.anchor, pair.augment, "/nowhere"), "abc")


def test_the_layer_diagram_draws_a_line_per_bridge_between_two_columns_of_blocks(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    fig = engine.compose.layer_diagram(pair.bridges)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["bridge 1: 3 → 0", "bridge 2: 3 → 1", "bridge 3: 3 → 2"]
    assert all(list(t.x) == [0, 1] for t in lines)
    blocks = [t for t in fig.data if t.mode == "markers+text"]
    assert [len(t.y) for t in blocks] == [4, 4]  # m_A's 4 blocks, m_B's 4
    assert lines[0].y[0] == blocks[0].y[3] and lines[0].y[1] == blocks[1].y[0]  # m_A block 3 -> m_B block 0
    assert engine.compose.layer_diagram("") is None and engine.compose.layer_diagram("/nowhere") is None
    assert engine.compose.bridge_heads(pair.bridges) == 4 and engine.compose.bridge_heads("/nowhere") == 0


def test_models_of_different_depths_are_drawn_to_one_height() -> None:
    fig = figures.bridge_layer_diagram([LayerPair(3, 5), LayerPair(7, 11)], 8, 12)
    a, b = (t for t in fig.data if t.mode == "markers+text")
    assert len(a.y) == 8 and len(b.y) == 12 and a.y[-1] == pytest.approx(b.y[-1], abs=0.05)


def test_the_attention_chart_of_untrained_bridges_says_they_add_nothing() -> None:
    tok = char_tokenizer()
    pairs = (LayerPair(1, 0), LayerPair(3, 2), LayerPair(0, 2), LayerPair(2, 1), LayerPair(3, 1))
    reading = read_bridges(compose(anchor_model(), augment_model(), tok, pairs=pairs), tok, "ab = 1")
    fig = figures.bridge_attention_chart(reading, head=1)
    assert "add nothing" in figures.figure_title(fig) and "head 1" in figures.figure_subtitle(fig)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 5 and fig.layout.xaxis5.domain[0] == 0  # small multiples wrap after 4
    np.testing.assert_allclose(np.nan_to_num(np.asarray(heat[0].z, dtype=float)).sum(1), 1.0, atol=1e-5)
    assert np.isnan(np.asarray(heat[0].z, dtype=float)[0, 1])  # the future is left blank


def test_token_labels_show_spaces_and_escape_tags() -> None:
    assert token_labels([" ", "Ġthe", "▁a", "<s>", "\n", ""]) == ["␣", "␣the", "␣a", "&lt;s&gt;", "↵", "∅"]



def test_the_planned_layer_diagram_follows_the_pairs_typed_for_training(engine: Engine) -> None:
    pair = engine.compose.demo_pair()
    planned = engine.compose.planned_layer_diagram
    fig = planned(pair.anchor, pair.augment, "")  # empty: the demo bridges' pairs, as training uses
    assert [t.name for t in fig.data if t.mode == "lines+markers"] == ["bridge 1: 3 → 0", "bridge 2: 3 → 1",
                                                                      "bridge 3: 3 → 2"]
    assert "to train" in figures.figure_title(fig)
    fig = planned(pair.anchor, pair.augment, "0:1, 2:3")
    assert [t.name for t in fig.data if t.mode == "lines+markers"] == ["bridge 1: 0 → 1", "bridge 2: 2 → 3"]
    assert planned(pair.anchor, pair.augment, "3:") is None  # half typed
    assert planned(pair.anchor, pair.augment, "9:0") is None  # outside m_A's 4 blocks
    assert planned("/nowhere", pair.augment, "0:1") is None
