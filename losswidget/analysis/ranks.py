"""Rank statistics of |x| without sorting: the magnitude method's kernel.

The magnitude measurements (SparseML's rule, DESIGN.md "magnitude") need, per layer, the values at ~100
rank boundaries and the sums between them, plus the sum of squares below each level's pruned count. A full
sort costs O(n log n) and its speed depends on which SIMD sort the CPU gets; the same numbers come from two
linear passes:

1. a histogram over the top 19 bits of |x|'s float32 bits (non-negative float32 bit patterns order like
   the floats, with NaN after +Inf as numpy sorts it): per bucket the count and the sum;
2. only buckets with a rank boundary strictly inside are looked at again: a count per distinct value
   (their remaining 12 bits), which places every element at those ranks exactly.

Nothing is sorted, each value is read twice, and the tables are fixed-size whatever n is. Values may come
in slices (a layer over a memory budget, external data read in large chunks): pass 1 accumulates over the
slices and pass 2 asks for them again.

Rules (the same results as sorting |x| and applying the rule, up to float rounding):
- sums are float64 (SparseML's mean is numpy's float32 pairwise mean; the two agree to ~1e-7 relative,
  and float64 neither overflows nor underflows where float32 would);
- a bucket's Σx² is (Σx)²/count: its values lie within a factor 1 + 2**-11, so that is exact to 2**-24;
  buckets of subnormal values, too wide for that, go through pass 2 and are summed value by value;
- the sign bit is ignored, so -0.0 counts as 0.0 and NaN with its sign bit set is still NaN;
- `engine="numba"` runs both passes compiled (numba is optional; its pass 1 packs count and Σ of the low
  bits into one int64 per bucket); `"numpy"` does them with np.add.at over slices of 2**16 values; both
  feed the same resolution step.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

HIGH = 19                              # bits of the level-1 key: 8 exponent + 11 mantissa bits
LOW = 32 - 1 - HIGH                    # bits left for level 2: a level-2 key is one exact float value
BUCKETS = 1 << HIGH
SUB = 1 << LOW
NON_FINITE = 0x7F800000 >> LOW         # first level-1 key of +Inf / NaN
NUMPY_CHUNK = 1 << 16                  # the numpy engine's slice
NUMBA_FROM = 1 << 25                   # values from which numba's one-off import pays off over numpy's engine

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
    """Whether the compiled engine can run (numba installed; found without importing it)."""
    return importlib.util.find_spec("numba") is not None


def default_engine(values: int) -> str:
    """The engine for measuring `values` values in all: "numba" where installed (`losswidget[fast]`) and
    either already imported or the work repays importing it (~0.5 s, holding the GIL), else "numpy"."""
    if not has_numba():
        return "numpy"
    return "numba" if "numba" in sys.modules or values >= NUMBA_FROM else "numpy"


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
        keys, counts, sums = passes.buckets()                       # the non-empty buckets, in key order
        # a bucket of normal floats spans a factor 1 + 2**-11, so (Σx)²/count is its Σx² to 2**-24
        squares = sums * sums / counts
        ranges, pruned, cuts = _plan(n, levels.tobytes())
        starts = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=starts[1:])
        inner = cuts[(cuts > 0) & (cuts < n)]
        holding = np.searchsorted(starts, inner, "right") - 1          # the bucket each inner cut falls in
        split = np.unique(holding[starts[holding] < inner])            # buckets a cut falls strictly inside
        subnormal = (keys < 1 << (HIGH - 8)) & (sums > 0)               # too wide for the Σx² estimate: exact
        if subnormal.any():
            split = np.union1d(split, np.flatnonzero(subnormal))
        values = (np.zeros(0, np.int64),) * 3                          # (split bucket, low bits, count)
        if split.size:
            seen, values = passes.second(_float32_slices(read_slices()), keys[split])
            if seen != n:
                raise ValueError(f"read_slices yielded {n} values, then {seen}: the slices must not change")
    return _resolve(n, levels, ranges, pruned, cuts, keys, counts, sums, squares, starts, split, values)


def _as_float32(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype != np.float32:
        if arr.dtype.kind != "f" or arr.dtype.itemsize > 4:
            raise TypeError(f"values must be float32 (or float16), not {arr.dtype}: ranks are of float32 values")
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


def _float32_slices(slices: Iterable[np.ndarray]):
    for s in slices:
        s = _as_float32(s).reshape(-1)
        if s.size:
            yield s


@functools.lru_cache(maxsize=64)                       # a model's layers come in a few sizes
def _plan(n: int, level_bytes: bytes):
    """The rule's ranges per level ((k, lo, hi): mean over sorted ranks [lo, hi)), the pruned counts,
    and every rank where an exact cut is needed."""
    levels = np.frombuffer(level_bytes)
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
    cuts = np.unique(np.concatenate([[0, n], pruned, ends]))
    pruned.setflags(write=False)
    cuts.setflags(write=False)
    return tuple(ranges), pruned, cuts


def _resolve(n, levels, ranges, pruned, cuts, keys, counts, sums, squares, starts, split, values):
    """Sum and sum of squares per interval between consecutive cuts, from whole buckets (which never
    straddle a cut) and from the split buckets' exact values (a run of one value may straddle cuts when
    values tie); then the rule's means, the energy kept and the flags."""
    sums, squares = sums.copy(), squares.copy()
    sums[split] = squares[split] = 0.0                                  # counted value by value below
    isum, isq = _per_interval(starts[:-1], cuts, sums, squares)
    if split.size:
        rows, cols, k = values
        bits = (keys[split][rows].astype(np.uint32) << LOW) | cols.astype(np.uint32)
        v = bits.view(np.float32).astype(np.float64)
        below = np.cumsum(k) - k
        first = np.searchsorted(rows, np.arange(split.size))            # each split bucket's first value
        p = starts[split][rows] + below - below[first][rows]            # rank of each value's first copy
        inner = cuts[1:-1]
        r = np.maximum(np.searchsorted(p, inner, "right") - 1, 0)       # the value run at or before each cut
        across = np.unique(r[(p[r] < inner) & (p[r] + k[r] > inner)])   # runs a cut falls strictly inside
        kv, kvv = k * v, k * v * v
        kv[across] = kvv[across] = 0.0
        ssum, ssq = _per_interval(p, cuts, kv, kvv)
        isum += ssum
        isq += ssq
        for r in across.tolist():                                       # one value over several intervals
            start, end, val = int(p[r]), int(p[r] + k[r]), float(v[r])
            for j in range(int(np.searchsorted(cuts, start, "right")) - 1, int(np.searchsorted(cuts, end, "left"))):
                c = min(end, int(cuts[j + 1])) - max(start, int(cuts[j]))
                isum[j] += c * val
                isq[j] += c * val * val
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
    top = int(keys[-1])
    flags = ("non_finite",) if top >= NON_FINITE else ("all_zero",) if energy == 0 else ()
    return RankMeasures(out, kept, energy, flags)


