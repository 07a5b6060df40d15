"""Rank statistics of |x| without sorting: the magnitude method's kernel.

The magnitude measurements (SparseML's rule, DESIGN.md "magnitude") need, per layer, the values at ~100
rank boundaries and the sums between them, plus the sum of squares below each level's pruned count. A full
sort costs O(n log n) and its speed depends on which SIMD sort the CPU gets; the same numbers come from
counting, in one of three ways by how the weight is stored:

- float32 values (`measure`), two linear passes:
  1. a histogram over the top 19 bits of |x|'s float32 bits (non-negative float32 bit patterns order like
     the floats, with NaN after +Inf as numpy sorts it): per bucket the count and the Σ of the values' low
     12 bits (from which the bucket's Σx follows exactly);
  2. only buckets with a rank boundary strictly inside are looked at again: a count per distinct value
     (their remaining 12 bits), which places every element at those ranks exactly.
- 16-bit floats (`measure_half`: float16, bfloat16), one pass: |x| of a 16-bit float has at most 2**15
  bit patterns, each one exact value, so a count per pattern (a 32768-entry table) is the whole sorted
  order: no conversion to float32, no second pass, each weight read once.
- n-bit codes in blocks (`measure_codes`: MatMulNBits), two passes over items: within a block |w| =
  |(code − zero point) × scale| takes at most 2**bits values, so a block's codes are counted from the packed
  bytes and each distinct magnitude enters the float32 passes once with its count (about 8 items per
  block of 32 4-bit codes); pass 2 counts a block's codes again only when one of its magnitudes lies in a
  split bucket. Nothing is dequantized. 4-bit codes with whole zero points (the usual export) take a
  faster path (kernels.nibbles_first/second): a block's distances |code − zp| are counted by one table
  add per byte into 8-bit lanes, and pass 2 passes by every block whose scale's level-1 key cannot put a
  magnitude in a split bucket (`scale_keys`), writing the few exact values it finds to a buffer that is
  grouped by bucket before it is counted (kernels.group: adding them in the order found missed the cache).

Nothing is sorted, and the tables are fixed-size whatever n is. Values may come in slices (a layer over a
memory budget, external data read in large chunks): pass 1 accumulates over the slices and pass 2 asks for
them again, and must get the same values: each split bucket must hold as many as pass 1 counted in it
(else a ValueError, before the compiled engine, which checks no bounds, places any by rank).

Rules (the same results as sorting |x| and applying the rule, up to float rounding):
- sums are float64 (SparseML's mean is numpy's float32 pairwise mean; the two agree to ~1e-7 relative,
  and float64 neither overflows nor underflows where float32 would);
- a bucket's Σx² is (Σx)²/count: its values lie within a factor 1 + 2**-11, so that is exact to 2**-24;
  buckets of subnormal values, too wide for that, go through pass 2 and are summed value by value;
- the sign bit is ignored, so -0.0 counts as 0.0 and NaN with its sign bit set is still NaN;
- `engine="numba"` runs the loops compiled (analysis/kernels.py; numba is optional), the bookkeeping after
  each pass included (`settle`, `settle_values`: with numpy it cost as much as pass 1), `"numpy"` does them
  with np.add.at / np.bincount over slices of 2**16 values and the bookkeeping with sorted-array numpy;
  both make the same integer tables (counts and Σ of low bits), added up in another order, so the two
  engines agree to float64 rounding.
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

from .kernels import BUCKETS, HALF_PATTERNS, HALF_PIECE, HIGH, LOW, PIECE, POW2, SUB, compiled, nibble_table

NON_FINITE = 0x7F800000 >> LOW         # first level-1 key of +Inf / NaN
HALF_NON_FINITE = {False: 0x7C00, True: 0x7F80}   # first |x| pattern of +Inf / NaN: float16, bfloat16
NUMPY_CHUNK = 1 << 16                  # the numpy engine's slice
NUMBA_FROM = 1 << 25                   # values from which numba's one-off load pays off over numpy's engine


_local = threading.local()


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
    either already imported or the work repays loading it (~0.7 s of one core), else "numpy"."""
    if not has_numba():
        return "numpy"
    return "numba" if "numba" in sys.modules or values >= NUMBA_FROM else "numpy"


def measure_array(values: np.ndarray, levels, engine: str = "numpy") -> RankMeasures:
    """`measure` of one in-memory array (any shape; read as one flat slice); float16 goes to `measure_half`."""
    arr = np.asarray(values)
    if arr.dtype == np.float16:
        flat16 = np.ascontiguousarray(arr).reshape(-1)
        return measure_half(lambda: (flat16,), levels, engine)
    flat = _as_float32(arr).reshape(-1)
    return measure(lambda: (flat,), levels, engine)


