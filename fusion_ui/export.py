"""Exporting a merge to a Hugging Face folder that ``transformers`` loads, atomically.

Everything is written into a temporary folder beside the target and renamed into place at the
end; on any error or cancel the temporary folder is removed and the target is untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fusion_ui.card import model_card
from fusion_ui.device import resolve_device
from fusion_ui.errors import ExportError, ModelSourceError
from fusion_ui.io.checkpoint import TOKENIZER_FILES, Checkpoint
from fusion_ui.io.writer import ShardedSafetensorsSink, parse_size
from fusion_ui.merge import MergePlan, plan_merge, run_merge
from fusion_ui.mergekit_compat import recipe_to_mergekit
from fusion_ui.progress import CancelToken, ProgressCallback
from fusion_ui.recipe import Recipe

RECIPE_FILE = "fusion_ui_recipe.yaml"
MERGEKIT_FILE = "mergekit_config.yml"
_DISK_MARGIN = 64 * 2**20  # bytes kept free beyond the estimate (configs, tokenizer, filesystem)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    files: list[str]
    total_bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


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
    target = Path(out_dir).expanduser().absolute()
    shard_bytes = parse_size(max_shard_size)
    if target.exists() and not force:
        raise ExportError(f"{target} already exists; choose another folder or pass --force to replace it")
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder")
    start = time.perf_counter()
    dev = resolve_device(device)  # a device that is not there fails here, before any work
    with plan_merge(recipe, allow_large_deltas=allow_large_deltas) as plan:
        # The written recipe names the dtype actually used, so it reproduces this export exactly.
        plan.recipe = plan.recipe.model_copy(update={"dtype": str(plan.out_dtype).removeprefix("torch.")})
        tok_source = _tokenizer_source(plan)
        parent = target.parent
        parent.mkdir(parents=True, exist_ok=True)
        _check_disk_space(parent, plan.total_bytes)
        tmp = parent / f".{target.name}.fusion-ui-tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            recipe_yaml = plan.recipe.to_yaml()
            sink = ShardedSafetensorsSink(
                tmp, max_shard_bytes=shard_bytes, metadata={"fusion_ui_recipe": recipe_yaml}
            )
            run_merge(plan, sink, device=dev, progress=progress, cancel=cancel)
            _write_config(plan, tmp)
            _copy_tokenizer(tok_source, tmp)
            notes = None
            if write_mergekit:
                text, notes = recipe_to_mergekit(plan.recipe)
                if text is not None:
                    (tmp / MERGEKIT_FILE).write_text(text, encoding="utf-8")
            (tmp / RECIPE_FILE).write_text(recipe_yaml, encoding="utf-8")
            (tmp / "README.md").write_text(model_card(plan, recipe_yaml, notes), encoding="utf-8")
            if cancel is not None:
                cancel.raise_if_cancelled()
            _replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return ExportResult(
            path=target,
            files=sorted(p.name for p in target.iterdir()),
            total_bytes=plan.total_bytes,
            seconds=time.perf_counter() - start,
            warnings=list(plan.warnings),
        )


def _tokenizer_source(plan: MergePlan) -> Checkpoint:
    src = plan.recipe.tokenizer_source
    if src == "base":
        return plan.reference
    if src.startswith("model:"):
        return plan.models[plan.recipe.model_index(src[len("model:"):])]
    return Checkpoint.open(src)


def _check_disk_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed + _DISK_MARGIN:
        raise ExportError(
            f"not enough disk space in {folder}: the merge needs about {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB are free. Free some space, export elsewhere, or pick a smaller dtype"
        )


def _write_config(plan: MergePlan, folder: Path) -> None:
    config = dict(plan.reference.config)
    dtype = str(plan.out_dtype).removeprefix("torch.")
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    config["dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _copy_tokenizer(source: Checkpoint, folder: Path) -> None:
    copied = False
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        path = source.path / name
        if path.is_file():
            shutil.copy2(path, folder / name)
            copied = copied or name != "generation_config.json"
    if not copied:
        raise ModelSourceError(
            f"{source.ref} has no tokenizer files to copy; set `tokenizer_source` to a model that has them"
        )


def _replace(tmp: Path, target: Path) -> None:
    """Move the finished folder into place; an old target (with --force) goes only after."""
    if target.exists():
        old = target.parent / f".{target.name}.fusion-ui-old-{uuid.uuid4().hex[:8]}"
        target.rename(old)
        try:
            tmp.rename(target)
        except BaseException:
            old.rename(target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
