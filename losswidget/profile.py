"""Loss profiles as plain data: per-layer results, the summary metrics, and the versioned file format.

Summary metrics (README "Summary metrics" documents them for users):
- sensitivity of a layer: L(0.95) - L(0), linearly interpolated (or extrapolated from the last two levels);
- avg_sensitivity: the mean over layers with a finite sensitivity;
- est_params_reduction: total params / params left after `plan.allocate` at the target;
- est_recovery: share of weight energy (sum of w^2) the allocation keeps (data-free profiles), or the value
  measured on data (one-shot profiles, stored in `measured_recovery`).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import LossWidgetError, ProfileError
from .plan import CAP, allocate

FORMAT = "losswidget.profile"
VERSION = 1
SENSITIVITY_LEVEL = 0.95


def human(n: float, digits: int = 1) -> str:
    """A count as people read it: 25.5 M, 8.2 k, 512."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
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
                "flags": list(self.flags), "error": self.error}

    @classmethod
    def from_dict(cls, d: dict) -> LayerResult:
        meas = {float(k): (math.nan if v is None else float(v)) for k, v in d["measurements"].items()}
        levels = tuple(sorted(meas))
        kept = {float(k): (math.nan if v is None else float(v)) for k, v in (d.get("energy_kept") or {}).items()}
        return cls(index=int(d["index"]), id=str(d["id"]), name=str(d.get("name", d["id"])),
                   op_type=str(d.get("op_type", "")), weight=str(d.get("weight", "")),
                   shape=tuple(int(x) for x in d.get("shape", ())), params=int(d.get("params", 0)),
                   levels=levels, values=tuple(meas[l] for l in levels),
                   energy_kept=tuple(kept[l] for l in levels) if set(kept) >= set(levels) else (),
                   energy=float(d.get("energy") or 0.0), flags=tuple(d.get("flags", ())), error=d.get("error"))


@dataclass(frozen=True)
class ModelInfo:
    path: str | None
    hash: str                  # "blake3:<hex>" of the model file(s): matches profiles to models
    total_params: int
    prunable_params: int


