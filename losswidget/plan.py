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

Criteria (the order `prune` removes a layer's weights in, recorded in the plan): "magnitude", the smallest
|w| first; "activation", the smallest |w| x ||x_j|| first, x_j being the input feature weight w multiplies
over the profile's data. An activation plan carries each layer's ||x_j|| (InputNorms, float32, base64 in
JSON), so the order is reproduced from the plan alone, bit for bit.
"""
from __future__ import annotations

import base64
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


@dataclass(frozen=True)
class Segments:
    """Every layer's lower-hull segments, in the order plans take them (cheapest per parameter first)."""
    layer: np.ndarray          # owning layer of each segment
    start: np.ndarray          # sparsity where it starts and ends
    end: np.ndarray
    width: np.ndarray          # params it prunes
    n_layers: int


def hull_next(grid: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """For each (layer, grid point k): the next vertex of the lower convex hull of (grid, cost) after k,
    i.e. the later point reached at the least slope (the farthest on ties). All layers at once: a
    (layers, G, G) slope table, in blocks of layers to bound memory."""
    n, g = costs.shape
    nxt = np.full((n, g), g - 1, dtype=np.int64)
    later = np.triu(np.ones((g, g), dtype=bool), 1)
    dx = grid[None, :] - grid[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(0, n, 256):
            c = costs[a:a + 256]
            slope = np.where(later, (c[:, None, :] - c[:, :, None]) / dx, np.inf)
            # argmin over reversed columns picks the farthest point among equal slopes
            nxt[a:a + 256] = g - 1 - np.argmin(slope[:, :, ::-1], axis=2)
    nxt[:, -1] = g - 1
    return nxt


def segments(grid: np.ndarray, costs: np.ndarray, params) -> Segments:
    """The hull segments of every plannable layer (finite costs, params > 0), sorted as plans take them."""
    params = np.asarray(params, dtype=float)
    ok = np.flatnonzero((params > 0) & np.isfinite(costs).all(axis=1))
    g = len(grid)
    layer, start, end = [], [], []
    if ok.size and g > 1:
        nxt = hull_next(grid, costs[ok])
        cur = np.zeros(ok.size, dtype=np.int64)
        rows = np.arange(ok.size)
        while True:                                    # walk every layer's hull at once, vertex by vertex
            live = cur < g - 1
            if not live.any():
                break
            step = nxt[rows[live], cur[live]]
            layer.append(rows[live])
            start.append(cur[live])
            end.append(step)
            cur[live] = step
    if not layer:
        empty = np.zeros(0)
        return Segments(empty.astype(np.int64), empty, empty, empty, len(params))
    row, a, b = np.concatenate(layer), np.concatenate(start), np.concatenate(end)
    c = costs[ok][row]
    width = (grid[b] - grid[a]) * params[ok][row]
    slope = (c[np.arange(row.size), b] - c[np.arange(row.size), a]) / width
    owner = ok[row]
    order = np.lexsort((owner, grid[a], slope))    # cheapest per param; ties: lower sparsity, then graph order
    return Segments(owner[order], grid[a][order], grid[b][order], width[order], len(params))


def take(seg: Segments, need: float, keep: np.ndarray | None = None) -> np.ndarray:
    """Per-layer sparsity after taking segments in order until `need` params are pruned, the last partially;
    layers where `keep` is True stay dense. All segments when `need` cannot be reached."""
    sparsity = np.zeros(seg.n_layers)
    use = np.ones(seg.layer.size, dtype=bool) if keep is None else ~np.asarray(keep, dtype=bool)[seg.layer]
    layer, start, end, width = seg.layer[use], seg.start[use], seg.end[use], seg.width[use]
    if need <= 0 or layer.size == 0:
        return sparsity
    taken = np.cumsum(width)
    last = int(np.searchsorted(taken, need - 1e-9 * need))    # the segment that crosses the target
    full = slice(0, min(last, layer.size))
    np.maximum.at(sparsity, layer[full], end[full])
    if last < layer.size:
        before = taken[last - 1] if last else 0.0
        frac = (need - before) / width[last]
        sparsity[layer[last]] = start[last] + frac * (end[last] - start[last])
    return sparsity


def allocate(grid: np.ndarray, costs: np.ndarray, params, target: float,
             keep: np.ndarray | None = None) -> np.ndarray:
    """Per-layer sparsity reaching `target` x sum(params) pruned params at the least total cost (module doc).

    costs: (layers, grid) non-decreasing; NaN rows and layers where `keep` is True stay dense. When the
    target cannot be reached, every segment is taken (the caller reports the shortfall)."""
    return take(segments(grid, costs, params), target * float(np.sum(params)), keep)


def plan_sparsity(rule: str, levels, values, energy_kept, params, target: float, cap: float = CAP,
                  keep: np.ndarray | None = None) -> np.ndarray:
    """Per-layer sparsity from measurement curves: cost_curves + allocate on the grid up to `cap`."""
    grid = grid_for(cap)
    return allocate(grid, cost_curves(rule, levels, values, energy_kept, grid), params, target, keep)


def interp_rows(levels, rows, x) -> np.ndarray:
    """Row i of `rows` (values at the shared, increasing `levels`) at x[i], as np.interp takes it (ends held),
    for all rows at once: the widget's plan curve asks this of every layer at 19 targets."""
    lv = np.asarray(levels, dtype=float)
    r = np.asarray(rows, dtype=float).reshape(len(x), len(lv))
    x = np.asarray(x, dtype=float)
    if len(lv) == 1:
        return r[:, 0].copy()
    j = np.clip(np.searchsorted(lv, x, side="right") - 1, 0, len(lv) - 2)
    at = np.arange(len(x))
    lo, hi = r[at, j], r[at, j + 1]
    t = (x - lv[j]) / (lv[j + 1] - lv[j])
    out = lo + t * (hi - lo)
    out = np.where(x <= lv[0], r[:, 0], out)
    return np.where(x >= lv[-1], r[:, -1], out)


def energy_kept_at(levels, energy_kept, energy, sparsity) -> float | None:
    """Share of all layers' weight energy (sum of w^2) left at these per-layer sparsities."""
    energy = np.asarray(energy, dtype=float)
    if not len(energy) or any(len(k) != len(levels) for k in energy_kept):
        return None
    kept = interp_rows(levels, energy_kept, sparsity)
    ok = np.isfinite(kept) & np.isfinite(energy)
    total = energy[ok].sum()
    return float((energy[ok] * kept[ok]).sum() / total) if total > 0 else None


# -- the plan as data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputNorms:
    """A layer's input-feature norms ||x_j|| over a profile's data (the activation criterion).

    `values` (float32, of `shape`) broadcast against the stored weight's elements viewed as `view` (a
    reshape in storage order: e.g. [in, out] for MatMul, [groups, out/groups, in/groups, kh, kw] for Conv).
    Kept as raw float32 bytes so that the plan and the profile hold the very numbers the profile ranked by.
    """
    shape: tuple[int, ...]
    view: tuple[int, ...]
    data: bytes                              # float32, little-endian, C order

    @classmethod
    def from_array(cls, norms: np.ndarray, view) -> InputNorms:
        arr = np.ascontiguousarray(norms, dtype="<f4")
        view = tuple(int(v) for v in view)
        np.broadcast_shapes(arr.shape, view)                 # ValueError when they do not fit
        return cls(tuple(int(s) for s in arr.shape), view, arr.tobytes())

    @property
    def values(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<f4").reshape(self.shape)

    @property
    def size(self) -> int:
        """Elements of the weight these norms rank."""
        return math.prod(self.view)

    def scores(self, magnitudes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """|w| x ||x_j|| (float32, flat, storage order) from the weight's |w| (flat, storage order); into
        `out` (flat float32 of the weight's size) when given."""
        shaped = None if out is None else out.reshape(self.view)
        return np.multiply(magnitudes.reshape(self.view), self.values, out=shaped, dtype=np.float32).reshape(-1)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "view": list(self.view),
                "float32": base64.b64encode(self.data).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict) -> InputNorms:
        """From `to_dict`; ValueError when damaged (sizes that do not match, shapes that do not broadcast)."""
        shape, view = tuple(int(s) for s in d["shape"]), tuple(int(v) for v in d["view"])
        data = base64.b64decode(d["float32"], validate=True)
        if len(data) != 4 * math.prod(shape) or any(s < 0 for s in (*shape, *view)):
            raise ValueError(f"input norms of shape {list(shape)} hold {len(data)} bytes")
        if np.broadcast_shapes(shape, view) != view:
            raise ValueError(f"input norms of shape {list(shape)} do not broadcast to the weight's {list(view)}")
        return cls(shape, view, data)


@dataclass(frozen=True)
class PlannedLayer:
    index: int
    name: str
    weight: str
    op_type: str
    params: int
    sparsity: float
    excluded: bool = False
    input_norms: InputNorms | None = field(default=None, repr=False)    # activation plans: the ranking's ||x_j||

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
                            "params": l.params, "sparsity": l.sparsity, "excluded": l.excluded,
                            **({"input_norms": l.input_norms.to_dict()} if l.input_norms is not None else {})}
                           for l in self.layers]}

    def to_json(self, path=None) -> str:
        """The plan as JSON text; with `path`, also written there atomically."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            atomic_write(path, text, "plan")
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
            atomic_write(path, text, "plan")
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
                 f"achieved {self.achieved:.4f}", f"# model {self.model_path or ''} {self.model_hash}".rstrip()]
        if self.criterion != "magnitude":
            lines.append(f"# criterion {self.criterion}: SparseML's modifiers prune by magnitude; `losswidget prune` "
                         "applies this plan in its own order")
        lines += ["version: 1.1.0", "", "modifiers:"]
        if not groups:
            lines[-1] = "modifiers: []"
        for s in sorted(groups, reverse=True):
            lines += ["  - !GMPruningModifier", f"    init_sparsity: {s:.2f}", f"    final_sparsity: {s:.2f}",
                      "    start_epoch: 0.0", "    end_epoch: 0.0", "    update_frequency: -1",
                      "    params:"] + [f"      - {json.dumps(w)}" for w in groups[s]]
        text = "\n".join(lines) + "\n"
        if path is not None:
            atomic_write(path, text, "plan")
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
                                        int(l["params"]), _fraction(l["sparsity"]), bool(l.get("excluded", False)),
                                        InputNorms.from_dict(l["input_norms"]) if l.get("input_norms") else None)
                           for l in d["layers"])
            return cls(target=_fraction(d["target"]), achieved=_fraction(d["achieved"]), layers=layers,
                       total_params=int(model.get("total_params") or sum(l.params for l in layers)),
                       cap=_fraction(d.get("cap", CAP)), est_recovery=_opt(d.get("est_recovery")),
                       recovery_kind=_opt_str(d.get("recovery_kind")),
                       weight_energy_kept=_opt(d.get("weight_energy_kept")),
                       criterion=str(d.get("criterion", "magnitude")), profile=str(d.get("profile", "")),
                       method=str(d.get("method", "")), model_hash=str(model.get("hash", "")),
                       model_path=_opt_str(model.get("path")), warnings=tuple(map(str, d.get("warnings", ()))),
                       notes=tuple(map(str, d.get("notes", ()))))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
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


def _opt_str(x) -> str | None:
    if x is not None and not isinstance(x, str):
        raise TypeError(f"expected text or null, got {x!r}")
    return x


def _num(x):
    return float(x) if x is not None and math.isfinite(x) else None
