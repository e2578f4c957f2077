"""Every error the app's API can reach is a message in the app's own words: no traceback, no
"Internal error", and never a command-line flag the app has no control for."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apptools import RunningApp
from factory import demo_like_family, save, tiny_model

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

CLI_WORDS = ("--force", "--allow-large-deltas", "--out", "force=True", "allow_large_deltas=True", "Traceback",
             "Internal error", "Something went wrong")


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = demo_like_family(tmp_path_factory.mktemp("demo"))
    save(tiny_model("llama", seed=7), root / "stranger")  # same shapes, another base entirely
    return root


@pytest.fixture(scope="module")
def app(family: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    running = RunningApp(family, tmp_path_factory.mktemp("state"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(app: RunningApp) -> Any:
    c = gradio_client.Client(app.url, verbose=False)
    base = str(app.engine.demo.base)
    experts = "\n".join(str(p) for p in app.engine.demo.experts.values())
    c.predict(base, experts, api_name="/load_models")
    return c


def recipe(app: RunningApp, **changes: Any) -> str:
    sel = app.engine.demo.selection()
    data = {"method": "dare_ties", "base": sel["base"], "parameters": {"lambda": 1.0},
            "models": [{"model": m, "weight": 0.5, "drop_rate": 0.9} for m in sel["models"]], **changes}
    import yaml

    return yaml.safe_dump(data)


def refused(client: Any, *args: Any, api_name: str, match: str) -> str:
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        client.predict(*args, api_name=api_name)
    message = str(info.value)
    assert match.lower() in message.lower(), message
    for word in CLI_WORDS:
        assert word not in message, f"{api_name}: {message!r} mentions {word!r}"
    return message


def test_every_error_path_is_a_message_in_the_apps_words(app: RunningApp, client: Any, family: Path,
                                                          tmp_path: Path) -> None:
    base = str(app.engine.demo.base)
    expert = str(app.engine.demo.experts["alpha"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a model")
    cases = [
        # Models tab
        ((str(tmp_path / "missing"), expert), "/load_models", "not found"),
        ((base, str(tmp_path / "file.txt")), "/load_models", "folder"),
        ((base, str(tmp_path / "empty")), "/load_models", "config.json"),
        ((base, "\n".join([expert] * 7)), "/load_models", "up to 6"),
        ((base, f"{expert}\n{expert}"), "/load_models", "listed twice"),
        (("", expert), "/load_models", "base model"),
        # Merges from a script
        (("method: [",), "/merge_recipe", "valid YAML"),
        (("method: no_such\nmodels: [a]\n",), "/merge_recipe", "no_such"),
        ((recipe(app, models=[{"model": expert, "weight": "1e300"}]),), "/merge_recipe", "out of range"),
        ((recipe(app, models=[{"model": expert, "drop_rate": 1.5}]),), "/merge_recipe", "drop_rate"),
        ((recipe(app, exclude=["re:("]),), "/merge_recipe", "re:("),
        ((recipe(app, method="slerp", base=None, parameters={"on_deltas": True},
                 models=[{"model": expert}, {"model": str(app.engine.demo.experts["beta"])}]),),
         "/merge_recipe", "base"),
        ((recipe(app, models=[{"model": str(tmp_path / "gone")}]),), "/merge_recipe", "not found"),
        ((recipe(app, models=[{"model": str(family / "stranger")}]),), "/merge_recipe",
         "merge even if a model does not look like a fine-tune of the base"),
        # Exports from a script
        ((recipe(app), "../up"), "/export_recipe", "not allowed"),
        ((recipe(app), str(tmp_path / "elsewhere")), "/export_recipe", "outside the export root"),
        ((recipe(app), ""), "/export_recipe", "output folder"),
        ((recipe(app), "shards", "", "lots"), "/export_recipe", "size"),
        # Compare tab
        (("   ", 8, True, 0.8, 0, True), "/generate", "prompt"),
        (("ab " * 40, 8, True, 0.8, 0, True), "/generate", "at most 64 tokens"),
        (("ab", 8, False, 0.8, 1e30, True), "/generate", "seed"),
        (("ab", 10_000, True, 0.8, 0, True), "/generate", "maximum value 256"),  # the slider refuses it
        (([], None, 2), "/evaluate", "eval set"),
        # History
        ((999,), "/load_history", "no merge #999"),
    ]
    for args, api_name, match in cases:
        refused(client, *args, api_name=api_name, match=match)

    # An export to a folder that exists names the app's checkbox, and only an export is replaced.
    client.predict(recipe(app), "twice", api_name="/export_recipe")
    refused(client, recipe(app), "twice", api_name="/export_recipe", match="replace the folder if it exists")
    client.predict(recipe(app), "twice", "", "2GB", "base", True, True, api_name="/export_recipe")
    (app.export_root / "notes").mkdir()
    (app.export_root / "notes" / "mine.txt").write_text("keep me")
    refused(client, recipe(app), "notes", "", "2GB", "base", True, True, api_name="/export_recipe",
            match="not a fusion_ui export")
    assert (app.export_root / "notes" / "mine.txt").read_text() == "keep me"

    # The large-deltas refusal has its checkbox in the app, and the checkbox lets it through.
    stranger = recipe(app, method="task_arithmetic", parameters={"lambda": 1.0},
                      models=[{"model": str(family / "stranger"), "weight": 1.0}])
    refused(client, stranger, api_name="/merge_recipe", match="tick")
    assert "Merged" in client.predict(stranger, True, api_name="/merge_recipe")