def measure(read_slices: Callable[[], Iterable[np.ndarray]], levels, engine: str = "numpy") -> RankMeasures:
    """The magnitude measurements of all values `read_slices()` yields, in order of `levels`.

    `read_slices` is called once or twice (the second pass only when a rank boundary falls inside a
    bucket) and must yield the same values each time; slices may have any shape and a float32 (or float16)
    dtype. For each level s: idx = min(round(s·n), n−1); s ≤ 1e-9 → 0.0; else if idx > prev the mean of
    sorted |x| over [prev, idx), prev = idx; else sorted |x| at idx, prev = idx + 1. Energy kept is
    1 − Σ(smallest round(s·n) x²)/Σx² (1 where Σx² is 0 or not finite).
    """
    levels = _levels(levels)
    with _passes(engine) as passes:
        return _select(levels, passes, lambda: passes.first(_float32_slices(read_slices())),
                       lambda keys: passes.second(_float32_slices(read_slices()), keys))


def measure_codes(read_blocks: Callable[[], Iterable[tuple]], bits: int, levels, engine: str = "numpy") -> RankMeasures:
    """`measure` of n-bit codes in blocks, |(code − zero point) × scale| computed in float32 as dequantizing
    does, without making those values.

    `read_blocks()` yields (packed, scale, zero_point, last) per slice of rows: packed uint8 [rows, blocks,
    bytes per block] (codes lowest bits first), scale float32 [rows, blocks], zero_point float32 [rows,
    blocks] or one number, and `last`, the codes of each row's last block that are weights (the rest is
    padding). It is called once or twice and must yield the same blocks each time. bits: 2, 4 or 8.
    """
    if bits not in (2, 4, 8):
        raise ValueError(f"bits must be 2, 4 or 8, not {bits!r}")
    levels = _levels(levels)
    with _passes(engine) as passes:
        return _select(levels, passes, lambda: passes.first_codes(_code_slices(read_blocks(), bits), bits),
                       lambda keys: passes.second_codes(_code_slices(read_blocks(), bits), bits, keys))


def measure_half(read_slices: Callable[[], Iterable[np.ndarray]], levels, engine: str = "numpy",
                 bfloat16: bool = False) -> RankMeasures:
    """`measure` of 16-bit floats in one pass: a count per bit pattern of |x| places every value exactly.

    `read_slices()` (called once) yields float16 arrays, or with `bfloat16` uint16 arrays of bfloat16 bit
    patterns (numpy has no bfloat16 dtype), of any shape. Sums are count × value in float64, exact per
    pattern."""
    levels = _levels(levels)
    if engine not in ("numpy", "numba"):
        raise ValueError(f"engine must be 'numpy' or 'numba', not {engine!r}")
    counts = _half_counts(_half_slices(read_slices(), bfloat16), engine)
    patterns = np.flatnonzero(counts)
    k = counts[patterns]
    n = int(k.sum())
    if n == 0:
        return RankMeasures(np.zeros(len(levels)), np.ones(len(levels)), 0.0, ("empty",))
    if bfloat16:
        v = (patterns.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    else:
        v = patterns.astype(np.uint16).view(np.float16).astype(np.float64)
    ranges, pruned, cuts = _plan(n, levels.tobytes())
    isum, isq = _run_sums(np.cumsum(k) - k, k, v, cuts)
    return _finish(levels, ranges, pruned, cuts, isum, isq, int(patterns[-1]) >= HALF_NON_FINITE[bfloat16])


# -- input ------------------------------------------------------------------------------------------------
def _levels(levels) -> np.ndarray:
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(levels)) or np.any(levels < 0) or np.any(levels > 1):
        raise ValueError(f"levels must lie in [0, 1]; got {levels.tolist()}")
    return levels


def _passes(engine: str):
    if engine == "numba":
        return _NumbaPasses()
    if engine == "numpy":
        return _NumpyPasses()
    raise ValueError(f"engine must be 'numpy' or 'numba', not {engine!r}")


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


def _half_slices(slices: Iterable[np.ndarray], bfloat16: bool):
    """Each slice's 16-bit patterns as a flat uint16 array."""
    want = np.uint16 if bfloat16 else np.float16
    for s in slices:
        s = np.asarray(s)
        if s.dtype != want:
            raise TypeError(f"16-bit values must come as {np.dtype(want).name}"
                            f"{' bit patterns' if bfloat16 else ''}, not {s.dtype}")
        s = np.ascontiguousarray(s).reshape(-1).view(np.uint16)
        if s.size:
            yield s


