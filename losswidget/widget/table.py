"""The layer table (js/table.js): name, op, params, sensitivity and planned sparsity per layer; sortable,
searchable, grouped by name prefix with group totals; hover and selection shared with the charts.

`rows` is the typed contract with the view: one dict per layer of the selected profile, {"index", "id",
"name", "op", "params", "sensitivity" (None when not finite), "flags"}; flags are the profile's own
(failed, non_finite, all_zero, ...) plus "outlier" and "tiny" by the rules the charts use.

`planned` holds the shown plan (ProfileStore.plan: the selected profile at the target, exclusions kept
dense): {layer id: planned sparsity in [0, 1]}; rows missing from it show "—". `excluded` holds the ids of
the layers kept out of the plan: the "In plan" box of each row shows it, and unticking a box writes it here,
which the table passes on to the store (by layer name, as the store keeps exclusions). A box, not the row
click, because a row click already opens the layer's curve (the drill-down); the box is one click away
beside it and reads as a toggle.
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
    excluded = List(Unicode()).tag(sync=True)   # ids of the layers kept out of the plan (the "In plan" boxes)
    sens_label = Unicode("Sensitivity").tag(sync=True)
    selected = Int(-1).tag(sync=True)           # graph-order index of the clicked layer (Focus.layer)
    hovered = Int(-1).tag(sync=True)            # Focus.hovered
    sort = Unicode("index").tag(sync=True)      # a column: index, name, op, params, sensitivity, planned
    descending = Bool(False).tag(sync=True)
    query = Unicode("").tag(sync=True)          # case-insensitive substring of name or op
    group = Int(0).tag(sync=True)               # group by the first N parts of the name (split at . / :); 0: none

    def __init__(self, store, focus: Focus):
        super().__init__(_dom_classes=["lw-layer-table"])
        self.store = store
        self._links = [link((focus, "layer"), (self, "selected")), link((focus, "hovered"), (self, "hovered"))]
        store.observe(Later(self.redraw), names=["profiles", "selected"])
        store.observe(Later(self.show_plan), names=["target", "excluded"])
        self.observe(self._boxes_changed, "excluded")
        self._showing = False
        self.redraw()

    def redraw(self) -> None:
        profiles = shown(self.store)
        profile = profiles[0] if profiles else None
        rows = table_rows(profile)
        with self.hold_sync():
            if rows != self.rows:
                self.rows = rows
            self.sens_label = f"Sensitivity ({profile.name})" if profile else "Sensitivity"
            self.show_plan()

    def show_plan(self) -> None:
        plan = self.store.plan()
        profile = self.store.profiles.get(self.store.selected)
        ids = {l.index: l.id for l in profile.layers} if profile is not None else {}
        planned = {ids[l.index]: l.sparsity for l in plan.layers if l.index in ids} if plan is not None else {}
        excluded = [ids[l.index] for l in plan.layers if l.excluded and l.index in ids] if plan is not None else []
        self._showing = True                        # the store's exclusions, echoed: not the user's ticks
        try:
            with self.hold_sync():
                if planned != self.planned:
                    self.planned = planned
                if excluded != self.excluded:
                    self.excluded = excluded
        finally:
            self._showing = False

    def _boxes_changed(self, change) -> None:
        """A box ticked or unticked in the browser: the store's exclusions of the selected profile follow."""
        profile = self.store.profiles.get(self.store.selected)
        if self._showing or profile is None:
            return
        chosen = set(change["new"])
        names = [l.name for l in profile.layers if l.id in chosen]
        now = set(self.store.exclusions())
        if set(names) != now:
            with self.store.hold_trait_notifications():
                self.store.set_excluded(sorted(now - set(names)), False)
                self.store.set_excluded(names, True)
