"""The plan across targets: what the selected profile's plan keeps of the model at each sparsity from 5% to
95%, the current target marked, the user's exclusions applied.

What the y axis holds depends on the profile, and is named as such:
- data profiles (one-shot, activation-aware): the measured recovery (its kind: top-1 agreement, accuracy
  ratio, ...), interpolated between the targets it was measured at, which are drawn as points; past the last
  measured target there is no line (not measured, and no other kind of number stands in).
- data-free profiles: the weight energy (sum of w^2) the plan keeps, titled so: it is not a recovery estimate.

Not the drill-down's CurveChart: that one draws one layer's L(s); this one draws one plan per target. The
marks are made once and updated in place; the curve is recomputed (a plan per target step) only when the
profile or the exclusions change, the target only moves its marker.
"""
from __future__ import annotations

import html

import bqplot as bq
import ipywidgets as w
import numpy as np

from . import rules
from .bars import BASE
from .focus import Later

TARGETS = np.round(np.arange(0.05, 0.951, 0.05), 2)     # the target slider's range, in 5% steps
TARGET_COLOR = "#54a24b"


class PlanCurve:
    def __init__(self, store):
        self.store = store
        self.title = w.HTML(_dom_classes=["lw-chart-title"])
        self.key = w.HTML(_dom_classes=["lw-key"])
        self.xs, self.ys = bq.LinearScale(min=0.0, max=1.0), bq.LinearScale(min=0.0, max=1.0)
        scales = {"x": self.xs, "y": self.ys}
        self.line = bq.Lines(x=[], y=[], scales=scales, colors=[BASE], stroke_width=2, enable_hover=False)
        self.measured = bq.Scatter(x=[], y=[], scales=scales, colors=[BASE], default_size=48, stroke="white",
                                   stroke_width=1, enable_hover=False)
        self.rule = bq.Lines(x=[], y=[], scales=scales, colors=[TARGET_COLOR], line_style="dashed", stroke_width=1,
                             enable_hover=False)
        self.now = bq.Scatter(x=[], y=[], scales=scales, colors=[TARGET_COLOR], marker="diamond", default_size=70,
                              enable_hover=False)
        self.note = bq.Label(x=[], y=[], text=[], scales=scales, colors=[TARGET_COLOR], default_size=11,
                             align="end", x_offset=-6, y_offset=-8, enable_hover=False)
        self.x_axis = bq.Axis(scale=self.xs, label="sparsity (of prunable params)", tick_format=".0%",
                              tick_values=[0, 0.25, 0.5, 0.75, 1.0], grid_lines="none", label_offset="34px")
        self.y_axis = bq.Axis(scale=self.ys, side="left", label="", tick_format=".0%", label_offset="48px",
                              grid_lines="none")
        self.fig = bq.Figure(marks=[self.line, self.measured, self.rule, self.now, self.note],
                             axes=[self.x_axis, self.y_axis],
                             fig_margin={"top": 16, "bottom": 44, "left": 64, "right": 16}, display_toolbar=False,
                             padding_y=0.0, layout=w.Layout(width="100%", height="260px"),
                             _dom_classes=["lw-plan-curve"])
        self.box = w.VBox([self.title, self.key, self.fig], _dom_classes=["lw-chart-block"])
        self.points = (np.zeros(0), np.zeros(0))          # the curve drawn now: sparsity reached, value
        self.kind = ""                                    # what y is: a recovery kind or "weight energy kept"
        self._drawn_for = None
        store.observe(Later(self.redraw), names=["profiles", "selected", "excluded"])
        store.observe(lambda _: self.mark(), names=["target"])
        self.redraw()

    def curve(self):
        """(sparsity reached, value) per target step, the measured points (x, y) and what the values are."""
        store = self.store
        profile = store.profiles.get(store.selected)
        if profile is None or not profile.layers:
            return np.zeros(0), np.zeros(0), ([], []), ""
        keep = [l.index for l in profile.layers if l.name in set(store.exclusions())]
        recovery = profile.recovery
        targets = sorted(set(TARGETS.tolist()) | {t for t in (recovery.targets if recovery else ()) if 0 < t <= 0.95})
        xs, ys = [], []
        for t in targets:
            plan = profile.plan(t, exclude=keep)
            value = plan.est_recovery if recovery is not None else plan.weight_energy_kept
            if value is not None and np.isfinite(value):
                xs.append(plan.achieved)
                ys.append(value)
        if recovery is not None:
            measured = ([t for t, v in recovery.points if v is not None and np.isfinite(v)],
                        [v for t, v in recovery.points if v is not None and np.isfinite(v)])
            return np.array(xs), np.array(ys), measured, recovery.kind
        return np.array(xs), np.array(ys), ([], []), "weight energy kept"

    def redraw(self) -> None:
        x, y, measured, kind = self.curve()
        self.points, self.kind = (x, y), kind
        values = np.concatenate([y, np.asarray(measured[1], dtype=float)])
        low = float(values.min()) if values.size else 0.0
        bottom = max(0.0, min(0.9, np.floor((low - 0.02) * 20) / 20))     # a 5% step below the lowest value
        with self.ys.hold_sync(), self.y_axis.hold_sync():
            self.ys.min, self.ys.max = bottom, 1.0
            self.y_axis.tick_values = rules.nice_ticks(bottom, 1.0, 4)
            self.y_axis.label = kind
        with self.line.hold_sync():
            self.line.x, self.line.y = x, y
        with self.measured.hold_sync():
            self.measured.x, self.measured.y = measured
        profile = self.store.profiles.get(self.store.selected)
        name = html.escape(profile.name) if profile else ""
        if not kind:
            self.title.value = "<span class='lw-h'>Plan across targets</span>"
            self.key.value = "<span class='lw-hint'>No profile yet.</span>"
        elif measured[0]:
            self.title.value = (f"<span class='lw-h'>Est. recovery across targets</span> <span class='lw-sub'>{name}"
                                f" · {html.escape(kind)}</span>")
            self.key.value = (f"<span class='lw-swatch' style='background:{BASE};border-radius:5px'></span>"
                              f"measured {html.escape(kind)} at "
                              + ", ".join(f"{t:.0%}" for t in measured[0])
                              + " (the plan at each target, on the profile's data); the line interpolates"
                              + ("" if max(measured[0]) >= 0.95 else f"; none past {max(measured[0]):.0%}")
                              + ("; measured without your exclusions, so with them the line is an estimate"
                                 if self.store.exclusions() else ""))
        else:
            self.title.value = (f"<span class='lw-h'>Weight energy kept across targets</span> "
                                f"<span class='lw-sub'>{name}</span>")
            self.key.value = ("Share of the layers' sum of w² each target's plan keeps. Data-free: not a recovery "
                              "estimate; a one-shot profile on data measures recovery.")
        if not len(x) and kind:
            self.key.value += " <span class='lw-hint'>No values for this profile.</span>"
        self.mark()

    def mark(self) -> None:
        """The current target: a dashed line, the plan's value on the curve and its label."""
        plan = self.store.plan()
        if plan is None or not self.kind:
            for mark in (self.rule, self.now):
                with mark.hold_sync():
                    mark.x, mark.y = [], []
            with self.note.hold_sync():
                self.note.x, self.note.y, self.note.text = [], [], []
            return
        value = plan.est_recovery if self.kind != "weight energy kept" else plan.weight_energy_kept
        bottom, top = float(self.ys.min), float(self.ys.max)
        with self.rule.hold_sync():
            self.rule.x, self.rule.y = [plan.achieved, plan.achieved], [bottom, top]
        shown = value is not None and np.isfinite(value)
        with self.now.hold_sync():
            self.now.x, self.now.y = ([plan.achieved], [value]) if shown else ([], [])
        y = value if shown else top
        with self.note.hold_sync():
            self.note.x, self.note.y = [plan.achieved], [y]
            # beside the point, on the side with room, below it near the top of the chart
            self.note.align, self.note.x_offset = ("end", -6) if plan.achieved > 0.5 else ("start", 6)
            self.note.y_offset = 16 if y > bottom + 0.8 * (top - bottom) else -8
            self.note.text = [f"{plan.target:.0%}: " + (f"{value:.1%}" if shown else "not measured")]