def _code_slices(blocks: Iterable[tuple], bits: int):
    """Each slice of blocks checked and made contiguous: (packed, scale, zero points [rows, blocks] float32,
    whether every zero point is a whole code, last)."""
    per = 8 // bits
    for packed, scale, zp, last in blocks:
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if packed.ndim != 3:
            raise ValueError(f"packed codes must be [rows, blocks, bytes per block], not of shape {list(packed.shape)}")
        rows, nblocks, nb = packed.shape
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        if scale.shape != (rows, nblocks):
            raise ValueError(f"scales of shape {list(scale.shape)} do not match {rows} rows of {nblocks} blocks")
        if not 0 < last <= nb * per:
            raise ValueError(f"the last block holds {last} codes; a block holds {nb * per}")
        if not packed.size:
            continue
        if np.ndim(zp) == 0:                         # one zero point for all (MatMulNBits' default)
            z = np.float32(zp)
            integral = bool(z == np.floor(z) and 0 <= z < 1 << bits)
            zp = _filled(rows, nblocks, float(z))
        else:
            zp = np.ascontiguousarray(np.broadcast_to(np.asarray(zp, np.float32), (rows, nblocks)))
            integral = bool(np.all((zp == np.floor(zp)) & (zp >= 0) & (zp < 1 << bits)))
        yield packed, scale, zp, integral, int(last)


# -- the selection ------------------------------------------------------------------------------------------
def _select(levels: np.ndarray, passes, first: Callable[[], int], second: Callable) -> RankMeasures:
    """Pass 1, then the engine's sums per interval between the rule's cuts (pass 2 over the buckets the
    cuts split, only if there are any), then the rule's means."""
    n = first()
    if n == 0:
        return RankMeasures(np.zeros(len(levels)), np.ones(len(levels)), 0.0, ("empty",))
    ranges, pruned, cuts = _plan(n, levels.tobytes())

    def exact(keys):
        seen, values = second(keys)
        if seen != n:
            raise ValueError(f"the slices yielded {n} values, then {seen}: the slices must not change")
        return values
    isum, isq, last = passes.interval_sums(cuts, exact)
    return _finish(levels, ranges, pruned, cuts, isum, isq, last >= NON_FINITE)


def _interval_sums(cuts: np.ndarray, keys, counts, lows, exact: Callable):
    """The numpy engine's sums per interval between cuts, from pass 1's non-empty buckets (in key order)
    and, for the buckets a cut falls strictly inside, their exact values (`exact(keys)`: pass 2)."""
    n = int(cuts[-1])
    sums = _sums_from_low_bits(keys, counts, lows)
    # a bucket of normal floats spans a factor 1 + 2**-11, so (Σx)²/count is its Σx² to 2**-24
    squares = sums * sums / counts
    starts = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    inner = cuts[(cuts > 0) & (cuts < n)]
    holding = np.searchsorted(starts, inner, "right") - 1          # the bucket each inner cut falls in
    split = np.unique(holding[starts[holding] < inner])            # buckets a cut falls strictly inside
    subnormal = (keys < 1 << (HIGH - 8)) & (sums > 0)               # too wide for the Σx² estimate: exact
    if subnormal.any():
        split = np.union1d(split, np.flatnonzero(subnormal))
    # a bucket whose low bits sum to 0 holds one value (its base: 0.0 for pruned or zero-code weights),
    # already known exactly: only the others are counted again
    one_value = lows[split] == 0
    rows, cols, k = (np.flatnonzero(one_value), np.zeros(int(one_value.sum()), np.int64), counts[split[one_value]])
    if not one_value.all():
        looked = split[~one_value]
        r2, c2, k2 = exact(keys[looked])
        if not np.array_equal(np.bincount(r2, k2, looked.size), counts[looked]):      # float64: exact below 2**53
            raise ValueError("the slices yielded other values in pass 2 than in pass 1: the slices must not change")
        r2 = np.flatnonzero(~one_value)[r2]
        if rows.size:
            # two runs in (row, col) order over disjoint rows: a stable sort by row merges them in one pass
            order = np.argsort(np.concatenate([rows, r2]), kind="stable")
            rows, cols, k = np.concatenate([rows, r2])[order], np.concatenate([cols, c2])[order], np.concatenate([k, k2])[order]
        else:
            rows, cols, k = r2, c2, k2
    sums[split] = squares[split] = 0.0                                  # counted value by value below
    isum, isq = _per_interval(starts[:-1], cuts, sums, squares)
    if split.size:
        bits = (keys[split][rows].astype(np.uint32) << LOW) | cols.astype(np.uint32)
        v = bits.view(np.float32).astype(np.float64)
        below = np.cumsum(k) - k
        first = np.searchsorted(rows, np.arange(split.size))            # each split bucket's first value
        p = starts[split][rows] + below - below[first][rows]            # rank of each value's first copy
        ssum, ssq = _run_sums(p, k, v, cuts)
        isum += ssum
        isq += ssq
    return isum, isq, int(keys[-1])


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


