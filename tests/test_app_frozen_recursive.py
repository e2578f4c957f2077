"""The Frozen LM tab's facade with the recursive LMs: the method list drawn from the engine, the
demo composition (``back: rot13: w =``) to train and score on, a connector and a textual
recursion trained as jobs, written, reopened with ``load_frozen`` and scored beside the others
(no perplexity asked of the textual one), and the form's errors."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fusion_ui import figures
from fusion_ui.app import Engine
from fusion_ui.app.frozen import (
    BASE_ROLE,
    COMPOSITION,
    COMPOSITION_TEST,
    COMPOSITION_TRAIN,
    FrozenTraining,
    TrainedPrompt,
)
from fusion_ui.demo.compositions import composition_sets, composition_word
from fusion_ui.errors import InputError
from fusion_ui.evals import greedy_generate, load_causal_lm
from fusion_ui.frozen import (
    FROZEN_METHODS,
    KINDS,
    METHOD_KINDS,
    ConnectorLM,
    RecursiveLM,
    connector_model,
    load_frozen,
    save_connector,
)
from fusion_ui.io.source import resolve_model
from fusion_ui.resources import demo_dir
from fusion_ui.runtime import JobState

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is much faster

CONNECTOR_ROLE = "frozen LM + connector (neural recursion, 2 passes)"
TEXTUAL_ROLE = "frozen LM + textual recursion (2 passes)"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    state = tmp_path_factory.mktemp("state")
    e = Engine(demo_dir=demo_dir(), device="cpu", state_dir=state, export_root=state / "exports")
    yield e
    e.close()


def quick(engine: Engine, kind: str, **changes: object) -> FrozenTraining:
    """A few steps of ``kind`` on the demo base, trained on the composition."""
    form = {"model": engine.frozen.demo_model(), "kind": kind, "sets": (COMPOSITION,), "length": 1,
            "steps": 3, "lr": 3e-3, "batch_size": 4, "candidates": 2}  # fmt: skip
    return FrozenTraining(**(form | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def connector(engine: Engine) -> TrainedPrompt:
    return engine.context.wait(engine.frozen.start_training("s", quick(engine, "connector")))


@pytest.fixture(scope="module")
def textual(engine: Engine) -> TrainedPrompt:
    form = quick(engine, "recursive", lr=3e-2, steps=2)
    return engine.context.wait(engine.frozen.start_training("s", form))


def table_of(engine: Engine, folder: str, tasks: list[str], items: int = 4):  # noqa: ANN201
    scores = engine.context.wait(
        engine.frozen.start_scores("s", engine.frozen.demo_model(), folder, tasks, items=items)
    )
    return scores, engine.frozen.table(scores, folder).set_index("model")


def test_the_methods_come_from_the_engine_and_a_recursion_picks_the_composition(
    engine: Engine,
) -> None:
    from fusion_ui.cli.frozen import TRAIN_KINDS

    facade = engine.frozen
    assert facade.methods() == [(m.label, m.kind) for m in FROZEN_METHODS]
    labels = dict((k, label) for label, k in facade.methods())
    assert labels["connector"] == "recursive LM, neural: connector"
    assert labels["recursive"] == "recursive LM, textual"
    assert tuple(m.kind for m in FROZEN_METHODS if m.artefact == "prompt") == KINDS
    assert TRAIN_KINDS == METHOD_KINDS  # the CLI's `frozen train KIND` choices: the same list
    for kind in ("connector", "recursive"):
        assert facade.is_recursive(kind)
        assert facade.default_sets(kind) == [COMPOSITION] == facade.default_tasks(kind)
    assert not facade.is_recursive("prompt") and COMPOSITION not in facade.default_tasks("prompt")
    assert COMPOSITION in dict((v, k) for k, v in facade.training_sets())
    assert facade.score_sets() == [*facade.eval_sets(), COMPOSITION]
    # the composition's rows are the recursion demo's, and no held-out word is trained on
    rows = facade.training_items([COMPOSITION])
    train, test = composition_sets(COMPOSITION_TRAIN, COMPOSITION_TEST)
    assert rows == train and len(rows) == 600 and {it.skill for it in rows} == {COMPOSITION}
    assert not {composition_word(it) for it in rows} & {composition_word(it) for it in test}
    assert rows[0].prompt.startswith("back: rot13: ") and rows[0].prompt.endswith(" =")


def test_a_connector_trains_from_the_tab_writes_a_part_that_loads_and_scores(
    engine: Engine, connector: TrainedPrompt
) -> None:
    result = connector
    assert result.kind == "connector" and len(result.losses) == 3
    assert all(math.isfinite(v) for v in result.losses)
    folder = Path(result.folder)
    assert folder.name.startswith("connector-") and str(folder) in engine.frozen.trained("s")
    info = json.loads((folder / "connector.json").read_text())
    assert info["training"]["tasks"] == {COMPOSITION: 600} and info["training"]["steps"] == 3
    tensors = load_file(folder / "connector.safetensors")
    assert result.trainable == sum(t.numel() for t in tensors.values()) == 66_176
    assert result.trains == "the connector" and result.frozen == 874_112
    # reopened by the engine, it is a two-pass model whose trained connector changes the output
    model, tok = load_frozen(result.model, folder, device="cpu")
    assert isinstance(model, ConnectorLM)
    ids = torch.tensor([tok.encode("back: rot13: abc =")])
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, model.lm(input_ids=ids).logits)
    roles = engine.frozen.roles(result.folder)
    assert roles[:2] == [CONNECTOR_ROLE, BASE_ROLE]
    _, table = table_of(engine, result.folder, [COMPOSITION, "general"])
    assert list(table.index) == roles and {COMPOSITION, "general"} <= set(table.columns)
    assert table.loc[CONNECTOR_ROLE, "trained parameters"] == "66,176 (the connector)"
    # the facade runs the trained part (3 steps knock the base's general skills out): so the
    # untrained connector's equality with the base, below, is not a role scored twice
    assert table.loc[CONNECTOR_ROLE, "general"] < table.loc[BASE_ROLE, "general"] == 100.0
    answers = engine.context.wait(
        engine.frozen.start_generation("s", result.model, result.folder, "back: rot13: abc =")
    )
    assert list(answers) == roles and answers[CONNECTOR_ROLE] != answers[BASE_ROLE]


def test_stop_mid_connector_training_writes_nothing(engine: Engine) -> None:
    job = engine.frozen.start_training("stopper", quick(engine, "connector", steps=2000))
    deadline = time.monotonic() + 60
    while len(engine.training.history(job).steps) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    (view,) = engine.stop("stopper")
    assert view.state is JobState.CANCELLED and 2 <= len(engine.training.history(job).steps) < 2000
    workspace = engine.training.workspace("stopper")
    assert not workspace.exists() or list(workspace.iterdir()) == []
    assert "stopped at step" in figures.figure_title(engine.frozen.curve(job))


def test_an_untrained_connector_scores_and_answers_as_the_frozen_lm_alone(
    engine: Engine, tmp_path: Path
) -> None:
    base = engine.frozen.demo_model()
    lm, tok = load_causal_lm(base, device="cpu")
    folder = save_connector(connector_model(lm), tmp_path / "fresh", tokenizer=tok,
                            lm_source=resolve_model(base))  # fmt: skip
    _, table = table_of(engine, str(folder), ["upper", "general", COMPOSITION], items=10)
    tasks = ["upper", "general", COMPOSITION]
    assert list(table.loc[CONNECTOR_ROLE, tasks]) == list(table.loc[BASE_ROLE, tasks])
    assert table.loc[BASE_ROLE, "general"] > 0  # the same non-zero scores, not two zeros
    for prompt in ("upper: cab =", "back: rot13: abc ="):
        answers = engine.context.wait(
            engine.frozen.start_generation("s", base, str(folder), prompt)
        )
        assert answers[CONNECTOR_ROLE] == answers[BASE_ROLE]
    # and bit for bit, where a trained one differs (the test above)
    model, _ = load_frozen(base, folder, device="cpu")
    ids = torch.tensor([tok.encode("back: rot13: abc =")])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, lm(input_ids=ids).logits)


def test_a_textual_recursion_trains_and_scores_with_no_perplexity_asked(
    engine: Engine, textual: TrainedPrompt
) -> None:
    result = textual
    assert result.kind == "recursive" and len(result.losses) == 2
    assert result.trainable == 128 and result.trains == "pass 2's prompt"  # 1 vector of width 128
    folder = Path(result.folder)
    info = json.loads((folder / "recursive.json").read_text())
    assert info["recursion"]["candidates"] == 2 and info["first"] is None
    model, tok = load_frozen(result.model, folder, device="cpu")
    assert isinstance(model, RecursiveLM) and greedy_generate(
        model, tok, ["back: rot13: abc ="], max_new_tokens=3
    )
    with pytest.raises(InputError, match="no answer perplexity"):  # what asking would do
        model(input_ids=torch.tensor([tok.encode("back: rot13: abc = mno")]))
    scores, table = table_of(engine, result.folder, [COMPOSITION, "upper"])
    assert "perplexity" not in scores.columns and "perplexity" not in table.columns
    assert table.index[0] == TEXTUAL_ROLE and {COMPOSITION, "upper"} <= set(table.columns)
    assert table.loc[TEXTUAL_ROLE, "trained parameters"] == "128 (pass 2's prompt)"
    answers = engine.context.wait(
        engine.frozen.start_generation("s", result.model, result.folder, "back: rot13: abc =")
    )
    assert list(answers)[0] == TEXTUAL_ROLE


def test_a_textual_recursion_reads_a_plain_prompt_trained_in_the_tab_as_pass_1(
    engine: Engine, tmp_path: Path
) -> None:
    facade = engine.frozen
    plain = engine.context.wait(
        facade.start_training("p1", quick(engine, "prompt", sets=("upper",), steps=1))
    )
    assert facade.first_passes("p1") == [
        ("the frozen LM alone", ""),
        (f"LM + prompt {Path(plain.folder).name}", plain.folder),
    ]
    data = tmp_path / "few.jsonl"  # four rows: pass 1 writes few candidates
    data.write_text("".join(json.dumps({"prompt": it.prompt, "answer": it.answer}) + "\n"
                            for it in facade.training_items([COMPOSITION])[:4]))  # fmt: skip
    form = quick(engine, "recursive", sets=(), data=str(data), steps=1, candidates=1,
                 first_prompt=plain.folder, lr=3e-2)  # fmt: skip
    result = engine.context.wait(facade.start_training("p1", form))
    info = json.loads((Path(result.folder) / "recursive.json").read_text())
    assert info["first"]["kind"] == "prompt" and info["training"]["first_prompt"] == plain.folder
    _, table = table_of(engine, result.folder, ["upper"], items=2)
    assert table.loc[TEXTUAL_ROLE, "trained parameters"] == "256 (the prompts of both passes)"
    assert facade.first_passes("p1")[1:] == [
        (f"LM + prompt {Path(plain.folder).name}", plain.folder)
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "neural"}, "unknown method 'neural'; pick one of idpt, prompt, connector"),
        ({"kind": "connector", "encoder": "/some/encoder"}, "only ID-PT reads its input"),
        ({"kind": "connector", "first_prompt": "/x"}, "only the textual recursion has a pass 1"),
        ({"first_prompt": "/nowhere"}, "holds no prompt.json: train a plain prompt first"),
        ({"candidates": 0}, "pass 1 writes from 1 to 8 candidates, got 0"),
        ({"candidates": "many"}, "the candidate count must be a whole number"),
        ({"length": 0}, "prompt length must be from 1"),
        ({"sets": ("back.rot14",)}, "no demo training set back.rot14"),
        ({"lr": 2}, "learning rate must be above 0 and at most 1"),
    ],
)
def test_bad_recursion_input_is_a_message_before_any_job(
    engine: Engine, changes: dict[str, object], message: str
) -> None:
    form = quick(engine, str(changes.pop("kind", "recursive")), **changes)
    with pytest.raises(InputError, match=message):
        engine.frozen.start_training("bad", form)
    assert engine.jobs.jobs("bad") == []


def test_a_pass_1_that_is_not_a_plain_prompt_and_unknown_score_sets_are_messages(
    engine: Engine, connector: TrainedPrompt
) -> None:
    form = quick(engine, "recursive", first_prompt=connector.folder)
    with pytest.raises(
        InputError, match="pass 1 must be a plain prompt, and .* is recursive LM, neural"
    ):
        engine.frozen.start_training("bad", form)
    with pytest.raises(InputError, match="pick the sets to score from: .*back.rot13"):
        engine.frozen.start_scores("bad", connector.model, connector.folder, ["back.rot14"])
    with pytest.raises(InputError, match=r"holds no prompt.json \(nor connector.json"):
        engine.frozen.start_scores("bad", connector.model, str(engine.demo.base), [COMPOSITION])
    assert engine.jobs.jobs("bad") == []
