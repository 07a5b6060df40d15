"""A layer's weight values as every method sees them: dequantized, as magnitudes, and what "pruned" stores.

Every analysis method and `prune` read weights through here, so that each storage kind (graph.WeightRef:
plain floats; "linear" per-tensor, per-axis or blocked DequantizeLinear and QLinear* / *Integer ops;
"nbits" MatMulNBits blocks of packed 2/4/8-bit codes) means the same thing everywhere:
- values are the dequantized ones, (q - zero point) x scale, in the weight's logical shape (MatMulNBits:
  [N, K]); magnitudes are their absolute values;
- a weight's *codes* are its logical elements in the stored type (nbits: unpacked to one uint8 each); a
  pruned element's code is its zero point (0 for float storage; the nearest code to a float zero point),
  and `Weight.pack` puts codes back in the stored layout (re-packing nbits, keeping the padding codes of a
  last partial block as stored);
- the pruning orders live here too (criterion_scores: |w|, or |w| x ||x_j|| for activation plans), with
  the kernels that select the k lowest of an order exactly, equal values in index order: a stable sort
  (sort_magnitudes), or none (lowest_cut, lowest_square_sums), so that a profile's runs and `prune`
  remove the same weights;
- work goes by slices of rows (the logical first axis, whole blocks where blocks run along it), so that a
  layer far larger than memory is dequantized a slice at a time, and no scale or zero point is ever
  broadcast beyond the slice it applies to (a block_size from a hostile file cannot blow up memory).
"""
from __future__ import annotations

import threading

import numpy as np
from onnx import TensorProto

from .errors import ModelError
from .graph import WeightRef
from .onnxfile import ModelFile, native_dtype, stored_bytes
from .plan import InputNorms

_local = threading.local()

# float32 values per slice when a caller gives no budget: small enough for a slice's temporaries to stay
# in cache, large enough that per-slice costs (a pread, numpy calls) stay small
DEFAULT_SLICE_BYTES = 1 << 22


def _buffer(n: int, name: str = "buf") -> np.ndarray:
    """This thread's reusable float32 buffer `name` of at least n elements (one allocation per thread)."""
    buf = getattr(_local, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1 << 16), np.float32)
        setattr(_local, name, buf)
    return buf[:n]


