"""``fusion-ui app`` and ``python app.py``: one set of options, declared in fusion_ui/cli/app.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fusion_ui.cli import main

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = ("--host", "--port", "--share", "--auth", "--demo-dir", "--device", "--memory-budget",
           "--export-root", "--no-browser")


def test_app_help_lists_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["app", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fusion-ui app")
    assert [o for o in OPTIONS if o not in out] == []


def test_app_is_listed_among_the_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "serve the browser app" in capsys.readouterr().out


def test_app_py_is_the_same_command() -> None:
    if not (ROOT / "app.py").is_file():
        pytest.skip("not a checkout")
    proc = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: app.py")
    assert [o for o in OPTIONS if o not in proc.stdout] == []
    assert "fusion_ui.cli.app" in (ROOT / "app.py").read_text()  # the launcher declares no options itself


def test_listening_beyond_localhost_needs_a_login(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gradio")
    for key in ("GRADIO_ANALYTICS_ENABLED", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(key, raising=False)  # restored afterwards: the command sets them
    with pytest.raises(SystemExit) as exit_:
        main(["app", "--host", "0.0.0.0", "--no-browser"])
    assert exit_.value.code == 2
    assert "--auth" in capsys.readouterr().err


def test_the_command_line_loads_torch_only_when_a_command_needs_it() -> None:
    """`fusion-ui app` sets torch's OpenMP policy before torch loads, so building the command
    line (and `fusion-ui --help`) must not load it."""
    import subprocess
    import sys

    code = ("import sys, fusion_ui.cli, fusion_ui.cli.app; fusion_ui.cli.build_parser(); "
            "print('torch' in sys.modules, 'gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
