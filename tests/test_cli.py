"""The ``fusion-ui`` command line: inspect, merge (ours and mergekit YAML), errors as messages."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from fusion_ui.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_prints_table_and_verdict(llama_family: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    code = main(["inspect", str(llama_family["base"]), str(llama_family["ft0"]), str(llama_family["ft1"])])
    out = capsys.readouterr().out
    assert code == 0
    assert "LlamaForCausalLM" in out and "verdict: compatible" in out and "float32" in out


def test_inspect_incompatible_exit_code(llama_family: dict[str, Path], gpt2_family: dict[str, Path],
                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(llama_family["base"]), str(gpt2_family["ft0"])]) == 1
    assert "verdict: incompatible" in capsys.readouterr().out


def test_merge_our_recipe_and_a_mergekit_config(llama_family: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    ours = tmp_path / "ours.yaml"
    ours.write_text(yaml.safe_dump({
        "method": "ties", "base": str(llama_family["base"]),
        "models": [{"model": str(llama_family["ft0"]), "weight": 1.0, "density": 0.5},
                   {"model": str(llama_family["ft1"]), "weight": 1.0, "density": 0.5}],
    }))
    assert main(["merge", str(ours), "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    # the mergekit config the export wrote merges to the same TIES result (deterministic method)
    assert main(["merge", str(tmp_path / "a" / "mergekit_config.yml"), "--out", str(tmp_path / "b")]) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b").state_dict()
    assert all((a[k] == b[k]).all() for k in a)


def test_errors_are_messages_not_tracebacks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("method: ties\nbase: nowhere/at-all-x\nmodels: [{model: ./missing, density: 0}]\n")
    assert main(["merge", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "density" in err and "Traceback" not in err
    assert main(["inspect", str(tmp_path / "missing-folder")]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_console_script_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "fusion_ui.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "merge" in proc.stdout and "inspect" in proc.stdout


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^\s*(python -m pytest[^\n]*)$", readme, flags=re.M)
    assert commands, "README shows no test command"
    assert commands[0].strip() in (ROOT / ".ci" / "run").read_text()


def test_merge_as_a_process_exits_early_with_everything_written(llama_family: dict[str, Path], tmp_path: Path) -> None:
    # A real `fusion-ui merge` process skips the interpreter's teardown after success: what it
    # printed and what it wrote must all be there, and the exit code must still be 0.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "method": "task_arithmetic", "base": str(llama_family["base"]),
        "models": [{"model": str(llama_family["ft0"]), "weight": 0.5}, {"model": str(llama_family["ft1"]), "weight": 0.5}],
    }))
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "fusion_ui.cli", "merge", str(recipe), "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}") and proc.stdout.endswith("\n")
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert main(["merge", str(recipe), "--out", str(tmp_path / "again"), "--device", "cpu"]) == 0  # in-process: returns
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again").state_dict()
    assert all((merged[k] == again[k]).all() for k in merged)
    failed = subprocess.run([sys.executable, "-m", "fusion_ui.cli", "merge", str(recipe), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "error:" in failed.stderr  # exists, no --force: the normal exit path
