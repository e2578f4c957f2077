"""Interrupted exports: SIGTERM and SIGINT cancel cleanly; what SIGKILL leaves is removed by the
next export to that place, and the working folder of a live process is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM

from fusion_ui import export_merge, recipe_from_dict
from fusion_ui.cli import main
from fusion_ui.io.staging import OLD, TMP, Owner, is_alive, this_process, working_folder

# A `fusion-ui` process whose shard writer pauses after each tensor, so a test can signal it
# mid-export; it prints a line once a tensor is on disk. (Its recipe is a slerp, which no numba
# kernel covers: the process skips loading them, and starts writing sooner.)
SLOW_CLI = """
import sys, time
import fusion_ui.merge
fusion_ui.merge.warm_up_in_background = lambda: None
from fusion_ui.io import writer
_write = writer.ShardedSafetensorsSink.write
def slow(self, name, tensor):
    _write(self, name, tensor)
    print("wrote", name, flush=True)
    time.sleep(0.2)
writer.ShardedSafetensorsSink.write = slow
from fusion_ui.cli import main
sys.exit(main(sys.argv[1:]))
"""


def leftovers(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if "fusion-ui-tmp" in p.name or "fusion-ui-old" in p.name)


def write_recipe(family: dict[str, Path], path: Path, method: str = "task_arithmetic") -> Path:
    params = {"weight": 0.5} if method == "task_arithmetic" else {}
    path.write_text(yaml.safe_dump({
        "method": method, "base": str(family["base"]),
        "models": [{"model": str(family[m]), **params} for m in ("ft0", "ft1")],
    }))
    return path


def start_slow_export(family: dict[str, Path], folder: Path) -> subprocess.Popen[str]:
    """A real CLI process exporting to ``folder / "merged"``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "slow_cli.py"
    script.write_text(SLOW_CLI)
    recipe = write_recipe(family, folder / "r.yaml", method="slerp")
    return subprocess.Popen(
        [sys.executable, str(script), "merge", str(recipe), "--out", str(folder / "merged"), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_first_tensor(proc: subprocess.Popen[str]) -> None:
    watchdog = threading.Timer(120, proc.kill)  # a hung child fails the test instead of the run
    watchdog.start()
    line = proc.stdout.readline() if proc.stdout else ""
    watchdog.cancel()
    if not line.startswith("wrote"):
        proc.kill()
        pytest.fail(f"the export did not start: {line!r} {proc.communicate()[1]}")


@pytest.fixture(scope="module")
def slow_exports(llama_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """Two exporting processes, started together (each spends seconds importing torch)."""
    root = tmp_path_factory.mktemp("interrupted")
    procs = {kind: start_slow_export(llama_family, root / kind) for kind in ("term", "kill")}
    yield {kind: (proc, root / kind) for kind, proc in procs.items()}
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigterm_cancels_cleanly_with_exit_code_143(slow_exports) -> None:
    proc, folder = slow_exports["term"]
    wait_for_first_tensor(proc)
    assert leftovers(folder), "the export should be under way in a working folder"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM") and "nothing was written" in last, err
    assert "Traceback" not in err
    assert not (folder / "merged").exists() and leftovers(folder) == []


def test_what_sigkill_leaves_is_removed_by_the_next_export(slow_exports) -> None:
    proc, folder = slow_exports["kill"]
    out = folder / "merged"
    wait_for_first_tensor(proc)
    proc.kill()  # SIGKILL: no handler runs, the working folder stays
    proc.communicate(timeout=60)
    (debris,) = leftovers(folder)
    assert debris.name.startswith(".merged.fusion-ui-tmp-") and f"-{proc.pid}-" in debris.name
    assert any(p.suffix == ".safetensors" for p in debris.iterdir())  # partial shards

    recipe = recipe_from_dict(yaml.safe_load((folder / "r.yaml").read_text()))
    result = export_merge(recipe, out, device="cpu")
    assert leftovers(folder) == []
    (note,) = [w for w in result.warnings if "interrupted export" in w]
    assert f"process {proc.pid}" in note and debris.name in note
    AutoModelForCausalLM.from_pretrained(out)


def test_sigint_cancels_cleanly_with_exit_code_130(llama_family: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    import fusion_ui.merge as merge_mod

    real = merge_mod.report
    calls = {"n": 0}

    def interrupt_once(callback, done, total, message=""):
        real(callback, done, total, message)
        calls["n"] += 1
        if calls["n"] == 2:  # Ctrl-C after the second tensor
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(merge_mod, "report", interrupt_once)
    out = tmp_path / "merged"
    recipe = write_recipe(llama_family, tmp_path / "r.yaml")
    assert main(["merge", str(recipe), "--out", str(out), "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGINT")
    assert not out.exists() and leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_working_folders_of_live_processes_are_never_removed(llama_family: dict[str, Path],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "merged"
    me = this_process()
    assert is_alive(me) is True
    live = working_folder(out, TMP)  # this very process: as if another export were under way
    live.mkdir()
    (live / "model.safetensors").write_bytes(b"partial")
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    dead = Owner(me.host, done.pid, 0)
    reused = Owner(me.host, me.pid, me.started + 1)  # our pid, but another process's start time
    elsewhere = Owner("000000" if me.host != "000000" else "111111", done.pid, 0)
    for owner, kind in ((dead, TMP), (reused, OLD), (elsewhere, TMP)):
        (tmp_path / f".merged.{kind}-{owner.tag}-abc123").mkdir()
    assert is_alive(dead) is False and is_alive(reused) is False and is_alive(elsewhere) is None
    old_style = tmp_path / ".merged.fusion-ui-tmp-1a2b3c4d"  # named by an older fusion_ui
    old_style.mkdir()
    other_target = tmp_path / f".other.{TMP}-{dead.tag}-abc123"  # another export's place
    other_target.mkdir()

    r = recipe_from_dict(yaml.safe_load(write_recipe(llama_family, tmp_path / "r.yaml").read_text()))
    result = export_merge(r, out, device="cpu")
    kept = {p.name for p in leftovers(tmp_path)}
    assert kept == {live.name, f".merged.{TMP}-{elsewhere.tag}-abc123", old_style.name, other_target.name}
    assert (live / "model.safetensors").read_bytes() == b"partial"
    assert any("removed 2 folder(s)" in w for w in result.warnings), result.warnings
    assert any(old_style.name in w and "older fusion_ui" in w for w in result.warnings)


def test_sigterm_unwinds_every_command_like_ctrl_c(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    import time

    import fusion_ui.cli.inspect as inspect_cli

    cleaned = []

    def slow_inspect(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        finally:
            cleaned.append(True)  # without a handler, SIGTERM would skip this
        return 0

    monkeypatch.setattr(inspect_cli, "run", slow_inspect)
    assert main(["inspect", "x"]) == 143
    assert cleaned == [True] and capsys.readouterr().err.strip() == "terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
