"""Weight-magnitude measurements, number for number what SparseML's `pruning_loss_sens_magnitude` gives.

For each level s the measurement is the mean |w| of the weights that pruning from the previous level to s
removes (see DESIGN.md). One sorted copy of |w| per layer is needed; layers are spread over a thread pool
(numpy's sort releases the GIL), largest first, each thread reusing one buffer, and each weight is read
straight from the memory-mapped file once.
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import ModelError
from ..graph import Layer, WeightRef
from ..onnxfile import ModelFile
from . import Measured, run_layers

_local = threading.local()


def _buffer(n: int) -> np.ndarray:
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < n:
        buf = _local.buf = np.empty(max(n, 1 << 16), np.float32)
    return buf[:n]


def _broadcast(param: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int, what: str) -> np.ndarray:
    """Shape a scale / zero point so it broadcasts against the weight (per-tensor, per-axis or blocked)."""
    if param.size == 1 or not shape:
        return param.reshape(())
    axis = axis % len(shape)
    if block_size and param.ndim == len(shape):
        return np.repeat(param, block_size, axis=axis).take(range(shape[axis]), axis=axis)
    if param.ndim == 1:
        candidates = [axis] + [a for a in range(len(shape)) if a != axis]
        for a in candidates:
            if shape[a] == param.size:
                return param.reshape([-1 if i == a else 1 for i in range(len(shape))])
    elif param.ndim == len(shape) - 1:  # e.g. DynamicQuantizeLSTM: W (D, I, 4H), scale (D, 4H)
        for a in range(len(shape)):
            if tuple(shape[:a] + shape[a + 1:]) == param.shape:
                return np.expand_dims(param, a)
    elif param.ndim == len(shape) and all(p in (1, s) for p, s in zip(param.shape, shape)):
        return param
    raise ModelError(f"Cannot apply {what} of shape {list(param.shape)} to weight of shape {list(shape)}.")


def magnitudes(mf: ModelFile, ref: WeightRef) -> np.ndarray:
    """|w| as float32 in this thread's buffer; quantized weights are dequantized first."""
    arr = mf.array(ref.tensor)
    flat = arr.reshape(-1)
    out = _buffer(flat.size)
    if ref.scale is None and ref.zero_point is None:
        if flat.dtype == np.float32 or flat.dtype.kind == "f":
            np.abs(flat, out=out, casting="same_kind")
        else:
            out[...] = flat
            np.abs(out, out=out)
    else:
        values = arr.astype(np.float32)
        if ref.zero_point is not None:
            values -= _broadcast(mf.array(ref.zero_point).astype(np.float32), arr.shape, ref.axis, ref.block_size,
                                 f"zero point '{ref.zero_point.name}'")
        if ref.scale is not None:
            values *= _broadcast(mf.array(ref.scale).astype(np.float32), arr.shape, ref.axis, ref.block_size,
                                 f"scale '{ref.scale.name}'")
        np.abs(values.reshape(-1), out=out)
    mf.release(ref.tensor)
    return out


def measure_sorted(values: np.ndarray, levels: np.ndarray) -> Measured:
    """SparseML's measurement loop over sorted |w|, plus the weight energy each level keeps.

    Segment sums come from single `np.add.reduceat` calls (float32 pairwise summation, as numpy's `mean`
    that SparseML uses; GIL-free), not one Python-level call per level: with two worker threads the
    per-call overhead, serialised on the GIL, cost more than the sums themselves.
    """
    n = values.size
    if n == 0:
        return Measured(np.zeros(len(levels)), np.ones(len(levels)), 0.0, ("empty",))
    counts = np.round(levels * n).astype(np.int64)          # Python's round: half to even, as SparseML
    index = np.minimum(counts, n - 1)
    out = np.zeros(len(levels))
    seg_k, seg_lo, seg_hi = [], [], []
    prev = 0
    for k, (level, i) in enumerate(zip(levels.tolist(), index.tolist())):
        if level <= 1e-9:
            continue
        if i > prev:
            seg_k.append(k), seg_lo.append(prev), seg_hi.append(i)
            prev = i
        else:
            out[k] = values[i]
            prev = i + 1
    if seg_k:
        lo, hi = np.array(seg_lo), np.array(seg_hi)
        # reduceat sums [lo_j, lo_j+1); appending each segment's end gives exactly [lo_j, hi_j)
        starts = np.empty(2 * len(lo), np.int64)
        starts[0::2], starts[1::2] = lo, np.minimum(hi, n - 1)
        out[seg_k] = np.add.reduceat(values, starts)[0::2].astype(np.float64) / (hi - lo)
    bounds = np.array(sorted({0, n, *counts[counts < n].tolist()}))  # pruned counts, as one-shot prunes
    # energy from each boundary to the next; einsum's SIMD sum of products reads the data once
    parts = np.array([np.einsum("i,i->", values[a:b], values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])],
                     dtype=np.float64)
    bounds = bounds[:-1]
    cum = np.concatenate([[0.0], np.cumsum(parts)])                  # energy below each boundary; last: all
    energy = float(cum[-1])
    pruned = cum[np.searchsorted(bounds, np.minimum(counts, n))]
    kept = 1.0 - pruned / energy if energy > 0 and np.isfinite(energy) else np.ones(len(levels))
    top = values[-1]
    flags = ("non_finite",) if not np.isfinite(top) else ("all_zero",) if top == 0 else ()
    return Measured(out, kept, energy, flags)


def _measure_layer(mf: ModelFile, layer: Layer, levels: np.ndarray) -> Measured:
    values = magnitudes(mf, layer.ref)
    values.sort()
    return measure_sorted(values, levels)


def run(mf: ModelFile, layers: list[Layer], levels: np.ndarray, progress=None, cancel=None, **_) -> list[Measured]:
    return run_layers(lambda layer: _measure_layer(mf, layer, levels), layers, progress, cancel)