def _run_sums(p: np.ndarray, k: np.ndarray, v: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σx and Σx² per interval between consecutive cuts of runs of one value (first rank p, count k,
    value v; in rank order): a run of tied values may straddle cuts and is shared out between them."""
    inner = cuts[1:-1]
    r = np.maximum(np.searchsorted(p, inner, "right") - 1, 0)       # the value run at or before each cut
    across = np.unique(r[(p[r] < inner) & (p[r] + k[r] > inner)])   # runs a cut falls strictly inside
    kv, kvv = k * v, k * v * v
    kv[across] = kvv[across] = 0.0
    isum, isq = _per_interval(p, cuts, kv, kvv)
    for r in across.tolist():                                       # one value over several intervals
        start, end, val = int(p[r]), int(p[r] + k[r]), float(v[r])
        for j in range(int(np.searchsorted(cuts, start, "right")) - 1, int(np.searchsorted(cuts, end, "left"))):
            c = min(end, int(cuts[j + 1])) - max(start, int(cuts[j]))
            isum[j] += c * val
            isq[j] += c * val * val
    return isum, isq


def _finish(levels, ranges, pruned, cuts, isum, isq, non_finite: bool) -> RankMeasures:
    """The rule's means from the sums per interval, the energy kept and the flags."""
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
    flags = ("non_finite",) if non_finite else ("all_zero",) if energy == 0 else ()
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


def _sums_from_low_bits(keys: np.ndarray, counts: np.ndarray, lows: np.ndarray) -> np.ndarray:
    """Σ|x| per bucket from its count and Σ of the values' low 12 bits: within a bucket every value is
    (base + low) · 2**(exponent − 150), so the sum is exact up to float64 rounding."""
    exponent = keys >> (HIGH - 8)
    base = (keys & ((1 << (HIGH - 8)) - 1)) << LOW
    base = np.where(exponent > 0, base + (1 << 23), base)                 # the implicit bit of normal floats
    sums = (counts * base.astype(np.float64) + lows) * POW2[np.maximum(exponent, 1)]      # exact, as ldexp
    top = exponent == 255                                                 # +Inf (low bits 0) or NaN
    if top.any():
        sums[top] = np.where((base[top] == 1 << 23) & (lows[top] == 0), np.inf, np.nan)
    return sums


# -- the numpy engine -------------------------------------------------------------------------------------------
def _code_items(packed, scale, zp, bits: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """The (magnitude, count) items of a slice of blocks, with numpy: codes unpacked, counted per block
    (padding codes into a bin of their own), magnitudes |(code − zp) × scale| in float32."""
    rows, nblocks, nb = packed.shape
    per, codes = 8 // bits, 1 << bits
    unpacked = np.empty((rows, nblocks, nb, per), np.intp)
    for j in range(per):
        np.bitwise_and(packed >> (j * bits) if j else packed, codes - 1, out=unpacked[..., j], casting="unsafe")
    unpacked = unpacked.reshape(rows, nblocks, nb * per)
    unpacked[:, -1, last:] = codes
    unpacked += (np.arange(rows * nblocks, dtype=np.intp) * (codes + 1)).reshape(rows, nblocks, 1)
    counts = np.bincount(unpacked.reshape(-1), minlength=rows * nblocks * (codes + 1))
    counts = counts.reshape(rows * nblocks, codes + 1)[:, :codes]
    mags = np.subtract(np.arange(codes, dtype=np.float32), zp.reshape(-1, 1), dtype=np.float32)
    mags *= scale.reshape(-1, 1)
    np.abs(mags, out=mags)
    held = counts > 0
    return mags[held], counts[held]


def _half_counts(slices, engine: str) -> np.ndarray:
    """A count per |x| bit pattern (int64 [2**15]) over 16-bit slices."""
    total = np.zeros(HALF_PATTERNS, np.int64)
    if engine == "numba":
        count = compiled().half_count
        table = getattr(_local, "half", None)
        if table is None:
            table = _local.half = np.zeros(HALF_PATTERNS, np.int32)
        pending = 0
        try:
            for s in slices:
                for start in range(0, s.size, HALF_PIECE):
                    piece = s[start:start + HALF_PIECE]
                    if pending + piece.size > HALF_PIECE:         # int32 counts: moved out before they overflow
                        total += table
                        table[:] = 0
                        pending = 0
                    count(piece, table)
                    pending += piece.size
            total += table
        finally:
            table[:] = 0
        return total
    for s in slices:
        for start in range(0, s.size, 1 << 20):
            total += np.bincount(s[start:start + (1 << 20)] & np.uint16(0x7FFF), minlength=HALF_PATTERNS)
    return total


class _NumpyPasses:
    """Both passes with numpy over slices of 2**16 values (or items): np.add.at with matching dtypes takes
    its fast path (~2 ns a value here) and, unlike bincount, costs nothing per empty bucket. The tables are
    kept per thread and only the key range a layer used is read and re-zeroed, so a small layer costs
    little. Like the compiled passes, a bucket's sum is kept as the Σ of its values' low bits (integers)."""

    def __enter__(self):
        if getattr(_local, "np_counts", None) is None:
            _local.np_counts = np.zeros(BUCKETS, np.int64)
            _local.np_lows = np.zeros(BUCKETS, np.int64)
            _local.np_slot = np.zeros(BUCKETS, np.intp)
        self.counts, self.lows, self.slot = _local.np_counts, _local.np_lows, _local.np_slot
        self.lo, self.hi = BUCKETS, -1
        self.bits = np.empty(NUMPY_CHUNK, np.uint32)
        self.keys = np.empty(NUMPY_CHUNK, np.intp)
        self.low = np.empty(NUMPY_CHUNK, np.int64)
        return self

    def __exit__(self, *exc):
        if self.hi >= self.lo:                         # stopped between the passes: leave the tables zeroed
            self.counts[self.lo:self.hi + 1] = 0
            self.lows[self.lo:self.hi + 1] = 0
        return False

    def _chunks(self, slices, bits: int | None = None):
        """(|x|'s float32 bits, their level-1 keys, weights or None) per chunk of values or code items."""
        for s in slices:
            if bits is None:
                source, weights = s, None
            else:
                source, weights = _code_items(s[0], s[1], s[2], bits, s[4])
            for i in range(0, source.size, NUMPY_CHUNK):
                x = source[i:i + NUMPY_CHUNK]
                b = self.bits[:x.size]
                np.bitwise_and(x.view(np.uint32), 0x7FFFFFFF, out=b)
                keys = self.keys[:x.size]
                np.right_shift(b, LOW, out=keys, casting="unsafe")
                yield b, keys, (None if weights is None else weights[i:i + NUMPY_CHUNK])

    def first(self, slices) -> int:
        return self._first(self._chunks(slices))

    def first_codes(self, blocks, bits: int) -> int:
        return self._first(self._chunks(blocks, bits))

    def _first(self, chunks) -> int:
        n = 0
        for b, keys, w in chunks:
            n += keys.size if w is None else int(w.sum())
            self.lo, self.hi = min(self.lo, int(keys.min())), max(self.hi, int(keys.max()))
            low = self.low[:keys.size]
            np.bitwise_and(b, SUB - 1, out=low, casting="unsafe")
            if w is None:
                np.add.at(self.counts, keys, 1)
            else:
                np.add.at(self.counts, keys, w)
                low *= w
            np.add.at(self.lows, keys, low)
        return n

    def interval_sums(self, cuts: np.ndarray, exact: Callable):
        """Σx and Σx² per interval between cuts and the last key counted (see `_interval_sums`)."""
        counts, lows = self.counts[self.lo:self.hi + 1], self.lows[self.lo:self.hi + 1]
        at = np.flatnonzero(counts)
        keys, c, low = self.lo + at, counts[at], lows[at]
        counts[:] = 0
        lows[:] = 0
        self.lo, self.hi = BUCKETS, -1
        return _interval_sums(cuts, keys, c, low, exact)

    def second(self, slices, buckets: np.ndarray):
        return self._second(self._chunks(slices), buckets)

    def second_codes(self, blocks, bits: int, buckets: np.ndarray):
        return self._second(self._chunks(blocks, bits), buckets)

    def _second(self, chunks, buckets: np.ndarray):
        slot = self.slot                                             # row in the value table; 0: not split
        slot[buckets] = np.arange(1, buckets.size + 1)
        try:
            dense = None
            hits, weights, n = [], [], 0
            for b, keys, w in chunks:
                n += keys.size if w is None else int(w.sum())
                code = slot[keys]
                code <<= LOW
                code |= b & (SUB - 1)
                if dense is None and n > buckets.size * SUB:        # a layer this size fills a dense table
                    dense = np.zeros((buckets.size + 1) * SUB, np.int64)
                    for h, hw in zip(hits, weights):
                        np.add.at(dense, h, 1 if hw is None else hw)
                if dense is not None:
                    np.add.at(dense, code, 1 if w is None else w)
                else:
                    held = code >= SUB
                    hits.append(code[held])
                    weights.append(None if w is None else w[held])
        finally:
            slot[buckets] = 0
        if dense is not None:
            table = dense.reshape(-1, SUB)[1:]
            rows, cols = np.nonzero(table)
            return n, (rows, cols, table[rows, cols])
        if not hits:
            return n, (np.zeros(0, np.int64),) * 3
        codes = np.concatenate(hits)
        w = np.concatenate([np.ones(h.size, np.int64) if hw is None else hw for h, hw in zip(hits, weights)])
        order = np.argsort(codes, kind="stable")
        codes, w = codes[order], w[order]
        first = np.flatnonzero(np.diff(codes, prepend=-1))
        codes, counts = codes[first], np.add.reduceat(w, first) if first.size else w[:0]
        return n, ((codes >> LOW) - 1, codes & (SUB - 1), counts)


# -- the compiled engine ------------------------------------------------------------------------------------------
class _NumbaPasses:
    """Both passes and their bookkeeping compiled. Tables live per thread and only their used rows (found
    through bitmaps) are read and re-zeroed, so a small layer pays for the buckets it fills, not for 2**19
    rows. Pass 2 writes the exact values it finds to a buffer as items, counted together at the end
    (kernels.count_items); a layer with more than the buffer holds counts them into a table as it goes
    (kernels.tally). Either way kernels.settle_values adds them in."""

    def __enter__(self):
        self.k = compiled()
        if getattr(_local, "packed", None) is None:
            _local.packed = np.zeros(BUCKETS, np.int64)
            _local.counts = np.zeros(BUCKETS, np.int64)
            _local.lows = np.zeros(BUCKETS, np.int64)
            _local.used = np.zeros(BUCKETS // 64, np.uint64)
            _local.split = np.zeros(BUCKETS, np.uint8)
            _local.scales = np.zeros(BUCKETS, np.uint16)   # ranks.scale_keys' masks; kept zeroed
            _local.items = np.zeros(1 << 20, np.int64)     # pass 2's exact values (a big layer's fit)
            _local.scratch = np.zeros(1 << 20, np.int64)
            _local.slot = np.zeros(BUCKETS, np.int32)
            _local.cnt = np.zeros(3 * 256, np.int64)      # codes counted in the middle third
            _local.mags = np.zeros(256, np.uint32)
            _local.cells = np.zeros(SUB, np.int64)         # count_items' counts of one bucket; kept zeroed
            _local.touched = np.zeros(SUB // 64, np.uint64)
        self.n, self.clean, self.pending, self.flushed, self.unmarked = 0, False, 0, False, False
        return self

    def __exit__(self, *exc):
        if not self.clean:                             # stopped between the passes: leave the tables zeroed
            for name in ("packed", "counts", "lows", "used"):
                getattr(_local, name)[:] = 0
        return False

    def _marked(self) -> None:
        """The rows pass 1 filled, marked in `used` (the float32 pass leaves that to one scan at the end)."""
        if self.unmarked:
            self.k.mark(_local.packed, _local.used)
            self.unmarked = False

    def _room(self, m: int) -> None:
        """Make room for m more values in the packed table (its counts have 23 bits per piece)."""
        if self.pending + m > PIECE:
            self._marked()
            self.k.flush(_local.packed, _local.counts, _local.lows, _local.used)
            self.pending, self.flushed = 0, True
        self.pending += m

    def first(self, slices) -> int:
        for s in slices:
            bits = s.view(np.uint32)
            for start in range(0, bits.size, PIECE):
                piece = bits[start:start + PIECE]
                self._room(piece.size)
                self.k.first(piece, _local.packed)
                self.unmarked = True
            self.n += s.size
        return self.n

    def first_codes(self, blocks, bits: int) -> int:
        for packed, scale, zp, integral, last in blocks:
            for p, s, z, l, m in _pieces(packed, scale, zp, last, bits):
                self._room(m)
                if bits == 4 and integral:
                    self.n += self.k.nibbles_first(p, s, z, l, _nibbles(), _local.packed, _local.used, _local.cnt)
                else:
                    self.n += self.k.codes_first(p, s, z, integral, bits, l, _local.packed, _local.used, _local.cnt)
        return self.n

    def interval_sums(self, cuts: np.ndarray, exact: Callable):
        """Σx and Σx² per interval between cuts and the last key counted, compiled (kernels.settle, then pass
        2 adds the split buckets' exact values in): the same tables as the numpy engine, added up in
        another order."""
        self._marked()
        size = min(self.n, cuts.size + (1 << (HIGH - 8)))     # split buckets: one per cut, and subnormal ones
        keys, firsts, known = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.int64)
        isum, isq = np.zeros(cuts.size - 1), np.zeros(cuts.size - 1)
        m, last = self.k.settle(_local.packed, _local.counts, _local.lows, _local.used, self.flushed, cuts,
                                isum, isq, keys, firsts, known)
        self.clean = m >= 0
        if m < 0:
            raise ValueError(f"pass 1 counted more than the {self.n} values it was given")
        one = known[:m] > 0
        if one.any():                                  # one value each, known: added in as they are
            ones = np.flatnonzero(one)
            self.k.settle_values(np.arange(ones.size), np.zeros(ones.size, np.int64), known[ones], ones.size,
                                 keys[ones], firsts[ones], cuts, isum, isq)
        if not one.all():
            rest = np.flatnonzero(~one)
            self.settling = keys[rest], firsts[rest], -known[rest], cuts, isum, isq
            exact(keys[rest])
        return isum, isq, last

    def second(self, slices, buckets: np.ndarray):
        def run(add):
            n = 0
            for s in slices:
                bits, start = s.view(np.uint32), 0
                while start < bits.size:
                    start, held = self.k.second(bits, start, _local.split, _local.slot, _local.items, add.held)
                    add.held = held
                    if start < bits.size:                  # the buffer is full
                        add.spill()
                n += s.size
            return n
        return self._second(buckets, run)

    def second_codes(self, blocks, bits: int, buckets: np.ndarray):
        def run(add):
            n = 0
            scales = None
            try:
                for packed, scale, zp, integral, last in blocks:
                    for p, s, z, l, m in _pieces(packed, scale, zp, last, bits):
                        n += m
                        if not (bits == 4 and integral):
                            sub, used = add.tables()
                            self.k.codes_second(p, s, z, integral, bits, l, _local.split, _local.slot, sub, used,
                                                _local.cnt, _local.mags)
                            continue
                        if scales is None:
                            scales, masks = scale_keys(buckets)
                            _local.scales[scales] = masks
                        start, stop = 0, p.shape[0] * p.shape[1]
                        while start < stop:
                            start, add.held = self.k.nibbles_second(
                                p, s, z, l, _nibbles(), _local.split, _local.scales, _local.slot, start, _local.items,
                                add.held, _local.cnt)
                            if start < stop:              # the buffer is full
                                add.spill()
            finally:
                if scales is not None:
                    _local.scales[scales] = 0
            return n
        return self._second(buckets, run)

    def _second(self, buckets: np.ndarray, run):
        """Pass 2 (`run(add)`), its exact values added into the sums `interval_sums` is making."""
        keys, firsts, expected, cuts, isum, isq = self.settling
        split, slot = _local.split, _local.slot
        split[buckets] = 1
        slot[buckets] = np.arange(buckets.size)
        add = _Exact(self.k, buckets.size)
        try:
            n = run(add)
        except BaseException:
            add.discard()
            raise
        finally:
            split[buckets] = 0
        add.settle(keys, firsts, expected, cuts, isum, isq)
        return n, None


class _Exact:
    """Pass 2's exact values on their way into the sums: items in the thread's buffer (`held` of them),
    counted into a dense table (`found`) only when the buffer fills, and a per-value table for the codes
    counted one by one (codes_second); `settle` adds them all in, in order."""

    def __init__(self, k, rows: int):
        self.k, self.rows, self.held, self.found, self.sub = k, rows, 0, None, None

    def _grouped(self) -> np.ndarray:
        self.starts = np.empty(self.rows + 1, np.int64)
        self.k.group(_local.items, self.held, self.rows, _local.scratch, self.starts)
        return _local.scratch

    def spill(self) -> None:
        if self.found is None:
            self.found = np.zeros(self.rows * SUB, np.int64)
        self.k.tally(self._grouped(), self.held, self.found)
        self.held = 0

    def tables(self):
        if self.sub is None:
            if getattr(_local, "sub", None) is None or _local.sub.shape[0] < self.rows:
                _local.sub = np.zeros((max(self.rows, 256), SUB), np.int64)      # kept zeroed by collect_values
                _local.sub_used = np.zeros((_local.sub.shape[0], SUB // 64), np.uint64)
            self.sub = _local.sub[:self.rows], _local.sub_used[:self.rows]
        return self.sub

    def discard(self) -> None:
        if self.sub is not None:
            self.sub[0][:] = 0
            self.sub[1][:] = 0

    def settle(self, keys, firsts, expected, cuts, isum, isq) -> None:
        """Add the exact values in (kernels.settle_values), once each bucket is found to hold as many values
        as pass 1 counted in it (`expected`): the compiled loop places values by rank and trusts that."""
        if self.found is None and self.sub is None:
            size = min(self.held, self.rows * SUB)
            rows, cols, counts = np.empty(size, np.int64), np.empty(size, np.int64), np.empty(size, np.int64)
            m = self.k.count_items(self._grouped(), self.starts, self.rows, _local.cells, _local.touched,
                                   rows, cols, counts)
            rows, cols, counts = rows[:m], cols[:m], counts[:m]
        else:
            if self.held:
                self.spill()
            if self.sub is not None:
                sub, used = self.sub
                rows, cols, counts = (np.empty(sub.size, np.int64) for _ in range(3))
                m = self.k.collect_values(sub, used, rows, cols, counts)
                if self.found is None:
                    self.found = np.zeros(self.rows * SUB, np.int64)
                self.found[rows[:m] * SUB + cols[:m]] += counts[:m]
            at = np.flatnonzero(self.found)
            rows, cols, counts = at >> LOW, at & (SUB - 1), self.found[at]
        if not np.array_equal(np.bincount(rows, counts, self.rows), expected):     # float64: exact below 2**53
            raise ValueError("the slices yielded other values in pass 2 than in pass 1: the slices must not change")
        self.k.settle_values(rows, cols, counts, rows.size, keys, firsts, cuts, isum, isq)


@functools.lru_cache(maxsize=8)                        # a layer's slices share a shape and zero point
def _filled(rows: int, nblocks: int, z: float) -> np.ndarray:
    """One zero point for every block, as the kernels take them (read-only: shared by the threads)."""
    zp = np.full((rows, nblocks), z, np.float32)
    zp.setflags(write=False)
    return zp


@functools.lru_cache(maxsize=1)
def _nibbles() -> np.ndarray:
    return nibble_table()


def scale_keys(buckets: np.ndarray, codes: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Which distances to look at in pass 2 of the 4-bit codes, by the level-1 key of |scale|: (keys, masks),
    bit d of a key's mask set when some |scale| of that key may put d x |scale| (float32; d in 1..codes-1)
    in one of `buckets`. A superset, a few keys per bucket and distance: a block whose key is not among
    them has no magnitude in a split bucket."""
    buckets = np.asarray(buckets, np.int64)
    lo = (buckets << LOW).astype(np.uint32).view(np.float32).astype(np.float64)
    hi = ((buckets << LOW) | (SUB - 1)).astype(np.uint32).view(np.float32).astype(np.float64)
    d = np.arange(1, codes, dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        # fl(d x s) is within half an ulp (2**-24 relative, or 2**-150 below the normals) of d x s
        s_lo = np.maximum(lo / d * (1 - 2.0 ** -20) - 2.0 ** -140, 0.0).astype(np.float32)
        s_hi = (hi / d * (1 + 2.0 ** -20) + 2.0 ** -140).astype(np.float32)
    k_lo = (s_lo.view(np.uint32) & 0x7FFFFFFF).astype(np.int64) >> LOW
    k_hi = np.where(np.isfinite(s_hi), (s_hi.view(np.uint32) & 0x7FFFFFFF).astype(np.int64) >> LOW, BUCKETS - 1)
    k_hi = np.minimum(np.maximum(k_hi, k_lo), BUCKETS - 1)
    k_lo, width = k_lo.ravel(), (k_hi - k_lo + 1).ravel()
    bit = np.broadcast_to(1 << np.arange(1, codes, dtype=np.int64)[:, None], s_lo.shape).ravel()
    keys = np.repeat(k_lo - np.cumsum(width) + width, width) + np.arange(width.sum())
    order = np.argsort(keys, kind="stable")
    keys, bits = keys[order], np.repeat(bit, width)[order]
    first = np.flatnonzero(np.diff(keys, prepend=-1))
    return keys[first], np.bitwise_or.reduceat(bits, first) if first.size else bits[:0]


def _pieces(packed, scale, zp, last: int, bits: int):
    """A slice of blocks as pieces of at most PIECE values (packed, scale, zp, last, values): by rows, and
    a row longer than that by blocks (only the piece ending a row has its partial last block)."""
    rows, nblocks, nb = packed.shape
    full = nb * (8 // bits)
    row_values = (nblocks - 1) * full + last
    if rows * row_values <= PIECE:
        yield packed, scale, zp, last, rows * row_values
        return
    if row_values <= PIECE:
        step = PIECE // row_values
        for r in range(0, rows, step):
            e = min(rows, r + step)
            yield packed[r:e], scale[r:e], zp[r:e], last, (e - r) * row_values
        return
    step = max(1, PIECE // full)
    for r in range(rows):
        for b in range(0, nblocks, step):
            e = min(nblocks, b + step)
            end = last if e == nblocks else full
            yield packed[r:r + 1, b:e], scale[r:r + 1, b:e], zp[r:r + 1, b:e], end, (e - b - 1) * full + end
