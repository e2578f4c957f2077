"""The app through gradio_client against the launched server: the whole journey by API.

Load the family, read the delta report, merge with DARE-TIES, generate side by side, score,
export, load the export with transformers, reload a recipe from the history; and errors come
back as messages, not tracebacks.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_engine_facade import dare_ties, demo_like_family
from transformers import AutoModelForCausalLM

from fusion_ui import merge_to_state_dict, recipe_from_dict
from fusion_ui.engine import Engine

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

from fusion_ui.ui import build_app, launch, listen_problem  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # gradio's own pandas use


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningApp:
    """The app served on a free localhost port, in this process (its engine is inspectable)."""

    def __init__(self, family: Path, state_dir: Path) -> None:
        self.engine = Engine(demo_dir=family, state_dir=state_dir, device="cpu")
        self.blocks = build_app(self.engine)
        self.port = free_port()
        launch(self.blocks, host="127.0.0.1", port=self.port, block=False)
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self.blocks.close()


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

    table, verdict = client.predict(base, "\n".join(experts), api_name="/load_models")
    assert [row[1] for row in table["data"]] == ["base", "expert_alpha", "expert_beta"]
    assert "Compatible" in verdict

    out = client.predict("median_abs", api_name="/analyze_deltas")
    cards, summary, histogram = out[0], out[1], out[2]
    assert "expert_alpha" in cards and "expert_beta" in cards and "DARE" in cards
    assert {r[0] for r in summary["data"]} == {"expert_alpha", "expert_beta"}
    assert histogram["type"] == "plotly" and "DARE outlook" in histogram["plot"]

    sel = {"base": base, "models": experts}
    recipe = recipe_from_dict(dare_ties(sel))
    status = client.predict(recipe.to_yaml(), api_name="/merge")
    assert "Merged" in status
    preview = app.engine.preview_state(client.session_hash)
    expected = merge_to_state_dict(recipe, device="cpu")
    assert all(torch.equal(preview[k], v.float()) for k, v in expected.items())

    columns = client.predict("alpha: abc =", 6, True, 0.8, 0, True, api_name="/generate")
    shown = [c for c in columns if c]
    assert len(shown) == 4 and all(c.strip() for c in shown)  # base, two fine-tunes, the merge

    scores, chart = client.predict(["alpha", "beta"], None, 2, api_name="/evaluate")
    assert [r[0] for r in scores["data"]] == ["base", "expert_alpha", "expert_beta", "merge"]
    assert chart["type"] == "plotly"

    folder = tmp_path / "exported"
    result, card, written, mergekit, history = client.predict(
        recipe.to_yaml(), str(folder), "bfloat16", "1MB", "base", True, False, api_name="/export")
    assert "Exported" in result and str(folder) in result
    assert "dare_ties" in card and yaml.safe_load(written)["method"] == "dare_ties"
    assert "merge_method" in mergekit
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 3
    assert history["data"][0][2] == "export"

    # Reload the first merge of the history into the Merge tab.
    first = min(row[0] for row in history["data"])
    loaded = client.predict(first, api_name="/load_history")
    assert yaml.safe_load(loaded[0])["method"] == "dare_ties"


def test_errors_are_messages_not_tracebacks(client: Any, tmp_path: Path) -> None:
    with pytest.raises(gradio_client.exceptions.AppError, match="config.json"):
        client.predict(str(tmp_path), str(tmp_path), api_name="/load_models")
    with pytest.raises(gradio_client.exceptions.AppError, match="valid YAML"):
        client.predict("method: [", api_name="/merge")
    with pytest.raises(gradio_client.exceptions.AppError, match="no_such"):
        client.predict("method: no_such\nmodels: [a]\n", api_name="/merge")


def test_listen_policy_requires_auth_beyond_localhost() -> None:
    assert listen_problem("127.0.0.1", False, None) is None
    assert "--auth" in listen_problem("0.0.0.0", False, None)
    assert "--share" in listen_problem("127.0.0.1", True, None)
    assert listen_problem("0.0.0.0", False, "me:secret") is None
    assert "user:password" in listen_problem("0.0.0.0", False, "nocolon")
