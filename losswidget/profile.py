"""Loss profiles as plain data: per-layer results, summary metrics, plans, and the versioned file format.

This module imports no engine module: profiles are made by `losswidget.analysis` and read from files.
Summary metrics (README "Summary metrics" documents them for users):
- sensitivity of a layer: L(0.95) - L(0), linearly interpolated (or extrapolated from the last two levels);
- avg_sensitivity: the mean over layers with a finite sensitivity;
- the plan at the target (plan.py): per-layer sparsities, est_params_reduction = total params / params left;
- est_recovery: measured on data by data methods at several targets (interpolated between them, with its
  kind: top-1 agreement, accuracy ratio, ...); data-free profiles have none and report the weight energy
  (sum of w^2) the plan keeps under that name instead.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property, lru_cache

import numpy as np

from .errors import LossWidgetError, ProfileError
from .files import atomic_write, read_json
from .plan import (CAP, PLAN_COSTS, InputNorms, Plan, PlannedLayer, cost_curves, energy_kept_at, grid_for,
                   segments, take)

FORMAT = "losswidget.profile"
VERSION = 2
SENSITIVITY_LEVEL = 0.95
# version 1 files named no plan cost: it followed from the method
_V1_PLAN_COST = {"approximated": "modelled", "magnitude": "energy"}
_V1_RECOVERY_KIND = {"kl": "top-1 agreement", "mse": "1 - normalised MSE", "loss": "accuracy ratio"}


def human(n: float, digits: int = 1) -> str:
    """A count as people read it: 25.5 M, 8.2 k, 2 k (not 2.0 k), 512."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            text = f"{n / size:.{digits}f}"
            return f"{text.rstrip('0').rstrip('.') if '.' in text else text} {unit}"
    return f"{n:.0f}"


def value_at(levels, values, x: float = SENSITIVITY_LEVEL) -> float:
    """L(x) from a measured curve: linear interpolation, or extrapolation from the last two levels."""
    levels, values = np.asarray(levels, float), np.asarray(values, float)
    if levels.size == 1 or x <= levels[-1]:
        return float(np.interp(x, levels, values))
    (l0, l1), (v0, v1) = levels[-2:], values[-2:]
    return float(v1 + (v1 - v0) * (x - l1) / (l1 - l0))


def _level_key(level: float) -> str:
    return repr(float(level))


def _num(x):
    """JSON-safe number: non-finite values are written as null."""
    return float(x) if x is not None and math.isfinite(x) else None


@dataclass(frozen=True)
class LayerResult:
    index: int
    id: str
    name: str
    op_type: str
    weight: str
    shape: tuple[int, ...]
    params: int
    levels: tuple[float, ...]
    values: tuple[float, ...]                 # L(s) per level (NaN: not measured)
    energy_kept: tuple[float, ...] = ()       # fraction of the layer's sum(w^2) left at each level
    energy: float = 0.0                       # the layer's sum(w^2) (data-free recovery weights by it)
    flags: tuple[str, ...] = ()               # non_finite, all_zero, shape_unknown, failed, ...
    error: str | None = None
    input_norms: InputNorms | None = field(default=None, repr=False)   # activation profiles: ||x_j|| (plan.py)

    @property
    def measurements(self) -> dict[float, float]:
        return dict(zip(self.levels, self.values))

    @property
    def sensitivity(self) -> float:
        base = self.values[0] if self.levels and self.levels[0] == 0 else value_at(self.levels, self.values, 0.0)
        return value_at(self.levels, self.values) - base

    def to_dict(self) -> dict:
        return {"index": self.index, "id": self.id, "name": self.name, "op_type": self.op_type,
                "weight": self.weight, "shape": list(self.shape), "params": self.params,
                "sensitivity": _num(self.sensitivity),
                "measurements": {_level_key(l): _num(v) for l, v in zip(self.levels, self.values)},
                "energy": _num(self.energy),
                "energy_kept": {_level_key(l): _num(v) for l, v in zip(self.levels, self.energy_kept)},
                "flags": list(self.flags), "error": self.error,
                **({"input_norms": self.input_norms.to_dict()} if self.input_norms is not None else {})}

    @classmethod
    def from_dict(cls, d: dict) -> LayerResult:
        levels, values = _by_level(d["measurements"])
        kept = dict(zip(*_by_level(d.get("energy_kept") or {})))
        flags = d.get("flags", [])
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            raise ValueError(f"layer flags must be a list of strings, got {flags!r}")
        return cls(index=int(d["index"]), id=str(d["id"]), name=str(d.get("name", d["id"])),
                   op_type=str(d.get("op_type", "")), weight=str(d.get("weight", "")),
                   shape=tuple(int(x) for x in d.get("shape", ())), params=int(d.get("params", 0)),
                   levels=levels, values=values,
                   energy_kept=tuple(kept[l] for l in levels) if set(kept) >= set(levels) else (),
                   energy=float(d.get("energy") or 0.0), flags=tuple(flags),
                   error=None if d.get("error") is None else str(d["error"]),
                   input_norms=InputNorms.from_dict(d["input_norms"]) if d.get("input_norms") else None)


