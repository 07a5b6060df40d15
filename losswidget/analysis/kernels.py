"""The compiled loops of the magnitude kernel (analysis/ranks.py) and their loading.

The loops are plain module-level functions, compiled by numba on first use (`compiled()`, or
`load_async()` on a thread while the first slices are read), so numba's on-disk cache finds them again in the
next process: a kernel defined inside a function, or calling another compiled kernel through a closure,
was compiled afresh in every process (~1.5 s each time). No loop calls another, each is compiled for one
signature of C-contiguous arrays (eagerly: a wrong dtype is a TypeError, never a silent recompile), and
the module imports numba only inside `compiled()`, so the constants here cost nothing without it.

Layout of the float32 passes (see ranks.py): a level-1 key is the top HIGH bits of |x|'s float32 bits
(sign masked: 8 exponent and 11 mantissa bits), a level-2 key the remaining LOW bits, so a (key, low)
pair is one exact value. Pass 1 packs a bucket's count and the Σ of its values' low bits into one int64
(count · ONE + Σ low), moved into wide tables (`flush`) before PIECE values pile up in it. The n-bit
passes make the same tables from (magnitude, count) items, one per distinct code of a block. The
bookkeeping is compiled too: `settle` turns the tables into sums per interval between the rule's cuts
and lists the buckets a cut splits; pass 2 writes their values as items ((row x SUB + low) x 2**16 +
count), grouped by bucket (`group`), counted by `count_items` (or into a table by `tally` when they
overflow the buffer) and added in by `settle_values`.
"""
from __future__ import annotations

import threading

import numpy as np

HIGH = 19                              # bits of the level-1 key: 8 exponent + 11 mantissa bits
LOW = 32 - 1 - HIGH                    # bits left for level 2: a level-2 key is one exact float value
BUCKETS = 1 << HIGH
SUB = 1 << LOW
PIECE = 1 << 22                        # values per piece of pass 1: a packed count (23 bits) cannot overflow
ONE = 1 << 40                          # a packed row: count · 2**40 + Σ(low 12 bits)
HALF_PATTERNS = 1 << 15                # |x| bit patterns of a 16-bit float (sign masked)
HALF_PIECE = 1 << 30                   # values counted in the int32 pattern table before it is flushed

_U31 = np.uint32(0x7FFFFFFF)
_ULOW = np.uint32(LOW)
_UMASK = np.uint32(SUB - 1)
_I40 = np.int64(40)
_IMASK = np.int64(ONE - 1)
_IONE = np.int64(ONE)
_ONE64 = np.uint64(1)
_SIX = np.uint32(6)
_U63 = np.uint32(63)
_HALF_MASK = np.uint16(0x7FFF)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_ZERO64 = np.uint64(0)
_FF = np.uint64(0xFF)
_EIGHT = np.uint64(8)
# a word's lowest set bit b, isolated as 2**b, times this de Bruijn number has a distinct top 6 bits per b:
# bitmaps are walked set bit by set bit instead of testing all 64 (the tables are ~10% full)
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_U58 = np.uint64(58)
_BIT_AT = np.zeros(64, np.int64)
_BIT_AT[[((1 << b) * 0x03F79D71B4CB0A89 & 0xFFFFFFFFFFFFFFFF) >> 58 for b in range(64)]] = np.arange(64)
POW2 = np.ldexp(1.0, np.arange(256) - 150)      # 2**(exponent − 150): all normal float64, so × is exact


# -- float32 values: ranks.py's two passes -----------------------------------------------------------------
def first(bits, packed):
    """Pass 1 over at most PIECE values (float32 bits): per bucket count and Σ low bits in one int64 (an
    8-byte row keeps the table's busy part in L2). Nothing else is done per value (any other work per value,
    such as marking the rows in use as they fill, slowed the loop more than a scan afterwards costs): `mark`
    finds them afterwards."""
    for i in range(bits.size):
        b = bits[i] & _U31
        packed[b >> _ULOW] += _IONE + np.int64(b & _UMASK)


def mark(packed, used):
    """Mark in `used` every row of `packed` in use (rows marked before stay marked): one sequential read
    of the table, 64 rows a word."""
    for w in range(used.size):
        base = w * 64
        word = _ZERO64
        for b in range(64):
            word |= np.uint64(packed[base + b] != 0) << np.uint64(b)
        used[w] |= word


