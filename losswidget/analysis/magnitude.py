"""Weight-magnitude measurements, number for number what SparseML's `pruning_loss_sens_magnitude` gives.

For each level s the measurement is the mean |w| of the weights that pruning from the previous level to s
removes (see DESIGN.md). The ranks come from analysis/ranks.py's two histogram passes, not from sorting
|w|: float32/float16 weights go to the kernel straight from the memory-mapped file (in slices, read
twice, no |w| copy); other storage is dequantized into weights.py's per-thread buffer first. Layers are
spread over a thread pool, largest first (numba's passes release the GIL; so do the numpy engine's ufunc
steps). Plans from these profiles weigh layers by the weight energy they lose (plan cost "energy", see
plan.py): the mean |w| values carry each layer's own weight scale.
"""
from __future__ import annotations

import numpy as np

from ..graph import Layer
from ..onnxfile import ModelFile
from ..weights import magnitudes
from .base import TARGET, Context, Measured, Method, Result, levels_setting, run_layers
from .ranks import default_engine, measure, measure_array

SPARSEML_LEVELS = tuple(i / 100 for i in range(100))
SLICE = 1 << 22                      # float16 weights become float32 this many at a time


def _measure_layer(mf: ModelFile, layer: Layer, levels: np.ndarray, engine: str) -> Measured:
    ref = layer.ref
    arr = mf.array(ref.tensor) if ref.scale is None and ref.zero_point is None else None
    if arr is not None and arr.dtype in (np.float32, np.float16):
        flat = arr.reshape(-1)
        r = measure(lambda: (flat[i:i + SLICE] for i in range(0, flat.size, SLICE)), levels, engine)
        mf.release(ref.tensor)
    else:
        r = measure_array(magnitudes(mf, ref), levels, engine)
    return Measured(r.values, r.energy_kept, r.energy, r.flags)


def run(ctx: Context) -> Result:
    engine = default_engine(sum(layer.params for layer in ctx.layers))
    return Result(run_layers(ctx, lambda layer: _measure_layer(ctx.mf, layer, ctx.levels, engine)))


METHOD = Method(
    name="magnitude", label="Baseline (weight magnitude)",
    description="Mean |w| pruned at each level, as SparseML's pruning_loss_sens_magnitude computes it.",
    run=run, settings=(levels_setting(SPARSEML_LEVELS), TARGET), rank=1, plan_cost="energy",
    recovery="none: data-free (plans report the weight energy they keep, which does not predict accuracy)")
