"""``fusion-ui frozen train|generate|eval`` on tiny models saved to a temporary folder."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from calm_models import anchor_model, augment_model
from factory import save

import fusion_ui.cli.frozen as frozen_cli
import fusion_ui.cli.training as training_cli
from fusion_ui.cli import main
from fusion_ui.cli.exporting import ProgressBar

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is much faster


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("frozen_cli")
    kv, rev = root / "kv.jsonl", root / "rev.jsonl"
    kv.write_text("".join(json.dumps({"prompt": f"{k} =", "answer": v}) + "\n"
                          for k, v in (("ab", "12"), ("cd", "34"))))  # fmt: skip
    rev.write_text(
        "".join(
            json.dumps({"prompt": f"rev {w} =", "answer": w[::-1]}) + "\n" for w in ("abc", "xyz")
        )
    )
    return {
        "lm": str(save(anchor_model(), root / "lm")),
        "encoder": str(save(augment_model(), root / "encoder")),
        "kv": str(kv),
        "rev": str(rev),
    }


def train_args(models: dict[str, str], kind: str, out: Path, *extra: str) -> list[str]:
    return ["frozen", "train", kind, models["lm"], "--data", models["kv"], "--data", models["rev"],
            "--out", str(out), "--prompt-length", "3", "--steps", "3", "--batch-size", "4",
            "--warmup", "1", "--device", "cpu", *extra]  # fmt: skip


def test_train_idpt_then_generate_and_eval(models, tmp_path, capsys) -> None:
    out = tmp_path / "idpt"
    assert main(train_args(models, "idpt", out, "--encoder", models["encoder"])) == 0
    printed = capsys.readouterr().out
    assert "trained a idpt prompt of 3 vector(s) on 4 row(s) of 2 task(s)" in printed
    assert f"wrote {out}" in printed
    info = json.loads((out / "prompt.json").read_text())
    assert info["prompt"]["kind"] == "idpt" and info["prompt"]["length"] == 3
    assert (
        info["encoder"]["path"] == str(Path(models["encoder"]).resolve())
        and not info["encoder_is_lm"]
    )
    assert info["training"]["tasks"] == {"kv": 2, "rev": 2} and info["training"]["steps"] == 3

    # the encoder is found where prompt.json says
    gen = ["frozen", "generate", models["lm"], "--prompt-dir", str(out), "--prompt", "ab =",
           "--prompt", "rev abc =", "--max-new-tokens", "3", "--device", "cpu"]  # fmt: skip
    assert main(gen) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ab =") and lines[1].startswith("rev abc =")

    ev = ["frozen", "eval", models["lm"], "--prompt-dir", str(out), "--data", models["kv"],
          "--perplexity", "--device", "cpu"]  # fmt: skip
    assert main(ev) == 0
    table = capsys.readouterr().out
    assert "idpt prompt" in table and "LM alone" in table and "perplexity" in table


def test_train_a_plain_prompt(models, tmp_path, capsys) -> None:
    out = tmp_path / "prompt"
    assert main(train_args(models, "prompt", out)) == 0
    assert "trained a prompt prompt" in capsys.readouterr().out
    info = json.loads((out / "prompt.json").read_text())
    assert info["prompt"]["kind"] == "prompt" and info["encoder"] is None
    assert main(["frozen", "generate", models["lm"], "--prompt-dir", str(out), "--prompt", "cd =",
                 "--max-new-tokens", "2", "--device", "cpu"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("cd =")


def test_clear_errors_and_nothing_written(models, tmp_path, capsys) -> None:
    out = tmp_path / "p"
    assert main(train_args(models, "idpt", out, "--heads", "5")) == 2
    assert "do not divide" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "prompt.json").write_text("{}")
    assert main(train_args(models, "prompt", out)) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["frozen", "generate", models["lm"], "--prompt-dir", str(tmp_path), "--prompt", "ab",
                 "--device", "cpu"]) == 2  # fmt: skip
    assert "holds no prompt.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frozen", "train", "lora", models["lm"], "--data", models["kv"], "--out", str(out)])
    assert "invalid choice: 'lora'" in capsys.readouterr().err


def test_sigint_stops_training_with_130_and_writes_nothing(
    models, tmp_path, capsys, monkeypatch
) -> None:
    class InterruptingBar(ProgressBar):
        def __call__(self, p) -> None:
            super().__call__(p)
            if p.done == 1:
                os.kill(os.getpid(), signal.SIGINT)  # like Ctrl-C after the first step

    monkeypatch.setattr(frozen_cli, "ProgressBar", InterruptingBar)
    code = main(
        [*train_args(models, "idpt", tmp_path / "p")[:-2], "--steps", "50", "--device", "cpu"]
    )
    assert code == 130
    assert (
        "stopped by SIGINT: training was cancelled, and nothing was written"
        in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_defaults_are_the_engine_defaults() -> None:
    from fusion_ui.frozen import prompts
    from fusion_ui.frozen.train import DEFAULT_CONFIG

    c = DEFAULT_CONFIG
    assert (training_cli.DEFAULT_STEPS, training_cli.DEFAULT_BATCH, frozen_cli.DEFAULT_LR, training_cli.DEFAULT_WARMUP) == (
        c.steps, c.batch_size, c.lr, c.warmup_steps)  # fmt: skip
    assert (frozen_cli.DEFAULT_LENGTH, frozen_cli.DEFAULT_ENCODER_PROMPT) == (
        prompts.DEFAULT_LENGTH, prompts.DEFAULT_ENCODER_PROMPT)  # fmt: skip
    assert frozen_cli.TRAIN_KINDS[: len(prompts.KINDS)] == prompts.KINDS  # the prompt kinds first