def flush(packed, counts, lows, used):
    """Move the packed rows into the wide tables (before a piece's counts could overflow)."""
    for w in range(used.size):
        word = used[w]
        while word:
            bit = word & (~word + _ONE64)
            word ^= bit
            k = w * 64 + _BIT_AT[(bit * _DEBRUIJN) >> _U58]
            counts[k] += packed[k] >> _I40
            lows[k] += packed[k] & _IMASK
            packed[k] = 0


def settle(packed, counts, lows, used, flushed, cuts, isum, isq, keys, firsts, known):
    """After pass 1: the used rows in key order, each bucket's Σx and Σx² added into the interval between
    `cuts` (sorted ranks from 0 to n) that holds it; the tables are left zeroed for the next layer.

    A bucket a cut falls strictly inside, or of subnormal values (too wide for the Σx² estimate), needs its
    exact values (`settle_values`): its key and the rank of its first value go to `keys` / `firsts`, and to
    `known` its count when its low bits sum to 0 (it holds one value, its base: 0.0 for pruned weights),
    else minus its count (pass 2 counts its values, and must find that many). Σx is (count · base + Σ low
    bits) · 2**(exponent − 150) in float64 (exact, as ranks.py's numpy engine computes it), Σx² is
    (Σx)²/count (its values lie within a factor 1 + 2**-11). `flushed`: whether `flush` moved counts into
    `counts` / `lows` (else they are all zero and not read).
    Returns (buckets listed, or -1 when the tables hold more than cuts[-1] values; the last key counted, or
    -1)."""
    m = 0
    j = 0
    rank = 0
    last = -1
    for w in range(used.size):
        word = used[w]
        while word:
            bit = word & (~word + _ONE64)
            word ^= bit
            k = w * 64 + _BIT_AT[(bit * _DEBRUIJN) >> _U58]
            c = packed[k] >> _I40
            low = packed[k] & _IMASK
            packed[k] = 0
            if flushed:
                c += counts[k]
                low += lows[k]
                counts[k] = 0
                lows[k] = 0
            if c == 0:                                  # a code item may mark a bucket with no count
                continue
            last = k
            start = rank
            rank += c
            if rank > cuts[cuts.size - 1]:              # more than the n values counted: never placed past it
                return -1, last
            while cuts[j + 1] <= start:
                j += 1
            e = k >> 11
            base = (k & 2047) << 12
            if e > 0:
                base += 1 << 23
            s = (np.float64(c) * np.float64(base) + np.float64(low)) * POW2[max(e, 1)]
            if e == 255:                                # +Inf (low bits 0) or NaN
                s = np.inf if base == 1 << 23 and low == 0 else np.nan
            if cuts[j + 1] >= rank and not (e == 0 and s > 0):
                isum[j] += s
                isq[j] += s * s / np.float64(c)
            else:
                keys[m] = k
                firsts[m] = start
                known[m] = c if low == 0 else -c        # one value, its base: no need to look again
                m += 1
        used[w] = 0
    return m, last


def settle_values(rows, cols, counts, m, keys, firsts, cuts, isum, isq):
    """After pass 2: the exact values of the listed buckets (row of `keys`, low bits, count; in order, as
    collect_values gives them) added into the intervals between `cuts`, a run of equal values shared out
    over the cuts it spans; `firsts[row]` is the rank of the bucket's first value."""
    j = 0
    row = -1
    at = 0
    for t in range(m):
        if rows[t] != row:
            row = rows[t]
            at = firsts[row]
        v = np.float64(np.uint32((keys[row] << 12) | cols[t]).view(np.float32))
        end = at + counts[t]
        while cuts[j + 1] <= at:
            j += 1
        i = j
        while at < end:
            stop = min(end, cuts[i + 1])
            isum[i] += np.float64(stop - at) * v
            isq[i] += np.float64(stop - at) * v * v
            at = stop
            i += 1


def second(bits, start, split, slot, out, m):
    """Pass 2 from value `start` on: each value in a split bucket (`split[key]` is 1) written to `out` from
    out[m] on as an item (slot[key] x SUB + low bits) x 2**16 + 1 (one value), for `group`.
    The few hits are first gathered without a branch per value (a mispredicted branch per hit cost more
    than the loop), then written out in order (adding them into a table of counts missed the cache).
    Returns (the value to start from next, items in `out`): it stops early when `out` could overflow."""
    hits = np.empty(4096, np.uint32)
    n = bits.size
    for s0 in range(start, n, 4096):
        if m > out.size - 4096:
            return s0, m
        q = 0
        for i in range(s0, min(n, s0 + 4096)):
            b = bits[i] & _U31
            hits[q] = b
            q += split[b >> _ULOW]
        for j in range(q):
            b = hits[j]
            out[m] = ((np.int64(slot[b >> _ULOW]) * SUB + np.int64(b & _UMASK)) << 16) + 1
            m += 1
    return n, m


