"""Plans: how sparse to make each layer so the model reaches a target sparsity at the least cost.

A profile gives, per layer, a cost curve c(s) of pruning that layer alone to sparsity s. Which curve is
the profile's `plan_cost`:
- measured: the measurements themselves, L(s) - L(0) (one-shot: the loss/KL change of the model output;
  activation-aware: the layer's relative output error). One scale for every layer: the model's output.
- energy: 1 - weight energy kept, the layer's relative weight (and, for unit inputs, output) error: what a
  weight-magnitude profile can say without data. SparseML's magnitude values (mean |w| of each level's
  pruned weights) carry each layer's own weight scale, so they cannot compare layers.
- modelled: L(1) x (1 - energy kept under the Gaussian weight model): the approximated profile's
  architecture score, spread over s the way pruning a Gaussian's smallest weights removes energy.

Allocation: each curve is sampled on a 0.01 grid up to the cap (linear between measured levels, extended
along the last two past the last one), made non-decreasing, and replaced by its lower convex hull. Hull
segments of all layers are taken in order of cost per pruned parameter (slope / params; ties: lower
sparsity first, so tied layers are pruned evenly); the last one partially, so the plan lands on the target
exactly. On convex curves this is the least total cost for the target (equal marginal cost per parameter
across layers). Layers may be excluded (kept dense); none goes past the cap (0.95 by default).

A Plan is plain data: per-layer sparsities, what was achieved, and what the plan is expected to keep of
the model (measured recovery, interpolated between the targets it was measured at) or, for data-free
profiles, the weight energy it keeps, named as such. It exports as JSON, CSV and a SparseML-style recipe.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ProfileError
from .files import atomic_write

CAP = 0.95
STEP = 0.01
PLAN_COSTS = ("measured", "energy", "modelled")
FORMAT = "losswidget.plan"
VERSION = 1


# -- allocation (pure numeric) -----------------------------------------------------------------------------
def grid_for(cap: float) -> np.ndarray:
    """0, 0.01, ... up to the cap, the cap included."""
    n = int(math.floor(cap / STEP + 1e-9))
    grid = np.arange(n + 1) * STEP
    return grid if math.isclose(grid[-1], cap) else np.append(grid, cap)


def sample(levels: np.ndarray, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The curve at the grid's sparsities: linear between levels, extended along the last two past the end."""
    out = np.interp(grid, levels, values)
    if len(levels) >= 2 and grid[-1] > levels[-1]:
        past = grid > levels[-1]
        slope = (values[-1] - values[-2]) / (levels[-1] - levels[-2])
        out[past] = values[-1] + slope * (grid[past] - levels[-1])
    return out


def cost_curves(rule: str, levels, values, energy_kept, grid: np.ndarray) -> np.ndarray:
    """(layers, grid) costs by a profile's plan_cost rule (module doc); NaN rows: layer not plannable."""
    if rule not in PLAN_COSTS:
        raise ProfileError(f"Unknown plan cost {rule!r}; expected one of {', '.join(PLAN_COSTS)}.")
    levels = np.asarray(levels, dtype=float)
    values = np.asarray(values, dtype=float)
    out = np.full((len(values), len(grid)), np.nan)
    for i in range(len(values)):
        v = values[i]
        if rule == "measured":
            if not np.isfinite(v).all():
                continue
            curve = sample(levels, v - v[0], grid)
        else:
            kept = np.asarray(energy_kept[i], dtype=float)
            if kept.shape != levels.shape or not np.isfinite(kept).all():
                continue
            curve = sample(levels, 1.0 - kept, grid)
            if rule == "modelled":
                scale = sample(levels, v, np.array([1.0]))[0] if np.isfinite(v).all() else np.nan
                curve = curve * scale
        out[i] = np.maximum.accumulate(np.maximum(curve, 0.0))
    return out


