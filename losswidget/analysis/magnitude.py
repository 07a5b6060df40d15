"""Weight-magnitude measurements, number for number what SparseML's `pruning_loss_sens_magnitude` gives.

For each level s the measurement is the mean |w| of the weights that pruning from the previous level to s
removes (see DESIGN.md). One sorted copy of |w| per layer is needed; layers are spread over a thread pool
(numpy's sort releases the GIL), largest first, each thread reusing one buffer, and each weight is read
straight from the memory-mapped file once. Plans from these profiles weigh layers by the weight energy
they lose (plan cost "energy", see plan.py): the mean |w| values carry each layer's own weight scale.
"""
from __future__ import annotations

import numpy as np

from ..graph import Layer
from ..onnxfile import ModelFile
from ..weights import magnitudes
from .base import TARGET, Context, Measured, Method, Result, levels_setting, run_layers

SPARSEML_LEVELS = tuple(i / 100 for i in range(100))


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


def run(ctx: Context) -> Result:
    return Result(run_layers(ctx, lambda layer: _measure_layer(ctx.mf, layer, ctx.levels)))


METHOD = Method(
    name="magnitude", label="Baseline (weight magnitude)",
    description="Mean |w| pruned at each level, as SparseML's pruning_loss_sens_magnitude computes it.",
    run=run, settings=(levels_setting(SPARSEML_LEVELS), TARGET), rank=1, plan_cost="energy",
    recovery="none: data-free (plans report the weight energy they keep, which does not predict accuracy)")
