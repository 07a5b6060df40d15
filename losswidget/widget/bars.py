"""Layer Sensitivities and Layer Params Counts: one bar per layer in graph order, on one shared x scale so
the two charts line up bar for bar.

Each chart observes the store (and the Focus) and redraws its marks in place under hold_sync; no widget is
made after construction except one Bars mark per extra compared profile, kept for reuse.

The y scale is always one LinearScale. The log view draws log10 values on it with 1-2-5 tick labels:
bqplot's LogScale cannot draw Bars (they start from `base`, 0 by default, which is also put into the y
domain, so every bar is NaN), and re-assigning a Bars mark's `scales` together with its `base` leaves its
view drawing on the old scale (bqplot 0.13.1: the chart stays blank until the cell is re-run).
The planned sparsity of each layer (the selected profile's plan at the target, ProfileStore.plan) is a short
level line across its bar on a right-hand 0-100% axis: one Lines mark with NaN gaps between layers, on the
shared x scale, so it lines up with the bars and follows the Layers window. A Lines mark without markers
pads the figure by half its stroke (1 px), never more than the bars do, so the two charts still line up.
Excluded layers (kept dense) get a ✕ at the foot of their bar.
Compared profiles are one Bars mark each, side by side, not one `type="grouped"` mark: grouped bars draw
with zero height in bqplot since 0.12.34 (bqplot issue #1646).
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from decimal import Decimal

import bqplot as bq
import ipywidgets as w
import numpy as np

from ..profile import LossProfile
from . import rules
from .focus import Focus, by_index, describe, event_layer, shown

PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#9d755d", "#eeca3b", "#ff9da6"]
BASE = PALETTE[0]
HIGHLIGHT = "#d62728"
TINY_OPACITY = 0.4
MAX_TICKS = 10                   # index ticks on the layer axis (legible down to a 250 px sidebar)
NAMED_TICKS = 8                  # at most this many layers: their names label the x axis
MARGIN = {"top": 16, "bottom": 44, "left": 64, "right": 40}   # right: the planned axis (both charts alike)
PLANNED = "var(--jp-ui-font-color0, #111)"      # the theme's strongest text colour: apart from every bar colour
PLANNED_HALF = 0.4                                 # a planned line spans the bar slot's middle 80%
MODES = (("linear", "values"), ("log", "log"), ("% of total", "percent"))
Y_LABEL = {"values": "sensitivity", "log": "sensitivity (log)", "percent": "share of total"}


def js_number(x: float) -> str:
    """A tick value as JavaScript's String(x) prints it (tick_labels keys are matched against it): -2, 0.30103,
    0.00002, 1e-7, 1e+21. Both print the shortest digits that read back as x; they differ only in when they
    switch to an exponent (JavaScript: below 1e-6 and from 1e21)."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e21:
        return str(int(x))
    text = repr(x)
    if "e" not in text:
        return text
    if 1e-6 <= abs(x) < 1e21:
        return format(Decimal(text), "f")
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{'+' if int(exponent) > 0 else '-'}{abs(int(exponent))}"


def set_ticks(axis: bq.Axis, values, labels: dict | None = None, fmt: str | None = None) -> None:
    """Set an axis' ticks. bqplot 0.13.1 draws new tick_labels only when the tick values change after them
    (sent together, or labels after values, the old labels stay), so labels and format go first, then the
    values, emptied once when only the labels changed."""
    values = [float(v) for v in values] if values is not None else None
    old = None if axis.tick_values is None else [float(v) for v in axis.tick_values]
    relabel = labels != axis.tick_labels or fmt != axis.tick_format
    with axis.hold_sync():
        axis.tick_format, axis.tick_labels = fmt, labels
    if relabel and old == values and values:
        axis.tick_values = []
    if old != values or relabel:
        axis.tick_values = values


def x_ticks(indices: np.ndarray, names: list[str]) -> tuple[list[int], dict[str, str] | None]:
    """Thinned index ticks, or the layers' short names when there are few layers."""
    n = len(indices)
    if 0 < n <= NAMED_TICKS:
        return [int(i) for i in indices], {js_number(i): _short_name(nm) for i, nm in zip(indices, names)}
    step = max(1, int(np.ceil(n / MAX_TICKS)))
    return [int(i) for i in indices[::step]], None


