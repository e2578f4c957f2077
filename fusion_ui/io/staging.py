"""Hidden working folders beside an export's target, named after the process that writes them.

An export writes into ``.<name>.fusion-ui-tmp-<owner>-<random>`` and renames it into place; an
export it replaces is first moved aside to ``.<name>.fusion-ui-old-<owner>-<random>`` and then
deleted. A process killed with SIGKILL (or a power cut) leaves these folders behind, partial
shards and all. The owner part (a short hash of the machine, the pid, and the process's start
time where the system tells it) lets the next export to that place remove what a dead process
left, and never touch the folder of a process still at work: a pid reused by a later process
has another start time, and a pid on another machine (a shared filesystem) proves nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

Kind = Literal["fusion-ui-tmp", "fusion-ui-old"]
TMP: Kind = "fusion-ui-tmp"  # being written
OLD: Kind = "fusion-ui-old"  # an earlier export, moved aside while the new one takes its place


@dataclass(frozen=True)
class Owner:
    """The process that made a working folder."""

    host: str  # 6 hex digits: a hash of the host name and pid namespace (see _host_hash)
    pid: int
    started: int  # start time in clock ticks since boot (Linux /proc); 0 where unknown

    @property
    def tag(self) -> str:
        return f"{self.host}-{self.pid}-{self.started}"


@dataclass(frozen=True)
class Leftover:
    """A working folder beside a target, and whether its owner is gone."""

    path: Path
    kind: Kind
    owner: Owner | None  # None: named by an older fusion_ui, the owner cannot be told
    dead: bool  # its owner is known to have exited: the folder is debris


def this_process() -> Owner:
    pid = os.getpid()
    return Owner(_host_hash(), pid, process_start_time(pid) or 0)


def working_folder(target: Path, kind: Kind) -> Path:
    """A fresh name for a working folder of ``kind`` beside ``target``, owned by this process."""
    return target.parent / f".{target.name}.{kind}-{this_process().tag}-{uuid.uuid4().hex[:6]}"


def move_into_place(tmp: Path, target: Path, *, recheck: Callable[[Path], None]) -> None:
    """Rename the finished folder ``tmp`` to ``target``. An existing target is first checked
    again (``recheck`` raises if it may no longer be replaced), moved aside, and removed only
    once ``tmp`` took its place; if that rename fails, the old target comes back."""
    if not (target.exists() or target.is_symlink()):
        tmp.rename(target)
        return
    recheck(target)  # still what it was when the work began?
    old = working_folder(target, OLD)
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


def check_artefact_target(target: Path, *, force: bool, marker: str, kind: str) -> None:
    """What a trained artefact's folder (``kind``: "bridges", "prompt") may be written over:
    nothing, or with ``force`` an earlier one (it holds ``marker``) or an empty folder."""
    from fusion_ui.errors import ExportError

    if not (target.exists() or target.is_symlink()):
        return
    if not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder; choose another output folder")
    if not force:
        raise ExportError(
            f"{target} already exists",
            fixes={
                "cli": "pass --force to replace it, or choose another --out",
                "python": "pass force=True to replace it, or choose another folder",
                "app": "tick 'replace' or choose another folder",
            },
        )
    if not ((target / marker).is_file() or not any(target.iterdir())):
        raise ExportError(
            f"{target} is not a {kind} folder (no {marker}); it is never replaced, choose another folder"
        )


def write_artefact(target: Path, tensors: dict, info: dict, *, force: bool, tensors_file: str, config_file: str,
                   format: str, kind: str) -> Path:
    """A trained artefact (``tensors_file`` safetensors + ``config_file`` JSON) written into a
    working folder beside ``target``, then moved into place (:func:`move_into_place`): on any
    failure nothing is left, and an earlier artefact stays as it was."""
    import json

    from safetensors.torch import save_file

    from fusion_ui.errors import ExportError

    def recheck(t: Path) -> None:
        check_artefact_target(t, force=force, marker=config_file, kind=kind)

    recheck(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_dead(target)
        tmp = working_folder(target, TMP)
        tmp.mkdir()
    except OSError as exc:
        raise ExportError(f"cannot write the {kind} to {target}: {exc.strerror or exc}") from exc
    try:
        save_file(tensors, tmp / tensors_file, metadata={"format": format})
        (tmp / config_file).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        move_into_place(tmp, target, recheck=recheck)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"cannot write the {kind} to {target}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def read_artefact_json(folder: str | os.PathLike[str], *, config_file: str, format: str, version: int,
                       kind: str, made_by: str) -> tuple[Path, dict]:
    """The JSON of a trained artefact, checked: present, JSON, of ``format``, a version this
    release reads. Errors name the file and what makes one (``made_by``: the command)."""
    import json

    from fusion_ui.errors import ModelSourceError

    path = Path(folder).expanduser()
    file = path / config_file
    if not file.is_file():
        raise ModelSourceError(f"{path} holds no {config_file}: give the folder written by `{made_by}`")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelSourceError(f"{file} cannot be read ({exc}); make it again with `{made_by}`") from exc
    if not isinstance(data, dict) or data.get("format") != format:
        got = data.get("format") if isinstance(data, dict) else None
        raise ModelSourceError(f"{file} is not a fusion_ui {kind} file (format {got!r})")
    try:
        newer = int(data.get("version", 0)) > version
    except (TypeError, ValueError):
        newer = True
    if newer:
        raise ModelSourceError(
            f"{file} is version {data.get('version')!r}; this fusion_ui reads up to {version}: upgrade fusion_ui"
        )
    return file, data


def leftovers(target: Path) -> list[Leftover]:
    """Working folders beside ``target`` (of any process), with what is known of their owners."""
    pattern = re.compile(
        rf"^\.{re.escape(target.name)}\.({TMP}|{OLD})-(?:([0-9a-f]{{6}})-(\d+)-(\d+)-)?[0-9a-f]+$"
    )
    found = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    for path in entries:
        m = pattern.match(path.name)
        if m is None:
            continue
        kind: Kind = TMP if m.group(1) == TMP else OLD
        owner = Owner(m.group(2), int(m.group(3)), int(m.group(4))) if m.group(2) else None
        found.append(Leftover(path, kind, owner, dead=owner is not None and is_alive(owner) is False))
    return sorted(found, key=lambda x: x.path.name)


def remove_dead(target: Path) -> tuple[list[Leftover], list[Leftover]]:
    """Delete the working folders that exited processes left beside ``target``.

    Returns (removed, kept): ``kept`` are folders whose owner may still be running or cannot be
    told (another machine, an older fusion_ui), or that could not be deleted.
    """
    removed, kept = [], []
    for left in leftovers(target):
        if not left.dead:
            kept.append(left)
            continue
        try:
            if left.path.is_symlink():
                left.path.unlink()
            else:
                shutil.rmtree(left.path)
            removed.append(left)
        except OSError:
            kept.append(left)
    return removed, kept


def is_alive(owner: Owner) -> bool | None:
    """Whether the owner process still runs: True, False, or None when this machine cannot tell."""
    if owner.host != _host_hash() or os.name == "nt":  # Windows: os.kill(pid, 0) would kill it
        return None
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return None
    state = _proc_stat(owner.pid)
    if state is not None and state[0] in ("Z", "X"):  # exited, waiting to be reaped
        return False
    started = process_start_time(owner.pid)
    if owner.started and started is not None and started != owner.started:
        return False  # the pid was reused by a later process
    return True


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux), or None where unknown."""
    stat = _proc_stat(pid)
    try:
        return int(stat[19]) if stat is not None else None
    except (IndexError, ValueError):
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


@cache
def _host_hash() -> str:
    """This machine, as far as pids go: the host name and the pid namespace (containers that
    share a host name still number their processes apart). Stable across reboots, so what a
    power cut left is recognised as this machine's."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = ""
    key = f"{socket.gethostname()}/{namespace}".encode()
    return hashlib.blake2s(key, digest_size=3).hexdigest()
