"""Per-layer sparsity allocation at a target: what "est. params reduction" and "est. recovery" stand on.

Costs are the layers' measurement curves, made non-decreasing (running max) and scaled to [0, 1] by one
global min / max so layers compare on one scale. Every (layer, level) step is a candidate; steps are taken
cheapest first (ties: lower level first, so a layer's steps come in order) until the pruned params reach
`target` x prunable params. A layer is never pruned past `cap` (0.95). Non-finite costs go last.
"""
from __future__ import annotations

import numpy as np

CAP = 0.95


def allocate(levels: np.ndarray, curves: np.ndarray, params: np.ndarray, target: float,
             cap: float = CAP) -> np.ndarray:
    """Index into `levels` of each layer's allocated sparsity (0: dense). curves: (layers, levels)."""
    n_layers = len(params)
    chosen = np.zeros(n_layers, dtype=np.int64)
    usable = np.flatnonzero((levels > 0) & (levels <= cap + 1e-12))
    if n_layers == 0 or usable.size == 0 or params.sum() == 0:
        return chosen
    costs = np.maximum.accumulate(np.where(np.isnan(curves), np.inf, curves), axis=1)[:, usable]
    finite = np.isfinite(costs)
    if finite.any():
        lo, hi = costs[finite].min(), costs[finite].max()
        costs = np.where(finite, (costs - lo) / (hi - lo) if hi > lo else 0.0, 2.0)
    else:
        costs = np.full_like(costs, 2.0)
    prev_level = np.concatenate([[0.0], levels[usable][:-1]])
    gain = params[:, None] * (levels[usable] - prev_level)[None, :]        # params pruned by each step
    layer_idx = np.repeat(np.arange(n_layers), usable.size)
    step_idx = np.tile(np.arange(usable.size), n_layers)
    order = np.lexsort((step_idx, costs.ravel()))                          # cost, then level
    pruned = np.cumsum(gain.ravel()[order])
    need = target * params.sum()
    take = min(int(np.searchsorted(pruned, need - 1e-9 * need)) + 1, order.size)
    taken = order[:take]
    np.maximum.at(chosen, layer_idx[taken], usable[step_idx[taken]])
    return chosen
