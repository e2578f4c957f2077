"""Zero-copy numpy views of torch tensors for the kernels (bf16 as its 16-bit patterns)."""

from __future__ import annotations

import numpy as np
import torch

KERNEL_DTYPES = (torch.bfloat16, torch.float32)


def kernel_inputs(tensors: list[torch.Tensor]) -> list[np.ndarray] | None:
    """Flat arrays of one kind: all bf16 bits (uint16), or all float32 (others converted exactly)."""
    if any(not t.is_floating_point() or t.device.type != "cpu" for t in tensors):
        return None
    if all(t.dtype == torch.bfloat16 for t in tensors):
        return [t.contiguous().view(-1).view(torch.int16).numpy().view(np.uint16) for t in tensors]
    return [t.to(torch.float32).contiguous().view(-1).numpy() for t in tensors]


def kernel_output(numel: int, out_dtype: torch.dtype, buffer: torch.Tensor | None = None) -> np.ndarray:
    """The array a kernel writes: bf16 bits, or float32 (float16 is converted after, exactly as torch).

    ``buffer`` (uint8 bytes, large enough) is viewed instead of new memory: fresh memory costs a
    page fault per 4 KB on first write, ~0.3 s of CPU over a 0.9B-parameter merge.
    """
    dtype = np.dtype(np.uint16 if out_dtype == torch.bfloat16 else np.float32)
    nbytes = numel * dtype.itemsize
    if buffer is None or buffer.dtype != torch.uint8 or buffer.numel() < nbytes:
        return np.empty(numel, dtype)
    return buffer[:nbytes].numpy().view(dtype)


def as_torch(
    out: np.ndarray, shape: torch.Size | tuple[int, ...], out_dtype: torch.dtype,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """The kernel's result as a tensor of ``out_dtype``; a view sharing ``buffer``'s storage if it
    was written there (unless converted to float16)."""
    in_buffer = buffer is not None and out.nbytes > 0 and out.ctypes.data == buffer.data_ptr()
    t = buffer[: out.nbytes] if in_buffer else torch.from_numpy(out)
    t = t.view(torch.bfloat16 if out.dtype == np.uint16 else torch.float32)
    return t.view(shape).to(out_dtype)
