"""What the user picked: a base and its fine-tunes (a Selection), the built-in demo family, and
the bounds on what one request may ask of the app (Limits)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fusion_ui.errors import InputError, RecipeError
from fusion_ui.io.source import short_names

Selection = dict[str, Any]  # {"base": ref, "models": [ref...], "labels": [label...]}: small, copyable

_HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@/")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the app: each bound keeps a job short and the page usable."""

    max_finetunes: int = 6  # fine-tunes per selection (the Merge tab's slots)
    max_new_tokens: int = 256  # tokens generated per Compare column
    max_prompt_chars: int = 100_000  # characters before tokenizing (tokens are checked against the context)
    max_eval_items: int = 2_000  # items scored per model in one run
    max_upload_bytes: int = 20 * 2**20  # an uploaded eval set


LIMITS = Limits()


@dataclass(frozen=True)
class DemoFamily:
    """The built-in demo family found on disk: ``base/``, ``expert_<skill>/``, ``evals/*.jsonl``,
    and beside it ``forgetful/expert_<skill>/``: experts fine-tuned without replay, which forget
    the general skills (what LM-Cocktail repairs; the default selection leaves them out)."""

    root: Path
    base: Path
    experts: dict[str, Path]  # skill -> model folder
    eval_sets: dict[str, Path]  # skill -> JSONL file
    forgetful: dict[str, Path] = field(default_factory=dict)  # skill -> no-replay expert's folder

    @classmethod
    def find(cls, root: str | os.PathLike[str] | None) -> DemoFamily | None:
        """The family under ``root``, or None when it is not (yet) built there."""
        if root is None:
            return None
        root = Path(root).expanduser().resolve()
        if not (root / "base" / "config.json").is_file():
            return None
        experts = {
            p.name.removeprefix("expert_"): p
            for p in sorted(root.glob("expert_*"))
            if (p / "config.json").is_file()
        }
        evals = {p.stem: p for p in sorted((root / "evals").glob("*.jsonl"))}
        forgetful = {
            p.name.removeprefix("expert_"): p
            for p in sorted((root / "forgetful").glob("expert_*"))
            if (p / "config.json").is_file()
        }
        return cls(root, root / "base", experts, evals, forgetful) if experts else None

    def selection(self) -> Selection:
        """The base and every (replay) expert: the default selection."""
        models = [str(p) for p in self.experts.values()]
        return {"base": str(self.base), "models": models, "labels": short_names(models)}

    def forgetful_selection(self, skill: str) -> Selection:
        """The base and the no-replay expert of ``skill``: where LM-Cocktail has something to fix."""
        models = [str(self.forgetful[skill])]
        return {"base": str(self.base), "models": models, "labels": short_names(models)}


def make_selection(base: str, models: Sequence[str], *, limits: Limits = LIMITS) -> Selection:
    """A selection from what a user typed; empty lines dropped, paths made absolute.

    Refuses more fine-tunes than the app merges at once, a fine-tune listed twice, and the base
    listed as a fine-tune: each is a mistake, and a long list would hold the app for minutes.
    """
    base = base.strip()
    refs = [m.strip() for m in models if m.strip()]
    if not base:
        raise RecipeError("choose a base model: a folder with config.json and weights, or a hub id")
    if not refs:
        raise RecipeError("add at least one fine-tune (one folder or hub id per line)")
    if len(refs) > limits.max_finetunes:
        raise InputError(
            f"{len(refs)} fine-tunes are listed; the app takes up to {limits.max_finetunes} at once. "
            "Remove some, or merge more with a recipe from the command line (fusion-ui merge)"
        )
    base, refs = _absolute(base), [_absolute(r) for r in refs]
    seen: set[str] = set()
    for ref in refs:
        if ref in seen:
            raise InputError(f"{ref} is listed twice; list each fine-tune once")
        if ref == base:
            raise InputError(f"{ref} is the base; list only its fine-tunes below it")
        seen.add(ref)
    return {"base": base, "models": refs, "labels": short_names(refs)}


def selection_key(sel: Selection) -> str:
    """One string per selection (base, fine-tunes and their labels), for caches."""
    return "\n".join([sel["base"], *sel["models"], *sel["labels"]])


def label_of(label_or_ref: str, sel: Selection | None) -> str:
    """A fine-tune's label in ``sel``, from its label or its reference."""
    if sel and label_or_ref in sel["models"]:
        return sel["labels"][sel["models"].index(label_or_ref)]
    return label_or_ref if not sel or label_or_ref in sel["labels"] else Path(label_or_ref).name


def ref_of(label_or_ref: str, sel: Selection | None) -> str:
    """A fine-tune's reference from its label in ``sel`` (or the reference itself)."""
    if sel and label_or_ref in sel["labels"]:
        return sel["models"][sel["labels"].index(label_or_ref)]
    return label_or_ref


def _absolute(ref: str) -> str:
    p = Path(ref).expanduser()
    try:
        return str(p.resolve()) if p.exists() else ref
    except OSError:
        return ref


def check_ref(ref: str) -> tuple[bool, str]:
    """Quick validation while a user types (no network, no weights read)."""
    ref = ref.strip()
    if not ref:
        return False, "empty"
    p = Path(ref).expanduser()
    try:
        exists = p.exists()
    except OSError as exc:  # a name too long, a folder without permission
        return False, f"`{ref[:80]}`: cannot be read ({exc.strerror or exc})"
    if exists:
        if not p.is_dir():
            return False, f"`{ref}` is a file; give the model's folder"
        if not (p / "config.json").is_file():
            return False, f"`{ref}` has no config.json: not a Hugging Face model folder"
        weights = [*p.glob("*.safetensors"), *p.glob("*.bin"), *p.glob("*.safetensors.index.json")]
        if not weights:
            return False, f"`{ref}` has no *.safetensors or *.bin weights"
        return True, f"`{p.name}`: model folder"
    if ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").replace("/", "", 1):
        return False, f"`{ref}`: no such folder"
    if ref.count("/") == 1 and set(ref) <= _HUB_ID_CHARS:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        note = " (offline: only if already in the local hub cache)" if offline else ""
        return True, f"`{ref}`: hub id{note}"
    return False, f"`{ref}`: no such folder, and not a hub id `org/name`"


__all__ = ["LIMITS", "DemoFamily", "Limits", "Selection", "check_ref", "label_of", "make_selection", "ref_of",
           "selection_key"]
