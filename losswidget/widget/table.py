"""The layer table (js/table.js): name, op, params, sensitivity and planned sparsity per layer; sortable,
searchable, grouped by name prefix with group totals; hover and selection shared with the charts.

`rows` is the typed contract with the view: one dict per layer of the selected profile, {"index", "id",
"name", "op", "params", "sensitivity" (None when not finite), "flags"}; flags are the profile's own
(failed, non_finite, all_zero, ...) plus "outlier" and "tiny" by the rules the charts use.

`planned` is the hook for plans: {layer id: planned sparsity in [0, 1]} at the current target. Until
something sets it the column shows "—"; rows missing from it show "—" too.
"""
from __future__ import annotations

import math
from importlib.resources import files

import anywidget
from traitlets import Bool, Dict, Int, List, Unicode, link

from . import rules
from .focus import Focus, Later, shown


def table_rows(profile) -> list[dict]:
    """The `rows` trait for a profile (see the module docstring)."""
    if profile is None:
        return []
    sens = profile.sensitivities
    params = [l.params for l in profile.layers]
    outlier, tiny = rules.outliers(sens), rules.tiny(params)
    rows = []
    for k, l in enumerate(profile.layers):
        flags = list(l.flags) + (["outlier"] if outlier[k] else []) + (["tiny"] if tiny[k] else [])
        value = float(sens[k])
        rows.append({"index": l.index, "id": l.id, "name": l.name, "op": l.op_type, "params": l.params,
                     "sensitivity": value if math.isfinite(value) else None, "flags": flags})
    return rows


class LayerTable(anywidget.AnyWidget):
    _esm = files("losswidget.js") / "table.js"
    _css = files("losswidget.js") / "table.css"
    rows = List(Dict()).tag(sync=True)
    planned = Dict().tag(sync=True)             # layer id -> planned sparsity at the target; {}: "—"
    sens_label = Unicode("Sensitivity").tag(sync=True)
    selected = Int(-1).tag(sync=True)           # graph-order index of the clicked layer (Focus.layer)
    hovered = Int(-1).tag(sync=True)            # Focus.hovered
    sort = Unicode("index").tag(sync=True)      # a column: index, name, op, params, sensitivity, planned
    descending = Bool(False).tag(sync=True)
    query = Unicode("").tag(sync=True)          # case-insensitive substring of name or op
    group = Int(0).tag(sync=True)               # group by the first N parts of the name (split at . / :); 0: none

    def __init__(self, store, focus: Focus):
        super().__init__()
        self.store = store
        self.add_class("lw-layer-table")
        self._links = [link((focus, "layer"), (self, "selected")), link((focus, "hovered"), (self, "hovered"))]
        store.observe(Later(self.redraw), names=["profiles", "selected"])
        self.redraw()

    def redraw(self) -> None:
        profiles = shown(self.store)
        profile = profiles[0] if profiles else None
        rows = table_rows(profile)
        with self.hold_sync():
            if rows != self.rows:
                self.rows = rows
            self.sens_label = f"Sensitivity ({profile.name})" if profile else "Sensitivity"
