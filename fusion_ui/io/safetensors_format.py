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

    Checks what a truncated or corrupt download breaks: the length prefix, the JSON, and that
    the data the header promises is really in the file.
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
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelSourceError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or "
            f"corrupt: download or copy it again"
        ) from exc
    if not isinstance(header, dict):
        raise ModelSourceError(f"{path}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    end = 0
    for name, entry in header.items():
        try:
            begin, stop = entry["data_offsets"]
            if entry["dtype"] not in DTYPES:
                raise ValueError(f"unsupported dtype {entry['dtype']}")
            shape = [int(d) for d in entry["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelSourceError(f"{path}: bad header entry for tensor {name!r}: {exc}") from exc
        numel = 1
        for d in shape:
            numel *= d
        width = torch.empty((), dtype=DTYPES[entry["dtype"]]).element_size()
        if stop - begin != numel * width:
            raise ModelSourceError(
                f"{path}: tensor {name!r} claims {stop - begin} bytes for shape {shape} "
                f"({entry['dtype']}); the file is corrupt"
            )
        end = max(end, stop)
    data_start = 8 + n
    if data_start + end > size:
        raise ModelSourceError(
            f"{path} is truncated: its header promises {data_start + end} bytes, the file has "
            f"{size}. Download or copy it again"
        )
    return header, {str(k): str(v) for k, v in metadata.items()}, data_start


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
