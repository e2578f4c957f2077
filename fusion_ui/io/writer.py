"""Where merged tensors go: a state dict, a loaded model (in place), or sharded safetensors.

Every sink gets the full list of tensors first (``begin``), then each tensor in that order
(``write``), then ``finish``; on failure the engine calls ``abort``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fusion_ui.errors import ExportError, IncompatibleModelsError
from fusion_ui.io.checkpoint import SAFE_INDEX, SAFE_SINGLE
from fusion_ui.io.direct import (
    DIRECT_IO_ENV,
    DIRECT_MIN_BYTES,
    STAGING_BYTES,
    OutputFile,
    aligned_buffer,
)
from fusion_ui.io.safetensors_format import build_header, write_tensor_bytes


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the sink will receive: name, output shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


class TensorSink(Protocol):
    """Where merged tensors go. A sink whose ``retains_tensors`` is False (copies or writes each
    tensor before ``write`` returns) lets the engine reuse the memory it handed over."""

    def begin(self, specs: Sequence[TensorSpec]) -> None: ...
    def write(self, name: str, tensor: torch.Tensor) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


class StateDictSink:
    """Collects the merged tensors in a dict (CPU), for previews and tests."""

    retains_tensors = True  # the tensors handed over are the result

    def __init__(self) -> None:
        self.state_dict: dict[str, torch.Tensor] = {}

    def begin(self, specs: Sequence[TensorSpec]) -> None:
        self.state_dict = {}

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.state_dict[name] = tensor

    def finish(self) -> None:
        return None

    def abort(self) -> None:
        self.state_dict = {}


class ModelSink:
    """Copies merged tensors into a loaded ``torch.nn.Module`` in place (a preview model).

    Names are checked against the model before any work, so a mismatch fails fast. On abort
    the model holds a mix of old and new tensors; callers reload or re-merge it.
    """

    retains_tensors = False  # each tensor is copied into the model

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._targets: dict[str, torch.Tensor] = {}

    def begin(self, specs: Sequence[TensorSpec]) -> None:
        state = self.model.state_dict(keep_vars=True)
        missing = [s.name for s in specs if s.name not in state]
        wrong = [s.name for s in specs if s.name in state and tuple(state[s.name].shape) != s.shape]
        if missing or wrong:
            raise IncompatibleModelsError(
                f"the preview model does not match the merge: missing {missing[:5]}, "
                f"shape differs {wrong[:5]}; load the base model's architecture first"
            )
        self._targets = {s.name: state[s.name] for s in specs}

    @torch.no_grad()
    def write(self, name: str, tensor: torch.Tensor) -> None:
        target = self._targets[name]
        target.data.copy_(tensor.to(device=target.device, dtype=target.dtype))

    def finish(self) -> None:
        self._targets = {}

    def abort(self) -> None:
        self._targets = {}


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6,
          "G": 10**9, "T": 10**12}


def parse_size(size: int | str) -> int:
    """``"500MB"``, ``"2GB"``, ``"1.5GiB"`` or a byte count -> bytes."""
    if isinstance(size, int):
        value = size
    else:
        m = _SIZE_RE.match(size)
        unit = (m.group(2) or "").upper() if m else None
        if not m or unit not in _UNITS:
            raise ExportError(f"cannot read size {size!r}: use e.g. 500MB, 2GB or 1.5GiB")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ExportError(f"shard size must be positive, got {size!r}")
    return value


def format_size(nbytes: int) -> str:
    """Bytes for a person: ``"212 B"``, ``"48.3 KB"``, ``"67.1 MB"``, ``"1.92 GB"`` (decimal units)."""
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if abs(nbytes) >= size:
            value = nbytes / size
            return f"{value:.2f} {unit}" if unit in ("GB", "TB") else f"{value:.1f} {unit}"
    return f"{nbytes} B"


def plan_shards(specs: Sequence[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Greedy shards in tensor order; a tensor larger than ``max_bytes`` gets a shard alone."""
    shards: list[list[TensorSpec]] = []
    current: list[TensorSpec] = []
    size = 0
    for spec in specs:
        if current and size + spec.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += spec.nbytes
    if current:
        shards.append(current)
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SAFE_SINGLE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class ShardedSafetensorsSink:
    """Streams tensors into safetensors shards with an index, like ``save_pretrained``.

    Shard layout and headers are fixed in ``begin`` from the known output specs, so only one
    tensor is ever held in memory. The metadata (e.g. the recipe) goes into every shard.
    Shards of ``direct_min_bytes`` or more are written around the page cache
    (:mod:`fusion_ui.io.direct`) where the filesystem allows it; ``direct_min_bytes=None``, or
    the environment variable ``FUSION_UI_DIRECT_IO=0``, writes every shard the usual way.
    """

    retains_tensors = False  # each tensor is written out before write() returns

    def __init__(
        self,
        folder: Path,
        *,
        max_shard_bytes: int,
        metadata: dict[str, str] | None = None,
        direct_min_bytes: int | None = DIRECT_MIN_BYTES,
    ) -> None:
        self.folder = Path(folder)
        self.max_shard_bytes = max_shard_bytes
        if os.environ.get(DIRECT_IO_ENV, "1").strip() == "0":
            direct_min_bytes = None
        self.direct_min_bytes = direct_min_bytes
        self.direct_files: list[str] = []  # the shards that went around the page cache
        self._staging: np.ndarray | None = None
        self.metadata = {"format": "pt", **(metadata or {})}
        self.files: list[str] = []
        self._shard_of: dict[str, int] = {}
        self._order: list[TensorSpec] = []
        self._next = 0
        self._open: tuple[int, OutputFile] | None = None
        self._shards: list[list[TensorSpec]] = []

    def begin(self, specs: Sequence[TensorSpec]) -> None:
        self._order = list(specs)
        self._shards = plan_shards(self._order, self.max_shard_bytes)
        self.files = shard_names(len(self._shards))
        self._shard_of = {s.name: i for i, shard in enumerate(self._shards) for s in shard}
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        spec = self._order[self._next]
        if name != spec.name:
            raise ExportError(f"internal: tensor {name!r} arrived out of order (expected {spec.name!r})")
        if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
            raise ExportError(
                f"internal: tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, planned "
                f"{spec.shape} {spec.dtype}"
            )
        shard = self._shard_of[name]
        if self._open is None or self._open[0] != shard:
            self._close_shard()
            f = OutputFile(self.folder / self.files[shard], staging=self._staging_for(shard))
            header, _ = build_header([(s.name, s.dtype, s.shape) for s in self._shards[shard]], self.metadata)
            f.write(header)
            self._open = (shard, f)
        write_tensor_bytes(self._open[1], tensor)
        self._next += 1

    def finish(self) -> None:
        self._close_shard()
        if self._next != len(self._order):
            raise ExportError(f"internal: {len(self._order) - self._next} tensor(s) were never written")
        if len(self.files) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in self._order)},
                "weight_map": {s.name: self.files[self._shard_of[s.name]] for s in self._order},
            }
            (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

    def abort(self) -> None:
        if self._open is not None:
            self._open[1].discard()
            self._open = None

    def _staging_for(self, shard: int) -> np.ndarray | None:
        if self.direct_min_bytes is None or sum(s.nbytes for s in self._shards[shard]) < self.direct_min_bytes:
            return None
        if self._staging is None:
            self._staging = aligned_buffer(STAGING_BYTES)
        return self._staging

    def _close_shard(self) -> None:
        if self._open is not None:
            shard, f = self._open
            self._open = None
            f.close()
            if f.direct:
                self.direct_files.append(self.files[shard])