@dataclass(frozen=True)
class Summary:
    total_params: int
    prunable_params: int
    avg_sensitivity: float
    est_params_reduction: float
    est_recovery: float | None
    target_sparsity: float
    allocation: tuple[float, ...]             # sparsity given to each layer at the target
    recovery_note: str

    def to_dict(self) -> dict:
        return {"total_params": self.total_params, "prunable_params": self.prunable_params,
                "avg_sensitivity": _num(self.avg_sensitivity), "est_params_reduction": _num(self.est_params_reduction),
                "est_recovery": _num(self.est_recovery)}


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
    measured_recovery: float | None = None    # one-shot profiles: recovery measured on data at the target
    recovery_note: str = "fraction of weight energy (sum of w^2) kept by the allocation"

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def build(cls, *, name, method, mf, graph, levels, measured, settings, recovery_note, errors=None,
              **extra) -> LossProfile:
        lv = tuple(float(x) for x in levels)
        errors = errors or [None] * len(measured)
        layers = tuple(LayerResult(
            index=l.index, id=l.id, name=l.name, op_type=l.op_type, weight=l.weight, shape=l.shape,
            params=l.params, levels=lv, values=tuple(float(v) for v in m.values),
            energy_kept=tuple(float(v) for v in m.energy_kept), energy=float(m.energy), flags=tuple(m.flags),
            error=e) for l, m, e in zip(graph.layers, measured, errors))
        notes = list(extra.pop("notes", ()))
        if not layers:
            notes.append("No prunable layers found (no Conv / Gemm / MatMul / ... node applies a stored weight).")
        flagged = [l.name for l in layers if set(l.flags) & {"non_finite", "all_zero"}]
        if flagged:
            notes.append(f"{len(flagged)} layer(s) have NaN/Inf or all-zero weights: {', '.join(flagged[:5])}"
                         + (" ..." if len(flagged) > 5 else ""))
        info = ModelInfo(str(mf.path) if mf.path else None, mf.content_hash(), graph.total_params, graph.prunable_params)
        return cls(name=name, method=method, model=info, settings=settings, layers=layers, notes=tuple(notes),
                   recovery_note=recovery_note, **extra)

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

    def summary_at(self, target: float) -> Summary:
        """The summary metrics with the allocation made at `target` (cheap: the slider calls this)."""
        total, prunable = self.model.total_params, sum(l.params for l in self.layers)
        sens = self.sensitivities
        avg = float(np.mean(sens[np.isfinite(sens)])) if np.isfinite(sens).any() else math.nan
        if not self.layers:
            return Summary(total, prunable, avg, 1.0, 1.0, target, (), self.recovery_note)
        levels = np.array(self.levels)
        curves = np.array([l.values for l in self.layers], dtype=float)
        params = np.array([l.params for l in self.layers], dtype=float)
        chosen = allocate(levels, curves, params, target, CAP)
        sparsity = levels[chosen]
        remaining = total - float((sparsity * params).sum())
        reduction = total / remaining if remaining > 0 else math.inf
        note = self.recovery_note
        if self.measured_recovery is not None and math.isclose(target, self.target_sparsity):
            recovery = self.measured_recovery
        else:
            recovery = self._energy_recovery(chosen)
            if self.measured_recovery is not None:
                note = (f"fraction of weight energy (sum of w^2) kept; recovery was measured on data only at the "
                        f"profile's target {self.target_sparsity:g}")
        return Summary(total, prunable, avg, reduction, recovery, target, tuple(sparsity.tolist()), note)

    def _energy_recovery(self, chosen: np.ndarray) -> float | None:
        if any(len(l.energy_kept) != len(l.levels) for l in self.layers):
            return None
        energy = np.array([l.energy if math.isfinite(l.energy) else 0.0 for l in self.layers])
        kept = np.array([l.energy_kept[c] for l, c in zip(self.layers, chosen)])
        kept = np.where(np.isfinite(kept), kept, 1.0)
        return float((energy * kept).sum() / energy.sum()) if energy.sum() > 0 else 1.0

    def most_sensitive(self, n: int = 10) -> list[LayerResult]:
        order = np.argsort(-np.nan_to_num(self.sensitivities, nan=-np.inf), kind="stable")
        return [self.layers[i] for i in order[:n]]

    # -- files -----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "name": self.name, "method": self.method,
                "created": self.created,
                "model": {"path": self.model.path, "hash": self.model.hash,
                          "total_params": self.model.total_params, "prunable_params": self.model.prunable_params},
                "settings": dict(self.settings), "summary": self.summary.to_dict(),
                "notes": list(self.notes), "partial": self.partial,
                "measured_recovery": _num(self.measured_recovery), "recovery_note": self.recovery_note,
                "layers": [l.to_dict() for l in self.layers]}

    def to_json(self, path=None) -> str:
        """The profile as JSON text; with `path`, also written there atomically (temp file + rename)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        if path is not None:
            atomic_write(path, text)
        return text

    @classmethod
    def from_dict(cls, d: dict, source: str = "profile") -> LossProfile:
        if d.get("format") != FORMAT:
            if isinstance(d.get("results"), list):
                return from_sparseml(d, source=source)
            raise ProfileError(f"{source} is not a losswidget profile (no \"format\": \"{FORMAT}\").")
        version = d.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise ProfileError(f"{source} has profile format version {version!r}; this losswidget reads up to "
                               f"version {VERSION}. Upgrade losswidget to open it.")
        try:
            m = d["model"]
            return cls(name=str(d["name"]), method=str(d["method"]), created=str(d.get("created", "")),
                       model=ModelInfo(m.get("path"), str(m.get("hash", "")), int(m["total_params"]),
                                       int(m["prunable_params"])),
                       settings=dict(d.get("settings", {})), notes=tuple(d.get("notes", ())),
                       partial=bool(d.get("partial", False)),
                       measured_recovery=d.get("measured_recovery"),
                       recovery_note=str(d.get("recovery_note", cls.recovery_note)),
                       layers=tuple(LayerResult.from_dict(l) for l in d["layers"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileError(f"{source} is a damaged profile file ({type(exc).__name__}: {exc}).") from None

    @classmethod
    def from_json(cls, path) -> LossProfile:
        return load_profile(path)

    def to_csv(self, path=None) -> str:
        """One row per layer: identity, params, sensitivity, flags, then L(s) for every level."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "id", "name", "op_type", "weight", "shape", "params", "sensitivity", "flags"]
                   + [f"L@{l:g}" for l in self.levels])
        for l in self.layers:
            w.writerow([l.index, l.id, l.name, l.op_type, l.weight, "x".join(map(str, l.shape)), l.params,
                        repr(l.sensitivity), ";".join(l.flags)] + [repr(v) for v in l.values])
        text = buf.getvalue()
        if path is not None:
            atomic_write(path, text)
        return text

    def to_dataframe(self):
        """A pandas DataFrame, one row per layer (pandas is optional: `pip install pandas`)."""
        try:
            import pandas as pd
        except ImportError:
            raise LossWidgetError("to_dataframe needs pandas: pip install pandas") from None
        rows = [{"index": l.index, "id": l.id, "name": l.name, "op_type": l.op_type, "weight": l.weight,
                 "shape": l.shape, "params": l.params, "sensitivity": l.sensitivity, "flags": l.flags,
                 **{f"L@{lv:g}": v for lv, v in zip(l.levels, l.values)}} for l in self.layers]
        return pd.DataFrame(rows).set_index("index") if rows else pd.DataFrame()

    def with_name(self, name: str) -> LossProfile:
        return replace(self, name=name)


