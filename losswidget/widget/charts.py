"""bqplot charts: Layer Sensitivities, Layer Params Counts and the per-layer drill-down curves.

They observe the store and redraw from the profiles' own numbers (sensitivities, params, measurements);
x and y change together under hold_sync so the browser never sees a half-updated mark.

Compared profiles are drawn as one Bars mark each, side by side on a linear layer axis, rather than one
`type="grouped"` mark: grouped bars draw with zero height in bqplot since 0.12.34 (bqplot issue #1646,
seen here in JupyterLab with bqplot 0.13.1).
"""
from __future__ import annotations

import html

import bqplot as bq
import ipywidgets as w
import numpy as np

from ..profile import human
from .store import ProfileStore

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
HIGHLIGHT = "#d62728"
BASE = "#4c78a8"
MAX_TICKS = 25
TOP_N = 5                      # the most sensitive layers (and ties) are drawn in the highlight colour
# (a fifth of the layers at most, so a small model does not turn all red)


def _ticks(n: int) -> list[int]:
    step = max(1, int(np.ceil(n / MAX_TICKS)))
    return list(range(0, n, step))


def scaled(values: np.ndarray, mode: str) -> np.ndarray:
    """Sensitivities as drawn: raw values, % of the total, or floored for a log axis."""
    v = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    if mode == "percent":
        total = np.abs(v).sum()
        return v / total * 100 if total else v
    if mode == "log":
        positive = v[v > 0]
        floor = positive.min() / 10 if positive.size else 1e-12
        return np.maximum(v, floor)
    return v


def normalised(values: np.ndarray) -> np.ndarray:
    """Each profile over its own largest |value|, so profiles of different methods share one axis."""
    v = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    top = np.abs(v).max() if v.size else 0
    return v / top if top else v


