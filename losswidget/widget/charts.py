"""Every chart of one store, sharing one Focus (hovered and clicked layer) and one layer axis, laid out.

The views are one class each (bars.py, scatter.py, curve.py, table.py), each observing the store itself;
this module only wires them together: the two bar charts share the x scale (so their bars line up) and the
"Layers" range slider that zooms and pans it (bqplot's own pan/zoom also zooms y, which drops every bar out
of view), and the curve follows the sensitivity chart's "Normalise" box. The plan row (plancurve.py,
planpanel.py) shows the plan the bars' planned marks and the table's Planned column show (ProfileStore.plan).

The two bar charts are made with the widget; the views under them once the bars have their profiles
(`build_below`, called by the widget through focus.after_ready), so the page draws the bars before it builds
the rest. Each is made once; reading any of them (`charts.table`, ...) makes them at once.
"""
from __future__ import annotations

import bqplot as bq
import ipywidgets as w

from .bars import ParamsChart, SensitivityChart
from .curve import CurveChart
from .focus import Focus, shown
from .plancurve import PlanCurve
from .planpanel import PlanPanel
from .scatter import ScatterChart
from .table import LayerTable

WINDOW_FROM = 40                 # more layers than this: show the Layers range slider


class Charts:
    def __init__(self, store):
        self.store = store
        self.focus = Focus()
        # no padding by the marks: bqplot pads a bar chart's x range by half a bar as measured when its view
        # was made (and on resize), so a chart shown before its bars arrived kept no padding and its end bars
        # were cut in half, out of line with the other chart; the half bar is in the range (_zoom) instead
        self.xs = bq.LinearScale(min=-0.5, max=0.5, allow_padding=False)
        self.sensitivity = SensitivityChart(store, self.focus, self.xs)
        self.params = ParamsChart(store, self.focus, self.xs)
        self.window = w.IntRangeSlider(value=(0, 0), min=0, max=0, description="Layers:", continuous_update=True,
                                       style={"description_width": "initial"},
                                       layout=w.Layout(width="100%", display="none"), _dom_classes=["lw-window"])
        self._below: dict | None = None           # the views under the window, once made (build_below)
        self.box = w.VBox([self.sensitivity.box, self.params.box, self.window], _dom_classes=["lw-charts"])
        self.window.observe(lambda _: self._zoom(), "value")
        self.focus.observe(self._follow, "layer")
        store.observe(lambda _: self._reset_window(), names=["profiles", "selected", "compare"])
        self._reset_window()

    def build_below(self) -> None:
        """Make the views under the bars (scatter, drill-down, plan curve and panel, layer table) and add them
        to the box, once. The widget calls it after the bars have their profiles (focus.after_ready); reading
        one of them makes them all at once."""
        if self._below is not None:
            return
        store = self.store
        v = self._below = {"scatter": ScatterChart(store, self.focus),
                           "curve": CurveChart(store, self.focus, self.sensitivity.normalise),
                           "table": LayerTable(store, self.focus), "plan_curve": PlanCurve(store),
                           "plan_panel": PlanPanel(store)}
        v["table_title"] = w.HTML("<span class='lw-h'>Layers</span>", _dom_classes=["lw-chart-title"])
        lower = w.HBox([v["scatter"].box, v["curve"].box], layout=w.Layout(flex_flow="row wrap"),
                       _dom_classes=["lw-lower"])
        plan_row = w.HBox([v["plan_curve"].box, v["plan_panel"].box], layout=w.Layout(flex_flow="row wrap"),
                          _dom_classes=["lw-lower", "lw-plan-row"])
        table_box = w.VBox([v["table_title"], v["table"]], _dom_classes=["lw-chart-block"])
        self.box.children = self.box.children + (lower, plan_row, table_box)

    @property
    def built(self) -> bool:
        """Whether the views under the bars are made."""
        return self._below is not None

    def _view(self, name: str):
        self.build_below()
        return self._below[name]

    scatter = property(lambda self: self._view("scatter"))
    curve = property(lambda self: self._view("curve"))
    table = property(lambda self: self._view("table"))
    table_title = property(lambda self: self._view("table_title"))
    plan_curve = property(lambda self: self._view("plan_curve"))
    plan_panel = property(lambda self: self._view("plan_panel"))

    # the names the widget and its tests use
    @property
    def mode(self) -> w.ToggleButtons:
        return self.sensitivity.mode

    @property
    def normalise(self) -> w.Checkbox:
        return self.sensitivity.normalise

    @property
    def bars(self) -> bq.Bars | None:
        return self.sensitivity.bars

    @property
    def sens_fig(self) -> bq.Figure:
        return self.sensitivity.fig

    @property
    def params_fig(self) -> bq.Figure:
        return self.params.fig

    @property
    def curve_fig(self) -> bq.Figure:
        return self.curve.fig

    def select_layer(self, index: int) -> None:
        """Drill down into the layer with this graph-order index (-1: none)."""
        self.focus.layer = index

    # -- the layer window --------------------------------------------------------------------------------
    def _reset_window(self) -> None:
        profiles = shown(self.store)
        n = max((l.index for l in profiles[0].layers), default=-1) + 1 if profiles else 0
        top = max(n - 1, 0)
        if self.window.max != top or self.window.value[1] > top:
            # two messages, the range first: given both at once, the browser's slider clamps the new value
            # to the old range and shows "0 – 0" (ipywidgets 8.1)
            if top > self.window.max:
                self.window.max = top
                self.window.value = (0, top)
            else:
                self.window.value = (0, top)
                self.window.max = top
        self.window.layout.display = "" if n > WINDOW_FROM else "none"
        self._zoom()

    def _zoom(self) -> None:
        lo, hi = self.window.value
        lo, hi = lo - 0.5, hi + 0.5                   # the end bars whole (the scale is not padded)
        if (self.xs.min, self.xs.max) != (lo, hi):
            with self.xs.hold_sync():
                self.xs.min, self.xs.max = lo, hi

    def _follow(self, change) -> None:
        """A layer clicked in the table but outside the window: slide the window over it."""
        index, (lo, hi) = change["new"], self.window.value
        if index < 0 or lo <= index <= hi:
            return
        span = hi - lo
        lo = min(max(index - span // 2, 0), self.window.max - span)
        self.window.value = (lo, lo + span)