def _block_index(start: int, stop: int, block_size: int, extent: int, blocks: int, what: str) -> np.ndarray:
    """For positions start..stop of an axis of `extent` elements cut in blocks: each one's block, counted
    from the block of `start`; ModelError when `blocks` blocks do not cover the axis exactly."""
    if block_size <= 0 or -(-extent // block_size) != blocks:
        raise ModelError(f"{what} has {blocks} blocks along an axis of {extent} elements, which block_size "
                         f"{block_size} does not cut into: the model is corrupt.")
    return np.arange(start, stop, dtype=np.int64) // block_size - start // block_size


def broadcast_param(param: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int, what: str,
                    rows: tuple[int, int] | None = None) -> np.ndarray:
    """Shape a scale / zero point so it broadcasts against the weight's rows `rows` (default: all of them),
    per tensor, per axis or blocked. A blocked parameter is expanded for those rows only."""
    if param.size == 1:
        return param.reshape(())
    if not shape:
        raise ModelError(f"Cannot apply {what} of shape {list(param.shape)} to a scalar weight.")
    r0, r1 = rows if rows is not None else (0, shape[0])
    axis = axis % len(shape) if -len(shape) <= axis < len(shape) else None
    if axis is None:
        raise ModelError(f"{what} is for an axis the weight of shape {list(shape)} does not have.")
    if block_size and param.ndim == len(shape):
        if any(p != s for i, (p, s) in enumerate(zip(param.shape, shape)) if i != axis):
            raise ModelError(f"Cannot apply blocked {what} of shape {list(param.shape)} to weight of shape "
                             f"{list(shape)}: every axis but the blocked one must match.")
        if axis == 0:
            index = _block_index(r0, r1, block_size, shape[0], param.shape[0], what)
            first = r0 // block_size
            return param[first:first + (int(index[-1]) + 1 if index.size else 0)].take(index, axis=0)
        index = _block_index(0, shape[axis], block_size, shape[axis], param.shape[axis], what)
        return param[r0:r1].take(index, axis=axis)
    if param.ndim == 1:
        for a in [axis] + [a for a in range(len(shape)) if a != axis]:
            if shape[a] == param.size:
                p = param[r0:r1] if a == 0 else param
                return p.reshape([-1 if i == a else 1 for i in range(len(shape))])
    elif param.ndim == len(shape) - 1:  # e.g. DynamicQuantizeLSTM: W (D, I, 4H), scale (D, 4H)
        for a in range(len(shape)):
            if tuple(shape[:a] + shape[a + 1:]) == param.shape:
                return np.expand_dims(param[r0:r1] if a else param, a)
    elif param.ndim == len(shape) and all(p in (1, s) for p, s in zip(param.shape, shape)):
        return param[r0:r1] if param.shape[0] == shape[0] else param
    raise ModelError(f"Cannot apply {what} of shape {list(param.shape)} to weight of shape {list(shape)}.")


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes -> one uint8 code per `bits` bits, lowest bits first, along the last axis."""
    if bits == 8:
        return np.array(packed, dtype=np.uint8)
    per = 8 // bits
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * per,), np.uint8)
    mask = (1 << bits) - 1
    for j in range(per):
        np.bitwise_and(packed >> (j * bits) if j else packed, mask, out=out[..., j::per])
    return out


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of _unpack (the last axis holds a whole number of bytes' worth of codes)."""
    if bits == 8:
        return codes.astype(np.uint8, copy=True)
    per = 8 // bits
    out = np.array(codes[..., 0::per], dtype=np.uint8)
    for j in range(1, per):
        out |= (codes[..., j::per] & ((1 << bits) - 1)) << (j * bits)
    return out


class Weight:
    """One layer's weight read through its WeightRef: values, codes and re-packing, by slices of rows."""

    def __init__(self, mf: ModelFile, ref: WeightRef):
        self.mf, self.ref = mf, ref
        self.shape = ref.shape
        self.size = ref.params
        self.rows = self.shape[0] if self.shape else 1
        if ref.kind == "plain" and self.rows == 1:
            self.rows = self.size                  # one long row ([1, n]): sliced as a flat run of values
        self.row_size = self.size // self.rows if self.rows else 0
        # rows per step must be whole blocks when blocks run along the first axis
        blocked_rows = ref.kind == "linear" and ref.block_size and len(self.shape) > 1 and ref.axis % len(self.shape) == 0
        self.align = ref.block_size if blocked_rows else 1
        self._params: dict[str, np.ndarray | None] = {}
        self._stored: np.ndarray | None = None

    # -- what is stored ----------------------------------------------------------------------------------
    def stored(self) -> np.ndarray:
        """The stored tensor in its stored dtype and dims (read from the file once per Weight; slices of
        rows are read on their own, see `_stored_rows`)."""
        if self._stored is None:
            self._stored = self.mf.array(self.ref.tensor)
        return self._stored

    def _stored_rows(self, r0: int, r1: int) -> np.ndarray:
        """Stored rows r0..r1, [rows, stored row] in the stored dtype (nbits: the packed bytes): only those
        bytes read from the file when its rows lie there one after another, else cut from `stored`."""
        row_bytes = self._row_bytes()
        t = self.ref.tensor
        dtype = np.dtype(np.uint8) if self.ref.kind == "nbits" else native_dtype(t.data_type)
        if row_bytes is None or dtype is None or self._stored is not None:
            arr = self.stored()
            return (arr.reshape(self.rows, -1) if self.rows else arr.reshape(0, 0))[r0:r1]
        return self.mf.read(t, r0 * row_bytes, (r1 - r0) * row_bytes).view(dtype).reshape(r1 - r0, -1)

    def _param(self, name: str) -> np.ndarray | None:
        if name not in self._params:
            t = getattr(self.ref, name)
            self._params[name] = None if t is None else np.asarray(self.mf.array(t))
        return self._params[name]

    def _nbits_layout(self):
        n, k = self.shape
        bs = self.ref.block_size
        blocks = -(-k // bs)
        return n, k, bs, blocks

    def _nbits_params(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray | float]:
        """(scales, zero points) of rows r0..r1 per block, [R, blocks] float32 (zero points may be a number)."""
        n, _, _, blocks = self._nbits_layout()
        scale = np.asarray(self._param("scale").reshape(n, blocks)[r0:r1], np.float32)    # a view when float32
        zp = self._param("zero_point")
        if zp is None:
            return scale, float(1 << (self.ref.bits - 1))     # MatMulNBits' default: the middle code
        if zp.dtype == np.uint8:
            zp = _unpack(zp.reshape(n, -1)[r0:r1], self.ref.bits)[:, :blocks]
        else:
            zp = zp.reshape(n, blocks)[r0:r1]
        return scale, zp.astype(np.float32)

    def _g_idx(self) -> np.ndarray | None:
        g = self._param("g_idx")
        if g is None:
            return None
        _, _, _, blocks = self._nbits_layout()
        g = g.reshape(-1).astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= blocks):
            raise ModelError(f"g_idx '{self.ref.g_idx.name}' names blocks outside 0..{blocks - 1}: the model is corrupt.")
        return g

    # -- values --------------------------------------------------------------------------------------------
    def steps(self, budget: int = DEFAULT_SLICE_BYTES) -> list[tuple[int, int]]:
        """Row ranges covering the weight whose float32 values take about `budget` bytes each (at least one
        row, or one block of rows)."""
        per = max(1, budget // max(4 * self.row_size, 1))
        per = max(self.align, per - per % self.align)
        return [(r, min(r + per, self.rows)) for r in range(0, self.rows, per)] if self.rows else []

    def values(self, r0: int = 0, r1: int | None = None, stored: np.ndarray | None = None) -> np.ndarray:
        """Rows r0..r1 of the dequantized weight, [rows, row size]: float32, or for plain float storage the
        stored values as they are (float16 stays float16). `stored`: those rows as `_stored_rows` gives
        them, when already read."""
        r1 = self.rows if r1 is None else r1
        ref = self.ref
        part = self._stored_rows(r0, r1) if stored is None else stored
        if ref.kind == "nbits":
            return self._nbits_values(r0, r1, part)
        if ref.kind == "plain" or (ref.scale is None and ref.zero_point is None):
            return part if part.dtype.kind == "f" and part.dtype.itemsize <= 4 else part.astype(np.float32)
        part = part.reshape((r1 - r0,) + self.shape[1:]) if self.shape else part.reshape(())
        values = part.astype(np.float32)
        rows = (r0, r1)
        zp, scale = self._param("zero_point"), self._param("scale")
        if zp is not None:
            values -= broadcast_param(zp.astype(np.float32), self.shape, ref.axis, ref.block_size,
                                      f"zero point '{ref.zero_point.name}'", rows)
        if scale is not None:
            values *= broadcast_param(scale.astype(np.float32), self.shape, ref.axis, ref.block_size,
                                      f"scale '{ref.scale.name}'", rows)
        return values.reshape(r1 - r0, -1)

    def _nbits_values(self, r0: int, r1: int, rows: np.ndarray) -> np.ndarray:
        n, k, bs, blocks = self._nbits_layout()
        packed = rows.reshape(r1 - r0, blocks, -1)
        scale, zp = self._nbits_params(r0, r1)
        g = self._g_idx()
        kernel = _compiled() if g is None else None
        if kernel is not None:
            values = np.empty((r1 - r0, blocks * bs), np.float32)
            zps = np.broadcast_to(np.float32(zp), scale.shape) if np.isscalar(zp) else zp
            kernel(packed, scale, np.ascontiguousarray(zps), self.ref.bits, values.reshape(r1 - r0, blocks, bs))
            return values if k == blocks * bs else values[:, :k]
        codes = _unpack(packed, self.ref.bits)                     # [R, blocks, block_size]
        if g is not None:
            flat = codes.reshape(r1 - r0, -1)[:, :k]
            values = np.subtract(flat, zp[:, g] if not np.isscalar(zp) else zp, dtype=np.float32)
            values *= scale[:, g]
            return values
        values = np.subtract(codes, zp[:, :, None] if not np.isscalar(zp) else zp, dtype=np.float32)
        values *= scale[:, :, None]
        values = values.reshape(r1 - r0, -1)
        return values if k == blocks * bs else values[:, :k]

    def _row_bytes(self) -> int | None:
        """Stored bytes per row when rows lie one after another in the file (then read by rows)."""
        t = self.ref.tensor
        if self.mf.blob(t) is None or not self.rows:
            return None
        dims = tuple(int(d) for d in t.dims)
        if self.ref.kind != "nbits" and dims != self.shape:
            return None
        return stored_bytes(t) // self.rows

    def _by_steps(self, budget: int, read):
        """(r0, r1, read(r0, r1)) for each step of rows in order, read in this thread when it is needed. A
        reader thread reading the next step meanwhile cost more than it saved (README, "A model rewritten
        while it is read"): the bytes it copied went through the other core's cache and the hand-overs left
        cores idle. Files not in the page cache are read ahead by the OS, which follows each layer's
        sequential reads."""
        for r0, r1 in self.steps(budget):
            yield r0, r1, read(r0, r1)

    def slices(self, budget: int = DEFAULT_SLICE_BYTES, release: bool = False):
        """The dequantized values in row slices (see `values`), in order, each slice's bytes read when it is
        needed (`_by_steps`). `release`: kept for callers; nothing of the file is mapped to drop."""
        for r0, r1, rows in self._by_steps(budget, self._stored_rows):
            yield self.values(r0, r1, rows)

    def half_slices(self, budget: int = DEFAULT_SLICE_BYTES):
        """A 16-bit float weight as stored, in row slices, for kernels that count bit patterns:
        float16 as float16, bfloat16 as its uint16 bit patterns (numpy has no bfloat16). Only a slice's
        bytes are read at a time (bfloat16 too, which `values` reads whole, as float32)."""
        t = self.ref.tensor
        if self.ref.kind != "plain" or t.data_type not in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            raise ValueError(f"'{t.name}' is not a plain float16 or bfloat16 weight")
        if t.data_type == TensorProto.FLOAT16:
            for r0, r1, rows in self._by_steps(budget, self._stored_rows):
                yield rows
            return
        row_bytes = self._row_bytes()

        def read(r0: int, r1: int) -> np.ndarray:
            if row_bytes is None:                   # inside the message: decoded with the model already
                values = np.ascontiguousarray(self.values(r0, r1), np.float32)
                return (values.view(np.uint32) >> 16).astype(np.uint16)   # bfloat16 is float32's top half
            return self.mf.read(t, r0 * row_bytes, (r1 - r0) * row_bytes).view(np.uint16).reshape(r1 - r0, -1)
        for r0, r1, rows in self._by_steps(budget, read):
            yield rows

    def _half(self) -> bool:
        return self.ref.kind == "plain" and self.ref.tensor.data_type == TensorProto.FLOAT16

    def magnitude_slices(self, budget: int = DEFAULT_SLICE_BYTES, release: bool = False, reuse: bool = True):
        """Like `slices`, for kernels that only need |w|: float16 storage comes as exact float32 |w| (numpy's
        float16 cast is ~10x slower; `reuse`: in one buffer, valid until the next slice), float32 as views."""
        half = self._half()
        buf = None
        for part in self.slices(budget, release):
            if half:
                if buf is None or buf.size < part.size or not reuse:
                    buf = np.empty(part.size, np.float32)
                part = abs_half(part, buf[:part.size].reshape(part.shape))
            yield part

    def code_blocks(self, budget: int = DEFAULT_SLICE_BYTES):
        """An nbits weight (without g_idx) as stored, in row slices, for kernels that count codes
        instead of dequantizing them: (packed codes [rows, blocks, bytes per block] uint8, scales [rows,
        blocks] float32, zero points [rows, blocks] float32 or one number, codes in each row's last block that
        are weights). Its values are (code - zero point) x scale in float32. Only a slice's bytes are read at
        a time; the shapes were checked against the node's attributes when the graph was read."""
        if self.ref.kind != "nbits" or self.ref.g_idx is not None:
            raise ValueError(f"'{self.ref.tensor.name}' is not an n-bit weight in blocks of consecutive codes")
        _, k, bs, blocks = self._nbits_layout()
        for r0, r1, rows in self._by_steps(budget, self._stored_rows):
            scale, zp = self._nbits_params(r0, r1)
            yield rows.reshape(r1 - r0, blocks, -1), scale, zp, k - (blocks - 1) * bs

    def reader(self, budget: int = DEFAULT_SLICE_BYTES, keep: int = 0, release_above: int = 1 << 29,
               absolute: bool = False):
        """A callable giving the values in slices each time it is called (for a kernel that reads them more
        than once); values read from the file or dequantized are kept after the first call when
        their float32 values take at most `keep` bytes (else read and dequantized again). `release_above`:
        kept for callers (nothing is mapped). `absolute`: the kernel needs |w| only (`magnitude_slices`)."""
        release = False
        # values made here (read from the file, or computed), not views of an array already in memory
        made = self.ref.kind != "plain" or (absolute and self._half()) or self.mf.blob(self.ref.tensor) is not None
        if not made or 4 * self.size > keep:
            return (lambda: self.magnitude_slices(budget, release)) if absolute else (lambda: self.slices(budget, release))
        kept: list = []                             # the values, then True once all of them are in

        def read():
            if kept and kept[-1] is True:
                return iter(kept[:-1])
            kept.clear()
            fresh = self.magnitude_slices(budget, release, reuse=False) if absolute else self.slices(budget, release)
            return _keeping(fresh, kept)
        return read

    def magnitudes(self) -> np.ndarray:
        """|w| as a flat float32 array in this thread's buffer (valid until the thread's next call)."""
        out = _buffer(self.size)
        pos = 0
        for part in self.magnitude_slices():
            m = part.size
            np.abs(part.reshape(-1), out=out[pos:pos + m], casting="same_kind")
            pos += m
        return out

    # -- codes and pruning ---------------------------------------------------------------------------------
    def codes(self) -> np.ndarray:
        """The weight's logical elements in the stored type, in its logical shape (nbits: uint8 codes)."""
        if self.ref.kind != "nbits":
            return np.asarray(self.stored())
        n, k, _, blocks = self._nbits_layout()
        return _unpack(self.stored().reshape(n, blocks, -1), self.ref.bits).reshape(n, -1)[:, :k]

    def zero_codes(self) -> np.ndarray:
        """What a pruned element's code is: broadcastable to `codes()`'s shape (0-d when it is one number)."""
        ref = self.ref
        if ref.kind == "nbits":
            n, k, bs, blocks = self._nbits_layout()
            if ref.zero_point is None:
                return np.array(1 << (ref.bits - 1), np.uint8)
            _, zp = self._nbits_params(0, n)
            zp = np.clip(np.rint(zp), 0, (1 << ref.bits) - 1).astype(np.uint8)   # float zero points: nearest code
            g = self._g_idx()
            return zp[:, g] if g is not None else zp[:, np.arange(k) // bs]
        if ref.zero_point is None:
            return np.zeros((), dtype=self.stored().dtype if ref.kind != "plain" else np.float32)
        z = np.asarray(self._param("zero_point"))
        return np.broadcast_to(broadcast_param(z, self.shape, ref.axis, ref.block_size,
                                               f"zero point '{ref.zero_point.name}'"), self.shape)

    def pack(self, codes: np.ndarray) -> np.ndarray:
        """Codes (as `codes()` gives them) in the stored tensor's layout and dtype."""
        if self.ref.kind != "nbits":
            return codes
        n, k, bs, blocks = self._nbits_layout()
        full = _unpack(self.stored().reshape(n, blocks, -1), self.ref.bits).reshape(n, -1)
        full[:, :k] = codes
        return _pack(full.reshape(n, blocks, bs), self.ref.bits).reshape(self.stored().shape)


def abs_half(h: np.ndarray, out: np.ndarray) -> np.ndarray:
    """|h| of float16 values as float32 in `out`, exactly: float16's exponent and mantissa bits shifted into
    float32's places and scaled by 2**112 (right for normal and subnormal values alike); infinities and NaN
    (exponent 31, which come out >= 65536, past float16's largest finite 65504) are cast one by one. One
    compiled pass where numba is installed, else four numpy passes."""
    kernels = _compiled_kernels()
    if kernels is not None and h.flags.c_contiguous and out.flags.c_contiguous:
        if kernels[1](h.reshape(-1).view(np.uint16), out.reshape(-1)):
            return out
        bits = np.bitwise_and(h.view(np.uint16), 0x7FFF)
        big = bits >= 0x7C00
        out[big] = np.abs(h[big].astype(np.float32))
        return out
    bits = np.bitwise_and(h.view(np.uint16), 0x7FFF)
    np.left_shift(bits, 13, out=out.view(np.uint32), dtype=np.uint32)
    out *= np.float32(2.0 ** 112)
    if out.size and out.max() >= 65536:
        big = bits >= 0x7C00
        out[big] = np.abs(h[big].astype(np.float32))
    return out


_KERNEL: list = []


def _compiled():
    """numba's one-pass n-bit dequantization where numba is installed (`pip install losswidget[fast]`), else
    None: numpy unpacks, subtracts and scales in four passes over each slice. Both compute (code - zero
    point) x scale in float32: the same numbers."""
    kernels = _compiled_kernels()
    return kernels[0] if kernels is not None else None


def _compiled_kernels():
    """(n-bit dequantization, float16 |w|) compiled by numba, or None without numba."""
    if not _KERNEL:
        try:
            from numba import njit
        except ImportError:
            _KERNEL.append(None)
        else:
            @njit(nogil=True, cache=True)
            def dequantize(packed, scale, zp, bits, out):
                per = 8 // bits
                mask = (1 << bits) - 1
                for r in range(packed.shape[0]):
                    for b in range(packed.shape[1]):
                        s = scale[r, b]
                        z = zp[r, b]
                        for i in range(packed.shape[2]):
                            byte = packed[r, b, i]
                            for j in range(per):
                                out[r, b, i * per + j] = (np.float32((byte >> (j * bits)) & mask) - z) * s

            @njit(nogil=True, cache=True)
            def abs_half_bits(h, out):
                """abs_half's arithmetic in one pass; False when an infinity or NaN needs the slow cast."""
                bits = out.view(np.uint32)
                finite = True
                for start in range(0, h.size, 4096):                 # both steps on one cache-sized piece
                    end = min(h.size, start + 4096)
                    for i in range(start, end):
                        x = np.uint32(h[i] & 0x7FFF)
                        finite &= x < 0x7C00
                        bits[i] = x << 13
                    for i in range(start, end):
                        out[i] *= np.float32(5.192296858534828e33)    # 2**112
                return finite

            _KERNEL.append((dequantize, abs_half_bits))
    return _KERNEL[0]


def _keeping(slices, kept: list):
    for part in slices:
        kept.append(part)
        yield part
    kept.append(True)


def magnitudes(mf: ModelFile, ref: WeightRef) -> np.ndarray:
    """|w| as a flat float32 array in this thread's buffer (valid until the thread's next call);
    quantized weights are dequantized first."""
    return Weight(mf, ref).magnitudes()


def dequantized(mf: ModelFile, ref: WeightRef) -> np.ndarray:
    """The weight's values as float32 in its logical shape ((q - zero point) x scale for quantized storage)."""
    w = Weight(mf, ref)
    return w.values().astype(np.float32, copy=False).reshape(w.shape)


def sort_magnitudes(mags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mags ascending, their indices), equal values in index order.

    float32 magnitudes sort as 64-bit keys, the value's bits above its index (the bits of a non-negative
    float order as the float does; NaN last): one GIL-free sort of integers, about twice as fast as
    argsort (10.4 -> 5.7 ms for 262k values), and stable.
    """
    n = mags.size
    if mags.dtype != np.float32 or n >= 2**32:
        order = np.argsort(mags, kind="stable")
        return mags[order], order
    keys = mags.view(np.uint32).astype(np.uint64)
    keys <<= 32
    keys |= np.arange(n, dtype=np.uint64)
    keys.sort()
    order = (keys & 0xFFFFFFFF).astype(np.int32 if n < 2**31 else np.int64)
    keys >>= 32
    return keys.astype(np.uint32).view(np.float32), order


def criterion_scores(mf: ModelFile, ref: WeightRef, norms: InputNorms | None = None) -> np.ndarray:
    """What a pruning order ranks, flat in storage order, lowest pruned first: |w| (the magnitude criterion),
    or |w| x ||x_j|| with the layer's input norms (the activation criterion, plan.InputNorms). In this
    thread's buffers: valid until its next call (or the next `magnitudes`)."""
    mags = magnitudes(mf, ref)
    if norms is None:
        return mags
    if norms.size != mags.size:
        raise ModelError(f"Input norms for a weight of {norms.size} elements do not fit '{ref.tensor.name}' "
                         f"({mags.size} elements): the plan or profile was made for another model.")
    return norms.scores(mags, out=_buffer(mags.size, "scores"))


def lowest_cut(values: np.ndarray, k: int) -> tuple[float, int]:
    """(the k-th lowest value, how many values are lower), NaN last: what selects the k lowest with equal
    values in index order (as sort_magnitudes orders them) by one O(n) selection instead of a sort."""
    k = min(max(k, 1), values.size)
    cut = np.partition(values, k - 1)[k - 1]
    below = np.count_nonzero(~np.isnan(values)) if np.isnan(cut) else np.count_nonzero(values < cut)
    return float(cut), int(below)


_BUCKETS = 1 << 16                 # top 16 bits of a float32; one more bucket, last, holds every NaN
_BLOCK = 1 << 20


def _buckets(values: np.ndarray) -> np.ndarray:
    """The bucket of each non-negative float32 value: its top 16 bits (their order is the values'), NaN last."""
    out = (values.view(np.uint32) >> 16).astype(np.intp)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = _BUCKETS
    return out


def _sorted_members(values: np.ndarray, buckets) -> tuple[np.ndarray, np.ndarray]:
    """(indices, bucket) of the values in these buckets, ordered by bucket, value, index (NaNs all equal)."""
    edge = np.zeros(_BUCKETS + 1, bool)
    edge[list(buckets)] = True
    found, owners = [], []
    for a in range(0, values.size, _BLOCK):
        bk = _buckets(values[a:a + _BLOCK])
        hit = np.flatnonzero(edge[bk])
        found.append(a + hit)
        owners.append(bk[hit])
    members, owner = np.concatenate(found), np.concatenate(owners)        # index order
    nan = owner == _BUCKETS
    if nan.any():
        order = np.lexsort((np.where(nan, np.float32(np.inf), values[members]), owner))
    else:
        order = sort_magnitudes(values[members].astype(np.float32, copy=False))[1]   # stable: index order kept
    return members[order], owner[order]


def _cut(vals: np.ndarray, need: int, base: int, n: int) -> tuple[float, int, int]:
    """(k-th lowest value, values lower, values lower or equal) from a bucket's sorted values."""
    value = vals[need - 1]
    if np.isnan(value):
        return float(value), base, n
    return (float(value), base + int(np.searchsorted(vals, value, side="left")),
            base + int(np.searchsorted(vals, value, side="right")))


def lowest_square_sums(values: np.ndarray, counts, *arrays: np.ndarray):
    """(cuts, sums, histogram) for the k lowest of `values` (non-negative float32), for each k in `counts`:
    the cut (the k-th lowest value, how many values are lower, how many lower or equal; None for k = 0),
    per array the sum of its squares (float64) over those k, and the cumulative histogram `lowest_cut_in`
    takes. Equal values go in index order and NaN last, as sort_magnitudes orders them.

    No sort: non-negative float32 values order as their bits do, so a histogram of the top 16 bits (count
    and sums of squares per bucket, numpy's bincount) places every k in one bucket, and only the values of
    those boundary buckets are sorted. Blocks of 2^20 values bound the temporaries.
    """
    n = values.size
    counts = [int(k) for k in counts]
    values = values.reshape(-1)
    flats = [a.reshape(-1) for a in arrays]
    hist = np.zeros(_BUCKETS + 1, np.int64)
    sums = np.zeros((len(arrays), _BUCKETS + 1))
    for a in range(0, n, _BLOCK):
        bk = _buckets(values[a:a + _BLOCK])
        hist += np.bincount(bk, minlength=_BUCKETS + 1)
        for j, arr in enumerate(flats):
            sums[j] += np.bincount(bk, weights=np.square(arr[a:a + _BLOCK], dtype=np.float64), minlength=_BUCKETS + 1)
    below = np.concatenate([[0], np.cumsum(hist)])                      # values in buckets < b
    below_sums = np.concatenate([np.zeros((len(arrays), 1)), np.cumsum(sums, axis=1)], axis=1)
    at = {k: int(np.searchsorted(below, min(k, n), side="left")) - 1 for k in counts if k > 0}
    inside = {}
    if at:
        members, owner = _sorted_members(values, set(at.values()))
        for bucket in set(at.values()):
            lo, hi = np.searchsorted(owner, bucket), np.searchsorted(owner, bucket, side="right")
            idx = members[lo:hi]
            inside[bucket] = (values[idx], [np.cumsum(np.square(f[idx], dtype=np.float64)) for f in flats])
    cuts, out = [], np.zeros((len(arrays), len(counts)))
    for c, k in enumerate(counts):
        if k <= 0:
            cuts.append(None)
            continue
        bucket = at[k]
        vals, cum = inside[bucket]
        need = min(k, n) - int(below[bucket])
        cuts.append(_cut(vals, need, int(below[bucket]), n))
        out[:, c] = below_sums[:, bucket] + np.array([s[need - 1] for s in cum])
    return cuts, out, below


def lowest_cuts_in(values: np.ndarray, counts, histogram: np.ndarray) -> list:
    """The cuts of the k lowest values for each k in `counts` (as lowest_square_sums gives them) from that
    call's histogram of the same values: one pass to pick the values of their buckets, a sort of those only."""
    n, values = values.size, values.reshape(-1)
    at = {k: int(np.searchsorted(histogram, min(k, n), side="left")) - 1 for k in counts if k > 0}
    if not at:
        return [None] * len(counts)
    members, owner = _sorted_members(values, set(at.values()))
    out = []
    for k in counts:
        if k <= 0:
            out.append(None)
            continue
        b = at[k]
        lo, hi = np.searchsorted(owner, b), np.searchsorted(owner, b, side="right")
        out.append(_cut(values[members[lo:hi]], min(k, n) - int(histogram[b]), int(histogram[b]), n))
    return out


def keep_mask(values: np.ndarray, k: int, cut: tuple | None = None, sorted_values: np.ndarray | None = None,
              order: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Flat boolean mask of what stays when the k lowest `values` go (equal values in index order, NaN last).

    `cut`: (the k-th lowest value, how many are lower[, how many are lower or equal]) when known (from
    lowest_square_sums / lowest_cuts_in); `sorted_values`, `order`: sort_magnitudes of the values, when
    made; otherwise the cut is found by lowest_cut. Everything below the cut goes by a comparison, in memory
    order (a scatter through the sorted order took 2.5x as long on t4); only values equal to it are picked.
    `out`: a flat bool array to write into."""
    values = values.reshape(-1)
    keep = np.empty(values.size, np.bool_) if out is None else out
    if k <= 0:
        keep[:] = True
        return keep
    if cut is None and sorted_values is not None:
        value = sorted_values[min(k, sorted_values.size) - 1]
        cut = (value, int(np.searchsorted(sorted_values, value, side="left")))   # values < cut (NaN sorts last)
    elif cut is None:
        cut = lowest_cut(values, k)
    value, below = cut[0], cut[1]
    if np.isnan(value):
        np.isnan(values, out=keep)
    elif len(cut) > 2 and k >= cut[2]:                    # every value equal to the cut goes
        np.greater(values, value, out=keep)
        return keep
    else:
        np.greater_equal(values, value, out=keep)
    if k > below:
        ties = order[below:k] if order is not None else np.flatnonzero(
            np.isnan(values) if np.isnan(value) else values == value)[:k - below]
        keep[ties] = False
    return keep


def masked_copy(mf: ModelFile, ref: WeightRef, keep: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The stored tensor (packed again for nbits) with the elements where `keep` (flat bool, logical order)
    is False set to the zero code; `out`: an array of the codes' shape and type to write into (a run that
    prunes the layer again reuses it: no fresh pages to fault in; nbits packs into a new one anyway)."""
    w = Weight(mf, ref)
    codes = w.codes()
    keep = keep.reshape(codes.shape)
    zero = w.zero_codes()
    target = np.empty_like(codes) if out is None or out.shape != codes.shape or out.dtype != codes.dtype else out
    if zero.ndim == 0 and codes.dtype in (np.float16, np.float32, np.float64) and zero == 0:
        np.multiply(codes, keep, out=target)
    else:
        np.copyto(target, zero, casting="unsafe")
        np.copyto(target, codes, where=keep)
    return w.pack(target)


def pruned_copy(mf: ModelFile, ref: WeightRef, k: int, sorted_mags: np.ndarray | None = None,
                order: np.ndarray | None = None, scores: np.ndarray | None = None,
                cut: tuple | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """The stored tensor (packed again for nbits) with the weight's k lowest-ranked elements set to the zero
    code. The rank is |w| (dequantized), or `scores` when given (flat, logical order: criterion_scores);
    equal values go in index order (keep_mask: `sorted_mags`, `order`, `cut` when known). `out`: as
    masked_copy."""
    if k <= 0:
        w = Weight(mf, ref)
        return w.pack(w.codes().copy())
    values = magnitudes(mf, ref) if scores is None else scores
    mask = np.frombuffer(_buffer((values.size + 3) // 4, "mask"), np.bool_, values.size)
    return masked_copy(mf, ref, keep_mask(values, k, cut, sorted_mags, order, out=mask), out)