def _per_interval(run_starts: np.ndarray, cuts: np.ndarray, *weights: np.ndarray) -> list[np.ndarray]:
    """Σ weights of the runs starting in each interval [cuts[j], cuts[j+1]) (runs in rank order, none
    straddling a cut): one reduceat per weight, exact partial sums rather than differences of prefix sums
    (which lose digits and turn +Inf into NaN)."""
    edges = np.searchsorted(run_starts, cuts)
    idx = np.empty(2 * (cuts.size - 1), np.int64)
    idx[0::2], idx[1::2] = edges[:-1], edges[1:]
    empty = edges[:-1] == edges[1:]
    out = []
    for w in weights:
        total = np.add.reduceat(np.append(w, 0.0), idx)[0::2]          # reduceat gives w[i] for an empty [i, i)
        total[empty] = 0.0
        out.append(total)
    return out


class _NumpyPasses:
    """Both passes with numpy over slices of 2**16 values. np.add.at with matching dtypes takes its fast
    path (~2 ns a value here) and, unlike bincount, costs nothing per empty bucket. The tables are kept per
    thread and only the key range a layer used is read and re-zeroed, so a small layer costs little."""

    def __enter__(self):
        if getattr(_local, "np_counts", None) is None:
            _local.np_counts = np.zeros(BUCKETS, np.int64)
            _local.np_sums = np.zeros(BUCKETS)
            _local.np_slot = np.zeros(BUCKETS, np.intp)
        self.counts, self.s, self.slot = _local.np_counts, _local.np_sums, _local.np_slot
        self.lo, self.hi = BUCKETS, -1
        self.keys = np.empty(NUMPY_CHUNK, np.intp)
        self.mags = np.empty(NUMPY_CHUNK, np.float32)
        self.wide = np.empty(NUMPY_CHUNK)
        return self

    def __exit__(self, *exc):
        if self.hi >= self.lo:                         # stopped between the passes: leave the tables zeroed
            self.counts[self.lo:self.hi + 1] = 0
            self.s[self.lo:self.hi + 1] = 0.0
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
            self.lo, self.hi = min(self.lo, int(keys.min())), max(self.hi, int(keys.max()))
            np.add.at(self.counts, keys, 1)
            wide = self.wide[:keys.size]
            np.copyto(wide, mags)
            np.add.at(self.s, keys, wide)
        return n

    def buckets(self):
        counts, sums = self.counts[self.lo:self.hi + 1], self.s[self.lo:self.hi + 1]
        at = np.flatnonzero(counts)
        out = self.lo + at, counts[at], sums[at]
        counts[:] = 0
        sums[:] = 0.0
        self.lo, self.hi = BUCKETS, -1
        return out

    def second(self, slices, buckets: np.ndarray):
        slot = self.slot                                             # row in the value table; 0: not split
        slot[buckets] = np.arange(1, buckets.size + 1)
        try:
            dense = None
            hits, n = [], 0
            for mags, keys in self._chunks(slices):
                n += keys.size
                code = slot[keys >> LOW]
                code <<= LOW
                code |= keys & (SUB - 1)
                if dense is None and n > buckets.size * SUB:        # a layer this size fills a dense table
                    dense = np.zeros((buckets.size + 1) * SUB, np.int64)
                    for h in hits:
                        np.add.at(dense, h, 1)
                if dense is not None:
                    np.add.at(dense, code, 1)
                else:
                    hits.append(code[code >= SUB])
        finally:
            slot[buckets] = 0
        if dense is not None:
            table = dense.reshape(-1, SUB)[1:]
            rows, cols = np.nonzero(table)
            return n, (rows, cols, table[rows, cols])
        codes, counts = np.unique(np.concatenate(hits) if hits else np.zeros(0, np.intp), return_counts=True)
        return n, ((codes >> LOW) - 1, codes & (SUB - 1), counts)


