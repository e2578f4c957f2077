"""``fusion-ui stats fisher|gram MODEL --data FILE --out DIR``: a loadable artefact that a
recipe then merges with; Ctrl-C / SIGTERM and refused folders leave nothing written."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

import fusion_ui.cli.stats as cli_stats
from fusion_ui.cli import main
from fusion_ui.stats import read_statistic, read_statistics_info

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows = [{"prompt": f"{w} =", "answer": w[::-1]} for w in ("abc", "dog", "sun", "k2")]
    path = tmp_path / "examples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_stats_then_merge_end_to_end(
    llama_family: dict[str, Path], data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(2):
        out = tmp_path / f"f{i}"
        assert (
            main(
                [
                    "stats",
                    "fisher",
                    str(llama_family[f"ft{i}"]),
                    "--data",
                    str(data),
                    "--out",
                    str(out),
                    "--device",
                    "cpu",
                    "--batch-size",
                    "2",
                ]
            )
            == 0
        )
        assert f"use it in a recipe as `fisher: {out}`" in capsys.readouterr().out
        info = read_statistics_info(out)
        assert info.kind == "fisher" and info.examples == 4 and info.settings["batch_size"] == 2
        assert read_statistic(out, "model.layers.0.mlp.up_proj.weight").shape == (64, 32)
    recipe = tmp_path / "fisher.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "method": "fisher",
                "base": str(llama_family["base"]),
                "models": [
                    {"model": str(llama_family[f"ft{i}"]), "fisher": f"f{i}"} for i in range(2)
                ],
                "parameters": {"dare": True},
            }
        )
    )
    assert main(["merge", str(recipe), "--out", str(tmp_path / "merged"), "--device", "cpu"]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.model_type == "llama"
    # the folder exists now: refused before any pass, unless --force
    assert (
        main(
            [
                "stats",
                "gram",
                str(llama_family["ft0"]),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "f0"),
            ]
        )
        == 2
    )
    assert (
        "already exists" in capsys.readouterr().err
        and read_statistics_info(tmp_path / "f0").kind == "fisher"
    )
    assert (
        main(
            [
                "stats",
                "gram",
                str(llama_family["ft0"]),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "f0"),
                "--force",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert read_statistics_info(tmp_path / "f0").kind == "gram"


def test_sigterm_stops_the_pass_and_writes_nothing(
    llama_family: dict[str, Path],
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = cli_stats.ProgressBar.__call__

    def signal_after_first_batch(self, p):  # noqa: ANN001, ANN202
        real(self, p)
        if p.done == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli_stats.ProgressBar, "__call__", signal_after_first_batch)
    code = main(
        [
            "stats",
            "fisher",
            str(llama_family["ft0"]),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "s"),
            "--batch-size",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "examples.jsonl"
    ]  # no folder, no working folder


def test_a_bad_data_file_is_a_clear_error(
    llama_family: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no prompt"}) + "\n")
    assert (
        main(
            [
                "stats",
                "gram",
                str(llama_family["ft0"]),
                "--data",
                str(bad),
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 2
    )
    assert "'prompt' and 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
