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
_RANK_BINS = 1 << 11  # DELLA's per-row radix sort: 11-bit digits

# Sparsifier codes understood by the task-arithmetic kernel: none, DARE's random drop, a band of
# |δ| ranks (TIES' top-k, magnitude prune, breadcrumbs), DELLA's rank-dependent random drop, and
# a keep mask computed beforehand (DELLA with the L1 rescale, whose norms need the mask first).
SPARSE_NONE, SPARSE_DARE, SPARSE_TOPK, SPARSE_DELLA, SPARSE_MASK = 0, 1, 2, 3, 4
_NO_UPPER = 0x80000000  # above every |x|'s float bits: no upper bound on a band


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
    # DELLA: rows are the last dimension, ``cols`` long; per model and rank within a row, the
    # keep level (keep iff draw < level) and the survivor factor (used where apply_scale is set)
    cols: int = 1
    levels: np.ndarray | None = None  # int32 (m, cols)
    factors: np.ndarray | None = None  # float32 (m, cols)
    masks: np.ndarray | None = None  # uint8 (m, ceil(n/8)): SPARSE_MASK keep bits, little-endian


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

    @nb.njit(nogil=True, cache=True)
    def _row_ranks(arr, base, row_start, ranks, keys, keys2, hist):  # noqa: ANN001, ANN202
        """``ranks[t]``: the ascending rank of |δ| of element ``row_start + t`` within its row of
        ``len(ranks)``, ties by index (the reference's stable argsort of the argsort).

        A stable LSD radix sort of (float bits << 32 | index) on the bits, 11 + 11 + 10 a pass
        (measured ~10 % faster than 4 passes of 8), passes whose digit is constant skipped."""
        cols = ranks.shape[0]
        hist[:, :] = 0
        for t in range(cols):
            a = _f32_as_u32(abs(_load(arr, row_start + t) - _load(base, row_start + t)))
            keys[t] = (np.uint64(a) << np.uint64(32)) | np.uint64(t)
            hist[0, a & np.uint32(0x7FF)] += 1
            hist[1, (a >> np.uint32(11)) & np.uint32(0x7FF)] += 1
            hist[2, a >> np.uint32(22)] += 1
        src, dst = keys, keys2
        for p in range(3):
            shift = np.uint64(32 + 11 * p)
            if hist[p, (src[0] >> shift) & np.uint64(0x7FF)] == cols:
                continue  # every element has this digit: the order stays
            total = 0
            for digit in range(_RANK_BINS):
                count = hist[p, digit]
                hist[p, digit] = total
                total += count
            for t in range(cols):
                k = src[t]
                digit = (k >> shift) & np.uint64(0x7FF)
                pos = hist[p, digit]
                hist[p, digit] = pos + 1
                dst[pos] = k
            src, dst = dst, src
        for t in range(cols):
            ranks[np.int64(src[t] & np.uint64(0xFFFFFFFF))] = t

    @nb.njit(parallel=True, nogil=True, cache=True)
    def _task_arithmetic(base, proto, addrs, out, weights, mode, dare_thr, keys, scale, apply_scale,
                         lo_cut, hi_cut, straddle, band, tie_lo, tie_hi, cols, levels, factors, masks,
                         consensus, normalize, weight_sum, lam, apply_lam):  # noqa: ANN001, ANN202
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
            words = draws.view(np.uint64)
            ranks = np.empty(cols, np.int32)  # DELLA: one row's ranks and radix-sort scratch
            keys_a = np.empty(cols, np.uint64)
            keys_b = np.empty(cols, np.uint64)
            hist = np.empty((3, _RANK_BINS), np.int32)
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
                    # 1) vectorisable: keep |δ| bits in [lo_cut, hi_cut), the chunk's cuts (ties
                    #    at a threshold are all kept or all dropped in most chunks);
                    # 2) in the chunk where a threshold's ties are split: revisit in index order.
                    lc = lo_cut[i, c]
                    hc = hi_cut[i, c]
                    for jj in range(size):
                        x = _load(arr, start + jj)
                        nonfinite += _nonfinite(x)
                        d = x - b[jj]
                        a = _f32_as_u32(abs(d))
                        d = d * (one if (a >= lc) & (a < hc) else zero)
                        if scaled:
                            d = d * sc
                        wd[i, jj] = d * w
                    if straddle[i, c]:
                        lo_val, lo_need = np.uint32(band[i, 0]), band[i, 1]
                        hi_val, hi_need = np.uint32(band[i, 2]), band[i, 3]
                        seen_lo = tie_lo[i, c]
                        seen_hi = tie_hi[i, c]
                        for jj in range(size):
                            d = _load(arr, start + jj) - b[jj]
                            a = _f32_as_u32(abs(d))
                            ok = a > lo_val
                            if a == lo_val:
                                ok = seen_lo >= lo_need
                                seen_lo += 1
                            if a > hi_val:
                                ok = False
                            elif a == hi_val:
                                ok = ok and seen_hi < hi_need
                                seen_hi += 1
                            d = d * (one if ok else zero)
                            if scaled:
                                d = d * sc
                            wd[i, jj] = d * w
                elif md == SPARSE_DELLA:
                    # the chunk's draws, then each row it touches: rank the whole row, keep an
                    # element of the chunk iff its draw is below its rank's level
                    key = keys[i]
                    for q in range((size + 3) // 4):
                        words[q] = _word(key, start // 4 + q)
                    for r in range(start // cols, (start + size - 1) // cols + 1):
                        row = r * cols
                        _row_ranks(arr, base, row, ranks, keys_a, keys_b, hist)
                        for j in range(max(start, row), min(start + size, row + cols)):
                            jj = j - start
                            x = _load(arr, j)
                            nonfinite += _nonfinite(x)
                            rank = ranks[j - row]
                            d = (x - b[jj]) * (one if np.int32(draws[jj]) < levels[i, rank] else zero)
                            if scaled:
                                d = d * factors[i, rank]
                            wd[i, jj] = d * w
                elif md == SPARSE_MASK:
                    for jj in range(size):
                        j = start + jj
                        x = _load(arr, j)
                        nonfinite += _nonfinite(x)
                        kept = (masks[i, j >> 3] >> np.uint8(j & 7)) & np.uint8(1)
                        d = (x - b[jj]) * (one if kept else zero)
                        if scaled:
                            d = d * sc
                        wd[i, jj] = d * w
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
    def _l1_buckets(base, proto, addrs, wanted, mode, dare_thr, keys, cols, levels, masks):  # noqa: ANN001, ANN202
        """Per model i with ``wanted[i]``: the exact L1 norms of its delta before and after its
        random drop (DARE, or DELLA, whose keep bits go to ``masks[i]``), as significand sums
        per binary exponent (sparsify.abs_sum_buckets' layout), shape (m, 2, L1_BUCKETS).
        Integer sums: exact whatever the split over threads."""
        n = base.shape[0]
        m = len(addrs)
        nchunks = (n + CHUNK - 1) // CHUNK
        groups = min(nchunks, _L1_GROUPS)
        per_group = (nchunks + groups - 1) // groups
        sums = np.zeros((groups, m, 2, _L1_BUCKETS), np.int64)
        for g in nb.prange(groups):
            draws = np.empty(CHUNK + 4, np.uint16)
            words = draws.view(np.uint64)
            kept = np.empty(CHUNK, np.bool_)
            ranks = np.empty(cols, np.int32)
            keys_a = np.empty(cols, np.uint64)
            keys_b = np.empty(cols, np.uint64)
            hist = np.empty((3, _RANK_BINS), np.int32)
            for c in range(g * per_group, min(nchunks, (g + 1) * per_group)):
                start = c * CHUNK
                size = min(n, start + CHUNK) - start
                for i in range(m):
                    if not wanted[i]:
                        continue
                    arr = nb.carray(_pointer(proto, addrs[i]), n)
                    key = keys[i]
                    for q in range((size + 3) // 4):
                        words[q] = _word(key, start // 4 + q)
                    if mode[i] == SPARSE_DELLA:
                        for r in range(start // cols, (start + size - 1) // cols + 1):
                            row = r * cols
                            _row_ranks(arr, base, row, ranks, keys_a, keys_b, hist)
                            for j in range(max(start, row), min(start + size, row + cols)):
                                kept[j - start] = np.int32(draws[j - start]) < levels[i, ranks[j - row]]
                        for jj in range(size):  # CHUNK % 8 == 0: a chunk's bytes are its own
                            if kept[jj]:
                                j = start + jj
                                masks[i, j >> 3] |= np.uint8(1) << np.uint8(j & 7)
                    else:
                        thr = np.uint16(dare_thr[i])
                        for jj in range(size):
                            kept[jj] = draws[jj] >= thr
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
                        if kept[jj]:
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
    return kth_smallest_abs_deltas(theta, base, [k])[0]


def kth_smallest_abs_deltas(theta: np.ndarray, base: np.ndarray, ks: list[int]) -> list[tuple[int, int, int]]:
    """:func:`kth_smallest_abs_delta` for several k, sharing the first pass (breadcrumbs' two
    thresholds); a second pass per distinct high bucket that holds several values."""
    high, mixed = _abs_delta_hist(theta, base, 16, 0, 32)
    cum = np.cumsum(high)
    low_of: dict[int, np.ndarray] = {}
    found = []
    for k in ks:
        bucket = int(np.searchsorted(cum, k))  # first bucket whose cumulative count reaches k
        below = int(cum[bucket - 1]) if bucket else 0
        if mixed[bucket] == 0:  # every element of the bucket is the same value: no second pass
            found.append((bucket << 16, below, int(high[bucket])))
            continue
        if bucket not in low_of:
            low_of[bucket] = np.cumsum(_abs_delta_hist(theta, base, 0, bucket, 16)[0])
        cum_low = low_of[bucket]
        pos = int(np.searchsorted(cum_low, k - below))
        less = below + (int(cum_low[pos - 1]) if pos else 0)
        found.append(((bucket << 16) | pos, less, int(cum_low[pos]) - (int(cum_low[pos - 1]) if pos else 0)))
    return found


def task_arithmetic(
    base: np.ndarray,
    models: list[np.ndarray],
    out: np.ndarray,
    spec: TaskArithmeticSpec,
    bands: list[tuple[int, int] | None],
) -> int:
    """Run the fused generalized task arithmetic into ``out``.

    ``bands[i]`` = (lo, hi): model i (SPARSE_TOPK) keeps the elements whose ascending |δ| rank
    lies in [lo, hi), ties ranked by flat index as the reference's ``rank_band_mask`` does
    (TIES' top-k is (n - k, n)). Returns 0, or 1 + the index of an input holding NaN/inf
    (1 = base).
    """
    with _LAUNCH:
        return _task_arithmetic_locked(base, models, out, spec, bands)


@dataclass
class _BandCuts:
    """Per model and chunk: keep |δ| bits in [lo_cut, hi_cut), except in chunks that straddle a
    threshold's ties, revisited with the thresholds (``band``) and ties seen before the chunk."""

    lo_cut: np.ndarray  # uint32 (m, nchunks)
    hi_cut: np.ndarray  # uint32 (m, nchunks)
    straddle: np.ndarray  # bool (m, nchunks)
    band: np.ndarray  # int64 (m, 4): lower value bits, ties dropped; upper value bits, ties kept
    tie_lo: np.ndarray  # int64 (m, nchunks): ties of the lower value before the chunk
    tie_hi: np.ndarray  # int64 (m, nchunks)


def _band_cuts(base: np.ndarray, models: list[np.ndarray], bands: list[tuple[int, int] | None],
               nchunks: int) -> _BandCuts:
    m, n = len(models), base.shape[0]
    cuts = _BandCuts(
        lo_cut=np.zeros((m, nchunks), np.uint32), hi_cut=np.full((m, nchunks), _NO_UPPER, np.uint32),
        straddle=np.zeros((m, nchunks), np.bool_), band=np.zeros((m, 4), np.int64),
        tie_lo=np.zeros((m, nchunks), np.int64), tie_hi=np.zeros((m, nchunks), np.int64),
    )
    cuts.band[:, 2] = _NO_UPPER
    for i, rank_band in enumerate(bands):
        if rank_band is None:
            continue
        lo, hi = rank_band
        counted: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # both thresholds may be one value
        ks = ([lo] if lo > 0 else []) + ([hi] if hi < n else [])  # the thresholds that bound
        found = dict(zip(ks, kth_smallest_abs_deltas(models[i], base, ks), strict=True))
        if lo > 0:  # drop the lo smallest: all below the lo-th value, its first `need` ties
            value, less, equal = found[lo]
            need = lo - less  # in [1, equal]
            cuts.band[i, :2] = value, need
            cuts.lo_cut[i] = value + 1
            if need < equal:
                counts, before = _ties_before(models[i], base, value, counted)
                cuts.tie_lo[i] = before
                cuts.lo_cut[i] = np.where(before >= need, value, value + 1)
                cuts.straddle[i] |= (before < need) & (before + counts > need)
        if hi < n:  # keep the hi smallest: all below the hi-th value, its first `need` ties
            value, less, equal = found[hi]
            need = hi - less
            cuts.band[i, 2:] = value, need
            cuts.hi_cut[i] = value + 1
            if need < equal:
                counts, before = _ties_before(models[i], base, value, counted)
                cuts.tie_hi[i] = before
                cuts.hi_cut[i] = np.where(before + counts <= need, value + 1, value)
                cuts.straddle[i] |= (before < need) & (before + counts > need)
    return cuts


def _ties_before(theta: np.ndarray, base: np.ndarray, value: int,
                 counted: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(elements with |δ| bits == value per chunk, the same before each chunk), counted once."""
    if value not in counted:
        counts = _ties_per_chunk(theta, base, value)
        counted[value] = counts, np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    return counted[value]


def _della_tables(spec: TaskArithmeticSpec, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(levels, factors, masks) as the kernel takes them: one-element stand-ins when unused."""
    levels = spec.levels if spec.levels is not None else np.ones((m, 1), np.int32)
    factors = spec.factors if spec.factors is not None else np.ones((m, 1), np.float32)
    masks = spec.masks if spec.masks is not None else np.zeros((m, 1), np.uint8)
    return levels, factors, masks


def _task_arithmetic_locked(
    base: np.ndarray, models: list[np.ndarray], out: np.ndarray, spec: TaskArithmeticSpec,
    bands: list[tuple[int, int] | None],
) -> int:
    n = base.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    topk = [band if spec.mode[i] == SPARSE_TOPK else None for i, band in enumerate(bands)]
    cuts = _band_cuts(base, models, topk, nchunks)
    levels, factors, masks = _della_tables(spec, len(models))
    proto, addrs = _addresses(models, n)
    return int(_task_arithmetic(
        base, proto, addrs, out, spec.weights, spec.mode, spec.dare_threshold, spec.keys,
        spec.scale, spec.apply_scale, cuts.lo_cut, cuts.hi_cut, cuts.straddle, cuts.band, cuts.tie_lo,
        cuts.tie_hi, np.int64(spec.cols), levels, factors, masks, spec.consensus,
        spec.normalize, np.float32(spec.weight_sum), np.float32(spec.lam), spec.apply_lam,
    ))


def random_drop_l1_norms(base: np.ndarray, models: list[np.ndarray], wanted: np.ndarray,
                         spec: TaskArithmeticSpec) -> np.ndarray:
    """Exact L1 norms of each wanted model's delta before and after its random drop (DARE's, or
    DELLA's, whose keep bits it writes to ``spec.masks``, zeroed by the caller), as exponent
    buckets (m, 2, L1_BUCKETS); ``methods.sparsify.exact_l1`` turns a row into the norm."""
    with _LAUNCH:
        levels, _, masks = _della_tables(spec, len(models))
        proto, addrs = _addresses(models, base.shape[0])
        return _l1_buckets(base, proto, addrs, wanted, spec.mode, spec.dare_threshold, spec.keys,
                           np.int64(spec.cols), levels, masks)


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