def group(items, m, rows, scratch, starts):
    """Pass 2's first m items ((row x SUB + low bits) x 2**16 + count) grouped by row into `scratch` (a
    counting sort), `starts[row]` where each row's run begins (rows + 1 entries), so that a row's adds
    stay within its 32 KB of counts (adding them in the order found missed the cache each time)."""
    starts[:] = 0
    for i in range(m):
        starts[(items[i] >> (16 + LOW)) + 1] += 1
    for r in range(rows):
        starts[r + 1] += starts[r]
    place = starts[:rows].copy()
    for i in range(m):
        r = items[i] >> (16 + LOW)
        scratch[place[r]] = items[i]
        place[r] += 1


def count_items(grouped, starts, rows, cells, touched, out_rows, out_cols, out_counts):
    """Pass 2's items, grouped by row (`group`), as exact values in order (row, low bits, count; for
    `settle_values`): each row's items counted in `cells` (SUB, zeroed again; `touched` marks the cells
    in use), then walked in order. Returns how many."""
    m = 0
    for r in range(rows):
        for i in range(starts[r], starts[r + 1]):
            c = (grouped[i] >> 16) & (SUB - 1)
            if cells[c] == 0:
                touched[c >> 6] |= _ONE64 << np.uint64(c & 63)
            cells[c] += grouped[i] & 0xFFFF
        for w in range(SUB // 64):
            word = touched[w]
            touched[w] = 0
            while word:
                bit = word & (~word + _ONE64)
                word ^= bit
                c = w * 64 + _BIT_AT[(bit * _DEBRUIJN) >> _U58]
                out_rows[m], out_cols[m], out_counts[m] = r, c, cells[c]
                cells[c] = 0
                m += 1
    return m


def collect_values(sub, used, rows, cols, counts):
    """The exact values counted by pass 2 (row of `sub`, low bits, count) in order; zeroes `sub`."""
    m = 0
    for r in range(used.shape[0]):
        for w in range(used.shape[1]):
            word = used[r, w]
            while word:
                bit = word & (~word + _ONE64)
                word ^= bit
                c = w * 64 + _BIT_AT[(bit * _DEBRUIJN) >> _U58]
                if sub[r, c]:
                    rows[m], cols[m], counts[m] = r, c, sub[r, c]
                    m += 1
                sub[r, c] = 0
            used[r, w] = 0
    return m


# -- 16-bit floats: one pass, a count per bit pattern ------------------------------------------------------
def half_count(h, counts):
    """counts[pattern of |x|] += 1 for each 16-bit float's bits in `h` (at most HALF_PIECE values: int32)."""
    for i in range(h.size):
        counts[h[i] & _HALF_MASK] += 1


# -- n-bit codes in blocks (MatMulNBits): items of (magnitude, count) --------------------------------------
def codes_first(packed, scale, zp, integral, bits, last, packed_t, used, cnt):
    """Pass 1 over blocks of `bits`-bit codes: per block a count per code, then one weighted update per
    distinct magnitude |(code - zp) x scale| (float32, as dequantized). With `integral` zero points (whole
    numbers within the code range) codes zp ± d share the magnitude d x |scale| and are one item.

    Updates are unconditional (an item of count 0 adds nothing) and a touched row marks its whole bitmap
    word with a plain store (collect skips rows of count 0): branches and read-modify-writes per item cost
    more. `cnt`: scratch of 3 x 2**bits, the codes counted in its middle third so that zp ± d never
    leaves it. The last block of each row holds `last` codes (the rest is padding). 4-bit blocks with
    integral zero points, the usual export, go to nibbles_first instead. Returns the values counted (at
    most PIECE per call)."""
    rows, blocks, nb = packed.shape
    per = 8 // bits
    mask = (1 << bits) - 1
    codes = 1 << bits
    total = 0
    cnt[:] = 0
    for r in range(rows):
        for b in range(blocks):
            valid = last if b == blocks - 1 else nb * per
            total += valid
            s = scale[r, b]
            z = zp[r, b]
            for c in range(codes, 2 * codes):
                cnt[c] = 0
            for v in range(valid):
                cnt[codes + ((packed[r, b, v // per] >> ((v % per) * bits)) & mask)] += 1
            if integral:
                zi = int(z)
                for d in range(max(zi, codes - 1 - zi) + 1):
                    k = np.int64(cnt[codes + zi + d] + (cnt[codes + zi - d] if d else 0))
                    x = np.float32(abs(np.float32(d) * s)).view(np.uint32) & _U31
                    key = x >> _ULOW
                    used[key >> _SIX] = _ALL
                    packed_t[key] += k * _IONE + k * np.int64(x & _UMASK)
            else:
                for c in range(codes):
                    k = np.int64(cnt[codes + c])
                    x = np.float32(abs((np.float32(c) - z) * s)).view(np.uint32) & _U31
                    key = x >> _ULOW
                    used[key >> _SIX] = _ALL
                    packed_t[key] += k * _IONE + k * np.int64(x & _UMASK)
    return total


def codes_second(packed, scale, zp, integral, bits, last, split, slot, sub, used, cnt, mags):
    """Pass 2 over the same blocks: a block's magnitudes first (`mags`: scratch of 2**bits), its codes
    counted only when one of them lies in a split bucket (a few percent of the blocks)."""
    rows, blocks, nb = packed.shape
    per = 8 // bits
    mask = (1 << bits) - 1
    codes = 1 << bits
    cnt[:] = 0
    for r in range(rows):
        for b in range(blocks):
            s = scale[r, b]
            z = zp[r, b]
            hit = 0
            if integral:
                zi = int(z)
                items = max(zi, codes - 1 - zi) + 1
                for d in range(items):
                    x = np.float32(abs(np.float32(d) * s)).view(np.uint32) & _U31
                    mags[d] = x
                    hit |= split[x >> _ULOW]
            else:
                zi = 0
                items = codes
                for c in range(codes):
                    x = np.float32(abs((np.float32(c) - z) * s)).view(np.uint32) & _U31
                    mags[c] = x
                    hit |= split[x >> _ULOW]
            if hit == 0:
                continue
            for c in range(codes, 2 * codes):
                cnt[c] = 0
            valid = last if b == blocks - 1 else nb * per
            for v in range(valid):
                cnt[codes + ((packed[r, b, v // per] >> ((v % per) * bits)) & mask)] += 1
            for d in range(items):
                if integral:
                    k = cnt[codes + zi + d] + (cnt[codes + zi - d] if d else 0)
                else:
                    k = cnt[codes + d]
                x = mags[d]
                key = x >> _ULOW
                if k and split[key]:
                    row = slot[key]
                    low = x & _UMASK
                    if sub[row, low] == 0:
                        used[row, low >> _SIX] |= _ONE64 << np.uint64(low & _U63)
                    sub[row, low] += k


# -- 4-bit codes with whole zero points (the usual export): counted by byte through a table -----------------
def nibble_table() -> np.ndarray:
    """NIBBLES[z, byte] and NIBBLES[z, 256 + byte]: a byte's two 4-bit codes c as counts of d = |c − z| in
    8-bit lanes of a uint64 (lane d of the first word for d < 8, lane d − 8 of the second), so that a block's
    distances are counted by adding one table entry per byte, with no store per code."""
    byte = np.arange(256)
    table = np.zeros((16, 512), np.uint64)
    for z in range(16):
        for c in (byte & 15, byte >> 4):
            d = np.abs(c - z)
            np.add.at(table[z], (d >> 3) * 256 + byte, np.left_shift(1, 8 * (d & 7)).astype(np.uint64))
    table.setflags(write=False)
    return table


def nibbles_first(packed, scale, zp, last, table, packed_t, used, cnt):
    """codes_first for 4-bit codes and whole zero points: a block's distances d = |code − zp| counted by one
    table add per byte into 8-bit lanes (`table`: nibble_table(); blocks of 16, 32 or 64 bytes, at most 128
    codes a lane; other blocks, and a row's partial last block, are counted code by code into `cnt`, scratch
    of 16), then one item per distance d ≥ 1 with magnitude d x |scale| (float32, as dequantized). Codes at
    the zero point are exact zeros, counted once per call, unless the scale is not finite (0 x inf is NaN).
    Returns the values counted (at most PIECE per call)."""
    rows, blocks, nb = packed.shape
    lanes = nb % 16 == 0 and nb <= 64
    total = 0
    zeros = 0
    for r in range(rows):
        for b in range(blocks):
            valid = last if b == blocks - 1 else 2 * nb
            total += valid
            s = scale[r, b]
            zi = np.int64(zp[r, b])
            row = table[zi]
            blk = packed[r, b]
            lo = _ZERO64
            hi = _ZERO64
            fast = lanes and valid == 2 * nb
            if fast:
                for c0 in range(0, nb, 16):
                    for i in range(c0, c0 + 16):
                        byte = blk[i]
                        lo += row[byte]
                        hi += row[256 + byte]
                k0 = np.int64(lo & _FF)
                lo >>= _EIGHT
            else:
                for d in range(16):
                    cnt[d] = 0
                for v in range(valid):
                    cnt[abs(np.int64((blk[v >> 1] >> ((v & 1) * 4)) & 15) - zi)] += 1
                k0 = cnt[0]
            first_d = 1
            if s - s == 0:                                  # finite: codes at the zero point are 0.0
                zeros += k0
            else:
                first_d = 0
            for d in range(first_d, max(zi, 15 - zi) + 1):
                if not fast:
                    k = cnt[d]
                elif d == 0:
                    k = k0
                else:
                    if d == 8:
                        lo = hi
                    k = np.int64(lo & _FF)
                    lo >>= _EIGHT
                x = np.float32(abs(np.float32(d) * s)).view(np.uint32) & _U31
                key = x >> _ULOW
                used[key >> _SIX] = _ALL
                packed_t[key] += k * _IONE + k * np.int64(x & _UMASK)
    if zeros:
        used[0] = _ALL
        packed_t[0] += zeros * _IONE
    return total


def nibbles_second(packed, scale, zp, last, table, split, scales, slot, start, out, m, cnt):
    """codes_second for 4-bit codes and whole zero points, from block `start` (rows x blocks in row order).
    `scales[key]` (ranks.scale_keys) has bit d set when a |scale| of that level-1 key may put d x |scale| in a
    split bucket: a block whose key has none is passed by, and only the marked distances of the others are
    looked at; a block's codes are counted (as in nibbles_first) only when one of them lies in a split
    bucket. Zeros are looked at only when they could lie in one (the bucket of 0.0 split, or a scale that is
    not finite: every distance then). Each exact value found is written to `out` as (slot x SUB + low bits)
    x 2**16 + its count, from out[m] on, not added into a table: those adds missed the cache once or twice
    each. Returns (the block to start from next, items in `out`): it stops early when `out` could overflow."""
    rows, blocks, nb = packed.shape
    lanes = nb % 16 == 0 and nb <= 64
    zero_split = split[0] != 0
    r0 = start // blocks
    for r in range(r0, rows):
        for b in range(start - r0 * blocks if r == r0 else 0, blocks):
            if m > out.size - 16:
                return r * blocks + b, m
            s = scale[r, b]
            zi = np.int64(zp[r, b])
            top = max(zi, 15 - zi)
            if zero_split or s - s != 0:
                marked = (1 << (top + 1)) - 1
            else:
                marked = np.int64(scales[(np.float32(s).view(np.uint32) & _U31) >> _ULOW]) & ((2 << top) - 1)
                if marked == 0:
                    continue
            hits = 0
            for d in range(top + 1):
                if (marked >> d) & 1:
                    x = np.float32(abs(np.float32(d) * s)).view(np.uint32) & _U31
                    if split[x >> _ULOW]:
                        hits |= 1 << d
            if hits == 0:
                continue
            valid = last if b == blocks - 1 else 2 * nb
            row = table[zi]
            blk = packed[r, b]
            for d in range(16):
                cnt[d] = 0
            if lanes and valid == 2 * nb:
                lo = _ZERO64
                hi = _ZERO64
                for c0 in range(0, nb, 16):
                    for i in range(c0, c0 + 16):
                        byte = blk[i]
                        lo += row[byte]
                        hi += row[256 + byte]
                for d in range(8):
                    cnt[d] = np.int64(lo & _FF)
                    cnt[8 + d] = np.int64(hi & _FF)
                    lo >>= _EIGHT
                    hi >>= _EIGHT
            else:
                for v in range(valid):
                    cnt[abs(np.int64((blk[v >> 1] >> ((v & 1) * 4)) & 15) - zi)] += 1
            for d in range(top + 1):
                k = cnt[d]
                if k and (hits >> d) & 1:
                    x = np.float32(abs(np.float32(d) * s)).view(np.uint32) & _U31
                    out[m] = ((np.int64(slot[x >> _ULOW]) * SUB + np.int64(x & _UMASK)) << 16) + k
                    m += 1
    return rows * blocks, m


def tally(grouped, m, found):
    """Add the first m items of pass 2, grouped by row (`group`), into `found`, the counts of rows of SUB
    cells (row x SUB + low bits)."""
    for i in range(m):
        v = grouped[i]
        found[v >> 16] += v & 0xFFFF


# -- compiling ------------------------------------------------------------------------------------------------
def _signatures(t) -> dict:
    """Each loop's one signature (numba.types `t`): inputs read-only (views of a read-only file map or
    buffer; a writable array converts), tables writable, all C-contiguous."""
    def ro(dtype, ndim):
        return t.Array(dtype, ndim, "C", readonly=True)
    i64, u64 = t.int64[::1], t.uint64[::1]
    return {
        "first": t.void(ro(t.uint32, 1), i64),
        "mark": t.void(i64, u64),
        "flush": t.void(i64, i64, i64, u64),
        "settle": t.UniTuple(t.int64, 2)(i64, i64, i64, u64, t.boolean, ro(t.int64, 1), t.float64[::1],
                                         t.float64[::1], i64, i64, i64),
        "second": t.UniTuple(t.int64, 2)(ro(t.uint32, 1), t.int64, t.uint8[::1], t.int32[::1], i64, t.int64),
        "group": t.void(i64, t.int64, t.int64, i64, i64),
        "count_items": t.int64(i64, i64, t.int64, i64, u64, i64, i64, i64),
        "collect_values": t.int64(t.int64[:, ::1], t.uint64[:, ::1], i64, i64, i64),
        "settle_values": t.void(ro(t.int64, 1), ro(t.int64, 1), ro(t.int64, 1), t.int64, ro(t.int64, 1),
                                ro(t.int64, 1), ro(t.int64, 1), t.float64[::1], t.float64[::1]),
        "half_count": t.void(ro(t.uint16, 1), t.int32[::1]),
        "codes_first": t.int64(ro(t.uint8, 3), ro(t.float32, 2), ro(t.float32, 2), t.boolean, t.int64, t.int64,
                               i64, u64, i64),
        "nibbles_first": t.int64(ro(t.uint8, 3), ro(t.float32, 2), ro(t.float32, 2), t.int64, ro(t.uint64, 2),
                                 i64, u64, i64),
        "nibbles_second": t.UniTuple(t.int64, 2)(ro(t.uint8, 3), ro(t.float32, 2), ro(t.float32, 2), t.int64,
                                                 ro(t.uint64, 2), t.uint8[::1], t.uint16[::1], t.int32[::1], t.int64,
                                                 i64, t.int64, i64),
        "tally": t.void(i64, t.int64, i64),
        "codes_second": t.void(ro(t.uint8, 3), ro(t.float32, 2), ro(t.float32, 2), t.boolean, t.int64, t.int64,
                               t.uint8[::1], t.int32[::1], t.int64[:, ::1], t.uint64[:, ::1], i64, t.uint32[::1]),
    }


_compiled = None
_lock = threading.Lock()
_loading: threading.Thread | None = None


class Kernels:
    """The compiled loops, by name."""

    def __init__(self, **fns):
        self.__dict__.update(fns)


def compiled() -> Kernels:
    """The loops compiled by numba (loaded from its cache after the first run; ImportError without numba)."""
    global _compiled
    if _compiled is None:
        with _lock:
            if _compiled is None:
                from numba import njit, types
                g = globals()
                _compiled = Kernels(**{name: njit(sig, nogil=True, cache=True)(g[name])
                                       for name, sig in _signatures(types).items()})
    return _compiled


def load_async() -> None:
    """Start loading the compiled loops on a thread (numba's import and its cache: ~0.5-2 s of one core,
    mostly holding the GIL) unless they are loaded or loading; `compiled()` waits for it."""
    global _loading
    with _lock:
        if _compiled is not None or (_loading is not None and _loading.is_alive()):
            return
        _loading = threading.Thread(target=_load_quietly, name="losswidget-numba", daemon=True)
        _loading.start()


def _load_quietly() -> None:
    try:
        compiled()
    except Exception:                  # numba missing or broken: the numpy engine is used; compiled() raises
        pass
