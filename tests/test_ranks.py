"""The sort-free magnitude kernel: hand-computed cases, then agreement with sorting |x| over many seeded
random arrays and levels, for both engines, whole and in slices."""
import importlib
import math
import sys

import numpy as np
import pytest

from losswidget.analysis.ranks import has_numba, measure, measure_array, measure_codes, measure_half

ENGINES = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not has_numba(), reason="numba not installed"))]
LEVELS = np.arange(100) / 100


def by_sorting(x, levels):
    """The rule as DESIGN.md states it, over np.sort(|x|), with SparseML's float32 np.mean."""
    v = np.sort(np.abs(np.asarray(x, np.float32)).reshape(-1))
    n, levels = v.size, np.asarray(levels, np.float64)
    if n == 0:
        return np.zeros(len(levels)), np.ones(len(levels)), 0.0, ("empty",)
    out, prev = [], 0
    for s in levels.tolist():
        idx = min(round(s * n), n - 1)
        if s <= 1e-9:
            out.append(0.0)
        elif idx > prev:
            out.append(float(np.mean(v[prev:idx])))
            prev = idx
        else:
            out.append(float(v[idx]))
            prev = idx + 1
    below = np.concatenate([[0.0], np.cumsum(v.astype(np.float64) ** 2)])
    energy = float(below[-1])
    if energy > 0 and math.isfinite(energy):
        kept = 1 - below[[min(round(s * n), n) for s in levels.tolist()]] / energy
    else:
        kept = np.ones(len(levels))
    flags = ("non_finite",) if not np.isfinite(v[-1]) else ("all_zero",) if v[-1] == 0 else ()
    return np.array(out), kept, energy, flags


def check(got, x, levels, rtol=1e-5):
    values, kept, energy, flags = by_sorting(x, levels)
    assert got.flags == flags
    assert np.array_equal(np.isnan(got.values), np.isnan(values))
    assert np.array_equal(np.isinf(got.values), np.isinf(values))
    finite = np.isfinite(values)
    # float32's mean of subnormal values rounds to a multiple of 2**-149 (1.4e-45); ours sums in float64
    np.testing.assert_allclose(got.values[finite], values[finite], rtol=rtol, atol=2e-45)
    np.testing.assert_allclose(got.energy_kept, kept, rtol=rtol, atol=1e-7)
    if math.isfinite(energy):
        assert got.energy == pytest.approx(energy, rel=rtol)
    else:
        assert not math.isfinite(got.energy)


@pytest.mark.parametrize("engine", ENGINES)
def test_by_hand(engine):
    w = np.array([0.5, -0.1, 0.3, -0.2, 0.4, 0.0, -0.6, 0.7, 0.9, -0.8], np.float32)
    r = measure_array(w, [0.0, 0.05, 0.1, 0.15, 0.5, 0.95], engine)
    # sorted |w| = 0 .1 .2 ... .9; .05 -> idx 0 (round half to even), not past prev 0 -> sorted[0]; .1 -> idx 1
    # -> sorted[1]; .15 -> idx 2 -> sorted[2]; .5 -> idx 5 > prev 3 -> mean(.3, .4); .95 -> mean(.5 .. .8)
    np.testing.assert_allclose(r.values, [0.0, 0.0, 0.1, 0.2, 0.35, 0.65], rtol=1e-6)
    assert r.energy == pytest.approx(2.85, rel=1e-6)
    # .5 prunes the 5 smallest: 0 + .01 + .04 + .09 + .16 = .30
    assert r.energy_kept[4] == pytest.approx(1 - 0.30 / 2.85, rel=1e-6)
    assert r.energy_kept[0] == 1.0 and r.flags == ()


