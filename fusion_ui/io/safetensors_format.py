"""The safetensors file layout, read and written directly.

Reading the header ourselves lets ``inspect`` check every shard (names, shapes, dtypes,
truncation) without touching tensor data. Writing it ourselves lets the exporter stream one
tensor at a time into a shard whose header is known in advance, instead of holding a whole
shard in memory as ``safetensors.torch.save_file`` needs.

Layout: 8-byte little-endian header length N, N bytes of JSON (padded with spaces to a
multiple of 8), then the raw little-endian data; each entry's ``data_offsets`` are relative to
the start of the data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO

import torch

from fusion_ui.errors import ModelSourceError
from fusion_ui.io.direct import OutputFile

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit


def read_header(path: Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """Parse a shard's header: (entries by tensor name, ``__metadata__``, data start offset).

    Checks what a truncated or corrupt download breaks, as strictly as the ``safetensors``
    library does: the length prefix, the JSON, whole non-negative numbers for shapes and
    offsets, and tensors that, sorted by offset, tile the data from its first byte to the end
    of the file without overlapping or leaving gaps.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError("file is shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", prefix)
            if n > _MAX_HEADER or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in a {size}-byte file")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelSourceError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or "
            f"corrupt: download or copy it again"
        ) from exc
    if not isinstance(header, dict):
        raise ModelSourceError(f"{path}: safetensors header is not a JSON object; the file is corrupt")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelSourceError(f"{path}: safetensors __metadata__ is not a JSON object; the file is corrupt")
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        spans.append(_check_entry(path, name, entry))
    # The safetensors library sorts the tensors by offsets and requires each to start where the
    # previous one ended, from 0: overlapping tensors (two names reading the same bytes) and
    # gaps are both refused there, so transformers could not load such a file either.
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            how = "overlaps the previous tensor" if begin < end else "leaves a gap after the previous tensor"
            raise ModelSourceError(
                f"{path}: tensor {name!r} starts at data offset {begin}, where the tensors before it "
                f"end at {end}: it {how}, which safetensors refuses; the file is corrupt: download "
                f"or copy it again"
            )
        end = stop
    data_start = 8 + n
    if data_start + end > size:
        raise ModelSourceError(
            f"{path} is truncated: its header promises {data_start + end} bytes, the file has "
            f"{size}. Download or copy it again"
        )
    if data_start + end < size:
        raise ModelSourceError(
            f"{path} has {size - data_start - end} bytes after its last tensor that its header does "
            f"not describe, which safetensors refuses; the file is corrupt: download or copy it again"
        )
    return header, {str(k): str(v) for k, v in metadata.items()}, data_start


def _is_count(value: object) -> bool:
    """A JSON whole number >= 0 (not a float such as 16.0, nor a bool), as safetensors requires."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(path: Path, name: str, entry: object) -> tuple[int, int, str]:
    """One tensor's (begin, end, name), after checking its dtype, shape and offsets."""

    def corrupt(why: str) -> ModelSourceError:
        return ModelSourceError(
            f"{path}: bad header entry for tensor {name!r}: {why}; the file is corrupt: download "
            f"or copy it again"
        )

    if not isinstance(entry, dict):
        raise corrupt("not a JSON object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise ModelSourceError(
            f"{path}: tensor {name!r} has unsupported dtype {dtype!r}; fusion_ui reads "
            f"{', '.join(DTYPES)}"
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise corrupt(f"shape must be a list of whole numbers >= 0, got {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise corrupt(f"data_offsets must be two whole numbers >= 0, got {offsets!r}")
    begin, stop = offsets
    if stop < begin:
        raise corrupt(f"data_offsets {offsets} end before they begin")
    numel = 1
    for d in shape:
        numel *= d
    width = torch.empty((), dtype=DTYPES[dtype]).element_size()
    if stop - begin != numel * width:
        raise ModelSourceError(
            f"{path}: tensor {name!r} claims {stop - begin} bytes for shape {shape} "
            f"({dtype}); the file is corrupt"
        )
    return begin, stop, name


def build_header(
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Header bytes (length prefix included) for tensors stored in the given order.

    Returns the bytes and each tensor's (begin, end) offset relative to the data start.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, dtype, shape in entries:
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        offsets[name] = (pos, pos + nbytes)
        header[name] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [pos, pos + nbytes],
        }
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offsets


def write_tensor_bytes(f: BinaryIO | OutputFile, tensor: torch.Tensor) -> int:
    """Write a CPU tensor's raw bytes (row-major, little-endian) and return how many."""
    t = tensor.detach().contiguous()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.numel() == 0:
        return 0
    data = t.view(-1).view(torch.uint8).numpy() if t.dtype != torch.bool else t.numpy()
    f.write(memoryview(data))
    return t.numel() * t.element_size()
