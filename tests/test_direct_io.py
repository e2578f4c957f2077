"""Output files written around the page cache: the same bytes as a plain write, on any filesystem."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusion_ui.io import direct
from fusion_ui.io.direct import ALIGN, OutputFile, aligned_buffer
from fusion_ui.io.writer import ShardedSafetensorsSink, TensorSpec


def pieces() -> list[bytes]:
    """Writes of awkward sizes: below, at, across and far beyond the block and the staging buffer."""
    rng = np.random.default_rng(0)
    sizes = [8, 1, ALIGN - 9, ALIGN, 3 * ALIGN + 5, 0, 7, 5 * ALIGN, 2 * ALIGN - 1, 11 * ALIGN + 3]
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


def test_aligned_buffer_is_aligned() -> None:
    for n in (ALIGN, 3 * ALIGN, 8 << 20):
        buf = aligned_buffer(n)
        assert buf.ctypes.data % ALIGN == 0 and len(buf) == n


def test_staged_writes_give_the_exact_bytes(tmp_path: Path) -> None:
    data = pieces()
    path = tmp_path / "out.bin"
    # a staging buffer of two blocks, so that most writes cross a flush
    with OutputFile(path, staging=aligned_buffer(2 * ALIGN)) as f:
        for piece in data:
            f.write(piece)
    expected = b"".join(data)
    assert f.size == len(expected) and len(expected) % ALIGN != 0
    assert path.read_bytes() == expected  # the padded last block was truncated away
    if hasattr(os, "O_DIRECT") and f.direct:
        assert os.stat(path).st_size == len(expected)


def test_refused_direct_writes_fall_back_to_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that opens with O_DIRECT but refuses its writes still gets every byte."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    path = tmp_path / "out.bin"
    f = OutputFile(path, staging=aligned_buffer(2 * ALIGN))
    if not f.direct:
        f.close()
        pytest.skip("this filesystem has no O_DIRECT")
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if not refused and offset >= 2 * ALIGN:  # the second flush is refused once
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    data = pieces()
    for piece in data:
        f.write(piece)
    f.close()
    assert refused == [2 * ALIGN] and not f.direct
    assert path.read_bytes() == b"".join(data)


def test_other_write_errors_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    f = OutputFile(tmp_path / "out.bin", staging=aligned_buffer(ALIGN))
    if not f.direct:
        f.close()
        pytest.skip("this filesystem has no O_DIRECT")

    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct.os, "pwrite", full)
    with pytest.raises(OSError, match="No space"):
        f.write(bytes(2 * ALIGN))
    f.discard()


@pytest.mark.parametrize("direct_min_bytes", [0, None])
def test_shards_written_either_way_load_identically(tmp_path: Path, direct_min_bytes: int | None) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(37, 129, generator=gen).to(torch.bfloat16),  # odd byte counts
        "b.weight": torch.randn(3000, generator=gen),
        "c.bias": torch.randn(5, generator=gen).to(torch.float16),
        "d.ids": torch.arange(11, dtype=torch.int64),
        "e.mask": torch.tensor([True, False, True]),
    }
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    folder = tmp_path / "out"
    folder.mkdir()
    sink = ShardedSafetensorsSink(folder, max_shard_bytes=8000, direct_min_bytes=direct_min_bytes)
    sink.begin(specs)
    for name, t in tensors.items():
        sink.write(name, t)
    sink.finish()
    assert len(sink.files) > 1
    if direct_min_bytes is None:
        assert sink.direct_files == []
    loaded: dict[str, torch.Tensor] = {}
    for name in sink.files:
        loaded |= load_file(folder / name)
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name


def test_the_environment_can_turn_direct_writes_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.arange(5000, dtype=torch.float32)
    spec = [TensorSpec("x", (5000,), torch.float32)]
    written = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("FUSION_UI_DIRECT_IO", setting)
        folder = tmp_path / setting
        folder.mkdir()
        sink = ShardedSafetensorsSink(folder, max_shard_bytes=10**6, direct_min_bytes=0)
        sink.begin(spec)
        sink.write("x", t)
        sink.finish()
        written[setting] = sink.direct_files
        assert torch.equal(load_file(folder / "model.safetensors")["x"], t)
    assert written["0"] == []
    if written["1"] == []:
        pytest.skip("no O_DIRECT on this platform or filesystem: nothing to turn off")
    assert written["1"] == ["model.safetensors"]