@pytest.mark.parametrize("engine", ENGINES)
def test_ties_across_boundaries_and_repeated_counts(engine):
    # four 1s then four 2s: every boundary falls inside a run of equal values
    r = measure_array(np.array([2, 1, 2, 1, 1, 2, 2, 1], np.float32), [0.25, 0.5, 0.75, 1.0], engine)
    np.testing.assert_allclose(r.values, [1.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(r.energy_kept, [1 - 2 / 20, 1 - 4 / 20, 1 - 12 / 20, 0.0])  # Σ1 = 4, Σ4 = 16
    # idx 1, 1, 1, 5 -> mean(v[0:1]); idx == prev -> v[1], prev 2; idx < prev -> v[1]; mean(v[2:5])
    r = measure_array(np.arange(10, dtype=np.float32) / 10, [0.1, 0.1, 0.12, 0.5], engine)
    np.testing.assert_allclose(r.values, [0.0, 0.1, 0.1, 0.3], rtol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
def test_tiny_and_degenerate_layers(engine):
    r = measure_array(np.zeros(0, np.float32), [0.0, 0.5], engine)
    assert r.flags == ("empty",) and list(r.values) == [0.0, 0.0] and list(r.energy_kept) == [1.0, 1.0]
    # n = 1: round(.5) = 0, so every level above 0 reads sorted[0]
    r = measure_array(np.array([-3.0], np.float32), [0.0, 0.5, 1.0], engine)
    assert list(r.values) == [0.0, 3.0, 3.0] and list(r.energy_kept) == [1.0, 1.0, 0.0] and r.flags == ()
    r = measure_array(np.array([3.0, -1.0], np.float32), [0.5, 1.0], engine)
    assert list(r.values) == [1.0, 3.0] and r.energy_kept == pytest.approx([0.9, 0.0])
    r = measure_array(np.zeros((3, 5), np.float32), [0.0, 0.5, 0.9], engine)
    assert r.flags == ("all_zero",) and list(r.values) == [0.0] * 3 and list(r.energy_kept) == [1.0] * 3
    r = measure_array(np.full(1001, -0.25, np.float32), LEVELS, engine)
    assert r.flags == () and set(r.values[1:].tolist()) == {0.25}
    r = measure_array(np.array([-0.0, 0.0, -1.0, 2.0], np.float32), [0.5, 0.75], engine)  # -0.0 is 0.0
    assert list(r.values) == [0.0, 1.0]


@pytest.mark.parametrize("engine", ENGINES)
def test_nan_and_inf_rank_last_as_numpy_sorts_them(engine):
    r = measure_array(np.array([np.nan, -np.inf, 2.0, 1.0], np.float32), [0.25, 0.5, 0.75, 1.0], engine)
    assert r.values[:3].tolist() == [1.0, 2.0, np.inf] and math.isnan(r.values[3])
    assert r.flags == ("non_finite",) and list(r.energy_kept) == [1.0] * 4
    neg_nan = np.array([0x7FC00000 | 1 << 31], np.uint32).view(np.float32)   # a NaN with its sign bit set
    r = measure_array(np.concatenate([neg_nan, np.ones(3, np.float32)]), [0.5, 0.75, 1.0], engine)
    assert r.values[:2].tolist() == [1.0, 1.0] and math.isnan(r.values[2]) and r.flags == ("non_finite",)


def _arrays(rng):
    """Seeded arrays of the kinds layers hold, and of the kinds that break naive selections."""
    for _ in range(4):
        n = int(rng.choice([2, 3, 7, 64, 999, 4096, 70_001, 300_000]))
        yield "gauss", (rng.standard_normal(n) * (1 + 0.5 * rng.standard_exponential(n))).astype(np.float32)
    n = 250_000
    w = (rng.standard_normal(n) / 27).astype(np.float32)
    yield "fp16", w.astype(np.float16).astype(np.float32)
    blocks = w[: n - n % 32].reshape(-1, 32)
    scale = np.abs(blocks).max(axis=1, keepdims=True) / 7
    yield "4bit", (np.clip(np.round(blocks / scale), -8, 7) * scale).astype(np.float32)
    yield "few values", rng.integers(0, 4, 100_000).astype(np.float32)
    yield "half zero", np.where(rng.random(50_000) < 0.5, 0, rng.standard_normal(50_000)).astype(np.float32)
    with np.errstate(over="ignore"):
        yield "many octaves", np.exp(rng.normal(0, 20, 60_000)).astype(np.float32)  # incl. 0, subnormals, inf
    yield "denormal", (rng.random(5_000) * 1e-40).astype(np.float32)
    x = rng.standard_normal(40_000).astype(np.float32)
    x[rng.integers(0, x.size, 30)] = np.inf
    yield "with inf", x
    x = x.copy()
    x[rng.integers(0, x.size, 5)] = np.nan
    yield "with nan", x


def _levels(rng):
    yield LEVELS
    yield np.sort(rng.random(int(rng.integers(1, 40))))
    yield np.sort(np.round(rng.random(30), 2))                                        # repeated levels
    yield np.concatenate([[0.0, 0.0], np.sort(rng.random(10)), [1.0, 1.0]])
    yield rng.random(8)                                                               # any order


@pytest.mark.parametrize("engine", ENGINES)
def test_agrees_with_sorting(engine):
    rng = np.random.default_rng(15)
    for kind, x in _arrays(rng):
        for levels in _levels(rng):
            with np.errstate(all="ignore"):
                check(measure_array(x, levels, engine), x, levels)


@pytest.mark.parametrize("engine", ENGINES)
def test_slices_give_the_same_numbers_and_are_read_at_most_twice(engine):
    rng = np.random.default_rng(7)
    x = np.where(rng.random(600_000) < 0.1, 0, rng.standard_normal(600_000)).astype(np.float32)
    cuts = np.sort(rng.integers(0, x.size, 9))
    calls = []

    def read():
        calls.append(1)
        return (x[a:b].astype(np.float16) if i == 3 else x[a:b]          # float16 slices are taken as float32
                for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, x.size])))

    x[cuts[2]:cuts[3]] = x[cuts[2]:cuts[3]].astype(np.float16)
    got = measure(read, LEVELS, engine)
    assert len(calls) == 2
    assert np.array_equal(got.values, measure_array(x, LEVELS, engine).values)
    check(got, x, LEVELS)


