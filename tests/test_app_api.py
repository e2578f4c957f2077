"""The app through gradio_client against the launched server: the whole journey by API.

Load the family, read the delta report, merge with DARE-TIES, generate side by side, score,
export, load the export with transformers, reload a recipe from the history; and errors come
back as messages, not tracebacks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from apptools import RunningApp
from factory import dare_ties, demo_like_family
from transformers import AutoModelForCausalLM

from fusion_ui import merge_to_state_dict, recipe_from_dict

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

from fusion_ui.ui import listen_problem  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # gradio's own pandas use


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_like_family(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def app(family: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    running = RunningApp(family, tmp_path_factory.mktemp("state"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(app: RunningApp) -> Any:
    return gradio_client.Client(app.url, verbose=False)


def test_every_event_has_an_api_name(app: RunningApp) -> None:
    unnamed = [d for d in app.blocks.config["dependencies"] if not d.get("api_name")]
    assert unnamed == []


def test_journey_load_deltas_merge_generate_score_export(app: RunningApp, client: Any, tmp_path: Path) -> None:
    demo = app.engine.demo
    base, experts = str(demo.base), [str(p) for p in demo.experts.values()]

    table, verdict, _presets = client.predict(base, "\n".join(experts), api_name="/load_models")
    assert [row[1] for row in table["data"]] == ["base", "expert_alpha", "expert_beta"]
    assert "Compatible" in verdict

    out = client.predict("median_abs", api_name="/analyze_deltas")
    cards, summary, histogram = out[1], out[2], out[3]
    assert "expert_alpha" in cards and "expert_beta" in cards and "DARE" in cards
    assert {r[0] for r in summary["data"]} == {"expert_alpha", "expert_beta"}
    assert histogram["type"] == "plotly" and "DARE outlook" in histogram["plot"]

    sel = {"base": base, "models": experts}
    recipe = recipe_from_dict(dare_ties(sel))
    status = client.predict(recipe.to_yaml(), api_name="/merge_recipe")
    assert "Merged" in status
    preview = app.engine.merges.preview_state(client.session_hash)
    expected = merge_to_state_dict(recipe, device="cpu")
    assert all(torch.equal(preview[k], v.float()) for k, v in expected.items())

    columns = client.predict("alpha: abc =", 6, True, 0.8, 0, True, api_name="/generate")
    assert "Generated" in columns[0]
    shown = [c for c in columns[1:] if c]
    assert len(shown) == 4 and all(c.strip() for c in shown)  # base, two fine-tunes, the merge

    _status, scores, chart = client.predict(["alpha", "beta"], None, 2, api_name="/evaluate")
    assert [r[0] for r in scores["data"]] == ["base", "expert_alpha", "expert_beta", "merge"]
    assert chart["type"] == "plotly"

    written = client.predict(recipe.to_yaml(), "exported", "bfloat16", "1MB", "base", True, False,
                             api_name="/export_recipe")
    folder = app.export_root / "exported"
    assert written["folder"] == str(folder.resolve()) and "README.md" in written["files"]
    assert yaml.safe_load(written["recipe"])["method"] == "dare_ties" and "merge_method" in written["mergekit"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 3
    kinds = [e["kind"] for e in app.engine.context.history.entries]
    assert kinds[-2:] == ["merge", "export"]

    # Reload the first merge of the history into the Merge tab.
    first = app.engine.context.history.entries[0]["id"]
    loaded = client.predict(first, api_name="/load_history")
    assert any(isinstance(v, str) and "method: dare_ties" in v for v in loaded)


def test_errors_are_messages_not_tracebacks(client: Any, tmp_path: Path) -> None:
    (tmp_path / "ft").mkdir()
    with pytest.raises(gradio_client.exceptions.AppError, match="config.json"):
        client.predict(str(tmp_path), str(tmp_path / "ft"), api_name="/load_models")
    with pytest.raises(gradio_client.exceptions.AppError, match="valid YAML"):
        client.predict("method: [", api_name="/merge_recipe")
    with pytest.raises(gradio_client.exceptions.AppError, match="no_such"):
        client.predict("method: no_such\nmodels: [a]\n", api_name="/merge_recipe")


def test_listen_policy_requires_auth_beyond_localhost() -> None:
    assert listen_problem("127.0.0.1", False, None) is None
    assert "--auth" in listen_problem("0.0.0.0", False, None)
    assert "--share" in listen_problem("127.0.0.1", True, None)
    assert listen_problem("0.0.0.0", False, "me:secret") is None
    assert "user:password" in listen_problem("0.0.0.0", False, "nocolon")


def test_weight_and_lambda_sliders_span_the_useful_range(app: RunningApp) -> None:
    """Weights may go to 10 (in a recipe), but a 0-10 track left 0-1 a tenth of its length."""
    props = {c["props"].get("elem_id"): c["props"] for c in app.blocks.config["components"]
             if c.get("props", {}).get("elem_id")}
    weight, lam, drop = props["weight-0"], props["param-lambda"], props["drop_rate-0"]
    assert (weight["minimum"], weight["maximum"]) == (0.0, 2.0)
    assert (lam["minimum"], lam["maximum"]) == (0.0, 3.0)
    assert drop["maximum"] == pytest.approx(0.99)  # DARE's p < 1: one step short of 1
