"""Params x sensitivity, log-log, for the selected profile: does "fewer params, more sensitive" hold here,
and which layers sit in the prune-first corner (at least the median layer's params, less sensitive than the median)?

The log-log least-squares slope is drawn and stated (negative: fewer params, more sensitive); dashed lines
at the median params and the median sensitivity mark the corner, whose layers and share of params the
caption counts. Values <= 0 sit along the bottom (at a third of the smallest positive value, above a band
kept free for the corner's label) and are counted in the caption. The marks are made once and updated in place.
"""
from __future__ import annotations

import html

import bqplot as bq
import ipywidgets as w
import numpy as np

from . import rules
from .bars import BASE, HIGHLIGHT, TINY_OPACITY, js_number, set_ticks
from .focus import Focus, Later, describe, event_layer, shown


class ScatterChart:
    def __init__(self, store, focus: Focus):
        self.store, self.focus = store, focus
        self.title = w.HTML("<span class='lw-h'>Params × sensitivity</span>", _dom_classes=["lw-chart-title"])
        self.caption = w.HTML(_dom_classes=["lw-key"])
        self.readout = w.HTML(_dom_classes=["lw-readout"])
        self.index = np.zeros(0, dtype=int)
        self.xs, self.ys = bq.LogScale(min=1.0, max=10.0), bq.LogScale(min=0.1, max=1.0)
        scales = {"x": self.xs, "y": self.ys}
        # the median lines, one 1-D Lines each: an empty 2-D Lines (x=[[], []]) cannot be drawn by bqplot
        self.median_x, self.median_y = (bq.Lines(x=[], y=[], scales=scales, colors=["#999"], line_style="dashed",
                                                 stroke_width=1, enable_hover=False) for _ in range(2))
        self.trend = bq.Lines(x=[], y=[], scales=scales, colors=["#999"], stroke_width=1.5, enable_hover=False)
        self.corner_label = bq.Label(x=[], y=[], text=[], scales=scales, colors=["#54a24b"], align="end",
                                     default_size=12, font_weight="bold", x_offset=-4, y_offset=-6,
                                     enable_hover=False)
        self.points = bq.Scatter(x=[], y=[], scales=scales, colors=[BASE], default_size=36, stroke="white",
                                 stroke_width=0.5, interactions={"hover": "none", "click": "none"},
                                 selected_style={"stroke": "var(--jp-ui-font-color0, #000)", "stroke-width": 3},
                                 unselected_style={})
        self.points.on_hover(lambda _m, e: setattr(self.focus, "hovered", self._index(e)))
        self.points.on_element_click(lambda _m, e: setattr(self.focus, "layer", self._index(e)))
        self.x_axis = bq.Axis(scale=self.xs, label="params", tick_format="~s", grid_lines="none",
                              label_offset="34px")
        self.y_axis = bq.Axis(scale=self.ys, side="left", label="sensitivity", tick_values=[], label_offset="48px",
                              grid_lines="none")
        self.fig = bq.Figure(marks=[self.median_x, self.median_y, self.trend, self.points, self.corner_label],
                             axes=[self.x_axis, self.y_axis],
                             fig_margin={"top": 12, "bottom": 44, "left": 64, "right": 16}, display_toolbar=False,
                             padding_x=0.0, padding_y=0.0, layout=w.Layout(width="100%", height="300px"),
                             _dom_classes=["lw-scatter-chart"])
        self.box = w.VBox([self.title, self.caption, self.readout, self.fig], _dom_classes=["lw-chart-block"])
        store.observe(Later(self.redraw), names=["profiles", "selected", "compare"])
        focus.observe(lambda _: self.point(), names=["layer", "hovered"])
        self.redraw()

    def _index(self, event) -> int:
        return event_layer(event, self.index)

    def redraw(self) -> None:
        profiles = shown(self.store)
        layers = profiles[0].layers if profiles else ()
        self.index = np.array([l.index for l in layers], dtype=int)
        params = np.array([max(l.params, 1) for l in layers], dtype=float)
        sens = profiles[0].sensitivities if profiles else np.zeros(0)
        positive = np.isfinite(sens) & (sens > 0)
        floor = float(sens[positive].min()) / 3 if positive.any() else 1e-3
        y = np.where(positive, sens, floor)
        flagged, tiny = rules.outliers(sens), rules.tiny(params)
        if layers:
            x_lo, x_hi = float(params.min()) / 1.6, float(params.max()) * 1.6
            y_hi = float(y.max()) * 1.6
            # an empty band under the lowest points (about a tenth of the height) holds the "prune first" label
            y_lo = floor / 10 ** max(0.25, 0.12 * np.log10(y_hi / floor))
        else:
            x_lo, x_hi, y_lo, y_hi = 1.0, 10.0, 0.1, 1.0
        slope = rules.loglog_slope(params, sens)
        with self.fig.hold_sync():
            for scale, axis, lo, hi in ((self.xs, self.x_axis, x_lo, x_hi), (self.ys, self.y_axis, y_lo, y_hi)):
                with scale.hold_sync():
                    scale.min, scale.max = lo, hi
                ticks, _ = rules.log_ticks(np.log10(lo), np.log10(hi), most=6)
                values = [float(f"{10 ** t:.12g}") for t in ticks]        # 0.5, not 0.49999999999999994
                if axis is self.x_axis:
                    axis.tick_values = values
                else:                   # sensitivities as the bars, readouts and table write them (rules.short)
                    set_ticks(axis, values, {js_number(v): rules.short(v) for v in values})
            colors, opacities = np.where(flagged, HIGHLIGHT, BASE).tolist(), np.where(tiny, TINY_OPACITY, 0.85).tolist()
            with self.points.hold_sync():
                self.points.x, self.points.y = params, y
                if self.points.colors != colors:           # lists of 500: validated only if new
                    self.points.colors = colors
                if list(self.points.opacities) != opacities:
                    self.points.opacities = opacities
            mx, my = (float(np.median(params)), float(np.median(y[positive]))) if positive.any() else (x_lo, y_lo)
            with self.median_x.hold_sync():
                self.median_x.x, self.median_x.y = ([mx, mx], [y_lo, y_hi]) if layers else ([], [])
            with self.median_y.hold_sync():
                self.median_y.x, self.median_y.y = ([x_lo, x_hi], [my, my]) if layers else ([], [])
            with self.corner_label.hold_sync():
                self.corner_label.x, self.corner_label.y = ([x_hi], [y_lo]) if layers else ([], [])
                self.corner_label.text = ["prune first"] if layers else []
            if slope is not None and positive.sum() >= 3:
                lp = np.log10(params[positive])
                intercept = float(np.mean(np.log10(sens[positive])) - slope * np.mean(lp))
                ends = np.array([lp.min(), lp.max()])
                with self.trend.hold_sync():
                    self.trend.x, self.trend.y = 10 ** ends, 10 ** (intercept + slope * ends)
            else:
                with self.trend.hold_sync():
                    self.trend.x, self.trend.y = [], []
        corner = positive & (params >= mx) & (y < my) if layers else np.zeros(0, bool)
        self.caption.value = self._caption(profiles, slope, corner, params, ~positive)
        self.point()

    def _caption(self, profiles, slope, corner, params, nonpositive) -> str:
        if not profiles:
            return ""
        name = html.escape(profiles[0].name)
        parts = [f"{name}" + (" (the selected profile)" if len(profiles) > 1 else "")]
        if slope is None:
            parts.append("too few layers for a trend")
        elif slope < 0:
            parts.append(f"log-log slope {slope:.2f}: fewer params, more sensitive")
        else:
            parts.append(f"log-log slope +{slope:.2f}: here fewer params does not mean more sensitive")
        total = params.sum()
        n = int(corner.sum())
        parts.append(f"<b>prune first</b> (bottom right: at least the median layer's params, less sensitive than "
                     f"the median): {n} layer{'' if n == 1 else 's'}, {params[corner].sum() / total:.0%} of params"
                     if total else "")
        if nonpositive.any():
            parts.append(f"{int(nonpositive.sum())} with sensitivity ≤ 0 drawn along the bottom")
        return " · ".join(p for p in parts if p)

    def point(self) -> None:
        index = self.focus.layer
        position = np.flatnonzero(self.index == index)
        selected = [int(position[0])] if position.size else None
        if (self.points.selected is None and selected is None) or \
                (self.points.selected is not None and selected is not None and list(self.points.selected) == selected):
            pass
        else:
            self.points.selected = selected
        hovered = self.focus.hovered if self.focus.hovered >= 0 else index
        profiles = shown(self.store)
        self.readout.value = describe(profiles[:1], hovered) if profiles and hovered >= 0 else (
            "<span class='lw-hint'>Hover a point for the layer; click it for its curve.</span>")