def _by_level(values: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A {level key: value or None} dict as (levels ascending, values; None as NaN); a level written twice
    ("0.5", "0.50") keeps its last value."""
    levels, order = _level_order(tuple(values))
    raw = list(values.values())
    return levels, tuple(math.nan if raw[i] is None else float(raw[i]) for i in order)


@lru_cache(maxsize=64)
def _level_order(keys: tuple) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """The distinct levels of these keys ascending, and the position of each one's last key; cached, since
    every layer of a profile has the same keys."""
    last = {_level(k): i for i, k in enumerate(keys)}
    levels = tuple(sorted(last))
    return levels, tuple(last[l] for l in levels)


def _level(key) -> float:
    v = float(key)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"sparsity level {key!r} is not in [0, 1)")
    return v


@dataclass(frozen=True)
class ModelInfo:
    path: str | None
    hash: str                  # "blake3:<hex>" of the model file(s): matches profiles to models
    total_params: int
    prunable_params: int


@dataclass(frozen=True)
class Recovery:
    """Recovery measured on data: at each target, the default plan (no exclusions, cap 0.95) applied to the
    model and compared with the dense model. `kind` says what the number is."""
    kind: str                                  # top-1 agreement | accuracy ratio | loss ratio | 1 - normalised MSE
    points: tuple[tuple[float, float], ...]    # (target sparsity, measured value), targets ascending

    def at(self, sparsity: float) -> float | None:
        """Linear between measured points (and 1.0 at sparsity 0, where nothing is pruned); None past the
        last measured target: not measured, and no other kind of number stands in for it."""
        pts = sorted(self.points)
        if not pts or sparsity > pts[-1][0] + 1e-9:
            return None
        xs = [0.0] + [t for t, _ in pts if t > 0]
        ys = [1.0] + [v for t, v in pts if t > 0]
        return float(np.interp(sparsity, xs, ys))

    @property
    def targets(self) -> tuple[float, ...]:
        return tuple(t for t, _ in sorted(self.points))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "points": {_level_key(t): _num(v) for t, v in sorted(self.points)}}


@dataclass(frozen=True)
class Summary:
    total_params: int
    prunable_params: int
    avg_sensitivity: float
    target_sparsity: float
    achieved_sparsity: float               # of prunable params, under the plan at the target
    est_params_reduction: float            # total params / params left under the plan
    est_recovery: float | None             # measured recovery (data profiles), interpolated; None otherwise
    recovery_kind: str | None
    weight_energy_kept: float | None       # share of sum(w^2) the plan keeps (not a recovery estimate)

    def to_dict(self) -> dict:
        return {"total_params": self.total_params, "prunable_params": self.prunable_params,
                "avg_sensitivity": _num(self.avg_sensitivity), "target_sparsity": self.target_sparsity,
                "achieved_sparsity": _num(self.achieved_sparsity),
                "est_params_reduction": _num(self.est_params_reduction), "est_recovery": _num(self.est_recovery),
                "recovery_kind": self.recovery_kind, "weight_energy_kept": _num(self.weight_energy_kept)}


@dataclass(frozen=True)
class LossProfile:
    name: str
    method: str
    model: ModelInfo
    settings: dict
    layers: tuple[LayerResult, ...]
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    notes: tuple[str, ...] = ()
    partial: bool = False
    recovery: Recovery | None = None          # data methods: measured at several targets
    plan_cost: str = "measured"               # what plans weigh layers by (plan.py)
    criterion: str = "magnitude"              # the order prune removes weights in

    # -- metrics ---------------------------------------------------------------------------------------
    @property
    def levels(self) -> tuple[float, ...]:
        return self.layers[0].levels if self.layers else tuple(self.settings.get("sparsity_levels", ()))

    @property
    def target_sparsity(self) -> float:
        return float(self.settings.get("target_sparsity", 0.85))

    @cached_property
    def sensitivities(self) -> np.ndarray:
        return np.array([l.sensitivity for l in self.layers], dtype=float)

    @cached_property
    def summary(self) -> Summary:
        return self.summary_at(self.target_sparsity)

    def summary_at(self, target: float, plan: Plan | None = None) -> Summary:
        """The summary metrics under the plan at `target` (cheap: the widget's slider calls this); `plan`: one
        already made for that target (the widget's, with the user's exclusions) instead of the plain one."""
        sens = self.sensitivities
        avg = float(np.mean(sens[np.isfinite(sens)])) if np.isfinite(sens).any() else math.nan
        plan = self.plan(target) if plan is None else plan
        return Summary(self.model.total_params, plan.prunable_params, avg, float(target), plan.achieved,
                       plan.est_params_reduction, plan.est_recovery, plan.recovery_kind, plan.weight_energy_kept)

    def plan(self, target: float | None = None, *, exclude=(), cap: float = CAP) -> Plan:
        """Per-layer sparsities reaching `target` (default: the profile's) of prunable params at the least
        cost by this profile's curves; `exclude`: layer names, weight names or indices kept dense; no layer
        past `cap`. See plan.py for the rule."""
        target = self.target_sparsity if target is None else _check_fraction(target, "target", high=cap)
        cap = _check_fraction(cap, "cap", high=1.0)
        keep = self._excluded(exclude)
        sparsity = self._allocate(target, cap, keep)
        params = np.array([l.params for l in self.layers], dtype=float)
        prunable = params.sum()
        pruned = float(np.round(sparsity * params).sum())
        achieved = float(pruned / prunable) if prunable else 0.0
        warnings = []
        unplanned = [l.name for l, k, s in zip(self.layers, keep, self._plannable()) if not s and not k]
        if unplanned:
            warnings.append(f"{len(unplanned)} layer(s) have no usable measurements and stay dense: "
                            + ", ".join(unplanned[:5]) + (" ..." if len(unplanned) > 5 else ""))
        if achieved < target - 0.005:
            warnings.append(f"Target {target:.0%} cannot be reached with {int(keep.sum())} layer(s) excluded and "
                            f"no layer past {cap:.0%}: the plan reaches {achieved:.1%}.")
        if self.plan_cost == "modelled":
            warnings.append("Modelled from the architecture only (no weight or data was read): check this plan on "
                            "data before relying on it.")
        if self.layers and (sparsity > max(self.levels) + 1e-9).any():
            warnings.append(f"Some layers are planned past the highest measured level ({max(self.levels):g}); "
                            "their costs there are extrapolated.")
        notes = []
        recovery = self.recovery.at(achieved) if self.recovery is not None else None
        if recovery is not None and keep.any():
            notes.append("Recovery was measured for plans without exclusions; this plan's is interpolated from them.")
        levels = list(self.levels)
        layers = tuple(PlannedLayer(l.index, l.name, l.weight, l.op_type, l.params, float(s), bool(k), l.input_norms)
                       for l, s, k in zip(self.layers, sparsity, keep))
        energy = energy_kept_at(levels, [l.energy_kept for l in self.layers], [l.energy for l in self.layers],
                                sparsity) if self.layers else None
        return Plan(target=float(target), achieved=achieved, layers=layers, total_params=self.model.total_params,
                    cap=cap, est_recovery=recovery, recovery_kind=self.recovery.kind if recovery is not None else None,
                    weight_energy_kept=energy, criterion=self.criterion, profile=self.name, method=self.method,
                    model_hash=self.model.hash, model_path=self.model.path, warnings=tuple(warnings),
                    notes=tuple(notes))

    def _excluded(self, exclude) -> np.ndarray:
        if isinstance(exclude, (str, int)):
            exclude = [exclude]
        keep = np.zeros(len(self.layers), dtype=bool)
        if not exclude:
            return keep
        known = {}
        for i, l in enumerate(self.layers):
            for key in (l.name, l.weight, l.id, l.index):
                known.setdefault(key, i)
        for item in exclude:
            if item not in known:
                raise LossWidgetError(f"Cannot exclude {item!r}: no layer of profile {self.name!r} has that name, "
                                      "weight name or index.")
            keep[known[item]] = True
        return keep

    def _plannable(self) -> np.ndarray:
        return np.isfinite(self._costs(CAP)).all(axis=1) if self.layers else np.zeros(0, bool)

    def _cached(self, key, make):
        cache = self.__dict__.setdefault("_plan_cache", {})      # a frozen dataclass: plain attribute storage
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def _costs(self, cap: float) -> np.ndarray:
        return self._cached(("costs", cap), lambda: cost_curves(
            self.plan_cost, self.levels, [l.values for l in self.layers], [l.energy_kept for l in self.layers],
            grid_for(cap)))

    def _allocate(self, target: float, cap: float, keep: np.ndarray) -> np.ndarray:
        """Per-layer sparsity; the hull segments are made once per cap, so a plan at another target (the
        widget's slider) only walks them."""
        if not self.layers:
            return np.zeros(0)
        params = [l.params for l in self.layers]
        seg = self._cached(("segments", cap), lambda: segments(grid_for(cap), self._costs(cap), params))
        return take(seg, target * float(np.sum(params)), keep)

    def most_sensitive(self, n: int = 10) -> list[LayerResult]:
        order = np.argsort(-np.nan_to_num(self.sensitivities, nan=-np.inf), kind="stable")
        return [self.layers[i] for i in order[:n]]

    # -- files -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        plan = self.plan()
        layers = []
        for l, p in zip(self.layers, plan.layers):
            d = l.to_dict()
            d["planned_sparsity"] = p.sparsity
            layers.append(d)
        return {"format": FORMAT, "version": VERSION, "name": self.name, "method": self.method,
                "created": self.created,
                "model": {"path": self.model.path, "hash": self.model.hash,
                          "total_params": self.model.total_params, "prunable_params": self.model.prunable_params},
                "settings": dict(self.settings), "summary": self.summary.to_dict(),
                "notes": list(self.notes), "partial": self.partial,
                "recovery": self.recovery.to_dict() if self.recovery is not None else None,
                "plan_cost": self.plan_cost, "criterion": self.criterion,
                "plan_warnings": list(plan.warnings), "layers": layers}

    def to_json(self, path=None) -> str:
        """The profile as JSON text; with `path`, also written there atomically (temp file + rename)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            atomic_write(path, text, "profile")
        return text

    @classmethod
    def from_dict(cls, d: dict, source: str = "profile") -> LossProfile:
        if d.get("format") != FORMAT:
            if isinstance(d.get("results"), list):
                return from_sparseml_dict(d, source=source)
            raise ProfileError(f"{source} is not a losswidget profile (no \"format\": \"{FORMAT}\").")
        version = d.get("version")
        if type(version) is not int or not 1 <= version <= VERSION:
            if type(version) is int and version > VERSION:
                raise ProfileError(f"{source} has profile format version {version}; this losswidget reads up to "
                                   f"version {VERSION}. Upgrade losswidget to open it.")
            raise ProfileError(f"{source} has an invalid profile format version {version!r}.")
        try:
            m = d["model"]
            settings = _finite(dict(d.get("settings") or {}))
            layers = tuple(LayerResult.from_dict(l) for l in d["layers"])
            if len({l.levels for l in layers}) > 1:
                raise ValueError("the layers were measured at different sparsity levels")
            if version == 1:
                recovery = None
                if d.get("measured_recovery") is not None:
                    kind = _V1_RECOVERY_KIND.get(settings.get("metric"), "top-1 agreement")
                    recovery = Recovery(kind, ((float(settings.get("target_sparsity", 0.85)),
                                                float(d["measured_recovery"])),))
                plan_cost = _V1_PLAN_COST.get(d["method"], "measured")
                criterion = "magnitude"
            else:
                rec = d.get("recovery")
                recovery = None if rec is None else Recovery(
                    str(rec["kind"]), tuple(sorted((_fraction(k), float(v)) for k, v in rec["points"].items()
                                                   if v is not None)))
                plan_cost, criterion = str(d.get("plan_cost", "measured")), str(d.get("criterion", "magnitude"))
                if plan_cost not in PLAN_COSTS:
                    raise ValueError(f"unknown plan_cost {plan_cost!r}")
            if "target_sparsity" in settings:
                settings["target_sparsity"] = _check_fraction(settings["target_sparsity"], "target_sparsity", high=CAP)
            total, prunable = int(m["total_params"]), int(m["prunable_params"])
            if total < 0 or prunable < 0:
                raise ValueError("negative param counts")
            flags = [l.flags for l in layers]
            if any(not all(isinstance(f, str) for f in fl) for fl in flags):
                raise ValueError("layer flags must be strings")
            return cls(name=str(d["name"]), method=str(d["method"]), created=str(d.get("created", "")),
                       model=ModelInfo(None if m.get("path") is None else str(m["path"]), str(m.get("hash", "")),
                                       total, prunable),
                       settings=settings, notes=tuple(map(str, d.get("notes", ()))),
                       partial=bool(d.get("partial", False)), recovery=recovery, plan_cost=plan_cost,
                       criterion=criterion, layers=layers)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError, LossWidgetError) as exc:
            raise ProfileError(f"{source} is a damaged profile file ({type(exc).__name__}: {exc}).") from None

    @classmethod
    def from_json(cls, path) -> LossProfile:
        return load_profile(path)

    def to_csv(self, path=None) -> str:
        """One row per layer: identity, params, sensitivity, planned sparsity at the profile's target, flags,
        then L(s) for every level."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "id", "name", "op_type", "weight", "shape", "params", "sensitivity",
                    f"planned_sparsity@{self.target_sparsity:g}", "flags"] + [f"L@{l:g}" for l in self.levels])
        plan = self.plan()
        for l, p in zip(self.layers, plan.layers):
            w.writerow([l.index, l.id, l.name, l.op_type, l.weight, "x".join(map(str, l.shape)), l.params,
                        repr(l.sensitivity), f"{p.sparsity:.6f}", ";".join(l.flags)] + [repr(v) for v in l.values])
        text = buf.getvalue()
        if path is not None:
            atomic_write(path, text, "profile")
        return text

    def to_dataframe(self):
        """A pandas DataFrame, one row per layer (pandas is optional: `pip install pandas`)."""
        try:
            import pandas as pd
        except ImportError:
            raise LossWidgetError("to_dataframe needs pandas: pip install pandas") from None
        plan = self.plan()
        rows = [{"index": l.index, "id": l.id, "name": l.name, "op_type": l.op_type, "weight": l.weight,
                 "shape": l.shape, "params": l.params, "sensitivity": l.sensitivity,
                 "planned_sparsity": p.sparsity, "flags": l.flags,
                 **{f"L@{lv:g}": v for lv, v in zip(l.levels, l.values)}} for l, p in zip(self.layers, plan.layers)]
        return pd.DataFrame(rows).set_index("index") if rows else pd.DataFrame()

    def to_html(self, path=None, *, target: float | None = None) -> str:
        """A self-contained HTML report: cards, SVG charts, a sortable layer table and the plan at `target`
        (default: the profile's); with `path`, also written there atomically. No external asset: opens offline."""
        from .report import render_html
        plan = self.plan(target)
        data = self.to_dict()
        data["summary"] = self.summary_at(plan.target).to_dict()
        data["plan"] = plan.to_dict()
        text = render_html(data)
        if path is not None:
            atomic_write(path, text)
        return text

    def with_name(self, name: str) -> LossProfile:
        return replace(self, name=name)


BUNDLE = "losswidget.profiles"


def profiles_to_csv(profiles, path=None) -> str:
    """Several profiles as one table (what the widget exports when comparing): a `profile` column first, then
    `LossProfile.to_csv`'s columns with the planned sparsity at each profile's own target (`target` column)
    and L(s) over the union of their levels (blank where a profile has no such level)."""
    profiles = list(profiles)
    levels = sorted({l for p in profiles for l in p.levels})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["profile", "index", "id", "name", "op_type", "weight", "shape", "params", "sensitivity", "target",
                "planned_sparsity", "flags"] + [f"L@{l:g}" for l in levels])
    for p in profiles:
        for l, planned in zip(p.layers, p.plan().layers):
            meas = l.measurements
            w.writerow([p.name, l.index, l.id, l.name, l.op_type, l.weight, "x".join(map(str, l.shape)), l.params,
                        repr(l.sensitivity), f"{p.target_sparsity:g}", f"{planned.sparsity:.6f}", ";".join(l.flags)]
                       + [repr(meas[lv]) if lv in meas else "" for lv in levels])
    text = buf.getvalue()
    if path is not None:
        atomic_write(path, text)
    return text


def profiles_to_json(profiles, path=None) -> str:
    """Several profiles in one file, `{"format": "losswidget.profiles", "version": 2, "profiles": [...]}`
    (each entry a profile as `to_json` writes it); `load_profiles` reads it back."""
    text = json.dumps({"format": BUNDLE, "version": VERSION, "profiles": [p.to_dict() for p in profiles]},
                      indent=1, allow_nan=False)
    if path is not None:
        atomic_write(path, text)
    return text


def _finite(value):
    """JSON data with its non-finite floats (a file's Infinity, NaN, 1e400) as None: what to_json writes."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _fraction(x) -> float:
    v = float(x)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{x!r} is not a fraction in [0, 1]")
    return v


def _check_fraction(x, what: str, high: float) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise LossWidgetError(f"{what} must be a number in (0, {high:g}], got {x!r}.") from None
    if not 0.0 < v <= high + 1e-12:
        raise LossWidgetError(f"{what} must lie in (0, {high:g}], got {x!r}.")
    return v


def load_profile(path) -> LossProfile:
    """Read a losswidget profile JSON, or a SparseML sensitivity JSON ({"results": [...]})."""
    data = read_json(path, "profile")
    if data.get("format") == BUNDLE:
        raise ProfileError(f"{path} holds {len(data.get('profiles') or [])} profiles (an export of compared "
                           "profiles); read it with losswidget.load_profiles.")
    return LossProfile.from_dict(data, source=str(path))


def load_profiles(path) -> list[LossProfile]:
    """Every profile in a file: a bundle from `profiles_to_json` (the widget's export when comparing), or a
    single profile (losswidget's or SparseML's) as a list of one."""
    data = read_json(path, "profile")
    if data.get("format") != BUNDLE:
        return [LossProfile.from_dict(data, source=str(path))]
    version = data.get("version")
    if type(version) is not int or version > VERSION:
        raise ProfileError(f"{path} has profiles format version {version!r}; this losswidget reads up to "
                           f"version {VERSION}. Upgrade losswidget to open it.")
    entries = data.get("profiles")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ProfileError(f"{path} is a damaged profiles file (\"profiles\" is not a list of profiles).")
    return [LossProfile.from_dict(e, source=f"{path} (profile {i})") for i, e in enumerate(entries)]


def from_sparseml_dict(data, *, name: str | None = None, layer_info: dict | None = None, total_params: int = 0,
                       model_hash: str = "", source: str = "SparseML analysis") -> LossProfile:
    """A SparseML `PruningLossSensitivityAnalysis` JSON (dict or path) as a profile.

    Each result's measurement lists are averaged per level (as SparseML's `averages`). `layer_info` (weight
    name -> (op type, shape, params)) fills in what SparseML's file does not hold.
    """
    if not isinstance(data, dict):
        source = str(data)
        data = read_json(data, "SparseML analysis")
    info = layer_info or {}
    layers = []
    try:
        for i, res in enumerate(data["results"]):
            meas = {}
            for level, values in res["sparse_measurements"]:
                vals = values if isinstance(values, list) else [values]
                meas[_fraction(level)] = float(np.mean([float(v) for v in vals])) if vals else math.nan
            meas.setdefault(0.0, 0.0)
            levels = tuple(sorted(meas))
            op_type, shape, params = info.get(res.get("name"), ("", (), 0))
            layers.append(LayerResult(
                index=i, id=str(res.get("id") or res.get("name")), name=str(res.get("name") or res.get("id")),
                op_type=op_type, weight=str(res.get("name", "")), shape=tuple(shape), params=int(params),
                levels=levels, values=tuple(meas[l] for l in levels)))
        if len({l.levels for l in layers}) > 1:
            raise ValueError("the layers were measured at different sparsity levels")
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise ProfileError(f"{source} is not a readable SparseML sensitivity analysis ({exc}).") from None
    prunable = sum(l.params for l in layers)
    return LossProfile(name=name or "SparseML import", method="sparseml", layers=tuple(layers),
                       model=ModelInfo(None, model_hash, total_params or prunable, prunable),
                       settings={"sparsity_levels": list(layers[0].levels) if layers else [], "target_sparsity": 0.85},
                       notes=("Imported from a SparseML sensitivity analysis.",), plan_cost="measured")