@pytest.mark.parametrize("engine", ENGINES)
def test_more_values_than_one_pass_piece(engine):
    # 5M equal values: one bucket holds more than the numba pass's piece and the numpy pass's pending codes;
    # values only in the first piece must survive the move out of the packed table between pieces
    x = np.full(5_000_000, 0.3, np.float32)
    x[::7] = 0.7
    x[:1000] = np.linspace(1.0, 2.0, 1000, dtype=np.float32)
    check(measure_array(x, LEVELS, engine), x, LEVELS)


@pytest.mark.skipif(not has_numba(), reason="numba not installed")
def test_bitmap_walk_by_hand():
    # settle and collect_values visit set bits lowest first: bits 0 and 63 of a word, whole words, the
    # table's last row; buckets come in key order and the tables are left zeroed
    from losswidget.analysis.kernels import BUCKETS, ONE, SUB, compiled
    k = compiled()
    rows = [0, 1, 63, 64, 127, 128 + 5, BUCKETS - 64, BUCKETS - 1]
    packed, counts, lows = (np.zeros(BUCKETS, np.int64) for _ in range(3))
    used = np.zeros(BUCKETS // 64, np.uint64)
    for i, r in enumerate(rows):
        packed[r] = (i + 1) * ONE + 10 * i
        used[r // 64] |= np.uint64(1) << np.uint64(r % 64)
    used[2] = np.uint64(0xFFFFFFFFFFFFFFFF)         # a whole word marked (as code items do), one row in use
    counts[64], lows[64] = 5, 7                     # moved there by a flush: added in only when flushed
    # counts 1, 2, 3, 4 + 5, 5, 6, 7, 8: first ranks 0, 1, 3, 6, 15, 20, 26, 33; a cut inside every bucket
    # but the first (one value, 0.0: its low bits sum to 0)
    cuts = np.array([0, 2, 4, 12, 18, 23, 31, 35, 41])
    keys, firsts, known = (np.zeros(16, np.int64) for _ in range(3))
    isum, isq = np.zeros(8), np.zeros(8)
    m, last = k.settle(packed, counts, lows, used, True, cuts, isum, isq, keys, firsts, known)
    assert (m, last) == (7, BUCKETS - 1)
    assert keys[:m].tolist() == rows[1:] and firsts[:m].tolist() == [1, 3, 6, 15, 20, 26, 33]
    assert known[:m].tolist() == [-2, -3, -9, -5, -6, -7, -8]                # pass 2 must find these counts
    assert isum.tolist() == [0.0] * 8 and isq.tolist() == [0.0] * 8
    assert not packed.any() and not used.any() and not counts.any() and not lows.any()
    sub = np.zeros((3, SUB), np.int64)
    sub_used = np.zeros((3, SUB // 64), np.uint64)
    for r, col, n in [(0, 0, 2), (0, 63, 1), (0, SUB - 1, 4), (2, 64, 3)]:
        sub[r, col] = n
        sub_used[r, col // 64] |= np.uint64(1) << np.uint64(col % 64)
    out = [np.zeros(8, np.int64) for _ in range(3)]
    m = k.collect_values(sub, sub_used, *out)
    assert [o[:m].tolist() for o in out] == [[0, 0, 0, 2], [0, 63, SUB - 1, 64], [2, 1, 4, 3]]
    assert not sub.any() and not sub_used.any()


@pytest.mark.skipif(not has_numba(), reason="numba not installed")
def test_settle_sums_by_hand():
    # whole buckets add their Σx and (Σx)²/count into the interval holding them; a one-value bucket a cut
    # falls inside is listed with its count known; settle_values shares runs of values out over the cuts
    from losswidget.analysis.kernels import BUCKETS, LOW, ONE, compiled
    k = compiled()
    one, two = 0x3F800000 >> LOW, 0x40000000 >> LOW                   # the buckets of 1.0 and 2.0
    packed, counts, lows = (np.zeros(BUCKETS, np.int64) for _ in range(3))
    used = np.zeros(BUCKETS // 64, np.uint64)
    packed[one], packed[two] = 3 * ONE, 2 * ONE + 2 * 3                # 1.0 x3; 2.0 + 3 ulps, twice
    for r in (one, two):
        used[r // 64] |= np.uint64(1) << np.uint64(r % 64)
    keys, firsts, known, isum, isq = np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(2), np.zeros(2)
    m, last = k.settle(packed, counts, lows, used, False, np.array([0, 1, 5]), isum, isq, keys, firsts, known)
    v = 2.0 + 3 * 2.0 ** -22
    assert (m, last) == (1, two)
    assert (keys[0], firsts[0], known[0]) == (one, 0, 3)                # 1.0 three times, split by the cut at 1
    assert isum.tolist() == [0.0, 2 * v] and isq.tolist() == [0.0, (2 * v) ** 2 / 2]
    k.settle_values(np.array([0]), np.array([0]), known[:1], 1, keys[:1], firsts[:1], np.array([0, 1, 5]), isum, isq)
    assert isum.tolist() == [1.0, 2.0 + 2 * v] and isq.tolist() == [1.0, 2.0 + (2 * v) ** 2 / 2]
    # tables holding more values than the cuts end at: refused before any is placed past the end
    packed[one] = 6 * ONE
    used[one // 64] |= np.uint64(1) << np.uint64(one % 64)
    assert k.settle(packed, counts, lows, used, False, np.array([0, 1, 5]), isum, isq, keys, firsts, known)[0] == -1
    # bucket of 1.0 from rank 10: 1.0 twice, then 1 + 2**-23 three times; cuts at 11 and 14
    isum, isq = np.zeros(3), np.zeros(3)
    k.settle_values(np.array([0, 0]), np.array([0, 1]), np.array([2, 3]), 2, np.array([one]), np.array([10]),
                    np.array([0, 11, 14, 15]), isum, isq)
    u = 1.0 + 2.0 ** -23
    assert isum.tolist() == [1.0, 1.0 + 2 * u, u] and isq.tolist() == [1.0, 1.0 + 2 * u * u, u * u]


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_input(engine):
    with pytest.raises(TypeError, match="float32"):
        measure_array(np.ones(3), [0.5], engine)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        measure_array(np.ones(3, np.float32), [0.5, 1.5], engine)
    # ten distinct values in one bucket, so the cut at 0.55 sends pass 2 back to read them
    rounds = iter([np.float32(1 + np.arange(10) * 2e-5), np.float32(1 + np.arange(9) * 2e-5)])
    with pytest.raises(ValueError, match="must not change"):
        measure(lambda: (next(rounds),), [0.55], engine)
    # as many values, but one more of them in the split bucket at the top: caught before any is placed
    ten = np.float32(1 + np.arange(10) * 2e-5)
    rounds = iter([np.append(np.float32(0.5), ten), np.append(np.float32(1.0003), ten)])
    with pytest.raises(ValueError, match="must not change"):
        measure(lambda: (next(rounds),), [0.55], engine)
    # a failure between the passes leaves nothing behind for the next layer
    check(measure_array(np.arange(5, dtype=np.float32), [0.5], engine), np.arange(5), [0.5])


def test_unknown_engine():
    with pytest.raises(ValueError, match="engine"):
        measure_array(np.ones(3, np.float32), [0.5], "fortran")


def test_engine_choice(monkeypatch):
    from losswidget.analysis.ranks import NUMBA_FROM, default_engine
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    assert default_engine(100_000) == "numpy"                # not worth importing numba for
    assert default_engine(NUMBA_FROM) == ("numba" if has_numba() else "numpy")
    if has_numba():
        monkeypatch.setitem(sys.modules, "numba", importlib.import_module("numba"))
        assert default_engine(100_000) == "numba"            # already paid for


# -- 16-bit floats: one pass over bit patterns (measure_half) ------------------------------------------------
def _bfloat16(x32):
    """bfloat16 bit patterns (uint16) of float32 values truncated to bfloat16, and those values as float32."""
    bits = (np.asarray(x32, np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


def _halves(rng):
    """float16 arrays: every pattern, Gaussian weights, ties, subnormals, signed zeros, inf and NaN."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    yield every
    yield every[(every.view(np.uint16) & 0x7C00) != 0x7C00]                    # every finite one
    yield (rng.standard_normal(300_001) / 30).astype(np.float16)
    yield rng.integers(-3, 4, 10_000).astype(np.float16)
    yield (rng.random(5_000) * 6e-5).astype(np.float16)                           # subnormal float16s
    yield np.array([-0.0, 0.0, 0.0, -1.0, 2.0], np.float16)
    x = (rng.standard_normal(20_000)).astype(np.float16)
    x[rng.integers(0, x.size, 20)] = np.inf
    x[rng.integers(0, x.size, 3)] = -np.nan
    yield x


@pytest.mark.parametrize("engine", ENGINES)
def test_float16_counted_by_pattern_agrees_with_sorting(engine):
    rng = np.random.default_rng(16)
    for x in _halves(rng):
        for levels in _levels(rng):
            with np.errstate(all="ignore"):
                check(measure_half(lambda: (x,), levels, engine), x.astype(np.float32), levels)


@pytest.mark.parametrize("engine", ENGINES)
def test_bfloat16_patterns_agree_with_sorting(engine):
    rng = np.random.default_rng(17)
    with np.errstate(over="ignore"):
        sources = [rng.standard_normal(200_000) / 50, np.exp(rng.normal(0, 20, 50_000)),   # incl. 0, inf
                   rng.random(3_000) * 1e-39, np.array([np.nan, -np.inf, -0.0, 1.0, 1.0, 3.0])]
        converted = [_bfloat16(x) for x in sources]
    for bits, values in converted:
        for levels in _levels(rng):
            with np.errstate(all="ignore"):
                check(measure_half(lambda: (bits,), levels, engine, bfloat16=True), values, levels)


@pytest.mark.parametrize("engine", ENGINES)
def test_half_slices_and_bad_input(engine):
    x = (np.random.default_rng(3).standard_normal(100_000) / 7).astype(np.float16).reshape(100, 1000)
    whole = measure_half(lambda: (x,), LEVELS, engine)
    sliced = measure_half(lambda: (x[:13], x[13:14], x[14:14], x[14:]), LEVELS, engine)
    assert np.array_equal(whole.values, sliced.values) and np.array_equal(whole.energy_kept, sliced.energy_kept)
    assert measure_half(lambda: (), LEVELS, engine).flags == ("empty",)
    with pytest.raises(TypeError, match="float16"):
        measure_half(lambda: (x.astype(np.float32),), LEVELS, engine)
    with pytest.raises(TypeError, match="uint16"):
        measure_half(lambda: (x,), LEVELS, engine, bfloat16=True)


# -- n-bit codes in blocks (measure_codes) ------------------------------------------------------------------
def _blocks(rng, bits, rows, nblocks, block, last, zero_points):
    """Random packed codes [rows, blocks, block·bits/8], scales, zero points (None: MatMulNBits' default, the
    middle code; "int": one whole code per block; "float": off the code grid; "one": one number for all), and
    the codes and the dequantized weights as numpy makes them."""
    per = 8 // bits
    codes = rng.integers(0, 1 << bits, (rows, nblocks, block)).astype(np.uint8)
    packed = np.zeros((rows, nblocks, block // per), np.uint8)
    for j in range(per):
        packed |= codes[..., j::per] << (j * bits)
    scale = (rng.standard_normal((rows, nblocks)) / 20).astype(np.float32)        # negative scales too
    if zero_points is None:
        zp = np.float32(1 << (bits - 1))
    elif zero_points == "int":
        zp = rng.integers(0, 1 << bits, (rows, nblocks)).astype(np.float32)
    elif zero_points == "float":
        zp = (rng.random((rows, nblocks)) * ((1 << bits) - 1)).astype(np.float32)
    else:
        zp = np.float32(3.0)
    return (packed, scale, zp, last), codes, _dequantized(codes, scale, zp, last)


def _dequantized(codes, scale, zp, last):
    """(code - zp) x scale in float32, without the padding codes past `last` in each row's last block."""
    rows, nblocks, block = codes.shape
    with np.errstate(invalid="ignore"):
        values = (codes.astype(np.float32) - np.broadcast_to(zp, scale.shape)[..., None]) * scale[..., None]
    return values.reshape(rows, -1)[:, :(nblocks - 1) * block + last]


CODE_CASES = [  # bits, rows, blocks, block size, codes in the last block, zero points
    (4, 24, 5, 32, 32, "int"), (4, 24, 5, 32, 32, None), (4, 7, 3, 16, 5, "int"), (4, 9, 4, 64, 64, "float"),
    (4, 5, 3, 128, 1, "one"), (2, 11, 6, 16, 16, "int"), (2, 6, 3, 32, 7, "float"), (2, 4, 2, 16, 16, None),
    (8, 5, 3, 16, 9, "int"), (8, 4, 2, 32, 32, "float"), (4, 300, 40, 32, 32, "int"),
    (4, 6, 3, 256, 256, "int"), (4, 5, 4, 256, 100, None),       # 4-bit blocks of 128 bytes: counted code by code
]


@pytest.mark.parametrize("case", CODE_CASES, ids=lambda c: "-".join(map(str, c)))
def test_codes_agree_with_sorting_the_dequantized_weights(case):
    bits, rows, nblocks, block, last, zero_points = case
    rng = np.random.default_rng(sum(map(hash, map(str, case))) % 1000)
    blocks, _, values = _blocks(rng, bits, rows, nblocks, block, last, zero_points)
    engines = [e if isinstance(e, str) else e.values[0] for e in ENGINES if isinstance(e, str) or has_numba()]
    for levels in _levels(rng):
        results = [measure_codes(lambda: (blocks,), bits, levels, e) for e in engines]
        for got in results:
            check(got, values, levels)
        for got in results[1:]:                 # the same integer tables, added up in another order
            np.testing.assert_allclose(got.values, results[0].values, rtol=1e-13, atol=0)
            np.testing.assert_allclose(got.energy_kept, results[0].energy_kept, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("engine", ENGINES)
def test_codes_in_slices_and_pieces_and_non_finite_scales(engine, monkeypatch):
    import losswidget.analysis.ranks as ranks

    rng = np.random.default_rng(5)
    (packed, scale, zp, last), codes, _ = _blocks(rng, 4, 40, 9, 32, 20, "int")
    scale[3, 2], scale[7, 0], scale[9, 8] = np.inf, np.nan, 0.0                     # 0 x inf is NaN, as dequantized
    values = _dequantized(codes, scale, zp, last)
    calls = []

    def read():
        calls.append(1)
        return ((packed[a:b], scale[a:b], zp[a:b], last) for a, b in ((0, 3), (3, 3), (3, 29), (29, 40)))
    monkeypatch.setattr(ranks, "PIECE", 100)         # rows and single rows cut into pieces, counts flushed often
    with np.errstate(invalid="ignore"):
        got = measure_codes(read, 4, LEVELS, engine)
        check(got, values, LEVELS)
    assert len(calls) <= 2 and got.flags == ("non_finite",)


@pytest.mark.parametrize("engine", ENGINES)
def test_codes_with_subnormal_and_zero_scales(engine):
    # magnitudes d x scale down among the subnormals share the bucket of 0.0 with the zero codes, so that
    # bucket is split and pass 2 must count the zeros too
    rng = np.random.default_rng(11)
    (packed, scale, zp, last), codes, _ = _blocks(rng, 4, 30, 6, 32, 32, "int")
    scale[::2] = (rng.random(scale[::2].shape) * 3e-42).astype(np.float32)
    scale[1, :3] = 0.0
    with np.errstate(under="ignore"):
        values = _dequantized(codes, scale, zp, last)
    assert np.count_nonzero((np.abs(values) > 0) & (np.abs(values) < 2.0 ** -136)) > 100   # in bucket 0
    for levels in (LEVELS, [0.05, 0.1, 0.2]):
        check(measure_codes(lambda: ((packed, scale, zp, last),), 4, levels, engine), values, levels)


@pytest.mark.skipif(not has_numba(), reason="the compiled engine's buffer")
def test_codes_pass_two_buffer_filled_many_times():
    import losswidget.analysis.ranks as ranks

    rng = np.random.default_rng(8)
    (packed, scale, zp, last), codes, values = _blocks(rng, 4, 200, 8, 32, 32, "int")
    whole = measure_codes(lambda: ((packed, scale, zp, last),), 4, LEVELS, "numba")
    kept = ranks._local.items
    ranks._local.items = np.zeros(40, np.int64)          # room for 24 exact values at a time
    try:
        small = measure_codes(lambda: ((packed, scale, zp, last),), 4, LEVELS, "numba")
    finally:
        ranks._local.items = kept
    check(small, values, LEVELS)
    assert np.array_equal(small.values, whole.values) and np.array_equal(small.energy_kept, whole.energy_kept)


@pytest.mark.skipif(not has_numba(), reason="the compiled engine's buffer")
def test_float_pass_two_buffer_filled_many_times():
    import losswidget.analysis.ranks as ranks

    # 3000 distinct values, each ~200 times: the buckets the cuts split hold ~6% of the values
    rng = np.random.default_rng(9)
    x = rng.choice(rng.standard_normal(3000).astype(np.float32), 600_000)
    whole = measure_array(x, LEVELS, "numba")
    kept = ranks._local.items
    ranks._local.items = np.zeros(4096 + 300, np.int64)   # one gather of 4096 values at a time
    try:
        small = measure_array(x, LEVELS, "numba")
    finally:
        ranks._local.items = kept
    check(small, x, LEVELS)
    assert np.array_equal(small.values, whole.values) and np.array_equal(small.energy_kept, whole.energy_kept)


def test_scale_keys_mark_every_scale_whose_magnitudes_fall_in_the_buckets():
    from losswidget.analysis.kernels import LOW
    from losswidget.analysis.ranks import scale_keys

    rng = np.random.default_rng(3)
    scales = np.concatenate([rng.standard_normal(20000) * 0.05, rng.random(2000) * 1e-41,
                             rng.standard_normal(2000) * 1e36]).astype(np.float32)
    d = np.arange(1, 16, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        mags = np.abs(scales[:, None] * d)                                  # as dequantizing rounds them
    key_of = lambda x: (x.view(np.uint32) & 0x7FFFFFFF).astype(np.int64) >> LOW
    buckets = np.unique(rng.choice(key_of(mags).ravel(), 60))
    keys, masks = scale_keys(buckets)
    assert np.all(np.diff(keys) > 0) and np.all(masks != 0) and not np.any(masks & 1)
    table = np.zeros(1 << 19, np.int64)
    table[keys] = masks
    hit = np.isin(key_of(mags), buckets)                                      # [scale, d - 1]
    marked = (table[key_of(np.abs(scales))][:, None] >> np.arange(1, 16)) & 1
    assert hit.any() and np.all(marked[hit] == 1)
    assert marked.mean() < 4 * hit.mean()                                   # a superset, not everything


@pytest.mark.parametrize("engine", ENGINES)
def test_codes_bad_input(engine):
    blocks, _, _ = _blocks(np.random.default_rng(1), 4, 3, 2, 16, 16, "int")
    packed, scale, zp, last = blocks
    with pytest.raises(ValueError, match="bits"):
        measure_codes(lambda: (blocks,), 3, LEVELS, engine)
    with pytest.raises(ValueError, match="scales"):
        measure_codes(lambda: ((packed, scale[:, :1], zp, last),), 4, LEVELS, engine)
    with pytest.raises(ValueError, match="last block"):
        measure_codes(lambda: ((packed, scale, zp, 17),), 4, LEVELS, engine)
    # every code 7 (x 0.1): one value, not 0, fills one bucket, so the cut at 0.55 sends pass 2 back to read it
    same = (np.full((3, 2, 8), 0x77, np.uint8), np.full((3, 2), 0.1, np.float32), np.float32(0), 16)
    rounds = iter([(same,), ((same[0][:2], same[1][:2], same[2], 16),)])
    with pytest.raises(ValueError, match="must not change"):
        measure_codes(lambda: next(rounds), 4, [0.55], engine)
    check(measure_array(np.arange(5, dtype=np.float32), [0.5], engine), np.arange(5), [0.5])   # tables left clean