def _numba_passes():
    global _nb
    if _nb is None:
        _nb = _compile()
    return _NumbaPasses()


PIECE = 1 << 22                        # values per piece: a packed count (23 bits) cannot overflow within one
ONE = 1 << 40                          # a packed row: count · 2**40 + Σ(low 12 bits)


def _compile():
    from numba import njit

    u = np.uint32

    @njit(nogil=True, cache=True)
    def flush(packed, counts, lows, used):
        for w in range(used.size):
            word = used[w]
            if word == 0:
                continue
            for b in range(64):
                if (word >> np.uint64(b)) & np.uint64(1):
                    k = w * 64 + b
                    counts[k] += packed[k] >> np.int64(40)
                    lows[k] += packed[k] & np.int64(ONE - 1)
                    packed[k] = 0

    @njit(nogil=True, cache=True)
    def first(bits, packed, counts, lows, used, pending):
        """Pass 1 over one slice: per bucket count and Σ low bits in one int64 (an 8-byte row keeps the
        table's busy part in L2), moved to the wide tables before PIECE values pile up in it."""
        n = bits.size
        start = 0
        while start < n:
            if pending[0] >= PIECE:
                flush(packed, counts, lows, used)
                pending[0] = 0
            stop = min(n, start + PIECE - pending[0])
            for i in range(start, stop):
                b = bits[i] & u(0x7FFFFFFF)
                k = b >> u(LOW)
                if packed[k] == 0:
                    used[k >> u(6)] |= np.uint64(1) << np.uint64(k & u(63))
                packed[k] += np.int64(ONE) + np.int64(b & u(SUB - 1))
            pending[0] += stop - start
            start = stop

    @njit(nogil=True, cache=True)
    def collect(packed, counts, lows, used, keys, c, s):
        """The used rows in key order; leaves the tables zeroed for the next layer."""
        m = 0
        for w in range(used.size):
            word = used[w]
            if word == 0:
                continue
            for b in range(64):
                if (word >> np.uint64(b)) & np.uint64(1):
                    k = w * 64 + b
                    keys[m] = k
                    c[m] = counts[k] + (packed[k] >> np.int64(40))
                    s[m] = lows[k] + (packed[k] & np.int64(ONE - 1))
                    packed[k] = counts[k] = lows[k] = 0
                    m += 1
            used[w] = 0
        return m

    @njit(nogil=True, cache=True)
    def second(bits, split, slot, sub, used):
        """Pass 2: a count per exact value in the split buckets (`split[key]` is 1). The few hits are first
        gathered without a branch per value (a mispredicted branch per hit cost more than the loop)."""
        hits = np.empty(4096, np.int64)
        n = bits.size
        for start in range(0, n, 4096):
            m = 0
            for i in range(start, min(n, start + 4096)):
                hits[m] = i
                m += split[(bits[i] & u(0x7FFFFFFF)) >> u(LOW)]
            for j in range(m):
                b = bits[hits[j]] & u(0x7FFFFFFF)
                r = slot[b >> u(LOW)]
                c = b & u(SUB - 1)
                if sub[r, c] == 0:
                    used[r, c >> u(6)] |= np.uint64(1) << np.uint64(c & u(63))
                sub[r, c] += 1

    @njit(nogil=True, cache=True)
    def collect_values(sub, used, rows, cols, counts):
        m = 0
        for r in range(used.shape[0]):
            for w in range(used.shape[1]):
                word = used[r, w]
                if word == 0:
                    continue
                for b in range(64):
                    if (word >> np.uint64(b)) & np.uint64(1):
                        rows[m], cols[m], counts[m] = r, w * 64 + b, sub[r, w * 64 + b]
                        sub[r, w * 64 + b] = 0
                        m += 1
                used[r, w] = 0
        return m

    return first, collect, second, collect_values