def atomic_write(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_profile(path) -> LossProfile:
    """Read a losswidget profile JSON, or a SparseML sensitivity JSON ({"results": [...]})."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"Profile file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"Cannot read profile {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                           "the file is damaged or not a profile.") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path} is not a losswidget profile.")
    return LossProfile.from_dict(data, source=str(path))


def from_sparseml(data, *, name: str | None = None, model=None, source: str = "SparseML analysis") -> LossProfile:
    """A SparseML `PruningLossSensitivityAnalysis` JSON (dict or path) as a profile.

    Each result's measurement lists are averaged per level (as SparseML's `averages`). With `model` (a path
    or ModelProto), params, op types and shapes are filled in by matching weight names.
    """
    if not isinstance(data, dict):
        return from_sparseml(json.loads(Path(data).read_text()), name=name, model=model, source=str(data))
    info = {}
    total = 0
    sha = ""
    if model is not None:
        from .graph import read_graph
        from .onnxfile import open_model
        with open_model(model) as mf:
            graph = read_graph(mf)
            info = {l.weight: l for l in graph.layers}
            total, sha = graph.total_params, mf.content_hash()
    layers = []
    try:
        for i, res in enumerate(data["results"]):
            meas = {}
            for level, values in res["sparse_measurements"]:
                vals = values if isinstance(values, list) else [values]
                meas[float(level)] = float(np.mean(vals)) if vals else math.nan
            meas.setdefault(0.0, 0.0)
            levels = tuple(sorted(meas))
            known = info.get(res.get("name"))
            layers.append(LayerResult(
                index=i, id=str(res.get("id") or res.get("name")), name=str(res.get("name") or res.get("id")),
                op_type=known.op_type if known else "", weight=str(res.get("name", "")),
                shape=known.shape if known else (), params=known.params if known else 0,
                levels=levels, values=tuple(meas[l] for l in levels)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{source} is not a readable SparseML sensitivity analysis ({exc}).") from None
    prunable = sum(l.params for l in layers)
    return LossProfile(name=name or "SparseML import", method="sparseml", layers=tuple(layers),
                       model=ModelInfo(None, sha, total or prunable, prunable),
                       settings={"sparsity_levels": list(layers[0].levels) if layers else [], "target_sparsity": 0.85,
                                 "metric": None, "samples": None},
                       notes=("Imported from a SparseML sensitivity analysis.",),
                       recovery_note="not available for imported profiles")