def _short_name(name: str) -> str:
    return name if len(name) <= 14 else "…" + name[-13:]


@dataclass(frozen=True)
class SensitivityFrame:
    """What the sensitivity chart draws, computed from the shown profiles and the view options."""
    names: list[str]               # shown profiles, the selected one first
    index: np.ndarray              # graph-order index per bar
    raw: np.ndarray                # (profiles, layers) sensitivities; NaN where a profile lacks the layer
    values: np.ndarray             # in the axis' unit before any cut: raw, normalised or share of total
    drawn: np.ndarray              # as drawn: log10 on the log axis, the cut applied
    outlier: np.ndarray            # per layer, by rules.outliers; all False when comparing
    tiny: np.ndarray               # per layer, by rules.tiny
    over: np.ndarray               # (profiles, layers): bars drawn to the cut line
    cut: float | None              # the axis cut, in drawn units
    lo: float
    hi: float
    base: float                    # where bars start (the log floor on the log axis)
    labels: dict[str, str] | None  # y tick labels (log axis)
    ticks: list[float] | None


def sensitivity_frame(profiles: list[LossProfile], mode: str = "values", normalise: bool = True,
                      cut: bool = True) -> SensitivityFrame:
    if not profiles:
        empty = np.zeros((0, 0))
        return SensitivityFrame([], np.zeros(0, int), empty, empty, empty, np.zeros(0, bool), np.zeros(0, bool),
                                np.zeros((0, 0), bool), None, 0.0, 1.0, 0.0, None, None)
    base_layers = profiles[0].layers
    index = np.array([l.index for l in base_layers], dtype=int)
    raw = np.array([by_index(p, index, p.sensitivities) for p in profiles], dtype=float)
    compare = len(profiles) > 1
    flagged = np.array([rules.outliers(r) for r in raw]) if raw.size else np.zeros(raw.shape, bool)
    values = (np.array([rules.normalised(r, f) for r, f in zip(raw, flagged)]) if compare and normalise
              else np.nan_to_num(raw))
    tiny = rules.tiny([l.params for l in base_layers])
    over = np.zeros(values.shape, dtype=bool)
    labels = ticks = None
    axis_cut = None
    if mode == "log":
        floor = rules.log_floor(values)
        drawn = np.array([rules.log_values(r, floor) for r in values])
        lo, hi = floor, max(float(drawn.max()) if drawn.size else floor, floor) + 0.08     # headroom
        ticks, _ = rules.log_ticks(lo, hi)
        if ticks and hi - ticks[-1] < 0.04 * (hi - lo):
            hi = (ticks[-1] - 0.04 * lo) / 0.96     # the top tick 4% under the top (at the top its label met the
                                                    # axis' end)
        ticks, by_value = rules.log_ticks(lo, hi)
        labels = {js_number(t): text for t, text in by_value.items()}
        base = floor
    else:
        values = drawn = np.array([rules.scaled(r, mode) for r in values])
        if cut and drawn.size:
            cuts = [rules.axis_cut(r, f) for r, f in zip(drawn, flagged)]
            cuts = [c for c in cuts if c is not None]
            if cuts:
                rest = np.where(flagged, -np.inf, drawn).max()
                axis_cut = max(max(cuts), float(rest) * rules.CUT_HEADROOM)
                over = drawn > axis_cut
                drawn = np.minimum(drawn, axis_cut)
        top = axis_cut if axis_cut is not None else (float(drawn.max()) if drawn.size else 0.0)
        bottom = min(0.0, float(drawn.min()) if drawn.size else 0.0)
        hi = top * (1.1 if axis_cut is not None else 1.04) if top > 0 else 1.0
        lo = bottom * 1.04
        base = 0.0
        ticks = rules.nice_ticks(lo, hi, 5)
    outlier = flagged[0] if not compare and flagged.size else np.zeros(len(index), dtype=bool)
    return SensitivityFrame([p.name for p in profiles], index, raw, values, drawn, outlier, tiny, over, axis_cut,
                            float(lo), float(hi), float(base), labels, ticks)


