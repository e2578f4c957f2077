"""Exporting a merge to a Hugging Face folder that ``transformers`` loads, atomically.

Everything is written into a hidden working folder beside the target and renamed into place at
the end; on any error or cancel the working folder is removed and the target is untouched. What
a killed process leaves behind is removed by the next export to the same place
(:mod:`fusion_ui.io.staging`).

Before any work the target is checked: never the current folder or one above it, never an
input model's folder or one that holds an input model, and ``force`` replaces only an empty
folder or an earlier export (a folder holding :data:`RECIPE_FILE`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusion_ui.card import model_card
from fusion_ui.device import resolve_device
from fusion_ui.errors import ExportError, ModelSourceError, RecipeError
from fusion_ui.io.checkpoint import TOKENIZER_FILES, tokenizer_files, tokenizer_size
from fusion_ui.io.source import resolve_model
from fusion_ui.io.staging import TMP, Leftover, move_into_place, remove_dead, working_folder
from fusion_ui.io.writer import ShardedSafetensorsSink, format_size, parse_size
from fusion_ui.merge import MergePlan, plan_merge, run_merge
from fusion_ui.mergekit_compat import recipe_to_mergekit
from fusion_ui.progress import CancelToken, ProgressCallback
from fusion_ui.recipe import Recipe

RECIPE_FILE = "fusion_ui_recipe.yaml"
MERGEKIT_FILE = "mergekit_config.yml"
_DISK_MARGIN = 64 * 2**20  # bytes kept free beyond the estimate (configs, tokenizer, filesystem)

_FORCE_FIX = {
    "cli": "pass --force to replace it",
    "app": "tick “replace the folder if it exists”",
    "python": "pass force=True",
}
_NEW_FOLDER_FIX = {
    "cli": "give --out a new folder, e.g. --out merged/",
    "app": "enter a new folder, e.g. merged/",
    "python": "give a new folder, e.g. export_merge(recipe, 'merged/')",
}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    files: list[str]
    total_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TokenizerChoice:
    """Where an export's tokenizer files come from."""

    folder: Path | None  # None: no input model has a tokenizer, the export gets none
    warnings: list[str] = field(default_factory=list)


def is_earlier_export(path: Path) -> bool:
    """Whether ``path`` is a folder an export wrote (it holds the recipe file exports write)."""
    path = Path(path)
    return path.is_dir() and (path / RECIPE_FILE).is_file()


def export_merge(
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    max_shard_size: int | str = "2GB",
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    write_mergekit: bool = True,
    allow_large_deltas: bool = False,
) -> ExportResult:
    """Merge ``recipe`` and write a loadable checkpoint folder at ``out_dir``."""
    target = output_folder(out_dir)
    shard_bytes = parse_size(max_shard_size)
    check_target(target, force=force, inputs=_recipe_inputs(recipe))
    _check_writable(target)
    start = time.perf_counter()
    dev = resolve_device(device)  # a device that is not there fails here, before any work
    with plan_merge(recipe, allow_large_deltas=allow_large_deltas) as plan:
        # The written recipe names the dtype actually used, so it reproduces this export exactly.
        plan.recipe = plan.recipe.model_copy(update={"dtype": str(plan.out_dtype).removeprefix("torch.")})
        tokenizer = choose_tokenizer(plan, target)
        inputs = [(c.ref, c.path) for c in (plan.reference, *plan.models)]
        if tokenizer.folder is not None:
            inputs.append((plan.recipe.tokenizer_source, tokenizer.folder))
        check_target(target, force=force, inputs=inputs)  # hub ids are folders only now
        warnings = [*plan.warnings, *tokenizer.warnings]
        parent = target.parent
        with _writing(target):
            parent.mkdir(parents=True, exist_ok=True)
        removed, kept = remove_dead(target)
        warnings += _leftover_warnings(target, removed, kept)
        tmp = working_folder(target, TMP)
        with _writing(target):
            tmp.mkdir()
        try:
            with _writing(target):
                _check_disk_space(parent, plan.total_bytes)
                recipe_yaml = plan.recipe.to_yaml()
                sink = ShardedSafetensorsSink(
                    tmp, max_shard_bytes=shard_bytes, metadata={"fusion_ui_recipe": recipe_yaml}
                )
                run_merge(plan, sink, device=dev, progress=progress, cancel=cancel)
                _write_config(plan, tmp)
                _copy_tokenizer(tokenizer.folder, plan.reference.path, tmp)
                notes, text = None, None
                if write_mergekit:
                    text, notes = recipe_to_mergekit(plan.recipe)
                    if text is not None:
                        (tmp / MERGEKIT_FILE).write_text(text, encoding="utf-8")
                (tmp / RECIPE_FILE).write_text(recipe_yaml, encoding="utf-8")
                card = model_card(plan, recipe_yaml, notes, mergekit_written=text is not None)
                (tmp / "README.md").write_text(card, encoding="utf-8")
                if cancel is not None:
                    cancel.raise_if_cancelled()
                move_into_place(tmp, target, recheck=lambda t: check_target(t, force=force))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ExportResult(
            path=target,
            files=sorted(p.name for p in target.iterdir()),
            total_bytes=plan.total_bytes,
            seconds=time.perf_counter() - start,
            warnings=warnings,
        )