class Charts:
    """The two bar charts and the drill-down, bound to a store."""

    def __init__(self, store: ProfileStore):
        self.store = store
        self.mode = w.ToggleButtons(options=[("values", "values"), ("log", "log"), ("% of total", "percent")],
                                    value="values", description="Scale:", style={"button_width": "80px"})
        self.mode.add_class("lw-scale-toggle")
        self.normalise = w.Checkbox(value=True, description="Normalise when comparing", indent=False)
        self.normalise.add_class("lw-normalise")
        self.tooltip = w.HTML(layout=w.Layout(width="auto"))
        self.tooltip.add_class("lw-tooltip")
        self.layer = None                                        # index of the drilled-down layer

        self.xs = bq.LinearScale()
        self.ys_lin, self.ys_log = bq.LinearScale(), bq.LogScale()
        self.marks: list[bq.Bars] = []                        # one per shown profile
        self.x_axis = bq.Axis(scale=self.xs, label="layer (graph order)", tick_format="d", tick_values=[])
        self.y_axis = bq.Axis(scale=self.ys_lin, orientation="vertical", label="sensitivity", tick_format=".3g")
        self.sens_fig = bq.Figure(marks=[], axes=[self.x_axis, self.y_axis], title="Layer Sensitivities",
                                  fig_margin={"top": 40, "bottom": 60, "left": 70, "right": 20},
                                  layout=w.Layout(width="100%", height="340px"))
        self.sens_fig.add_class("lw-sensitivity-chart")

        self.pxs, self.pys = bq.LinearScale(), bq.LinearScale()
        self.param_bars = bq.Bars(x=[], y=[], scales={"x": self.pxs, "y": self.pys}, colors=[BASE], padding=0.2,
                                  tooltip=self.tooltip, stroke_width=0)
        self.param_x_axis = bq.Axis(scale=self.pxs, label="layer (graph order)", tick_format="d", tick_values=[])
        self.params_fig = bq.Figure(marks=[self.param_bars],
                                    axes=[self.param_x_axis, bq.Axis(scale=self.pys, orientation="vertical",
                                                                     label="params", tick_format=".3s")],
                                    title="Layer Params Counts",
                                    fig_margin={"top": 40, "bottom": 60, "left": 70, "right": 20},
                                    layout=w.Layout(width="100%", height="260px"))
        self.params_fig.add_class("lw-params-chart")

        self.cxs, self.cys = bq.LinearScale(min=0.0, max=1.0), bq.LinearScale()
        self.curves: list[bq.Lines] = []                     # one per compared profile (their levels differ)
        self.curve_fig = bq.Figure(marks=[],
                                   axes=[bq.Axis(scale=self.cxs, label="sparsity", tick_format=".0%"),
                                         bq.Axis(scale=self.cys, orientation="vertical", label="loss (L)",
                                                 tick_format=".3g")],
                                   title="Click a bar to see that layer's curve",
                                   layout=w.Layout(width="100%", height="280px"))
        self.curve_fig.add_class("lw-layer-curve")

        self.param_bars.on_hover(self._hover)
        self.param_bars.on_element_click(self._click)
        self.mode.observe(lambda _: self.redraw(), "value")
        self.normalise.observe(lambda _: self.redraw(), "value")
        store.observe(lambda _: self.redraw(), names=["profiles", "selected", "compare"])
        self.redraw()

    # -- data ------------------------------------------------------------------------------------------
    def shown(self) -> list:
        """The profiles drawn: the compared ones that exist, the selected one first."""
        names = [n for n in self.store.compare if n in self.store.profiles]
        if not names and self.store.selected in self.store.profiles:
            names = [self.store.selected]
        return [self.store.profiles[n] for n in names]

    def sensitivity_matrix(self) -> tuple[list[str], np.ndarray]:
        profiles = self.shown()
        if not profiles:
            return [], np.zeros((0, 0))
        base = profiles[0]
        rows = []
        for p in profiles:
            by_id = {l.id: l.sensitivity for l in p.layers}
            rows.append(np.array([by_id.get(l.id, np.nan) for l in base.layers], dtype=float))
        ys = np.array(rows)
        if len(profiles) > 1 and self.normalise.value:
            ys = np.array([normalised(r) for r in ys])
        ys = np.array([scaled(r, self.mode.value) for r in ys])
        return [p.name for p in profiles], ys

    @property
    def bars(self) -> bq.Bars | None:
        """The first (selected) profile's bars."""
        return self.marks[0] if self.marks else None

    def _mark(self, k: int) -> bq.Bars:
        while len(self.marks) <= k:
            mark = bq.Bars(x=[], y=[], scales={"x": self.xs, "y": self.ys_lin}, colors=[BASE], tooltip=self.tooltip,
                           stroke_width=0, padding=0.2)
            mark.on_hover(self._hover)
            mark.on_element_click(self._click)
            self.marks.append(mark)
        return self.marks[k]

    def redraw(self) -> None:
        profiles = self.shown()
        names, ys = self.sensitivity_matrix()
        base = profiles[0] if profiles else None
        n = len(base.layers) if base else 0
        x = np.arange(n)
        y_scale = self.ys_log if self.mode.value == "log" else self.ys_lin
        label = {"values": "sensitivity", "log": "sensitivity (log)", "percent": "% of total sensitivity"}
        if len(names) > 1 and self.normalise.value:
            label = {k: v + ", normalised" for k, v in label.items()}
        width = 0.8 / max(len(names), 1)
        shown = []
        for k, (name, y) in enumerate(zip(names, ys)):
            mark = self._mark(k)
            if len(names) > 1:
                colors = [PALETTE[k % len(PALETTE)]]
            else:
                top = min(TOP_N, max(1, y.size // 5))
                cut = np.sort(y)[-top] if y.size else 0.0                   # ties with the last of them count too
                colors = [HIGHLIGHT if v >= cut and v > 0 else BASE for v in y]
            with mark.hold_sync():
                if mark.scales["y"] is not y_scale:
                    mark.scales = {"x": self.xs, "y": y_scale}
                mark.x = x + (k - (len(names) - 1) / 2) * width
                mark.y = y
                mark.padding = 1 - width
                mark.colors = colors
                mark.labels = [name]
                mark.display_legend = len(names) > 1
            shown.append(mark)
        for scale in (self.xs, self.pxs):                         # keep the end bars whole
            if (scale.min, scale.max) != (-0.5, n - 0.5):
                with scale.hold_sync():
                    scale.min, scale.max = -0.5, n - 0.5
        with self.x_axis.hold_sync(), self.y_axis.hold_sync():
            if self.y_axis.scale is not y_scale:
                self.y_axis.scale = y_scale
            self.y_axis.label = label[self.mode.value]
            self.x_axis.tick_values = _ticks(n)
        if self.sens_fig.marks != shown:
            self.sens_fig.marks = shown
        params = np.array([l.params for l in base.layers], dtype=float) if base else np.zeros(0)
        if not np.array_equal(self.param_bars.y, params):         # selection changes rarely change params
            with self.param_bars.hold_sync(), self.param_x_axis.hold_sync():
                self.param_bars.x, self.param_bars.y = x, params
                self.param_x_axis.tick_values = _ticks(n)
        self.sens_fig.title = "Layer Sensitivities" + (f" — {', '.join(names)}" if names else "")
        self.draw_curve()

    # -- interaction -----------------------------------------------------------------------------------
    def describe(self, index: int) -> str:
        profiles = self.shown()
        if not profiles or not 0 <= index < len(profiles[0].layers):
            return ""
        l = profiles[0].layers[index]
        sens = "".join(f"<br>{html.escape(p.name)}: {p.layers[index].sensitivity:.4g}" for p in profiles
                       if index < len(p.layers))
        return (f"<div class='lw-tip'><b>#{l.index} {html.escape(l.name)}</b><br>{html.escape(l.op_type)} · "
                f"weight <code>{html.escape(l.weight)}</code><br>shape {list(l.shape)} · {human(l.params)} params"
                f"<br>sensitivity:{sens}</div>")

    def _hover(self, _mark, event) -> None:
        self.tooltip.value = self.describe(int(event.get("data", {}).get("index", -1)))

    def _click(self, _mark, event) -> None:
        self.select_layer(int(event.get("data", {}).get("index", -1)))

    def select_layer(self, index: int) -> None:
        self.layer = index
        self.draw_curve()

    def draw_curve(self) -> None:
        profiles = self.shown()
        if self.layer is None or not profiles or not 0 <= self.layer < len(profiles[0].layers):
            self.curves = []
            self.curve_fig.marks = []
            return
        layer = profiles[0].layers[self.layer]
        lines = []
        for p in profiles:
            match = next((l for l in p.layers if l.id == layer.id), None)
            if match is None:
                continue
            y = np.array(match.values, dtype=float)
            if len(profiles) > 1 and self.normalise.value:
                y = normalised(y)
            lines.append(bq.Lines(x=np.array(match.levels), y=np.nan_to_num(y), scales={"x": self.cxs, "y": self.cys},
                                  colors=[PALETTE[len(lines) % len(PALETTE)]], labels=[p.name], display_legend=True,
                                  marker="circle", marker_size=16))
        self.curves = lines
        self.curve_fig.marks = lines
        self.curve_fig.title = f"#{layer.index} {layer.name} ({layer.op_type})"
