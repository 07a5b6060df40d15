"""Rank statistics of |x| without sorting: the magnitude method's kernel.

The magnitude measurements (SparseML's rule, DESIGN.md "magnitude") need, per layer, the values at ~100
rank boundaries and the sums between them, plus the sum of squares below each level's pruned count. A full
sort costs O(n log n) and its speed depends on which SIMD sort the CPU gets; the same numbers come from two
linear passes:

1. a histogram over the top 19 bits of |x|'s float32 bits (non-negative float32 bit patterns order like
   the floats, with NaN after +Inf as numpy sorts it): per bucket the count, sum and sum of squares;
2. only buckets with a rank boundary strictly inside are looked at again: a count per distinct value
   (their remaining 12 bits), which places every element at those ranks exactly.

Nothing is sorted, each value is read twice, and the tables are fixed-size whatever n is. Values may come
in slices (a layer over a memory budget, external data read in large chunks): pass 1 accumulates over the
slices and pass 2 asks for them again.

Rules (the same results as sorting |x| and applying the rule, except float rounding):
- sums and sums of squares accumulate in float64 (SparseML's mean is numpy's float32 pairwise mean; the
  two agree to ~1e-6 relative, and float64 neither overflows nor underflows where float32 squares would);
- the sign bit is ignored, so -0.0 counts as 0.0 and NaN with its sign bit set is still NaN;
- `engine="numba"` runs both passes compiled (numba is optional); `"numpy"` does them with bincount over
  slices of 2**18 values; both feed the same resolution step, so they differ only in summation order.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

HIGH = 19                              # bits of the level-1 key: 8 exponent + 11 mantissa bits
LOW = 32 - 1 - HIGH                    # bits left for level 2: a level-2 key is one exact float value
BUCKETS = 1 << HIGH
SUB = 1 << LOW
NON_FINITE = 0x7F800000 >> LOW         # first level-1 key of +Inf / NaN
NUMPY_CHUNK = 1 << 18                  # the numpy engine's slice: its temporaries stay in cache

_local = threading.local()
_nb = None                             # compiled kernels, once numba has been imported


@dataclass(frozen=True)
class RankMeasures:
    """Per level: the measurement and the fraction of Σx² kept; the layer's Σx² and its flags."""
    values: np.ndarray
    energy_kept: np.ndarray
    energy: float
    flags: tuple[str, ...] = ()


def has_numba() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def measure_array(values: np.ndarray, levels, engine: str = "numpy") -> RankMeasures:
    """`measure` of one in-memory array (any shape; read as one flat slice)."""
    flat = _as_float32(values).reshape(-1)
    return measure(lambda: (flat,), levels, engine)


def measure(read_slices: Callable[[], Iterable[np.ndarray]], levels, engine: str = "numpy") -> RankMeasures:
    """The magnitude measurements of all values `read_slices()` yields, in order of `levels`.

    `read_slices` is called once or twice (the second pass only when a rank boundary falls inside a
    bucket) and must yield the same values each time; slices may have any shape and a float32 (or float16)
    dtype. For each level s: idx = min(round(s·n), n−1); s ≤ 1e-9 → 0.0; else if idx > prev the mean of
    sorted |x| over [prev, idx), prev = idx; else sorted |x| at idx, prev = idx + 1. Energy kept is
    1 − Σ(smallest round(s·n) x²)/Σx² (1 where Σx² is 0 or not finite).
    """
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(levels)) or np.any(levels < 0) or np.any(levels > 1):
        raise ValueError(f"levels must lie in [0, 1]; got {levels.tolist()}")
    if engine == "numba":
        passes = _numba_passes()
    elif engine == "numpy":
        passes = _NumpyPasses()
    else:
        raise ValueError(f"engine must be 'numpy' or 'numba', not {engine!r}")
    with passes:
        n = passes.first(_float32_slices(read_slices()))
        if n == 0:
            return RankMeasures(np.zeros(len(levels)), np.ones(len(levels)), 0.0, ("empty",))
        lo, hi, counts = passes.span()
        ranges, pruned, cuts = _plan(n, levels)
        starts = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=starts[1:])
        inner = cuts[(cuts > 0) & (cuts < n)]
        holding = np.searchsorted(starts, inner, "right") - 1          # the bucket each inner cut falls in
        split = np.unique(holding[starts[holding] < inner])            # buckets a cut falls strictly inside
        sub = np.zeros((split.size, SUB), np.int64)
        if split.size:
            seen = passes.second(_float32_slices(read_slices()), split + lo, sub)
            if seen != n:
                raise ValueError(f"read_slices yielded {n} values, then {seen}: the slices must not change")
        return _resolve(n, levels, ranges, pruned, cuts, lo, hi, counts, starts, split, sub, passes.sums())