class SensitivityChart:
    """Layer Sensitivities: bars per layer (side by side when comparing), outliers red, tiny layers faded,
    outliers past the cut axis drawn to the line with their value, a pointer over the hovered / clicked layer."""

    def __init__(self, store, focus: Focus, xs: bq.LinearScale):
        self.store, self.focus, self.xs = store, focus, xs
        self.mode = w.ToggleButtons(options=list(MODES), value="values", description="Scale:",
                                    style={"button_width": "auto", "description_width": "initial"},
                                    layout=w.Layout(width="auto"), _dom_classes=["lw-scale-toggle"])
        self.cut = w.Checkbox(value=True, description="Cut the axis above outliers", indent=False,
                              layout=w.Layout(width="auto"), _dom_classes=["lw-cut"])
        self.normalise = w.Checkbox(value=True, description="Normalise each profile", indent=False,
                                    layout=w.Layout(width="auto", display="none"),      # shown when comparing
                                    _dom_classes=["lw-normalise"])
        self.title = w.HTML(_dom_classes=["lw-chart-title"])
        self.key = w.HTML(_dom_classes=["lw-key"])               # legend and colour key, above the bars
        self.readout = w.HTML(_dom_classes=["lw-readout"])       # the hovered layer, above the bars
        self.frame = sensitivity_frame([])

        self.ys = bq.LinearScale(min=0.0, max=1.0)
        self.marks: list[bq.Bars] = []
        self.overflow = bq.Label(x=[], y=[], text=[], scales={"x": xs, "y": self.ys}, colors=[HIGHLIGHT],
                                 default_size=11, font_weight="bold", align="middle", y_offset=-6,
                                 enable_hover=False, apply_clip=False)
        self.cut_line = bq.Lines(x=[], y=[], scales={"x": xs, "y": self.ys}, colors=[HIGHLIGHT],
                                 line_style="dashed", stroke_width=1, enable_hover=False)
        # a text mark, not a Scatter: a Scatter widens the figure's x padding (its marker size) past the
        # bars' in a narrow sidebar, and the two bar charts would no longer line up
        self.pointer = bq.Label(x=[], y=[], text=[], scales={"x": xs, "y": self.ys}, colors=["#333"], default_size=14,
                                align="middle", y_offset=-2, enable_hover=False, apply_clip=False)
        self.ps = bq.LinearScale(min=0.0, max=1.0)               # planned sparsity, the right-hand axis
        self.planned = bq.Lines(x=[], y=[], scales={"x": xs, "y": self.ps}, colors=[PLANNED], stroke_width=2,
                                labels_visibility="none", enable_hover=False)
        self.excluded = bq.Label(x=[], y=[], text=[], scales={"x": xs, "y": self.ps}, colors=[PLANNED],
                                 default_size=12, font_weight="bold", align="middle", y_offset=-3,
                                 enable_hover=False, apply_clip=False)
        self.plan = None                                         # the plan the marks show
        self.x_axis = bq.Axis(scale=xs, label="layer (graph order)", tick_format="d", tick_values=[],
                              grid_lines="none", label_offset="34px")
        self.y_axis = bq.Axis(scale=self.ys, side="left", label=Y_LABEL["values"], tick_format=".3~g",
                              label_offset="48px")
        self.p_axis = bq.Axis(scale=self.ps, side="right", tick_format=".0%",
                              tick_values=[0, 0.5, 1], grid_lines="none")
        # the first profile's bars are in the figure from the start and stay there: bqplot 0.13.1's figure
        # listens for new marks only once its first marks are drawn, and marks set in between (profiles loaded
        # from profiles_dir as the widget appears) were never drawn, the chart left empty; the planned marks
        # and the right axis likewise
        self._mark(0)
        self.fig = bq.Figure(marks=[self.marks[0], self.planned, self.excluded, self.cut_line, self.overflow,
                                    self.pointer],
                             axes=[self.x_axis, self.y_axis, self.p_axis], fig_margin=dict(MARGIN),
                             display_toolbar=False, padding_y=0.0, layout=w.Layout(width="100%", height="300px"),
                             _dom_classes=["lw-sensitivity-chart"])
        toolbar = w.HBox([self.mode, self.cut, self.normalise], layout=w.Layout(flex_flow="row wrap"),
                         _dom_classes=["lw-toolbar"])
        self.box = w.VBox([self.title, toolbar, self.key, self.readout, self.fig], _dom_classes=["lw-chart-block"])

        self.mode.observe(lambda _: self.redraw(), "value")
        self.cut.observe(lambda _: self.redraw(), "value")
        self.normalise.observe(lambda _: self.redraw(), "value")
        store.observe(lambda _: self.redraw(), names=["profiles", "selected", "compare"])
        store.observe(lambda _: self.show_plan(), names=["target", "excluded"])
        focus.observe(lambda _: self.point(), names=["layer", "hovered"])
        self.redraw()

    @property
    def bars(self) -> bq.Bars | None:
        """The selected profile's bars."""
        return self.marks[0] if self.marks else None

    def _mark(self, k: int) -> bq.Bars:
        while len(self.marks) <= k:
            mark = bq.Bars(x=[], y=[], scales={"x": self.xs, "y": self.ys}, colors=[BASE], stroke_width=0,
                           padding=0.2, enable_hover=True, interactions={"hover": "none", "click": "none"})
            mark.on_hover(self._hover)
            mark.on_element_click(self._click)
            self.marks.append(mark)
        return self.marks[k]

    def redraw(self) -> None:
        profiles = shown(self.store)
        f = self.frame = sensitivity_frame(profiles, self.mode.value, self.normalise.value, self.cut.value)
        k_shown = len(f.names)
        width = 0.8 / max(k_shown, 1)
        figure_marks = []
        for k, drawn in enumerate(f.drawn):
            mark = self._mark(k)
            if k_shown > 1:
                colors = [PALETTE[k % len(PALETTE)]]
            else:
                colors = np.where(f.outlier, HIGHLIGHT, BASE).tolist()
            opacities = np.where(f.tiny, TINY_OPACITY, 1.0).tolist()
            with mark.hold_sync():
                mark.base = f.base
                mark.x = f.index + (k - (k_shown - 1) / 2) * width
                mark.y = drawn
                mark.padding = 1 - width
                if mark.colors != colors:                  # a list of 500 strings: validated only if new
                    mark.colors = colors
                if mark.opacities != opacities:
                    mark.opacities = opacities
                mark.labels = [f.names[k]]
                mark.display_legend = False
            figure_marks.append(mark)
        if not figure_marks:                               # no profile: the first bars stay, empty
            with self.marks[0].hold_sync():
                self.marks[0].x, self.marks[0].y = [], []
            figure_marks.append(self.marks[0])
        over_x, over_t = [], []
        for k, (row, over) in enumerate(zip(f.values, f.over)):
            for j in np.flatnonzero(over):
                over_x.append(float(f.index[j] + (k - (k_shown - 1) / 2) * width))
                over_t.append("▲ " + (f"{row[j]:.1%}" if self.mode.value == "percent" else rules.short(row[j])))
        with self.overflow.hold_sync():
            self.overflow.x, self.overflow.y, self.overflow.text = over_x, [f.cut or 0.0] * len(over_x), over_t
        n = len(f.index)
        with self.cut_line.hold_sync():
            self.cut_line.x = [-0.5, n - 0.5] if f.cut is not None else []
            self.cut_line.y = [f.cut, f.cut] if f.cut is not None else []
        with self.ys.hold_sync():
            self.ys.min, self.ys.max = f.lo, f.hi
        ticks, names = x_ticks(f.index, [l.name for l in profiles[0].layers] if profiles else [])
        label = Y_LABEL[self.mode.value] + (", normalised" if k_shown > 1 and self.normalise.value else "")
        set_ticks(self.x_axis, ticks, names, "d")
        set_ticks(self.y_axis, f.ticks, f.labels, {"values": ".3~g", "log": None, "percent": ".3~%"}[self.mode.value])
        with self.x_axis.hold_sync(), self.y_axis.hold_sync():
            self.x_axis.label = "layer" if names else "layer (graph order)"
            self.y_axis.label = label
        figure_marks += [self.planned, self.excluded, self.cut_line, self.overflow, self.pointer]
        self.normalise.layout.display = "" if k_shown > 1 else "none"
        if self.fig.marks != figure_marks:
            self.fig.marks = figure_marks
        self.title.value = ("<span class='lw-h'>Layer Sensitivities</span>"
                            + (f" <span class='lw-sub'>{html.escape(', '.join(f.names))}</span>" if f.names else ""))
        self.show_plan()

    def show_plan(self, point: bool = True) -> None:
        """The planned marks, the right axis and the key for the store's plan (the selected profile's)."""
        plan = self.plan = self.store.plan() if self.frame.names else None
        index = self.frame.index
        if plan is not None:
            by = {l.index: l for l in plan.layers}
            sparsity = np.array([by[i].sparsity if i in by else np.nan for i in index], dtype=float)
            kept = np.array([i in by and by[i].excluded for i in index], dtype=bool)
        else:
            sparsity, kept = np.zeros(0), np.zeros(0, bool)
        n = len(sparsity)
        x = np.empty(3 * n)
        x[0::3], x[1::3], x[2::3] = index[:n] - PLANNED_HALF, index[:n] + PLANNED_HALF, index[:n]
        y = np.repeat(sparsity, 3)
        y[2::3] = np.nan                                  # a gap between layers
        with self.planned.hold_sync():              # no gap after the last: its end places the line's label
            self.planned.x, self.planned.y = x[:-1], y[:-1]
        xs = index[:n][kept].astype(float)
        with self.excluded.hold_sync():
            self.excluded.x, self.excluded.y, self.excluded.text = xs, np.zeros(len(xs)), ["✕"] * len(xs)
        self.key.value = self._key(self.frame)
        if point:
            self.point()

    def _key(self, f: SensitivityFrame) -> str:
        if not f.names:
            return "<span class='lw-note'>No profile yet.</span>"
        parts = []
        plan = self.plan
        if plan is not None:
            kept = sum(l.excluded for l in plan.layers)
            parts.append(f"<span class='lw-swatch lw-planned-swatch'></span>planned sparsity at {plan.target:.0%}"
                         + (f" ({html.escape(plan.profile)})" if len(f.names) > 1 else "")
                         + " (right axis)" + (f" · ✕ {kept} excluded" if kept else ""))
        if len(f.names) > 1:
            parts += [f"<span class='lw-swatch' style='background:{PALETTE[k % len(PALETTE)]}'></span>"
                      f"{html.escape(n)}" for k, n in enumerate(f.names)]
            if self.normalise.value:
                parts.append("each profile over its largest non-outlier value")
        elif f.outlier.any():
            parts.append(f"<span class='lw-swatch' style='background:{HIGHLIGHT}'></span>"
                         f"{int(f.outlier.sum())} outlier{'s' if f.outlier.sum() > 1 else ''}")
        if f.tiny.any():
            parts.append(f"<span class='lw-swatch lw-faded'></span>{int(f.tiny.sum())} tiny "
                         f"layer{'s' if f.tiny.sum() > 1 else ''} (&lt; 1% of the median layer's params)")
        if f.over.any():
            parts.append(f"▲ {int(f.over.any(axis=0).sum())} past the cut axis (values beside them)")
        if self.mode.value == "log" and np.nan_to_num(f.raw[0]).min() <= 0:
            parts.append("values ≤ 0 have no bar on a log axis")
        return " · ".join(parts)

    def point(self) -> None:
        """Move the pointer over the clicked (dark) and hovered (grey) layers; refresh the readout."""
        f = self.frame
        present = set(f.index.tolist())
        xs, colors, marks = [], [], []
        for index, color, mark in ((self.focus.layer, "var(--jp-ui-font-color0, #222)", "▼"),
                                   (self.focus.hovered, "var(--jp-ui-font-color2, #888)", "▽")):
            if index in present and index not in xs:
                xs.append(index)
                colors.append(color)
                marks.append(mark)
        with self.pointer.hold_sync():
            self.pointer.x, self.pointer.y, self.pointer.text = xs, [f.hi] * len(xs), marks
            self.pointer.colors = colors or ["#333"]
        self.readout.value = self.describe(self.focus.hovered if self.focus.hovered >= 0 else self.focus.layer)

    def describe(self, index: int) -> str:
        profiles = shown(self.store)
        if not profiles or index < 0:
            return ("<span class='lw-hint'>Hover a bar for the layer's details; click it (or a table row) for its "
                    "curve.</span>")
        j = np.flatnonzero(self.frame.index == index)
        notes = []
        if j.size:
            if self.frame.outlier[j[0]]:
                notes.append("outlier")
            if self.frame.tiny[j[0]]:
                notes.append("tiny layer: pruning it saves little")
            if self.frame.over[:, j[0]].any():
                notes.append("bar cut at the dashed line")
        layer = next((l for l in self.plan.layers if l.index == index), None) if self.plan is not None else None
        if layer is not None:
            notes.append("excluded from the plan (kept dense)" if layer.excluded
                         else f"planned {layer.sparsity:.0%} at target {self.plan.target:.0%}")
        return describe(profiles, index, normalised=len(profiles) > 1 and self.normalise.value, notes=tuple(notes))

    def _index(self, event) -> int:
        return event_layer(event, self.frame.index)

    def _hover(self, _mark, event) -> None:
        self.focus.hovered = self._index(event)

    def _click(self, _mark, event) -> None:
        self.focus.layer = self._index(event)


