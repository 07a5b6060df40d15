"""The drill-down: the clicked layer's measured curve L(s) for each shown profile, with L(0.95) (what the
sensitivity bar is made of) and the target sparsity marked; hidden until a layer is clicked. Under its
title, "Exclude from the plan" keeps the clicked layer dense in the selected profile's plan (ProfileStore
`excluded`): a click on a bar opens this drill-down, and the box here acts on what it shows.

One Lines mark per compared profile, made on first need and reused (never one per redraw: each new mark is
a widget model the browser keeps); the y range is set per layer so a small curve is not flattened by the
last one drawn.
"""
from __future__ import annotations

import html

import bqplot as bq
import ipywidgets as w
import numpy as np

from ..profile import SENSITIVITY_LEVEL, value_at
from . import rules
from .bars import PALETTE
from .focus import Focus, Later, layer_of, shown

TARGET_COLOR = "#54a24b"


class CurveChart:
    def __init__(self, store, focus: Focus, normalise: w.Checkbox):
        self.store, self.focus, self.normalise = store, focus, normalise   # the sensitivity chart's checkbox
        self.title = w.HTML(_dom_classes=["lw-chart-title"])
        self.hint = w.HTML("<span class='lw-hint'>Click a bar, a point or a table row to see that layer's "
                           "curve L(s).</span>")
        self.key = w.HTML(_dom_classes=["lw-key"])
        self.xs, self.ys = bq.LinearScale(min=0.0, max=1.0), bq.LinearScale(min=0.0, max=1.0)
        scales = {"x": self.xs, "y": self.ys}
        self.lines: list[bq.Lines] = []                            # one per shown profile, reused
        self.at_95 = bq.Scatter(x=[], y=[], scales=scales, marker="diamond", default_size=70, colors=["#333"],
                                enable_hover=False)
        # one 1-D Lines per rule: an empty 2-D Lines (x=[[], []]) cannot be drawn by bqplot
        self.rule_95 = bq.Lines(x=[], y=[], scales=scales, colors=["#888"], line_style="dashed", stroke_width=1,
                                enable_hover=False)
        self.rule_target = bq.Lines(x=[], y=[], scales=scales, colors=[TARGET_COLOR], line_style="dashed",
                                    stroke_width=1, enable_hover=False)
        # the rules' names above the plot area, off the curves: the target's left of its rule, 0.95 right of
        # its own, so they never meet (the target is at most 0.95)
        self.target_note = bq.Label(x=[], y=[], text=[], scales=scales, colors=[TARGET_COLOR], default_size=11,
                                    align="end", x_offset=-3, y_offset=-12, enable_hover=False, apply_clip=False)
        self.note_95 = bq.Label(x=[], y=[], text=[], scales=scales, colors=["#888"], default_size=11, align="start",
                                x_offset=3, y_offset=-12, enable_hover=False, apply_clip=False)
        self.fig = bq.Figure(marks=[], axes=[bq.Axis(scale=self.xs, label="sparsity", tick_format=".0%",
                                                     tick_values=[0, 0.25, 0.5, 0.75, 1.0], grid_lines="none",
                                                     label_offset="34px"),
                                             bq.Axis(scale=self.ys, side="left", label="L(s)", tick_format=".3~g",
                                                     label_offset="48px")],
                             fig_margin={"top": 26, "bottom": 44, "left": 64, "right": 30}, display_toolbar=False,
                             padding_y=0.0, layout=w.Layout(width="100%", height="280px"),
                             _dom_classes=["lw-layer-curve"])
        self.y_axis = self.fig.axes[1]
        self.exclude = w.Checkbox(value=False, description="Exclude from the plan (keep this layer dense)",
                                  indent=False, layout=w.Layout(width="auto"), _dom_classes=["lw-exclude-layer"])
        self._showing = False
        self.exclude.observe(self._exclude_changed, "value")
        # the figure joins on the first click
        self.box = w.VBox([self.title, self.hint], _dom_classes=["lw-chart-block"])
        store.observe(Later(self.redraw), names=["profiles", "selected", "compare", "target", "excluded"])
        focus.observe(lambda _: self.redraw(), names=["layer"])
        normalise.observe(lambda _: self.redraw(), "value")
        self.redraw()

    def _line(self, k: int) -> bq.Lines:
        while len(self.lines) <= k:
            self.lines.append(bq.Lines(x=[], y=[], scales={"x": self.xs, "y": self.ys}, marker="circle",
                                       marker_size=20, stroke_width=2, enable_hover=False,
                                       colors=[PALETTE[len(self.lines) % len(PALETTE)]]))
        return self.lines[k]

    @property
    def curves(self) -> list[bq.Lines]:
        """The lines drawn now (one per shown profile that has the layer)."""
        return [m for m in self.fig.marks if m in self.lines]

    def redraw(self) -> None:
        profiles = shown(self.store)
        index = self.focus.layer
        base = layer_of(profiles[0], index) if profiles and index >= 0 else None
        if base is None:
            # out of the page rather than display:none: a hidden bqplot figure lays itself out at a
            # negative size (console errors)
            if self.box.children != (self.title, self.hint):
                self.box.children = (self.title, self.hint)
            self.title.value = "<span class='lw-h'>Layer curve</span>"
            self.key.value = ""
            return
        normalise = len(profiles) > 1 and self.normalise.value
        drawn, keys, points, lo, hi = [], [], ([], []), 0.0, 0.0
        for p in profiles:
            layer = layer_of(p, index)
            if layer is None:
                continue
            y = raw = np.nan_to_num(np.array(layer.values, dtype=float))
            if normalise:                         # by the profile's scale, as its bars are
                y = y / rules.scale_of(p.sensitivities, rules.outliers(p.sensitivities))
            k = len(drawn)
            line = self._line(k)
            with line.hold_sync():
                line.x, line.y = np.array(layer.levels, dtype=float), y
                line.labels = [p.name]
            drawn.append(line)
            at = value_at(layer.levels, y, SENSITIVITY_LEVEL)
            points[0].append(SENSITIVITY_LEVEL)
            points[1].append(at)
            lo, hi = min(lo, float(y.min()), at), max(hi, float(y.max()), at)
            # the raw sensitivity, as the readout and the table give it, also when the curves are normalised
            sensitivity = value_at(layer.levels, raw, SENSITIVITY_LEVEL) - raw[0]
            keys.append(f"<span class='lw-swatch' style='background:{PALETTE[k % len(PALETTE)]}'></span>"
                        f"{html.escape(p.name)}: L(0.95) − L(0) = <b>{rules.short(sensitivity)}</b>")
        top = hi * 1.08 if hi > 0 else 1.0
        bottom = lo * 1.08 if lo < 0 else 0.0
        target = float(self.store.target)
        with self.ys.hold_sync(), self.y_axis.hold_sync():
            self.ys.min, self.ys.max = bottom, top
            self.y_axis.tick_values = rules.nice_ticks(bottom, top, 5)
        with self.at_95.hold_sync():
            self.at_95.x, self.at_95.y = points
            self.at_95.colors = [PALETTE[k % len(PALETTE)] for k in range(len(drawn))] or ["#333"]
        with self.rule_95.hold_sync():
            self.rule_95.x, self.rule_95.y = [SENSITIVITY_LEVEL, SENSITIVITY_LEVEL], [bottom, top]
        with self.rule_target.hold_sync():
            self.rule_target.x, self.rule_target.y = [target, target], [bottom, top]
        with self.note_95.hold_sync():
            self.note_95.x, self.note_95.y, self.note_95.text = [SENSITIVITY_LEVEL], [top], ["0.95"]
        with self.target_note.hold_sync():
            self.target_note.x, self.target_note.y, self.target_note.text = [target], [top], [f"target {target:.0%}"]
        marks = drawn + [self.rule_95, self.rule_target, self.at_95, self.note_95, self.target_note]
        if self.fig.marks != marks:
            self.fig.marks = marks
        plan = self.store.plan()
        planned = next((l for l in plan.layers if l.index == index), None) if plan is not None else None
        if planned is not None:
            keys.append("excluded: kept dense" if planned.excluded
                        else f"planned at {target:.0%}: <b>{planned.sparsity:.0%}</b>")
        self._showing = True                              # the store's state, shown: not the user's click
        try:
            self.exclude.value = bool(planned is not None and planned.excluded)
            self.exclude.disabled = planned is None
        finally:
            self._showing = False
        if self.box.children != (self.title, self.key, self.exclude, self.fig):
            self.box.children = (self.title, self.key, self.exclude, self.fig)
        self.title.value = (f"<span class='lw-h'>#{base.index} {html.escape(base.name)}</span> "
                            f"<span class='lw-sub'>{html.escape(base.op_type)} · L(s) per sparsity"
                            f"{' (normalised per profile)' if normalise else ''}</span>")
        self.key.value = " · ".join(keys) + (" <span class='lw-hint'>(raw values; the curves are normalised)</span>"
                                             if normalise else "")

    def _exclude_changed(self, change) -> None:
        profiles = shown(self.store)
        layer = layer_of(profiles[0], self.focus.layer) if profiles and not self._showing else None
        if layer is not None:
            self.store.set_excluded(layer.name, change["new"])
