"""``fusion-ui compose train|generate|eval`` on tiny models saved to a temporary folder."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from calm_models import anchor_model, augment_model
from factory import save

import fusion_ui.cli.compose as compose_cli
import fusion_ui.cli.training as training_cli
from fusion_ui.cli import main
from fusion_ui.cli.exporting import ProgressBar

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is much faster


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("compose")
    data = root / "kv.jsonl"
    rows = [
        {"prompt": f"{k} =", "answer": v} for k, v in (("ab", "12"), ("cd", "34"), ("ef", "56"))
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "anchor": str(save(anchor_model(), root / "anchor")),
        "augment": str(save(augment_model(), root / "augment")),
        "data": str(data),
    }


def test_train_then_generate_and_eval(models, tmp_path, capsys) -> None:
    out = tmp_path / "bridges"
    code = main(
        [
            "compose",
            "train",
            models["anchor"],
            models["augment"],
            "--data",
            models["data"],
            "--out",
            str(out),
            "--pairs",
            "1:0,3:2",
            "--steps",
            "4",
            "--batch-size",
            "3",
            "--lr",
            "2e-2",
            "--warmup",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained 2 bridge(s) at pairs 1:0,3:2" in printed and f"wrote {out}" in printed
    info = json.loads((out / "bridges.json").read_text())
    assert info["bridges"]["pairs"] == [{"augment": 1, "anchor": 0}, {"augment": 3, "anchor": 2}]
    assert (
        info["anchor"]["path"] == str(Path(models["anchor"]).resolve())
        and info["training"]["steps"] == 4
    )

    code = main(
        [
            "compose",
            "generate",
            models["anchor"],
            models["augment"],
            "--bridges",
            str(out),
            "--prompt",
            "ab =",
            "--prompt",
            "cd =",
            "--max-new-tokens",
            "3",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ab =") and lines[1].startswith("cd =")

    code = main(
        [
            "compose",
            "eval",
            models["anchor"],
            models["augment"],
            "--bridges",
            str(out),
            "--data",
            models["data"],
            "--perplexity",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "composition" in table and "anchor alone" in table and "perplexity" in table

    page = tmp_path / "read.html"
    code = main(["compose", "read", models["anchor"], models["augment"], "--bridges", str(out),
                 "--prompt", "ab =", "--max-new-tokens", "2", "--html", str(page), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("prompt 'ab =' -> answer")
    assert [line.split(" (")[0].strip() for line in printed[2:4]] == ["bridge 1", "bridge 2"]  # one per pair
    text = page.read_text()
    assert 'id="attention"' in text and 'id="layers"' in text and "plotly" in text  # offline page


def test_clear_errors_and_nothing_written(models, tmp_path, capsys) -> None:
    out = tmp_path / "bridges"
    base = [
        "compose",
        "train",
        models["anchor"],
        models["augment"],
        "--data",
        models["data"],
        "--out",
        str(out),
        "--steps",
        "1",
        "--device",
        "cpu",
    ]
    assert main([*base, "--pairs", "9:0"]) == 2
    assert "out of range: 9:0 (augmenting model has blocks 0..3)" in capsys.readouterr().err
    assert main([*base, "--pairs", "1-0"]) == 2
    assert "AUG:ANCHOR" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "bridges.json").write_text("{}")
    assert main(base) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (
        main(
            [
                "compose",
                "generate",
                models["anchor"],
                models["augment"],
                "--bridges",
                str(tmp_path),
                "--prompt",
                "ab",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "holds no bridges.json" in capsys.readouterr().err


def test_sigint_stops_training_with_130_and_writes_nothing(
    models, tmp_path, capsys, monkeypatch
) -> None:
    class InterruptingBar(ProgressBar):
        def __call__(self, p) -> None:
            super().__call__(p)
            if p.done == 1:
                os.kill(os.getpid(), signal.SIGINT)  # like Ctrl-C after the first step

    monkeypatch.setattr(compose_cli, "ProgressBar", InterruptingBar)
    out = tmp_path / "bridges"
    code = main(["compose", "train", models["anchor"], models["augment"], "--data", models["data"],
                 "--out", str(out), "--steps", "50", "--device", "cpu"])  # fmt: skip
    assert code == 130
    assert (
        "stopped by SIGINT: training was cancelled, and nothing was written"
        in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_defaults_are_the_engine_defaults() -> None:
    from fusion_ui.compose.bridges import DEFAULT_EVERY
    from fusion_ui.train import TrainConfig

    c = TrainConfig()
    assert (training_cli.DEFAULT_STEPS, training_cli.DEFAULT_BATCH, compose_cli.DEFAULT_LR) == (
        c.steps, c.batch_size, c.lr)  # fmt: skip
    assert (training_cli.DEFAULT_WARMUP, compose_cli.DEFAULT_EVERY) == (
        c.warmup_steps,
        DEFAULT_EVERY,
    )