def _hull(grid: np.ndarray, cost: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of (grid, cost), left to right (monotone chain)."""
    hull: list[int] = []
    for k in range(len(grid)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or above the line from a to k
            if (cost[b] - cost[a]) * (grid[k] - grid[a]) >= (cost[k] - cost[a]) * (grid[b] - grid[a]):
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def allocate(grid: np.ndarray, costs: np.ndarray, params, target: float,
             keep: np.ndarray | None = None) -> np.ndarray:
    """Per-layer sparsity reaching `target` x sum(params) pruned params at the least total cost (module doc).

    costs: (layers, grid) non-decreasing; NaN rows and layers where `keep` is True stay dense. When the
    target cannot be reached, every segment is taken (the caller reports the shortfall)."""
    params = np.asarray(params, dtype=float)
    n = len(params)
    sparsity = np.zeros(n)
    need = target * params.sum()
    slopes, widths, owners, starts, ends = [], [], [], [], []
    for i in range(n):
        if params[i] <= 0 or (keep is not None and keep[i]) or not np.isfinite(costs[i]).all():
            continue
        h = _hull(grid, costs[i])
        a, b = np.array(h[:-1]), np.array(h[1:])
        if a.size == 0:
            continue
        ds = grid[b] - grid[a]
        slopes.append((costs[i][b] - costs[i][a]) / (ds * params[i]))
        widths.append(ds * params[i])
        owners.append(np.full(a.size, i))
        starts.append(grid[a])
        ends.append(grid[b])
    if not slopes or need <= 0:
        return sparsity
    slope, width, owner = np.concatenate(slopes), np.concatenate(widths), np.concatenate(owners)
    start, end = np.concatenate(starts), np.concatenate(ends)
    order = np.lexsort((owner, start, slope))      # cheapest per param; ties: lower sparsity, then graph order
    taken = np.cumsum(width[order])
    last = int(np.searchsorted(taken, need - 1e-9 * need))   # the segment that crosses the target
    full = order[:last] if last < order.size else order
    np.maximum.at(sparsity, owner[full], end[full])
    if last < order.size:
        seg = order[last]
        before = taken[last - 1] if last else 0.0
        frac = (need - before) / width[seg]
        sparsity[owner[seg]] = start[seg] + frac * (end[seg] - start[seg])
    return sparsity


def plan_sparsity(rule: str, levels, values, energy_kept, params, target: float, cap: float = CAP,
                  keep: np.ndarray | None = None) -> np.ndarray:
    """Per-layer sparsity from measurement curves: cost_curves + allocate on the grid up to `cap`."""
    grid = grid_for(cap)
    return allocate(grid, cost_curves(rule, levels, values, energy_kept, grid), params, target, keep)


def energy_kept_at(levels, energy_kept, energy, sparsity) -> float | None:
    """Share of all layers' weight energy (sum of w^2) left at these per-layer sparsities."""
    energy = np.asarray(energy, dtype=float)
    if not len(energy) or any(len(k) != len(levels) for k in energy_kept):
        return None
    kept = np.array([np.interp(s, levels, k) for s, k in zip(sparsity, energy_kept)], dtype=float)
    ok = np.isfinite(kept) & np.isfinite(energy)
    total = energy[ok].sum()
    return float((energy[ok] * kept[ok]).sum() / total) if total > 0 else None


# -- the plan as data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedLayer:
    index: int
    name: str
    weight: str
    op_type: str
    params: int
    sparsity: float
    excluded: bool = False

    @property
    def pruned(self) -> int:
        """Weights this layer loses: round(sparsity x params), as `prune` removes them."""
        return int(round(self.sparsity * self.params))


@dataclass(frozen=True)
class Plan:
    """Per-layer sparsities at a target, with what they are expected to cost. See the module doc."""
    target: float
    achieved: float                        # pruned / prunable params, as prune applies it (rounded per layer)
    layers: tuple[PlannedLayer, ...]
    total_params: int
    cap: float = CAP
    est_recovery: float | None = None      # measured recovery at this sparsity (interpolated), if measured
    recovery_kind: str | None = None       # what est_recovery is: top-1 agreement, accuracy ratio, ...
    weight_energy_kept: float | None = None
    criterion: str = "magnitude"           # the order prune removes weights in
    profile: str = ""                      # the profile's name and method, and the model it was made for
    method: str = ""
    model_hash: str = ""
    model_path: str | None = None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def sparsity(self) -> dict[str, float]:
        """Layer name -> planned sparsity (layer order)."""
        return {l.name: l.sparsity for l in self.layers}

    @property
    def prunable_params(self) -> int:
        return sum(l.params for l in self.layers)

    @property
    def pruned_params(self) -> int:
        return sum(l.pruned for l in self.layers)

    @property
    def est_params_reduction(self) -> float:
        """Total params / params left ("4.2x")."""
        left = self.total_params - self.pruned_params
        if self.total_params <= 0:
            return 1.0
        return self.total_params / left if left > 0 else math.inf

    # -- files -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "profile": self.profile, "method": self.method,
                "model": {"path": self.model_path, "hash": self.model_hash, "total_params": self.total_params},
                "target": self.target, "achieved": self.achieved, "cap": self.cap, "criterion": self.criterion,
                "est_params_reduction": _num(self.est_params_reduction),
                "est_recovery": _num(self.est_recovery), "recovery_kind": self.recovery_kind,
                "weight_energy_kept": _num(self.weight_energy_kept), "warnings": list(self.warnings),
                "notes": list(self.notes),
                "layers": [{"index": l.index, "name": l.name, "weight": l.weight, "op_type": l.op_type,
                            "params": l.params, "sparsity": l.sparsity, "excluded": l.excluded}
                           for l in self.layers]}

    def to_json(self, path=None) -> str:
        """The plan as JSON text; with `path`, also written there atomically."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            atomic_write(path, text)
        return text

    def to_csv(self, path=None) -> str:
        """One row per layer: index, name, weight, op, params, planned sparsity, pruned weights, excluded."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "name", "weight", "op_type", "params", "sparsity", "pruned", "excluded"])
        for l in self.layers:
            w.writerow([l.index, l.name, l.weight, l.op_type, l.params, f"{l.sparsity:.6f}", l.pruned,
                        int(l.excluded)])
        text = buf.getvalue()
        if path is not None:
            atomic_write(path, text)
        return text

    def to_recipe(self, path=None) -> str:
        """A SparseML-style YAML recipe: one `GMPruningModifier` per sparsity (rounded to 0.01) with start and
        end epoch 0 (one-shot), its params the weight names; layers left dense are not listed."""
        groups: dict[float, list[str]] = {}
        for l in self.layers:
            s = round(l.sparsity, 2)
            if s > 0:
                groups.setdefault(s, []).append(l.weight)
        lines = [f"# losswidget plan: profile {self.profile!r} ({self.method}), target {self.target:g}, "
                 f"achieved {self.achieved:.4f}", f"# model {self.model_path or ''} {self.model_hash}".rstrip(),
                 "version: 1.1.0", "", "modifiers:"]
        if not groups:
            lines[-1] = "modifiers: []"
        for s in sorted(groups, reverse=True):
            lines += ["  - !GMPruningModifier", f"    init_sparsity: {s:.2f}", f"    final_sparsity: {s:.2f}",
                      "    start_epoch: 0.0", "    end_epoch: 0.0", "    update_frequency: -1",
                      "    params:"] + [f"      - {json.dumps(w)}" for w in groups[s]]
        text = "\n".join(lines) + "\n"
        if path is not None:
            atomic_write(path, text)
        return text

    @classmethod
    def from_dict(cls, d: dict, source: str = "plan") -> Plan:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ProfileError(f"{source} is not a losswidget plan (no \"format\": \"{FORMAT}\").")
        version = d.get("version")
        if type(version) is not int or not 1 <= version <= VERSION:
            raise ProfileError(f"{source} has plan format version {version!r}; this losswidget reads version "
                               f"{VERSION}. Upgrade losswidget to open it.")
        try:
            model = d.get("model") or {}
            layers = tuple(PlannedLayer(int(l["index"]), str(l["name"]), str(l["weight"]), str(l.get("op_type", "")),
                                        int(l["params"]), _fraction(l["sparsity"]), bool(l.get("excluded", False)))
                           for l in d["layers"])
            return cls(target=_fraction(d["target"]), achieved=_fraction(d["achieved"]), layers=layers,
                       total_params=int(model.get("total_params") or sum(l.params for l in layers)),
                       cap=_fraction(d.get("cap", CAP)), est_recovery=_opt(d.get("est_recovery")),
                       recovery_kind=d.get("recovery_kind"), weight_energy_kept=_opt(d.get("weight_energy_kept")),
                       criterion=str(d.get("criterion", "magnitude")), profile=str(d.get("profile", "")),
                       method=str(d.get("method", "")), model_hash=str(model.get("hash", "")),
                       model_path=model.get("path"), warnings=tuple(map(str, d.get("warnings", ()))),
                       notes=tuple(map(str, d.get("notes", ()))))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ProfileError(f"{source} is a damaged plan file ({type(exc).__name__}: {exc}).") from None


def load_plan(path) -> Plan:
    """Read a plan written by `Plan.to_json`."""
    from .files import read_json
    return Plan.from_dict(read_json(path, "plan"), source=str(path))


def _fraction(x) -> float:
    v = float(x)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{x!r} is not a fraction in [0, 1]")
    return v


def _opt(x) -> float | None:
    return None if x is None else float(x)


def _num(x):
    return float(x) if x is not None and math.isfinite(x) else None
