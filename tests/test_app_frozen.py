"""The Frozen LM tab's facade: a soft prompt trained in front of the frozen demo base as a job,
its loss history, the artefact it writes (or, stopped, does not), and the side-by-side scores
and answers; plus the training helper and loss curve both training tabs share."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fusion_ui import figures
from fusion_ui.app import Engine
from fusion_ui.app.frozen import BASE_ROLE, FrozenTraining, TrainedPrompt
from fusion_ui.app.training import train_config
from fusion_ui.errors import FusionError, InputError
from fusion_ui.evals import greedy_generate, load_eval_set
from fusion_ui.frozen import load_prompted
from fusion_ui.resources import demo_dir
from fusion_ui.runtime import JobState

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is much faster


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    state = tmp_path_factory.mktemp("state")
    e = Engine(demo_dir=demo_dir(), device="cpu", state_dir=state, export_root=state / "exports")
    yield e
    e.close()


def quick(engine: Engine, **changes: object) -> FrozenTraining:
    """A few steps of a tiny ID-PT prompt on the demo base, trained on one demo skill."""
    form = {"model": engine.frozen.demo_model(), "kind": "idpt", "sets": ("upper",), "length": 2,
            "steps": 4, "lr": 1e-2, "batch_size": 4}  # fmt: skip
    return FrozenTraining(**(form | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(engine: Engine) -> tuple[TrainedPrompt, list[int]]:
    """A finished run, and how long its loss history was at each snapshot while it ran."""
    job = engine.frozen.start_training("s", quick(engine))
    seen = [len(engine.training.history(job).steps) for _ in job.watch(0.05)]
    return engine.context.wait(job), seen


def test_the_form_offers_the_engines_methods_and_the_demo(engine: Engine) -> None:
    from fusion_ui.frozen import KINDS, METHOD_KINDS

    kinds = [kind for _, kind in engine.frozen.methods()]
    assert kinds == list(METHOD_KINDS) and kinds[: len(KINDS)] == list(KINDS)  # prompts first
    assert engine.frozen.demo_model() == str(engine.demo.base)
    assert engine.frozen.demo_skills() == list(engine.demo.experts)
    assert engine.frozen.default_sets("idpt") == engine.frozen.demo_skills()
    rows = engine.frozen.training_items(["upper", "mirror"])
    held_out = {it.prompt for p in engine.demo.eval_sets.values() for it in load_eval_set(p)}
    assert {it.skill for it in rows} == {"upper", "mirror"} and not held_out & {
        it.prompt for it in rows
    }
    assert rows[0].answer == rows[0].answer.strip() and rows[0].prompt.endswith(" =")


def test_training_grows_a_loss_history_and_writes_a_loadable_prompt(
    engine: Engine, trained: tuple[TrainedPrompt, list[int]]
) -> None:
    result, seen = trained
    assert seen == sorted(seen) and seen[-1] == 4 and len(result.losses) == 4
    assert all(math.isfinite(v) for v in result.losses)
    folder = Path(result.folder)
    assert folder.parent == engine.training.workspace("s") and engine.frozen.trained("s") == [
        str(folder)
    ]
    info = json.loads((folder / "prompt.json").read_text())
    assert info["prompt"]["kind"] == "idpt" and info["prompt"]["length"] == 2
    assert info["training"]["steps"] == 4 and info["training"]["tasks"] == {"upper": 200}
    tensors = load_file(folder / "prompt.safetensors")
    assert result.trainable == sum(t.numel() for t in tensors.values()) > 0
    assert result.frozen == 874_112  # the demo base's parameters, untouched
    model, tok = load_prompted(result.model, folder, device="cpu")
    assert model.config.kind == "idpt" and greedy_generate(
        model, tok, ["upper: abc ="], max_new_tokens=3
    )


def test_plain_prompt_tuning_trains_from_the_app_too(engine: Engine) -> None:
    job = engine.frozen.start_training("plain", quick(engine, kind="prompt", steps=2))
    result = engine.context.wait(job)
    assert result.kind == "prompt" and len(result.losses) == 2
    assert result.trainable == 2 * 128  # k vectors of the LM's width: nothing else learns


def test_stop_mid_training_leaves_no_artefact_folder(engine: Engine) -> None:
    job = engine.frozen.start_training("stopper", quick(engine, steps=2000))
    deadline = time.monotonic() + 60
    while len(engine.training.history(job).steps) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    (view,) = engine.stop("stopper")
    assert view.state is JobState.CANCELLED
    assert 2 <= len(engine.training.history(job).steps) < 2000
    workspace = engine.training.workspace("stopper")
    assert not workspace.exists() or list(workspace.iterdir()) == []  # not even a staging folder
    assert engine.frozen.trained("stopper") == []
    assert "stopped at step" in figures.figure_title(engine.frozen.curve(job))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": " "}, "give the frozen LM"),
        ({"kind": "lora"}, "unknown method 'lora'"),
        (
            {"kind": "prompt", "encoder": "/some/encoder"},
            "only ID-PT reads its input with an encoder",
        ),
        ({"length": 0}, "prompt length must be from 1"),
        ({"steps": 0}, "steps must be from 1"),
        ({"steps": "many"}, "steps must be a whole number"),
        ({"lr": 0}, "learning rate must be above 0"),
        ({"sets": ()}, "pick a demo skill set or give a JSONL"),
        ({"sets": ("juggling",)}, "no demo training set juggling"),
        ({"data": "/nowhere/train.jsonl"}, "no such file"),
    ],
)
def test_bad_training_input_is_a_message_before_any_job(
    engine: Engine, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        engine.frozen.start_training("bad", quick(engine, **changes))
    assert engine.jobs.jobs("bad") == []


def test_a_users_jsonl_trains_and_a_model_that_is_not_there_fails_as_a_message(
    engine: Engine, tmp_path: Path
) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"upper: {w} =", "answer": w.upper()}) + "\n"
            for w in ("ab", "cd")
        )
    )
    assert len(engine.frozen.training_items([], str(data))) == 2
    job = engine.frozen.start_training("mine", quick(engine, sets=(), data=str(data), steps=2))
    info = json.loads((Path(engine.context.wait(job).folder) / "prompt.json").read_text())
    assert info["training"]["n_items"] == 2
    with pytest.raises(FusionError, match="has no config.json"):  # read before any job
        engine.frozen.start_training("bad-model", quick(engine, model=str(tmp_path)))
    assert engine.frozen.trained("bad-model") == []


def test_scores_and_answers_side_by_side_with_the_base_experts_and_merge(
    engine: Engine, trained: tuple[TrainedPrompt, list[int]]
) -> None:
    result, _ = trained
    roles = engine.frozen.roles(result.folder)
    assert roles == ["frozen LM + ID-PT (input-dependent prompt)", BASE_ROLE, "expert mirror", "expert shift",
                     "expert upper", "merge of the experts"]  # fmt: skip
    job = engine.frozen.start_scores(
        "s", result.model, result.folder, ["upper", "general"], items=4
    )
    scores = engine.context.wait(job)
    table = engine.frozen.table(scores, result.folder).set_index("model")
    assert list(table.index) == roles and {"upper", "general"} <= set(table.columns)
    assert table.loc["expert upper", "upper"] == 100.0  # the expert knows its skill
    assert (
        table.loc[roles[0], "trained parameters"] == f"{result.trainable:,} (the prompt generator)"
    )
    assert table.loc[BASE_ROLE, "trained parameters"] == "0 (frozen)"
    answers = engine.context.wait(
        engine.frozen.start_generation("s", result.model, result.folder, "upper: cab =")
    )
    assert list(answers) == roles and answers["expert upper"].strip() == "CAB"
    # without a trained prompt, the comparison is the others alone
    assert engine.frozen.roles("")[0] == BASE_ROLE
    with pytest.raises(InputError, match="holds no prompt.json"):
        engine.frozen.start_scores("s", result.model, str(engine.demo.base), ["upper"])
    with pytest.raises(InputError, match="pick the sets"):
        engine.frozen.start_scores("s", result.model, result.folder, [])


def test_train_config_checks_the_form_and_warms_up_a_short_run() -> None:
    config = train_config(20, 0.01, 4)
    assert (config.steps, config.batch_size, config.lr, config.warmup_steps) == (20, 4, 0.01, 2)
    with pytest.raises(InputError, match="batch size must be from 1"):
        train_config(10, 0.01, 0)


def test_the_loss_curve_draws_each_step_and_its_running_mean() -> None:
    fig = figures.loss_curve([1, 2, 3], [3.0, 2.0, 1.0], total_steps=10, state="training")
    raw, mean = fig.data
    assert list(raw.y) == [3.0, 2.0, 1.0] and mean.y[0] == 3.0 and 1.0 < mean.y[-1] < 3.0
    assert list(fig.layout.xaxis.range) == [0, 10.2]  # the whole run from the first point on
    assert "3.000 → 1.000 after 3 of 10 steps (training)" in figures.figure_title(fig)
    assert "no step yet" in figures.figure_title(figures.loss_curve([], [], total_steps=5))