def _as_float32(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype != np.float32:
        if arr.dtype.kind != "f" or arr.dtype.itemsize > 4:
            raise TypeError(f"values must be float32 (or float16), not {arr.dtype}: the ranks are of float32 values")
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


def _float32_slices(slices: Iterable[np.ndarray]):
    for s in slices:
        s = _as_float32(s).reshape(-1)
        if s.size:
            yield s


def _plan(n: int, levels: np.ndarray):
    """The rule's ranges per level ((k, lo, hi): mean over sorted ranks [lo, hi)), the pruned counts,
    and every rank where an exact cut is needed."""
    counts = np.round(levels * n).astype(np.int64)          # half to even, as SparseML's Python round
    index = np.minimum(counts, n - 1)
    ranges, prev = [], 0
    for k, (level, i) in enumerate(zip(levels.tolist(), index.tolist())):
        if level <= 1e-9:
            continue
        if i > prev:
            ranges.append((k, prev, i))
            prev = i
        else:                                               # the value at idx is the mean of [idx, idx + 1)
            ranges.append((k, i, i + 1))
            prev = i + 1
    pruned = np.minimum(counts, n)
    ends = np.array([r[1:] for r in ranges], np.int64).reshape(-1)
    return ranges, pruned, np.unique(np.concatenate([[0, n], pruned, ends]))


def _resolve(n, levels, ranges, pruned, cuts, lo, hi, counts, starts, split, sub, bucket_sums):
    """Sum and sum of squares per interval between consecutive cuts, from whole buckets (which lie inside
    one interval) and from the split buckets' exact values (which may straddle cuts, when values tie)."""
    sums, squares = bucket_sums
    m = cuts.size - 1
    isum, isq = np.zeros(m), np.zeros(m)
    whole = counts > 0
    whole[split] = False
    b = np.flatnonzero(whole)
    j = np.searchsorted(cuts, starts[b], "right") - 1
    isum += np.bincount(j, weights=sums[b], minlength=m)
    isq += np.bincount(j, weights=squares[b], minlength=m)
    if split.size:
        rows, cols = np.nonzero(sub)
        k = sub[rows, cols]
        bits = ((split[rows] + lo).astype(np.uint32) << LOW) | cols.astype(np.uint32)
        v = bits.view(np.float32).astype(np.float64)
        run_end = np.cumsum(k)
        first = np.searchsorted(rows, np.arange(split.size))       # each row's first run
        p = starts[split[rows]] + run_end - k - (run_end - k)[first[rows]]
        j0 = np.searchsorted(cuts, p, "right") - 1
        j1 = np.searchsorted(cuts, p + k - 1, "right") - 1
        one = j0 == j1
        isum += np.bincount(j0[one], weights=k[one] * v[one], minlength=m)
        isq += np.bincount(j0[one], weights=k[one] * v[one] * v[one], minlength=m)
        for r in np.flatnonzero(~one).tolist():                     # runs of one value across cuts: few
            start, end, val = int(p[r]), int(p[r] + k[r]), float(v[r])
            for jj in range(int(j0[r]), int(j1[r]) + 1):
                c = min(end, int(cuts[jj + 1])) - max(start, int(cuts[jj]))
                isum[jj] += c * val
                isq[jj] += c * val * val
    total = isum.tolist()
    at = {c: i for i, c in enumerate(cuts.tolist())}
    out = np.zeros(len(levels))
    for k, a, z in ranges:
        i0, i1 = at[a], at[z]
        s = total[i0] if i1 == i0 + 1 else math.fsum(total[i0:i1])
        out[k] = s / (z - a)
    below = np.concatenate([[0.0], np.cumsum(isq)])               # Σx² below each cut
    energy = float(below[-1])
    if energy > 0 and math.isfinite(energy):
        kept = 1.0 - below[np.searchsorted(cuts, pruned)] / energy
    else:
        kept = np.ones(len(levels))
    top = lo + int(np.flatnonzero(counts)[-1])
    flags = ("non_finite",) if top >= NON_FINITE else ("all_zero",) if energy == 0 else ()
    return RankMeasures(out, kept, energy, flags)


class _NumpyPasses:
    """Both passes with numpy: bincount over 2**18-value slices (its temporaries stay in cache)."""

    def __enter__(self):
        self.counts = np.zeros(BUCKETS, np.int64)
        self.s = np.zeros(BUCKETS)
        self.q = np.zeros(BUCKETS)
        self.top = -1
        self.bottom = BUCKETS
        self.keys = np.empty(NUMPY_CHUNK, np.intp)
        self.wide = np.empty(NUMPY_CHUNK)
        self.mags = np.empty(NUMPY_CHUNK, np.float32)
        return self

    def __exit__(self, *exc):
        return False

    def _chunks(self, slices):
        for s in slices:
            for i in range(0, s.size, NUMPY_CHUNK):
                x = s[i:i + NUMPY_CHUNK]
                mags = np.abs(x, out=self.mags[:x.size])            # also clears NaN's sign bit
                keys = self.keys[:x.size]
                np.copyto(keys, mags.view(np.uint32))
                yield mags, keys

    def first(self, slices) -> int:
        n = 0
        for mags, keys in self._chunks(slices):
            keys >>= LOW
            n += keys.size
            c = np.bincount(keys)
            top = c.size
            self.counts[:top] += c
            w = self.wide[:keys.size]
            np.copyto(w, mags)
            self.s[:top] += np.bincount(keys, weights=w)
            np.multiply(w, w, out=w)
            self.q[:top] += np.bincount(keys, weights=w)
            self.top = max(self.top, top - 1)
            self.bottom = min(self.bottom, int(np.flatnonzero(c)[0]))
        return n

    def span(self):
        self.lo, self.hi = self.bottom, self.top + 1
        return self.lo, self.hi, self.counts[self.lo:self.hi]

    def sums(self):
        return self.s[self.lo:self.hi], self.q[self.lo:self.hi]

    def second(self, slices, buckets: np.ndarray, sub: np.ndarray) -> int:
        slot = np.zeros(BUCKETS, np.int32)
        slot[buckets] = np.arange(1, buckets.size + 1)
        flat = sub.reshape(-1)
        pending, held, n = [], 0, 0
        for mags, keys in self._chunks(slices):
            n += keys.size
            s = slot[keys >> LOW]
            hit = np.flatnonzero(s)
            if hit.size:
                code = (s[hit] - 1) * SUB + (keys[hit] & (SUB - 1))
                pending.append(code)
                held += code.size
                if held >= max(flat.size, 1 << 20):                  # one bincount per table's worth of codes
                    flat += np.bincount(np.concatenate(pending), minlength=flat.size)
                    pending, held = [], 0
        if pending:
            flat += np.bincount(np.concatenate(pending), minlength=flat.size)
        return n


def _numba_passes():
    global _nb
    if _nb is None:
        _nb = _compile()
    return _NumbaPasses()


def _compile():
    from numba import njit

    u = np.uint32

    @njit(nogil=True, cache=True)
    def first(x, bits, table, bounds):
        lo, hi = bounds[0], bounds[1]
        for i in range(x.size):
            k = (bits[i] & u(0x7FFFFFFF)) >> u(LOW)
            v = abs(np.float64(x[i]))
            table[k, 0] += 1.0
            table[k, 1] += v
            table[k, 2] += v * v
            lo = min(lo, np.int64(k))
            hi = max(hi, np.int64(k))
        bounds[0], bounds[1] = lo, hi

    @njit(nogil=True, cache=True)
    def second(bits, slot, sub):
        for i in range(bits.size):
            b = bits[i] & u(0x7FFFFFFF)
            s = slot[b >> u(LOW)]
            if s != 0:
                sub[s - 1, b & u(SUB - 1)] += 1

    return first, second


class _NumbaPasses:
    """Both passes compiled; the level-1 table (count, sum, sum of squares, padding per bucket: one
    32-byte row, so an update touches one cache line) is kept per thread and only its used rows re-zeroed."""

    def __enter__(self):
        if getattr(_local, "table", None) is None:
            _local.table = np.zeros((BUCKETS, 4))
            _local.slot = np.zeros(BUCKETS, np.uint16)
        self.table = _local.table
        self.bounds = np.array([BUCKETS, -1], np.int64)        # lowest and highest key seen
        return self

    def __exit__(self, *exc):
        lo, hi = self.bounds
        if hi >= lo:
            self.table[lo:hi + 1] = 0.0
        return False

    def first(self, slices) -> int:
        n = 0
        for s in slices:
            _nb[0](s, s.view(np.uint32), self.table, self.bounds)
            n += s.size
        return n

    def span(self):
        self.lo, self.hi = int(self.bounds[0]), int(self.bounds[1]) + 1
        return self.lo, self.hi, self.table[self.lo:self.hi, 0].astype(np.int64)

    def sums(self):
        return self.table[self.lo:self.hi, 1], self.table[self.lo:self.hi, 2]

    def second(self, slices, buckets: np.ndarray, sub: np.ndarray) -> int:
        if buckets.size >= 1 << 16:
            raise ValueError("too many levels: at most 65535 buckets can hold a rank boundary")
        slot = _local.slot
        slot[buckets] = np.arange(1, buckets.size + 1)
        try:
            n = 0
            for s in slices:
                _nb[1](s.view(np.uint32), slot, sub)
                n += s.size
            return n
        finally:
            slot[buckets] = 0
