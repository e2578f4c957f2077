"""CPU kernels compiled with numba: both cores, no float32 temporaries, bf16 read and written as bits.

Inputs are 1-D arrays of bfloat16 bits (``uint16``) or ``float32``; outputs likewise. Work is
split in chunks of :data:`CHUNK` elements over numba's threads (``prange``). Each kernel mirrors
its torch reference operation by operation (same rounding, no fused multiply-add), so results
are identical; tests check that on every covered method.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

try:
    import numba as nb
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload

    _NUMBA = True
    # numba's OpenMP layer and torch's bundled OpenMP spin-wait against each other (measured 7x
    # slower merges on 2 cores); numba's own work queue does not. It is not safe for concurrent
    # launches, so every kernel call below holds _LAUNCH. A user's explicit choice wins.
    if "NUMBA_THREADING_LAYER" not in os.environ:
        nb.config.THREADING_LAYER = "workqueue"
except ImportError:  # pragma: no cover - numba is a dependency; keep the reference usable without it
    _NUMBA = False

from fusion_ui.rng import GOLDEN, MIX1, MIX2  # noqa: E402 (after the layer is chosen)

_LAUNCH = threading.Lock()  # one parallel kernel at a time (work-queue layer; also fair to the UI)

CHUNK = 1 << 16  # elements per work unit
_BINS = 1 << 16  # radix-select histogram size (16 bits at a time)
_GROUPS = 4  # histogram passes split the data into this many groups, one (small) histogram each
_L1_GROUPS = 16  # the L1-norm pass: work units of whole chunks, one set of exact sums each
_L1_BUCKETS = 254  # binary exponents of a finite float32's |x| (methods.sparsify.L1_BUCKETS)

# Sparsifier codes understood by the task-arithmetic kernel.
SPARSE_NONE, SPARSE_DARE, SPARSE_TOPK = 0, 1, 2


def available() -> bool:
    """Whether the fused CPU kernels can run here."""
    return _NUMBA


@dataclass(frozen=True)
class TaskArithmeticSpec:
    """Per-tensor settings of the generalized task-arithmetic kernel (arrays have one entry per model)."""

    weights: np.ndarray  # float32: w_i
    mode: np.ndarray  # int64: SPARSE_NONE / SPARSE_DARE / SPARSE_TOPK
    dare_threshold: np.ndarray  # int64: keep iff 16-bit draw >= threshold
    keys: np.ndarray  # uint64: stream key K_i of (seed, tensor, model)
    scale: np.ndarray  # float32: survivor rescale factor
    apply_scale: np.ndarray  # bool: whether the reference multiplies by ``scale``
    consensus: bool  # TIES sign election + disjoint sum
    normalize: bool
    weight_sum: float  # float32 value of Σ w_i (plain-sum normalize)
    lam: float
    apply_lam: bool


if _NUMBA:

    @intrinsic
    def _u32_as_f32(typingctx, x):  # noqa: ANN001 - numba intrinsic signature
        def codegen(context, builder, signature, args):  # noqa: ANN001
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    @intrinsic
    def _f32_as_u32(typingctx, x):  # noqa: ANN001
        def codegen(context, builder, signature, args):  # noqa: ANN001
            return builder.bitcast(args[0], ir.IntType(32))

        return types.uint32(types.float32), codegen

    @intrinsic
    def _pointer(typingctx, proto, addr):  # noqa: ANN001
        """``addr`` as a pointer to ``proto``'s element type (the models arrive as addresses)."""
        ptr_type = types.CPointer(proto.dtype)

        def codegen(context, builder, signature, args):  # noqa: ANN001
            return builder.inttoptr(args[1], context.get_value_type(ptr_type))

        return ptr_type(proto, types.uint64), codegen

    def _load(a, j):  # noqa: ANN001, ANN202 - dispatched by dtype through the overload below
        raise NotImplementedError

    @overload(_load, inline="always")
    def _load_impl(a, j):  # noqa: ANN001, ANN202
        if a.dtype == types.uint16:
            def impl(a, j):  # noqa: ANN001, ANN202
                return _u32_as_f32(np.uint32(a[j]) << np.uint32(16))
            return impl
        if a.dtype == types.float32:
            def impl(a, j):  # noqa: ANN001, ANN202
                return a[j]
            return impl
        return None

    def _store(out, j, x):  # noqa: ANN001, ANN202
        raise NotImplementedError

    @overload(_store, inline="always")
    def _store_impl(out, j, x):  # noqa: ANN001, ANN202
        if out.dtype == types.uint16:
            def impl(out, j, x):  # noqa: ANN001, ANN202
                bits = _f32_as_u32(x)
                if (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN stays NaN
                    out[j] = np.uint16((bits >> np.uint32(16)) | np.uint32(0x40))
                else:  # round to nearest even, as torch's float32 -> bfloat16
                    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
                    out[j] = np.uint16((bits + rounding) >> np.uint32(16))
            return impl
        if out.dtype == types.float32:
            def impl(out, j, x):  # noqa: ANN001, ANN202
                out[j] = x
            return impl
        return None

    @nb.njit(inline="always")
    def _word(key, word):  # noqa: ANN001, ANN202
        """SplitMix64 output ``word + 1`` of stream ``key``: the draws of elements 4·word .. 4·word+3."""
        z = np.uint64(word + 1) * np.uint64(GOLDEN) + key
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        return z ^ (z >> np.uint64(31))

    @nb.njit(parallel=True, nogil=True, cache=True)
    def _abs_delta_hist(theta, base, shift, prefix, prefix_shift):  # noqa: ANN001, ANN202
        """Histogram of 16 bits of |θ−θ0|'s float bits, over elements whose higher bits equal ``prefix``.

        Also returns, per bin, how many of its elements have non-zero bits below ``shift``: a
        bin without any holds a single value (bf16 deltas are often exact in 16 bits).
        """
        n = base.shape[0]
        per_group = (n + _GROUPS - 1) // _GROUPS
        hist = np.zeros((_GROUPS, _BINS), np.int32)  # a group holds < 2^31 elements of one tensor
        mixed = np.zeros((_GROUPS, _BINS), np.int32)
        low_mask = (np.uint32(1) << np.uint32(shift)) - np.uint32(1) if shift > 0 else np.uint32(0)
        for g in nb.prange(_GROUPS):
            stop = min(n, (g + 1) * per_group)
            for j in range(g * per_group, stop):
                bits = _f32_as_u32(abs(_load(theta, j) - _load(base, j)))
                if prefix_shift >= 32 or (bits >> np.uint32(prefix_shift)) == np.uint32(prefix):
                    bucket = (bits >> np.uint32(shift)) & np.uint32(0xFFFF)
                    hist[g, bucket] += 1
                    if bits & low_mask:
                        mixed[g, bucket] += 1
        return hist.sum(axis=0, dtype=np.int64), mixed.sum(axis=0, dtype=np.int64)

    @nb.njit(parallel=True, nogil=True, cache=True)
    def _ties_per_chunk(theta, base, value_bits):  # noqa: ANN001, ANN202
        n = base.shape[0]
        nchunks = (n + CHUNK - 1) // CHUNK
        counts = np.zeros(nchunks, np.int64)
        for c in nb.prange(nchunks):
            stop = min(n, (c + 1) * CHUNK)
            k = 0
            for j in range(c * CHUNK, stop):
                if _f32_as_u32(abs(_load(theta, j) - _load(base, j))) == np.uint32(value_bits):
                    k += 1
            counts[c] = k
        return counts

    @nb.njit(inline="always")
    def _nonfinite(x):  # noqa: ANN001, ANN202
        return np.int64((_f32_as_u32(x) & np.uint32(0x7F800000)) == np.uint32(0x7F800000))

    @nb.njit(parallel=True, nogil=True, cache=True)
    def _task_arithmetic(base, proto, addrs, out, weights, mode, dare_thr, keys, scale, apply_scale,
                         topk_bits, tie_need, tie_before, consensus, normalize, weight_sum,
                         lam, apply_lam):  # noqa: ANN001, ANN202
        # Per chunk: the base once, then one model at a time into an L2-sized buffer of
        # weighted deltas (m, CHUNK), then the combination; every loop streams one array.
        n = base.shape[0]
        m = len(addrs)
        nchunks = (n + CHUNK - 1) // CHUNK
        bad = np.zeros(nchunks, np.int64)
        zero = np.float32(0.0)
        one = np.float32(1.0)
        for c in nb.prange(nchunks):
            start = c * CHUNK
            size = min(n, start + CHUNK) - start
            b = np.empty(size, np.float32)
            wd = np.empty((m, size), np.float32)
            draws = np.empty(CHUNK + 4, np.uint16)  # DARE draws of one model (padded to whole words)
            nonfinite = np.int64(0)
            for jj in range(size):
                b[jj] = _load(base, start + jj)
                nonfinite += _nonfinite(b[jj])
            if nonfinite:
                bad[c] = 1
            for i in range(m):
                arr = nb.carray(_pointer(proto, addrs[i]), n)
                w = weights[i]
                md = mode[i]
                sc = scale[i]
                scaled = apply_scale[i]
                nonfinite = 0
                if md == SPARSE_DARE:
                    # 1) the chunk's 16-bit draws, four per SplitMix64 word (CHUNK % 4 == 0, so
                    #    words align); 2) a branch-free pass that vectorises like plain deltas.
                    key = keys[i]
                    thr = np.uint16(dare_thr[i])
                    words = draws.view(np.uint64)
                    for q in range((size + 3) // 4):
                        words[q] = _word(key, start // 4 + q)
                    for jj in range(size):
                        x = _load(arr, start + jj)
                        nonfinite += _nonfinite(x)
                        d = (x - b[jj]) * (one if draws[jj] >= thr else zero)
                        if scaled:
                            d = d * sc
                        wd[i, jj] = d * w
                elif md == SPARSE_TOPK:
                    # 1) vectorisable: keep |δ| above the threshold, count the ties;
                    # 2) only where ties are kept: revisit them in flat-index order.
                    tb = np.uint32(topk_bits[i])
                    ties = np.int64(0)
                    for jj in range(size):
                        x = _load(arr, start + jj)
                        nonfinite += _nonfinite(x)
                        d = x - b[jj]
                        a = _f32_as_u32(abs(d))
                        ties += np.int64(a == tb)
                        d = d * (one if a > tb else zero)
                        if scaled:
                            d = d * sc
                        wd[i, jj] = d * w
                    seen = tie_before[i, c]
                    if ties and seen + ties > tie_need[i]:
                        for jj in range(size):
                            d = _load(arr, start + jj) - b[jj]
                            if _f32_as_u32(abs(d)) == tb:
                                if seen >= tie_need[i]:
                                    d = d * one
                                    if scaled:
                                        d = d * sc
                                    wd[i, jj] = d * w
                                seen += 1
                else:
                    for jj in range(size):
                        x = _load(arr, start + jj)
                        nonfinite += _nonfinite(x)
                        wd[i, jj] = (x - b[jj]) * w
                if nonfinite:
                    bad[c] = max(bad[c], i + 2)
            # Combine, as loops over elements (they vectorise); per element the operations and
            # their order are the reference's: Σ in model order, sign, agreeing sum and weights.
            mixed = np.empty(size, np.float32)
            for jj in range(size):
                mixed[jj] = wd[0, jj]
            for i in range(1, m):
                for jj in range(size):
                    mixed[jj] = mixed[jj] + wd[i, jj]
            if consensus:
                sign = np.empty(size, np.float32)
                divisor = np.zeros(size, np.float32)
                for jj in range(size):
                    sign[jj] = one if mixed[jj] >= zero else -one
                    mixed[jj] = zero
                for i in range(m):
                    w = weights[i]
                    for jj in range(size):
                        s = wd[i, jj]
                        agree = one if s * sign[jj] > zero else zero  # sign(s) == sign; 0 never agrees
                        mixed[jj] = mixed[jj] + s * agree
                        divisor[jj] = divisor[jj] + agree * w
                if normalize:
                    for jj in range(size):
                        mixed[jj] = mixed[jj] / (divisor[jj] if divisor[jj] != zero else one)
            elif normalize:
                for jj in range(size):
                    mixed[jj] = mixed[jj] / weight_sum
            for jj in range(size):
                x = mixed[jj] * lam if apply_lam else mixed[jj]
                _store(out, start + jj, x + b[jj])
        return bad.max()

    @nb.njit(parallel=True, nogil=True, cache=True)
    def _l1_buckets(base, proto, addrs, wanted, dare_thr, keys):  # noqa: ANN001, ANN202
        """Per model i with ``wanted[i]``: the exact L1 norms of its delta before and after the
        DARE drop, as significand sums per binary exponent (sparsify.abs_sum_buckets' layout),
        shape (m, 2, L1_BUCKETS). Integer sums: exact whatever the split over threads."""
        n = base.shape[0]
        m = len(addrs)
        nchunks = (n + CHUNK - 1) // CHUNK
        groups = min(nchunks, _L1_GROUPS)
        per_group = (nchunks + groups - 1) // groups
        sums = np.zeros((groups, m, 2, _L1_BUCKETS), np.int64)
        for g in nb.prange(groups):
            draws = np.empty(CHUNK + 4, np.uint16)
            words = draws.view(np.uint64)
            for c in range(g * per_group, min(nchunks, (g + 1) * per_group)):
                start = c * CHUNK
                size = min(n, start + CHUNK) - start
                for i in range(m):
                    if not wanted[i]:
                        continue
                    arr = nb.carray(_pointer(proto, addrs[i]), n)
                    key = keys[i]
                    thr = np.uint16(dare_thr[i])
                    for q in range((size + 3) // 4):
                        words[q] = _word(key, start // 4 + q)
                    for jj in range(size):
                        bits = _f32_as_u32(abs(_load(arr, start + jj) - _load(base, start + jj)))
                        exponent = bits >> np.uint32(23)
                        if exponent == np.uint32(255):  # inf / NaN: the merge pass refuses it
                            continue
                        significand = np.int64(bits & np.uint32(0x7FFFFF))
                        if exponent > np.uint32(0):
                            significand += np.int64(0x800000)
                        e = np.int64(exponent) - 1 if exponent > np.uint32(0) else np.int64(0)
                        sums[g, i, 0, e] += significand
                        if draws[jj] >= thr:
                            sums[g, i, 1, e] += significand
        return sums.sum(axis=0)

    @nb.njit(parallel=True, nogil=True, cache=True)
    def _linear(proto, addrs, out, weights, normalize, weight_sum):  # noqa: ANN001, ANN202
        n = out.shape[0]
        m = len(addrs)
        nchunks = (n + CHUNK - 1) // CHUNK
        bad = np.zeros(nchunks, np.int64)
        for c in nb.prange(nchunks):
            start = c * CHUNK
            size = min(n, start + CHUNK) - start
            acc = np.empty(size, np.float32)
            for i in range(m):
                arr = nb.carray(_pointer(proto, addrs[i]), n)
                w = weights[i]
                nonfinite = 0
                if i == 0:
                    for jj in range(size):
                        x = _load(arr, start + jj)
                        nonfinite += _nonfinite(x)
                        acc[jj] = x * w
                else:
                    for jj in range(size):
                        x = _load(arr, start + jj)
                        nonfinite += _nonfinite(x)
                        acc[jj] = acc[jj] + x * w
                if nonfinite:
                    bad[c] = max(bad[c], i + 2)
            for jj in range(size):
                a = acc[jj]
                if normalize:
                    a = a / weight_sum
                _store(out, start + jj, a)
        return bad.max()


def _addresses(arrays: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The arrays as (an empty array of their type, their addresses), for the kernels.

    A numba typed list would do, but its first use in a process costs ~0.7 s (measured), more
    than a whole small merge; addresses cost nothing and one compiled kernel serves any number
    of models. The caller keeps the arrays alive during the call.
    """
    if len({(a.dtype, a.ndim) for a in arrays}) != 1 or any(
        a.shape != (n,) or not a.flags.c_contiguous for a in arrays
    ):
        raise ValueError("kernel inputs must be flat, contiguous arrays of one dtype and length")
    return arrays[0][:0], np.array([a.ctypes.data for a in arrays], np.uint64)


def kth_smallest_abs_delta(theta: np.ndarray, base: np.ndarray, k: int) -> tuple[int, int, int]:
    """Exact k-th smallest (1-based) of |θ−θ0| as float bits, by two 16-bit radix passes.

    The second pass is skipped when the first shows that the bucket holds one value, as it
    usually does for bf16 checkpoints (δ of two bf16 numbers within a factor 2 of each other is
    exact in bf16). Returns (value bits, count of smaller elements, count of equal elements).
    """
    high, mixed = _abs_delta_hist(theta, base, 16, 0, 32)
    cum = np.cumsum(high)
    bucket = int(np.searchsorted(cum, k))  # first bucket whose cumulative count reaches k
    below = int(cum[bucket - 1]) if bucket else 0
    if mixed[bucket] == 0:  # every element of the bucket is the same value: no second pass
        return bucket << 16, below, int(high[bucket])
    low, _ = _abs_delta_hist(theta, base, 0, bucket, 16)
    cum_low = np.cumsum(low)
    pos = int(np.searchsorted(cum_low, k - below))
    value = (bucket << 16) | pos
    less = below + (int(cum_low[pos - 1]) if pos else 0)
    return value, less, int(low[pos])


def task_arithmetic(
    base: np.ndarray,
    models: list[np.ndarray],
    out: np.ndarray,
    spec: TaskArithmeticSpec,
    topk_keep: list[int | None],
) -> int:
    """Run the fused generalized task arithmetic into ``out``.

    ``topk_keep[i]`` is the number of elements model i keeps by magnitude (SPARSE_TOPK), with
    the reference's tie rule: among elements equal to the threshold, the lowest flat indices
    are dropped first. Returns 0, or 1 + the index of an input holding NaN/inf (1 = base).
    """
    with _LAUNCH:
        return _task_arithmetic_locked(base, models, out, spec, topk_keep)


def _task_arithmetic_locked(
    base: np.ndarray, models: list[np.ndarray], out: np.ndarray, spec: TaskArithmeticSpec,
    topk_keep: list[int | None],
) -> int:
    m = len(models)
    n = base.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    topk_bits = np.zeros(m, np.uint32)
    tie_need = np.zeros(m, np.int64)
    tie_before = np.zeros((m, nchunks), np.int64)
    for i, keep in enumerate(topk_keep):
        if spec.mode[i] != SPARSE_TOPK or keep is None:
            continue
        drop = n - keep  # the reference drops the `drop` smallest (rank band [drop, n))
        value, less, equal = kth_smallest_abs_delta(models[i], base, drop)
        topk_bits[i] = value
        tie_need[i] = drop - less
        if 0 < tie_need[i] < equal:  # only some ties are dropped: their order matters
            counts = _ties_per_chunk(models[i], base, value)
            tie_before[i, 1:] = np.cumsum(counts)[:-1]
        elif tie_need[i] >= equal:
            tie_need[i] = equal  # all ties dropped
    proto, addrs = _addresses(models, n)
    return int(_task_arithmetic(
        base, proto, addrs, out, spec.weights, spec.mode, spec.dare_threshold, spec.keys,
        spec.scale, spec.apply_scale, topk_bits, tie_need, tie_before, spec.consensus,
        spec.normalize, np.float32(spec.weight_sum), np.float32(spec.lam), spec.apply_lam,
    ))


def dare_l1_norms(base: np.ndarray, models: list[np.ndarray], wanted: np.ndarray, dare_threshold: np.ndarray,
                  keys: np.ndarray) -> np.ndarray:
    """Exact L1 norms of each wanted model's delta before and after its DARE drop, as exponent
    buckets (m, 2, L1_BUCKETS); ``methods.sparsify.exact_l1`` turns a row into the norm."""
    with _LAUNCH:
        proto, addrs = _addresses(models, base.shape[0])
        return _l1_buckets(base, proto, addrs, wanted, dare_threshold, keys)


def linear(models: list[np.ndarray], out: np.ndarray, weights: np.ndarray, normalize: bool,
           weight_sum: float) -> int:
    """Fused weighted average into ``out``; returns 0 or 1 + index of a non-finite input."""
    with _LAUNCH:
        proto, addrs = _addresses(models, out.shape[0])
        return int(_linear(proto, addrs, out, weights, normalize, np.float32(weight_sum)))


def warm_up() -> None:
    """Call the task-arithmetic and linear kernels once on tiny bf16 inputs, so that numba loads
    them from its cache (or compiles them) now rather than inside the first merge. Only the
    bf16 -> bf16 variants: each loaded signature costs ~0.2 s, and a merge that needs another
    one loads it when it first calls it."""
    if not _NUMBA:
        return
    n = 8
    base = np.full(n, 0x3F80, np.uint16)  # 1.0 in bf16
    models = [np.full(n, 0x3F81 + i, np.uint16) for i in range(2)]
    spec = TaskArithmeticSpec(
        weights=np.ones(2, np.float32), mode=np.array([SPARSE_DARE, SPARSE_NONE], np.int64),
        dare_threshold=np.zeros(2, np.int64), keys=np.zeros(2, np.uint64), scale=np.ones(2, np.float32),
        apply_scale=np.zeros(2, np.bool_), consensus=True, normalize=True, weight_sum=2.0, lam=1.0,
        apply_lam=False,
    )
    out = np.empty(n, np.uint16)
    task_arithmetic(base, models, out, spec, [None, None])
    linear(models, out, np.ones(2, np.float32), True, 2.0)