class ParamsChart:
    """Layer Params Counts, on the sensitivity chart's x scale; tiny layers faded."""

    def __init__(self, store, focus: Focus, xs: bq.LinearScale):
        self.store, self.focus, self.xs = store, focus, xs
        self.title = w.HTML("<span class='lw-h'>Layer Params Counts</span>", _dom_classes=["lw-chart-title"])
        self.ys = bq.LinearScale(min=0.0)
        self.index = np.zeros(0, dtype=int)
        self.bars = bq.Bars(x=[], y=[], scales={"x": xs, "y": self.ys}, colors=[BASE], padding=0.2, stroke_width=0,
                            interactions={"hover": "none", "click": "none"})
        self.bars.on_hover(lambda _m, e: setattr(self.focus, "hovered", self._index(e)))
        self.bars.on_element_click(lambda _m, e: setattr(self.focus, "layer", self._index(e)))
        self.x_axis = bq.Axis(scale=xs, label="layer (graph order)", tick_format="d", tick_values=[],
                              grid_lines="none", label_offset="34px")
        self.y_axis = bq.Axis(scale=self.ys, side="left", label="params", tick_format=".3~s", label_offset="48px")
        self.fig = bq.Figure(marks=[self.bars], axes=[self.x_axis, self.y_axis], fig_margin=dict(MARGIN),
                             display_toolbar=False, padding_y=0.0, layout=w.Layout(width="100%", height="190px"),
                             _dom_classes=["lw-params-chart"])
        self.box = w.VBox([self.title, self.fig], _dom_classes=["lw-chart-block"])
        store.observe(lambda _: self.redraw(), names=["profiles", "selected"])
        self.redraw()

    def _index(self, event) -> int:
        return event_layer(event, self.index)

    def redraw(self) -> None:
        profiles = shown(self.store)
        layers = profiles[0].layers if profiles else ()
        index = np.array([l.index for l in layers], dtype=int)
        params = np.array([l.params for l in layers], dtype=float)
        if np.array_equal(index, self.index) and np.array_equal(self.bars.y, params):
            return                                          # profiles of one model: the same params
        self.index = index
        ticks, names = x_ticks(index, [l.name for l in layers])
        with self.bars.hold_sync():
            self.bars.x, self.bars.y = index, params
            self.bars.opacities = np.where(rules.tiny(params), TINY_OPACITY, 1.0).tolist()   # a new model: rare
        set_ticks(self.x_axis, ticks, names, "d")
        self.x_axis.label = "layer" if names else "layer (graph order)"
        top = float(params.max()) * 1.04 if params.size and params.max() > 0 else 1.0
        self.ys.max = top
        set_ticks(self.y_axis, rules.nice_ticks(0.0, top, 4), None, ".3~s")
