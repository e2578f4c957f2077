"""The Merge tab's *Compute statistics* through the engine (fusion_ui.app.statistics): folders of
the demo experts under the state dir, reused on a second call, a Stop that leaves no half-written
folder, clear errors for bad data, and the merge that then runs with the folders filled in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusion_ui.app import Engine, RecipeForm, compose
from fusion_ui.demo.stats_examples import stats_examples
from fusion_ui.errors import CancelledError, FusionError, InputError
from fusion_ui.resources import demo_dir
from fusion_ui.runtime import JobState
from fusion_ui.stats.artefact import CONFIG_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

N = 4  # examples per expert: enough to check the plumbing, a fraction of a second per pass


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One engine for the module: statistics one test computes, a later one may reuse (as the
    app's sessions share them); each test says what it expects to be new."""
    state = tmp_path_factory.mktemp("state")
    e = Engine(demo_dir=demo_dir(), device="cpu", state_dir=state, export_root=state / "exports")
    yield e
    e.close()


def _experts(engine: Engine) -> list[str]:
    return [str(p) for p in engine.demo.experts.values()]


def _written(engine: Engine) -> list[str]:
    root = engine.statistics.root
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _form(engine: Engine, method: str, folders: dict[str, str]) -> RecipeForm:
    experts = _experts(engine)
    kind = engine.statistics.kind_of(method)
    return RecipeForm(method=method, base=str(engine.demo.base), models=experts, use=[True] * len(experts),
                      per_model={kind: [folders[m] for m in experts], "weight": [1.0] * len(experts)})


def test_the_demo_experts_get_their_own_skill_statistics_and_a_second_call_reuses_them(engine: Engine) -> None:
    experts = _experts(engine)
    assert engine.statistics.kind_of("regmean") == "gram" and engine.statistics.kind_of("fisher") == "fisher"
    assert engine.statistics.kind_of("ties") is None
    assert engine.statistics.demo_data_fits(experts)
    first = engine.statistics.compute("s", "regmean", experts, examples=N)
    assert [m.ref for m in first.models] == experts and not any(m.reused for m in first.models)
    for m, skill in zip(first.models, engine.demo.experts, strict=True):
        assert m.folder.parent == engine.statistics.root and m.examples == N
        info = json.loads((m.folder / CONFIG_FILE).read_text())
        assert info["kind"] == "gram" and info["dataset"]["examples"] == N
        assert skill in info["dataset"]["source"]  # each expert on its own skill's examples
        assert all(f"{skill}: " in item.prompt for item in stats_examples(skill, N))
    mtimes = [(m.folder / CONFIG_FILE).stat().st_mtime_ns for m in first.models]

    again = engine.statistics.compute("other session", "regmean", experts, examples=N)  # shared by sessions
    assert all(m.reused for m in again.models) and again.folders() == first.folders()
    assert [(m.folder / CONFIG_FILE).stat().st_mtime_ns for m in again.models] == mtimes
    assert "3 reused" in again.summary()
    # other data (more examples) is another dataset hash: computed, beside the first folders
    more = engine.statistics.compute("s", "regmean", experts[:1], examples=N + 1)
    assert not more.models[0].reused and str(more.models[0].folder) not in first.folders().values()


def test_the_merge_runs_with_the_filled_folders(engine: Engine) -> None:
    experts = _experts(engine)
    for method in ("regmean", "fisher"):
        result = engine.statistics.compute("s", method, experts, examples=N)
        recipe = compose(_form(engine, method, result.folders()))
        assert engine.merges.merge("s", recipe).tensors > 0
        assert engine.merges.session_merge("s").recipe == recipe
    # the folders are what the merge read: a recipe without them is refused, naming the fix
    bare = compose(_form(engine, "fisher", dict.fromkeys(experts, "")))
    with pytest.raises(FusionError, match="none are given"):
        engine.merges.merge("s", bare)


def test_stop_mid_pass_leaves_the_finished_folders_and_no_half_written_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fusion_ui.stats.fisher as fisher

    experts = _experts(engine)
    calls: list[str] = []
    original = fisher.report

    def report_then_stop_in_the_second_model(callback, done, total, message=""):  # noqa: ANN001, ANN202
        calls.append(message)
        original(callback, done, total, message)
        if len(calls) == N + 3:  # the first batch of the second expert (batch size 1)
            engine.cancel("s")

    monkeypatch.setattr(fisher, "report", report_then_stop_in_the_second_model)
    monkeypatch.setattr("fusion_ui.stats.run.DEFAULT_BATCH", {"fisher": 1, "gram": 16})
    before = set(_written(engine))
    n = N + 2  # data of this test's own
    job = engine.statistics.start("s", "fisher", experts, examples=n)
    job.wait(60)
    assert job.state is JobState.CANCELLED and isinstance(job.error, CancelledError)
    new = sorted(set(_written(engine)) - before)
    assert len(new) == 1 and new[0].startswith("fisher-expert_")  # only the first expert's
    assert (engine.statistics.root / new[0] / CONFIG_FILE).is_file()
    monkeypatch.setattr(fisher, "report", original)
    done = engine.statistics.compute("s", "fisher", experts, examples=n)
    assert [m.reused for m in done.models] == [True, False, False]
    assert len(set(_written(engine)) - before) == 3  # and no working folder left behind


def test_bad_data_is_a_clear_error_before_anything_runs(engine: Engine, tmp_path: Path) -> None:
    experts = _experts(engine)
    jobs = len(engine.jobs.jobs("s"))
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputError, match="nope.jsonl does not exist.*prompt and answer"):
        engine.statistics.start("s", "fisher", experts, data=str(missing))
    with pytest.raises(InputError, match="give the path"):
        engine.statistics.start("s", "fisher", experts, data="  ")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(FusionError, match="prompt"):  # an EvalSetError
        engine.statistics.start("s", "fisher", experts, data=str(empty))
    with pytest.raises(InputError, match="reads no statistics"):
        engine.statistics.start("s", "ties", experts)
    with pytest.raises(InputError, match="not one of the demo experts"):
        engine.statistics.start("s", "regmean", [str(engine.demo.base)])
    with pytest.raises(InputError, match="from 1 to"):
        engine.statistics.start("s", "regmean", experts, examples=0)
    assert len(engine.jobs.jobs("s")) == jobs  # no job was started


def test_a_users_file_serves_every_model(engine: Engine, tmp_path: Path) -> None:
    rows = [{"prompt": f"upper: {w} =", "answer": w.upper()} for w in ("cat", "dog", "sun", "owl")]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    experts = _experts(engine)[:2]
    result = engine.statistics.compute("s", "regmean", experts, data=str(data), examples=3)
    for m in result.models:
        info = json.loads((m.folder / CONFIG_FILE).read_text())
        assert info["dataset"]["source"] == str(data) and info["examples"] == 3


def test_the_demo_examples_are_distinct_and_never_an_eval_item(engine: Engine) -> None:
    from fusion_ui.evals import load_eval_set

    evals = {i.prompt for p in engine.demo.eval_sets.values() for i in load_eval_set(p)}
    for skill in engine.demo.experts:
        items = stats_examples(skill, 200)
        assert len({i.prompt for i in items}) == 200 and not evals & {i.prompt for i in items}
    with pytest.raises(InputError, match="not an expert skill"):
        stats_examples("general")