# -- the target --------------------------------------------------------------------------


def output_folder(out_dir: str | os.PathLike[str]) -> Path:
    """The absolute output folder; an empty path (an unset shell variable) is refused."""
    text = os.fspath(out_dir)
    if not text.strip():
        raise ExportError(
            "the output folder is empty (an unset shell variable?); fusion_ui will not guess one",
            fixes=_NEW_FOLDER_FIX,
        )
    try:
        return Path(text).expanduser().absolute()
    except RuntimeError as exc:  # ~user of an unknown user
        raise ExportError(f"cannot use the output folder {text}: {exc}", fixes=_NEW_FOLDER_FIX) from None


def check_target(target: Path, *, force: bool, inputs: Iterable[tuple[str, Path]] = ()) -> None:
    """Refuse an output folder the export must not write over (see the module docstring)."""
    real = _real(target)
    cwd = _real_cwd()
    if cwd is not None and (real == cwd or real in cwd.parents):
        where = "the current folder" if real == cwd else "a folder above the current one"
        raise ExportError(
            f"the output folder {target} is {where}; fusion_ui never writes an export over it",
            fixes=_NEW_FOLDER_FIX,
        )
    for ref, path in inputs:
        folder = _real(path)
        if real == folder or real in folder.parents:
            what = "the folder of" if real == folder else "a folder holding"
            raise ExportError(
                f"the output folder {target} is {what} the input model {ref}; the export would "
                f"overwrite a model it reads",
                fixes=_NEW_FOLDER_FIX,
            )
    try:
        if not (target.exists() or target.is_symlink()):
            return
        if not target.is_dir():
            raise ExportError(f"{target} exists and is not a folder", fixes=_NEW_FOLDER_FIX)
        if not force:
            raise ExportError(f"{target} already exists; choose another folder or replace it", fixes=_FORCE_FIX)
        if not is_earlier_export(target) and any(target.iterdir()):
            raise ExportError(
                f"{target} holds files that are not a fusion_ui export (it has no {RECIPE_FILE}); "
                f"replacing only ever replaces an earlier export or an empty folder: move those "
                f"files away or choose another folder"
            )
    except OSError as exc:
        raise _write_error(exc, target) from exc


def _recipe_inputs(recipe: Recipe) -> list[tuple[str, Path]]:
    """The recipe's local model folders (hub ids are checked once resolved, after planning)."""
    refs = [recipe.base, *(e.model for e in recipe.models)]
    tok = recipe.tokenizer_source
    if tok != "base" and not tok.startswith("model:"):
        refs.append(tok)
    out = []
    for ref in refs:
        if not ref:
            continue
        path = Path(ref).expanduser()
        try:
            if path.is_dir():
                out.append((ref, path))
        except OSError:
            continue  # an unreadable path is reported when the model is opened
    return out


