"""The app engine's bounds and safety rules: what one request may ask, where the app may write,
what a closed session frees, what the history records, and a DARE preview that shows the
merge's own mask."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from factory import dare_ties, demo_like_family

from fusion_ui import merge_to_state_dict, recipe_from_dict
from fusion_ui.app import Engine, GenerationSettings, Limits, make_selection
from fusion_ui.errors import ExportError, InputError
from fusion_ui.io import Checkpoint
from fusion_ui.io.source import short_names
from fusion_ui.methods.sparsify import dare
from fusion_ui.runtime import JobState


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_like_family(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def engine(family: Path, tmp_path: Path) -> Engine:
    e = Engine(demo_dir=family, state_dir=tmp_path / "state", export_root=tmp_path / "exports", device="cpu")
    yield e
    e.close()


# -- what one request may ask ------------------------------------------------------------------


def test_selection_refuses_long_lists_duplicates_and_the_base(family: Path, monkeypatch: Any) -> None:
    base, ft = str(family / "base"), str(family / "expert_alpha")
    named: list[int] = []
    real = short_names

    def counting(refs: Any) -> list[str]:
        named.append(len(refs))
        return real(refs)

    monkeypatch.setattr("fusion_ui.app.selection.short_names", counting)
    with pytest.raises(InputError, match="up to 6"):
        make_selection(base, [ft] * 10_000)  # 10,000 lines were minutes of CPU in short_names
    assert named == []  # refused before any per-model work
    with pytest.raises(InputError, match="listed twice"):
        make_selection(base, [ft, ft])
    with pytest.raises(InputError, match="is the base"):
        make_selection(base, [base])
    assert make_selection(base, [ft], limits=Limits(max_finetunes=1))["labels"] == ["expert_alpha"]


def test_short_names_numbers_repeats_without_rescanning(monkeypatch: Any) -> None:
    """Each repeat used to rescan every name given so far, once per number tried: cubic."""
    names = short_names(["/models/ft"] * 2_000 + ["/other/ft", "/x/ft#2"])
    assert names[:3] == ["ft", "ft#2", "ft#3"] and names[1999] == "ft#2000"
    assert names[2000] == "ft#2001" and names[2001] == "ft#2#2" and len(set(names)) == len(names)


def test_generation_settings_are_checked() -> None:
    ok = GenerationSettings.checked(24, True, 0.8, 0, True)
    assert ok.max_new_tokens == 24 and ok.seed == 0
    for bad, match in [((1e9, True, 0.8, 0, True), "max new tokens"), ((24, True, 0.8, 1e30, True), "seed"),
                       ((24, True, 0.8, -1, True), "seed"), ((24, True, float("nan"), 0, True), "temperature"),
                       ((24, True, 0.8, 1.5, True), "whole number"), ((24, True, 0.8, "x", True), "seed")]:
        with pytest.raises(InputError, match=match):
            GenerationSettings.checked(*bad)


def test_a_prompt_past_the_models_context_is_refused_before_generating(engine: Engine) -> None:
    sel = engine.demo.selection()
    cols = engine.compare.columns(sel, None)[:1]
    context = 64  # the tiny models' max_position_embeddings
    with pytest.raises(InputError, match=f"at most {context}"):
        list(engine.compare.generate_side_by_side("s", cols, "ab " * 30,
                                          GenerationSettings(max_new_tokens=10)))
    with pytest.raises(InputError, match="characters"):
        engine.compare.start_generation("s", cols, "x" * 200_000)
    assert [j.kind for j in engine.jobs.jobs("s")] == ["generate"]  # the refused one never queued
    # The same prompt within the context generates.
    texts = list(engine.compare.generate_side_by_side("s", cols, "ab ", GenerationSettings(max_new_tokens=4)))
    assert texts and texts[-1][0]


def test_eval_runs_are_bounded(engine: Engine, tmp_path: Path) -> None:
    sel = engine.demo.selection()
    small = Engine(demo_dir=engine.demo.root, state_dir=tmp_path / "s2", export_root=tmp_path / "e2",
                   device="cpu", limits=Limits(max_eval_items=2, max_upload_bytes=100))
    try:
        items = small.compare.eval_items(["alpha", "beta"], None)
        with pytest.raises(InputError, match="up to 2"):
            small.compare.start_evaluation("s", small.compare.columns(sel, None), items, per_skill=None)
        big = tmp_path / "big.csv"
        big.write_text("prompt,answer\n" + "abc =,cba\n" * 50)
        with pytest.raises(InputError, match="MiB"):
            small.compare.eval_items([], str(big))
    finally:
        small.close()


# -- where the app may write -------------------------------------------------------------------


def test_exports_from_the_app_stay_under_the_export_root(engine: Engine, tmp_path: Path) -> None:
    root = engine.exports.root
    assert engine.exports.target("merge-1") == (root / "merge-1").resolve()
    assert engine.exports.target(str(root / "a" / "b")) == (root / "a" / "b").resolve()
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    root.mkdir(parents=True)
    (root / "link").symlink_to(victim)
    for bad, match in [("", "choose an output folder"), (str(victim), "outside the export root"),
                       ("../precious", r"`\.\.`"), ("link", "outside the export root"),
                       (str(root), "outside the export root"), ("/", "outside the export root")]:
        with pytest.raises(ExportError, match=match):
            engine.exports.target(bad)
    sel = engine.demo.selection()
    recipe = recipe_from_dict(dare_ties(sel))
    with pytest.raises(ExportError, match="outside the export root"):
        engine.exports.start("s", recipe, str(victim), force=True)
    assert (victim / "thesis.txt").read_text() == "years of work"
    summary = engine.exports.export("s", recipe, "mine")
    assert Path(summary.path) == (root / "mine").resolve() and (root / "mine" / "config.json").is_file()


# -- sessions, jobs and the history ------------------------------------------------------------


def test_live_re_merges_are_not_recorded_and_explicit_ones_are(engine: Engine) -> None:
    sel = engine.demo.selection()
    recipe = recipe_from_dict(dare_ties(sel))
    engine.merges.merge("s", recipe, record=False)
    engine.merges.merge("s", recipe, record=False)
    assert engine.context.history.entries == []
    engine.merges.merge("s", recipe)
    assert [e["kind"] for e in engine.context.history.entries] == ["merge"]
    assert engine.merges.session_merge("s").recipe == recipe


def test_end_session_cancels_its_jobs_and_frees_its_preview(engine: Engine, monkeypatch: Any) -> None:
    sel = engine.demo.selection()
    recipe = recipe_from_dict(dare_ties(sel))
    engine.merges.merge("gone", recipe)
    assert engine.context.cache.peek("merge:gone") is not None
    # A generation that would run for a long time (the stream never ends on its own).
    entered = threading.Event()

    def endless(model: Any, tokenizer: Any, prompt: str, **options: Any) -> Any:
        entered.set()
        while True:
            options["cancel"].raise_if_cancelled()
            time.sleep(0.01)
            yield "x"

    monkeypatch.setattr("fusion_ui.app.compare.stream_continuation", endless)
    job = engine.compare.start_generation("gone", engine.compare.columns(sel, None)[:1], "ab ")
    assert entered.wait(10)
    other = engine.merges.start("stays", recipe)
    engine.end_session("gone")
    assert job.wait(5) and job.state is JobState.CANCELLED
    assert other.wait(30) and other.state is JobState.FINISHED  # the device is free for others
    assert engine.context.cache.peek("merge:gone") is None and engine.merges.session_merge("gone") is None


def test_stop_ends_in_a_final_state_and_says_what_it_stopped(engine: Engine) -> None:
    sel = engine.demo.selection()
    recipe = recipe_from_dict(dare_ties(sel))
    assert engine.stop("s") == []
    engine.merges.merge("s", recipe)
    assert engine.stop("s") == [] and engine.last_job("s").state is JobState.FINISHED
    gate = threading.Event()
    blocker = engine.jobs.submit("other", "merge", lambda ctx: gate.wait(10))
    queued = engine.merges.start("s", recipe)  # waits behind another session's work
    views = engine.stop("s", wait=5)
    gate.set()
    assert [v.state for v in views] == [JobState.CANCELLED] and queued.state is JobState.CANCELLED
    assert blocker.wait(5) and blocker.state is JobState.FINISHED


# -- the DARE preview shows the merge's own mask -----------------------------------------------


def test_dare_preview_uses_the_merges_index_and_per_tensor_drop_rate(engine: Engine, monkeypatch: Any) -> None:
    """With the first fine-tune unticked, the second is model 0 of the recipe: the preview must
    draw with that index (it used the selection's index 1: another mask), and with the drop rate
    the layer ramp gives that tensor (it used the slider's raw value)."""
    sel = engine.demo.selection()
    second = sel["models"][1]
    recipe = recipe_from_dict({
        "method": "dare_linear", "base": sel["base"], "seed": 5,
        "parameters": {"lambda": 1.0, "normalize": False},
        "models": [{"model": second, "weight": 1.0, "drop_rate": [0.9, 0.5]}],
    })
    name = "model.layers.2.mlp.up_proj.weight"  # the last layer: the ramp's end, 0.5
    seen: dict[str, Any] = {}
    real = __import__("fusion_ui.app.merges", fromlist=["dare_preview"]).dare_preview

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr("fusion_ui.app.merges.dare_preview", spy)
    job = engine.merges.start_dare_preview("s", recipe, sel["labels"][1], sel=sel, tensor=name)
    fig, text = engine.context.wait(job)
    assert fig is not None and "p = 0.5" in text
    assert seen["model_index"] == 0 and seen["drop_rate"] == pytest.approx(0.5) and seen["seed"] == 5

    merged = merge_to_state_dict(recipe, device="cpu")[name].float()
    with Checkpoint.open(sel["base"]) as b, Checkpoint.open(second) as f:
        theta0, delta = b.tensor(name).float(), f.tensor(name).float() - b.tensor(name).float()
    shown = dare(delta, seen["drop_rate"], (seen["seed"], name, seen["model_index"]), rescale=seen["rescale"])
    kept_by_merge, kept_by_preview = (merged - theta0) != 0, shown != 0
    assert torch.equal(kept_by_merge, kept_by_preview)  # the same mask, element for element
    torch.testing.assert_close(theta0 + shown, merged)

    unticked = engine.context.wait(engine.merges.start_dare_preview("s", recipe, sel["labels"][0], sel=sel))
    assert unticked[0] is None and "not in the merge" in unticked[1]
