"""Turn what a user typed (a folder, or a hub id ``org/name[@revision]``) into a local folder.

Hub ids go through ``huggingface_hub`` and its local cache: online users get the files
downloaded once; offline (``HF_HUB_OFFLINE=1`` or no network) we fail fast with a message
that names the id and says it is not cached.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fusion_ui.errors import ModelSourceError

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")

# Files a merge needs from a hub repo: weights, configs, tokenizer. Never data or images.
_HUB_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.jinja",
    "*.tiktoken",
)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are on disk, and how the user named it."""

    ref: str  # what the user typed: a path or a hub id (with @revision if given)
    path: Path  # local folder holding config.json, weights and tokenizer files
    hub_id: str | None = None  # set when the model came through the hub cache
    revision: str | None = None  # hub revision asked for, if any


def short_names(refs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Short unique names for model references: the folder or repo name, numbered on collision."""
    out: list[str] = []
    taken: set[str] = set()
    next_number: dict[str, int] = {}  # stem -> the next number to try (linear in len(refs))
    for ref in refs:
        stem = Path(str(ref).rstrip("/")).name or str(ref)
        name, n = stem, next_number.get(stem, 2)
        while name in taken:
            name, n = f"{stem}#{n}", n + 1
        next_number[stem] = n
        taken.add(name)
        out.append(name)
    return out


def split_revision(ref: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``)."""
    if "@" in ref and not Path(ref).exists():
        name, _, rev = ref.rpartition("@")
        return name, rev or None
    return ref, None


def looks_like_hub_id(ref: str) -> bool:
    name, _ = split_revision(ref)
    return bool(_HUB_ID_RE.match(name)) and not name.startswith((".", "/", "~"))


def resolve_model(ref: str | os.PathLike[str], *, revision: str | None = None) -> ModelSource:
    """Find the local folder for ``ref``: an existing folder, or a hub id in the local cache."""
    text = os.fspath(ref).strip()
    if not text:
        raise ModelSourceError("empty model reference: give a folder path or a hub id (org/name)")
    path = Path(text).expanduser()
    try:
        exists = path.exists()
        if exists and not path.is_dir():
            raise ModelSourceError(
                f"{text} is a file; give the model's folder (the one holding config.json)"
            )
        if exists:
            return ModelSource(ref=text, path=path.resolve())
    except (OSError, RuntimeError) as exc:  # permissions on a parent folder, symlink loops
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ModelSourceError(f"cannot open model folder {text}: {reason}; check the path and its permissions") from exc
    if not looks_like_hub_id(text):
        raise ModelSourceError(
            f"model folder not found: {text}. Check the path, or give a hub id as org/name"
        )
    hub_id, rev = split_revision(text)
    return _resolve_hub(text, hub_id, revision or rev)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _resolve_hub(ref: str, hub_id: str, revision: str | None) -> ModelSource:
    # Imported lazily: only hub users pay for it, and the env is read at call time.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _hub_offline()
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    where = f"{hub_id}" + (f"@{revision}" if revision else "")
    try:
        folder = snapshot_download(
            hub_id,
            revision=revision,
            allow_patterns=list(_HUB_PATTERNS),
            local_files_only=offline,
            cache_dir=cache_dir,
        )
        # Repos that only ship pickle weights: fetch those too (loaded with weights_only=True).
        if not any(Path(folder).glob("*.safetensors")) and not offline:
            folder = snapshot_download(
                hub_id,
                revision=revision,
                allow_patterns=[*_HUB_PATTERNS, "*.bin"],
                cache_dir=cache_dir,
            )
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise ModelSourceError(
            f"{where} is not a local folder, and this hub id is not in the local cache "
            f"({why}). Download it once while online (`hf download {hub_id}`), "
            f"or give the path of a local copy."
        ) from exc
    except GatedRepoError as exc:
        raise ModelSourceError(
            f"{where} is gated: accept its licence on the hub and log in (`hf auth login`)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelSourceError(
            f"{where}: no such model on the hub (or it is private: log in with `hf auth login`)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelSourceError(f"{where}: revision {revision!r} does not exist") from exc
    except OSError as exc:  # network errors that slipped past the cache fallback
        raise ModelSourceError(f"{where}: could not fetch from the hub: {exc}") from exc
    return ModelSource(ref=ref, path=Path(folder), hub_id=hub_id, revision=revision)