def _real(path: Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _real_cwd() -> Path | None:
    try:
        return Path.cwd().resolve()
    except OSError:  # the working folder was deleted
        return None


def _check_writable(target: Path) -> None:
    """Fail now, before any work, where the target cannot be created: read-only, no
    permission, or a file where a folder should be."""
    folder = target.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ExportError(
            f"cannot create {target}: {folder} is a file, not a folder", fixes=_NEW_FOLDER_FIX
        )
    if _read_only(folder):
        raise ExportError(
            f"cannot write {target}: {folder} is on a read-only filesystem; export to a folder on "
            f"a writable disk"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(
            f"cannot write {target}: no permission to create files in {folder}; choose a folder "
            f"you can write to"
        )


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows): the first write will tell
        return False


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Turn the operating system's write errors (disk full, read-only...) into ExportErrors."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:  # not from the operating system: a bug, keep its traceback
            raise
        raise _write_error(exc, target) from exc


def _write_error(exc: OSError, target: Path) -> ExportError:
    file = f" ({exc.filename})" if exc.filename else ""
    nothing = "the partial export was removed and nothing was written"
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return ExportError(
            f"the disk ran out of space while writing {target}{file}; {nothing}. Free some "
            f"space or export to another disk"
        )
    if exc.errno == errno.EROFS:
        return ExportError(
            f"cannot write {target}: the filesystem is read-only{file}; export to a folder on a "
            f"writable disk"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ExportError(
            f"cannot write {target}: permission denied{file}; choose a folder you can write to"
        )
    if exc.errno == errno.ENOTDIR:
        blocker = next((p for p in (target, *target.parents) if p.is_file()), None)
        what = f"{blocker} is a file, not a folder" if blocker else "a part of the path is not a folder"
        return ExportError(f"cannot create {target}: {what}", fixes=_NEW_FOLDER_FIX)
    return ExportError(f"cannot write {target}: {exc.strerror or exc}{file}; {nothing}")


def _leftover_warnings(target: Path, removed: list[Leftover], kept: list[Leftover]) -> list[str]:
    out = []
    if removed:
        names = ", ".join(x.path.name for x in removed)
        pids = ", ".join(sorted({str(x.owner.pid) for x in removed if x.owner is not None}))
        out.append(
            f"removed {len(removed)} folder(s) left beside {target} by an interrupted export "
            f"(process {pids}, no longer running): {names}"
        )
    for x in kept:
        if x.owner is None or x.dead:
            what = "cannot be deleted" if x.dead else "was left by an older fusion_ui"
            out.append(
                f"{x.path} looks like the leftover of an interrupted export and {what}; delete it "
                f"by hand if no export is writing there"
            )
    return out


def _check_disk_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed + _DISK_MARGIN:
        raise ExportError(
            f"not enough disk space in {folder}: the merge needs about {format_size(needed)}, and "
            f"fusion_ui keeps {format_size(_DISK_MARGIN)} free beyond that (config, tokenizer, "
            f"filesystem), so {format_size(needed + _DISK_MARGIN)} in all; {format_size(free)} "
            f"are free. Free some space, export elsewhere, or pick a smaller dtype"
        )


# -- contents ----------------------------------------------------------------------------


def choose_tokenizer(plan: MergePlan, target: Path | None = None) -> TokenizerChoice:
    """Where the export's tokenizer comes from, checked before any heavy work.

    A source without tokenizer files is refused when another input model has them (naming it);
    when no input model has any, the export goes without, with a warning (as mergekit does). A
    tokenizer with more token ids than the merged embeddings have rows is refused.
    """
    src = plan.recipe.tokenizer_source
    named = [("base", plan.base)] if plan.base is not None else []
    named += [(f"model:{i}", m) for i, m in enumerate(plan.models)]
    if src == "base":
        folder, who = plan.reference.path, plan.reference.ref
    elif src.startswith("model:"):
        ckpt = plan.models[plan.recipe.model_index(src[len("model:"):])]
        folder, who = ckpt.path, ckpt.ref
    else:
        folder, who = resolve_model(src).path, src  # a tokenizer-only folder is fine: no weights needed
    if tokenizer_files(folder):
        if src != "base":
            _check_tokenizer_fits(plan, folder, src, who)
        return TokenizerChoice(folder)
    if src != "base" and not src.startswith("model:"):
        raise ModelSourceError(
            f"tokenizer_source {src} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)",
            fixes=_tokenizer_fix("base"),
        )
    others = [(key, c) for key, c in named if c.path != folder and c.tokenizer_files()]
    if others:
        key, other = others[0]
        raise ModelSourceError(
            f"the tokenizer source ({src}: {who}) has no tokenizer files, but {other.ref} has them",
            fixes=_tokenizer_fix(key),
        )
    where = f" into {target}" if target is not None else ""
    return TokenizerChoice(None, [
        f"no input model has tokenizer files, so the export has none (as mergekit does); copy "
        f"the tokenizer the models were trained with{where} before using it"
    ])


def _tokenizer_fix(source: str) -> dict[str, str]:
    return {
        "cli": f"set `tokenizer_source: {source}` in the recipe",
        "app": f"choose “{source}” as the tokenizer source",
        "python": f"set tokenizer_source={source!r} in the recipe",
    }


def _check_tokenizer_fits(plan: MergePlan, folder: Path, src: str, who: str) -> None:
    tokens = tokenizer_size(folder)
    rows = plan.reference.embedding_rows()
    if tokens is not None and rows is not None and tokens > rows:
        raise RecipeError(
            f"tokenizer_source {src} ({who}) has {tokens} tokens (added tokens included), but the "
            f"merged model has {rows} embedding rows: token ids {rows}..{tokens - 1} would index "
            f"past the embeddings and crash the model; use the tokenizer of the base or of a model "
            f"with as many rows",
            fixes=_tokenizer_fix("base"),
        )


def _write_config(plan: MergePlan, folder: Path) -> None:
    config = dict(plan.reference.config)
    config.update(plan.config_updates)  # a layer stack's layer count (and per-layer lists)
    dtype = str(plan.out_dtype).removeprefix("torch.")
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    config["dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _copy_tokenizer(source: Path | None, reference: Path, folder: Path) -> None:
    """Tokenizer files (and generation_config.json) from ``source``; without a tokenizer, the
    generation config of the reference model."""
    names = [*TOKENIZER_FILES, "generation_config.json"] if source is not None else ["generation_config.json"]
    origin = source if source is not None else reference
    for name in names:
        path = origin / name
        if not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelSourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        (folder / name).write_bytes(data)