def _sums_from_low_bits(keys: np.ndarray, counts: np.ndarray, lows: np.ndarray) -> np.ndarray:
    """Σ|x| per bucket from its count and Σ of the values' low 12 bits: within a bucket every value is
    (base + low) · 2**(exponent − 150), so the sum is exact up to float64 rounding."""
    exponent = keys >> (HIGH - 8)
    base = (keys & ((1 << (HIGH - 8)) - 1)) << LOW
    base = np.where(exponent > 0, base + (1 << 23), base)                 # the implicit bit of normal floats
    sums = np.ldexp(counts * base.astype(np.float64) + lows, np.maximum(exponent, 1) - 150)
    top = exponent == 255                                                 # +Inf (low bits 0) or NaN
    if top.any():
        sums[top] = np.where((base[top] == 1 << 23) & (lows[top] == 0), np.inf, np.nan)
    return sums


class _NumbaPasses:
    """Both passes compiled. Tables live per thread and only their used rows (found through bitmaps) are
    read and re-zeroed, so a small layer pays for the buckets it fills, not for 2**19 rows."""

    def __enter__(self):
        if getattr(_local, "packed", None) is None:
            _local.packed = np.zeros(BUCKETS, np.int64)
            _local.counts = np.zeros(BUCKETS, np.int64)
            _local.lows = np.zeros(BUCKETS, np.int64)
            _local.used = np.zeros(BUCKETS // 64, np.uint64)
            _local.split = np.zeros(BUCKETS, np.uint8)
            _local.slot = np.zeros(BUCKETS, np.int32)
        self.n, self.clean, self.pending = 0, False, np.zeros(1, np.int64)
        return self

    def __exit__(self, *exc):
        if not self.clean:                             # stopped between the passes: leave the tables zeroed
            for name in ("packed", "counts", "lows", "used"):
                getattr(_local, name)[:] = 0
        return False

    def first(self, slices) -> int:
        for s in slices:
            _nb[0](s.view(np.uint32), _local.packed, _local.counts, _local.lows, _local.used, self.pending)
            self.n += s.size
        return self.n

    def buckets(self):
        size = min(self.n, BUCKETS)
        keys, c, s = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.int64)
        m = _nb[1](_local.packed, _local.counts, _local.lows, _local.used, keys, c, s)
        self.clean = True
        keys, c = keys[:m], c[:m]
        return keys, c, _sums_from_low_bits(keys, c, s[:m])

    def second(self, slices, buckets: np.ndarray):
        if getattr(_local, "sub", None) is None or _local.sub.shape[0] < buckets.size:
            _local.sub = np.zeros((max(buckets.size, 256), SUB), np.int64)      # kept zeroed by collect_values
            _local.sub_used = np.zeros((_local.sub.shape[0], SUB // 64), np.uint64)
        sub, used = _local.sub[:buckets.size], _local.sub_used[:buckets.size]
        split, slot = _local.split, _local.slot
        split[buckets] = 1
        slot[buckets] = np.arange(buckets.size)
        try:
            n = 0
            for s in slices:
                _nb[2](s.view(np.uint32), split, slot, sub, used)
                n += s.size
        except BaseException:
            sub[:] = 0
            used[:] = 0
            raise
        finally:
            split[buckets] = 0
        size = min(n, sub.size)
        rows, cols, counts = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.int64)
        m = _nb[3](sub, used, rows, cols, counts)
        return n, (rows[:m], cols[:m], counts[:m])
