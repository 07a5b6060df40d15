"""The chart, table and control views driven from Python: real profiles, real widgets, marks read back."""
import dataclasses

import numpy as np
import pytest
from ipywidgets.widgets import widget as ipywidget

import losswidget
from losswidget.widget import rules
from losswidget.widget.app import LossProfileWidget
from losswidget.widget.bars import BASE, HIGHLIGHT, TINY_OPACITY, js_number, sensitivity_frame
from losswidget.widget.table import table_rows

from helpers import outlier_cnn, save
from test_widget import net, wait


def send(mark, event: str, position: int) -> None:
    """What the browser sends when a bar or point is hovered or clicked."""
    mark._handle_custom_msgs(None, {"event": event, "data": {"index": position}})


@pytest.fixture(scope="module")
def outlier_path(tmp_path_factory):
    return save(outlier_cnn(), tmp_path_factory.mktemp("outlier") / "outlier.onnx")


@pytest.fixture
def outlier(outlier_path, tmp_path):
    w = LossProfileWidget(outlier_path, profiles_dir=tmp_path / "profiles")
    wait(w)
    w.selected = "Approximated"
    yield w
    w.close()


def test_an_outlier_is_red_cut_and_labelled(outlier):
    charts, p = outlier.charts, outlier.profiles["Approximated"]
    sens = p.sensitivities
    bars = charts.bars
    assert bars.colors[20] == HIGHLIGHT and bars.colors.count(HIGHLIGHT) == 1    # 63 tied layers stay blue
    assert bars.opacities[20] == TINY_OPACITY and bars.opacities.count(TINY_OPACITY) == 1
    rest = np.delete(sens, 20).max()
    cut = charts.sensitivity.frame.cut
    assert cut == pytest.approx(rest * 1.15) and bars.y[20] == pytest.approx(cut)
    np.testing.assert_allclose(np.delete(bars.y, 20), np.delete(sens, 20))          # the others drawn whole
    assert charts.sensitivity.ys.max < 2 * rest                                      # the axis is not flattened
    overflow = charts.sensitivity.overflow
    assert list(overflow.x) == [20] and list(overflow.text) == [f"▲ {rules.short(sens[20])}"]
    assert list(charts.sensitivity.cut_line.y) == [cut, cut]
    assert "1 outlier" in charts.sensitivity.key.value and "1 tiny layer" in charts.sensitivity.key.value
    charts.sensitivity.cut.value = False                                             # the whole range
    assert charts.sensitivity.frame.cut is None and bars.y[20] == pytest.approx(sens[20])
    assert list(overflow.x) == [] and list(charts.sensitivity.cut_line.x) == []


def test_log_and_percent_scales(outlier):
    charts, p = outlier.charts, outlier.profiles["Approximated"]
    sens = p.sensitivities
    charts.mode.value = "log"
    f = charts.sensitivity.frame
    assert charts.sensitivity.marks[0].scales["y"] is charts.sensitivity.ys        # one linear scale, never swapped
    np.testing.assert_allclose(charts.bars.y, np.log10(sens))
    assert charts.bars.base == pytest.approx(np.log10(sens.min() / 3)) == f.lo
    axis = charts.sensitivity.y_axis
    labels = [axis.tick_labels[js_number(t)] for t in axis.tick_values]
    assert labels == ["0.5", "1", "2", "5", "10", "20", "50", "100"]
    charts.mode.value = "percent"
    assert axis.tick_format.endswith("%") and axis.tick_labels is None
    assert charts.bars.base == 0 and charts.sensitivity.frame.values[0].sum() == pytest.approx(1.0)
    assert charts.bars.y[20] == pytest.approx(charts.sensitivity.frame.cut)      # the cut applies to shares too
    charts.mode.value = "values"
    np.testing.assert_allclose(np.delete(charts.bars.y, 20), np.delete(sens, 20))
    assert "sensitivity" == axis.label


def test_log_scale_with_zero_and_negative_values(tmp_path):
    w = LossProfileWidget(net(tmp_path), autostart=False)
    base = losswidget.analyze(net(tmp_path), method="magnitude", name="m")
    layers = list(base.layers)
    layers[1] = dataclasses.replace(layers[1], values=tuple(0.0 for _ in layers[1].values))          # all zero
    layers[2] = dataclasses.replace(layers[2], values=tuple(-v for v in layers[2].values))           # negative
    w.store.put(dataclasses.replace(base, layers=tuple(layers)), save=False)
    w.charts.mode.value = "log"
    y = w.charts.bars.y
    assert np.isfinite(y).all() and y[1] == y[2] == w.charts.bars.base          # no height, no NaN
    assert "values ≤ 0 have no bar" in w.charts.sensitivity.key.value
    w.close()


def test_log_axis_keeps_room_above_its_top_tick(tmp_path):
    base = losswidget.analyze(net(tmp_path), method="magnitude", name="m")
    wanted = [0.859, 0.1, 0.0001]                       # the largest just under the "1" tick
    layers = [dataclasses.replace(l, values=tuple(s * x / 0.95 for x in l.levels))
              for l, s in zip(base.layers, wanted)]
    f = sensitivity_frame([dataclasses.replace(base, layers=tuple(layers))], "log")
    assert f.ticks[-1] == 0.0 and f.labels["0"] == "1"
    assert f.hi - f.ticks[-1] >= 0.04 * (f.hi - f.lo) - 1e-12     # not at the very top, on the axis' end


def test_compare_normalises_by_the_largest_non_outlier(outlier):
    outlier.compare_profiles("Approximated", "Baseline")
    charts = outlier.charts
    marks = charts.sensitivity.marks[:2]
    assert charts.sensitivity.fig.marks[:2] == marks and [m.labels for m in marks] == [["Approximated"], ["Baseline"]]
    approx = marks[0].y
    assert np.delete(approx, 20).max() == pytest.approx(1.0)           # its outlier does not flatten it
    assert marks[1].y.max() == pytest.approx(1.0)                       # Baseline has no outlier
    assert charts.sensitivity.frame.over[0, 20] and not charts.sensitivity.frame.over[1].any()
    assert all(c == BASE for c in marks[0].colors) and marks[0].colors != marks[1].colors
    key = charts.sensitivity.key.value
    assert "Approximated" in key and "Baseline" in key and "largest non-outlier" in key
    assert charts.normalise.layout.display == ""
    outlier.charts.focus.hovered = 3
    readout = charts.sensitivity.readout.value
    assert "Approximated" in readout and "Baseline" in readout and "normalised" in readout
    charts.normalise.value = False
    np.testing.assert_allclose(np.delete(marks[1].y, 20), np.delete(outlier.profiles["Baseline"].sensitivities, 20))
    outlier.compare.value = ["Approximated"]
    assert outlier.store.compare == ["Approximated"]
    assert charts.sensitivity.fig.marks[0] is marks[0] and marks[1] not in charts.sensitivity.fig.marks
    assert charts.normalise.layout.display == "none"


def test_readout_follows_hover_and_profile(outlier):
    charts = outlier.charts
    assert "Hover a bar" in charts.sensitivity.readout.value
    send(charts.bars, "hover", 20)
    assert charts.focus.hovered == 20 and outlier.charts.table.hovered == 20
    text = charts.sensitivity.readout.value
    p = outlier.profiles["Approximated"]
    for part in ("#20 blur", "Conv", "blur.weight", "[16, 1, 1, 1]", "16 params", rules.short(p.layers[20].sensitivity),
                 "outlier", "tiny layer"):
        assert part in text
    assert list(charts.sensitivity.pointer.x) == [20]
    outlier.selected = "Baseline"                                      # refreshed on a profile switch
    assert rules.short(outlier.profiles["Baseline"].layers[20].sensitivity) in charts.sensitivity.readout.value
    assert "outlier" not in charts.sensitivity.readout.value


def test_drill_down_marks_reuses_lines_and_rescales(outlier):
    charts = outlier.charts
    curve = charts.curve
    assert curve.fig not in curve.box.children                          # hidden until a click
    send(charts.bars, "element_click", 20)
    assert charts.focus.layer == 20 and charts.table.selected == 20 and curve.fig in curve.box.children
    assert 20 in list(charts.sensitivity.pointer.x)
    (line,) = curve.curves
    layer = outlier.profiles["Approximated"].layers[20]
    np.testing.assert_allclose(line.x, layer.levels)
    np.testing.assert_allclose(line.y, layer.values)
    assert curve.ys.max == pytest.approx(max(layer.values) * 1.08)
    big = curve.ys.max
    charts.select_layer(3)
    assert curve.curves == [line] and curve.ys.max < big / 50            # same mark, y range per layer
    at = outlier.profiles["Approximated"].layers[3]
    assert list(curve.at_95.x) == [0.95] and curve.at_95.y[0] == pytest.approx(at.sensitivity)
    outlier.target.value = 0.6
    assert list(curve.rule_95.x) == [0.95, 0.95] and list(curve.rule_target.x) == [0.6, 0.6]
    assert list(curve.target_note.text) == ["target 60%"] and list(curve.note_95.text) == ["0.95"]
    charts.select_layer(-1)
    assert curve.fig not in curve.box.children


def test_curve_key_gives_raw_sensitivities_when_normalised(outlier):
    charts = outlier.charts
    charts.select_layer(7)
    outlier.compare_profiles("Approximated", "Baseline")
    assert charts.normalise.value and len(charts.curve.curves) == 2
    key = charts.curve.key.value
    for name in ("Approximated", "Baseline"):                       # what the readout and the table say
        raw = rules.short(outlier.profiles[name].layers[7].sensitivity)
        assert f"{name}: L(0.95) − L(0) = <b>{raw}</b>" in key
    assert "raw values; the curves are normalised" in key
    charts.normalise.value = False
    assert "normalised" not in charts.curve.key.value


def test_fifty_selection_changes_make_no_widgets(outlier):
    charts = outlier.charts
    charts.select_layer(0)
    outlier.compare_profiles("Approximated", "Baseline")
    outlier.compare_profiles("Approximated")
    before = len(ipywidget._instances)
    for k in range(50):
        charts.select_layer(k % 64)
        charts.focus.hovered = (k * 7) % 64
        outlier.selected = ("Baseline", "Approximated")[k % 2]
        if k % 10 == 0:
            outlier.compare_profiles("Approximated", "Baseline")
            charts.mode.value = ("log", "percent", "values")[k % 3]
        if k % 10 == 5:
            outlier.compare_profiles(outlier.selected)
    assert len(ipywidget._instances) == before


def test_scatter_trend_corner_and_selection(outlier):
    outlier.selected = "Baseline"
    scatter, p = outlier.charts.scatter, outlier.profiles["Baseline"]
    params = np.array([l.params for l in p.layers], float)
    np.testing.assert_allclose(scatter.points.x, params)
    np.testing.assert_allclose(scatter.points.y, p.sensitivities)
    slope = rules.loglog_slope(params, p.sensitivities)
    assert slope < 0 and f"log-log slope {slope:.2f}: fewer params, more sensitive" in scatter.caption.value
    corner = (params >= np.median(params)) & (p.sensitivities < np.median(p.sensitivities))
    assert f"{int(corner.sum())} layers, {params[corner].sum() / params.sum():.0%} of params" in scatter.caption.value
    assert scatter.points.opacities[20] == TINY_OPACITY
    send(scatter.points, "hover", 5)
    assert outlier.charts.focus.hovered == 5 and "#5 " in scatter.readout.value
    send(scatter.points, "element_click", 7)
    assert outlier.charts.focus.layer == 7 and list(scatter.points.selected) == [7]
    send(outlier.charts.params.bars, "element_click", 9)
    assert outlier.charts.focus.layer == 9 and list(scatter.points.selected) == [9]
    assert scatter.xs.min < params.min() and scatter.xs.max > params.max()
    assert [t for t in scatter.x_axis.tick_values] == [10, 100, 1000]
    decades = np.log10(scatter.ys.max / scatter.ys.min)              # a free band under the points for the label
    assert np.log10(min(scatter.points.y) / scatter.ys.min) >= 0.1 * decades
    assert list(scatter.corner_label.y) == [scatter.ys.min]
    # sensitivity ticks written as everywhere else in the widget (rules.short), not by a d3 format
    labels = [scatter.y_axis.tick_labels[js_number(t)] for t in scatter.y_axis.tick_values]
    assert labels == [rules.short(t) for t in scatter.y_axis.tick_values] and len(labels) >= 2
    assert scatter.y_axis.tick_format is None


def test_js_number_prints_as_javascript():
    # String(x) in JavaScript for each (checked in node): bqplot looks tick labels up by it
    cases = {-2.0: "-2", 0.30103: "0.30103", 2e-05: "0.00002", 1e-06: "0.000001", 1.5e-07: "1.5e-7",
             1e16: "10000000000000000", 1e21: "1e+21", 0.5000000000000001: "0.5000000000000001", -3.5e-05: "-0.000035"}
    assert {x: js_number(x) for x in cases} == cases


def test_layer_table_rows_focus_and_planned(outlier):
    table, charts = outlier.charts.table, outlier.charts
    p = outlier.profiles["Approximated"]
    assert table.rows == table_rows(p) and len(table.rows) == 64
    row = table.rows[20]
    assert row == {"index": 20, "id": p.layers[20].id, "name": "blur", "op": "Conv", "params": 16,
                   "sensitivity": pytest.approx(p.layers[20].sensitivity), "flags": ["outlier", "tiny"]}
    assert table.sens_label == "Sensitivity (Approximated)"
    assert table.planned == {l.id: l2.sparsity for l, l2 in zip(p.layers, p.plan(0.85).layers)}   # the plan shown
    table.selected = 5                                                 # a click in the table ...
    assert charts.focus.layer == 5 and 5 in list(charts.sensitivity.pointer.x)   # ... marks the bar
    table.hovered = 9
    assert charts.focus.hovered == 9 and "#9 " in charts.sensitivity.readout.value
    outlier.selected = "Baseline"
    assert table.sens_label == "Sensitivity (Baseline)" and table.rows[20]["flags"] == ["tiny"]
    base = outlier.profiles["Baseline"]
    assert table.planned == {l.id: l2.sparsity for l, l2 in zip(base.layers, base.plan(0.85).layers)}
    assert table.selected == 5


def test_compare_chooser_keeps_order_and_selection(outlier, outlier_path):
    outlier.compare_profiles("Approximated", "Baseline")
    assert outlier.compare.options == ["Approximated", "Baseline"]
    assert outlier.compare.value == ["Approximated", "Baseline"] and outlier.compare.selected == "Approximated"
    extra = losswidget.analyze(outlier_path, method="magnitude", name="coarse", sparsity_levels=[0.0, 0.5, 0.9])
    outlier.store.put(extra, save=False)                                          # a profile arrives
    assert outlier.compare.options == ["Approximated", "Baseline", "coarse"]      # added last
    assert outlier.compare.value == ["Approximated", "Baseline"]                  # the choice kept
    assert outlier.store.compare == ["Approximated", "Baseline"] and outlier.selected == "Approximated"
    outlier.compare.value = ["Approximated", "Baseline", "coarse"]
    assert outlier.store.compare == ["Approximated", "Baseline", "coarse"]
    outlier.compare.value = []                                                    # the selected stays compared
    assert outlier.store.compare == ["Approximated"] and outlier.compare.value == ["Approximated"]
    outlier.compare.value = ["Baseline"]
    outlier.add_profile("asked", "magnitude", sparsity_levels=[0.0, 0.9]).result(60)    # the user's own: shown
    wait(outlier)
    assert outlier.selected == "asked" and outlier.compare.selected == "asked"
    assert outlier.compare.options[-1] == "asked" and "Baseline" in outlier.compare.value


def test_job_line_beside_the_selector(outlier):
    status = outlier.job_status
    assert status.value == "" and status.layout.display == "none"             # nothing running
    outlier.store.jobs = {"old": {"status": "done"}, "Baseline": {"status": "running", "done": 2, "total": 5,
                                                                  "partial": True},
                          "next": {"status": "queued"}}
    assert "<b>Baseline</b>: computing… 40%, bars fill in · 1 more queued" in status.value
    assert status.layout.display == ""
    outlier.store.jobs = {"next": {"status": "queued"}}
    assert "<b>next</b> queued" in status.value
    outlier.store.jobs = {"old": {"status": "done"}, "bad": {"status": "failed"}}
    assert status.value == "" and status.layout.display == "none"


def test_header_names_the_model(outlier):
    h = outlier.header
    assert h.model_name == "outlier.onnx" and h.model_hash == outlier.store.model_hash[:15]
    assert h.model_hash.startswith("blake3:") and len(h.model_hash) == len("blake3:") + 8
    assert h.details == "145.2 k params · 64 layers"


def test_layer_window_zooms_both_bar_charts(outlier):
    charts = outlier.charts
    assert charts.window.layout.display == "" and charts.window.value == (0, 63)   # 64 layers: shown
    assert (charts.xs.min, charts.xs.max) == (-0.5, 63.5) and not charts.xs.allow_padding   # half a bar each side
    assert charts.params.bars.scales["x"] is charts.sensitivity.marks[0].scales["x"] is charts.xs
    charts.window.value = (10, 19)
    assert (charts.xs.min, charts.xs.max) == (9.5, 19.5)
    charts.table.selected = 40                                           # a layer outside the window
    lo, hi = charts.window.value
    assert lo <= 40 <= hi and hi - lo == 9


def test_small_models_name_their_layers_on_the_axis(tmp_path):
    w = LossProfileWidget(net(tmp_path, layers=4), autostart=False)
    w.store.put(losswidget.analyze(net(tmp_path, layers=4), method="magnitude", name="m"), save=False)
    axis = w.charts.sensitivity.x_axis
    assert [axis.tick_labels[js_number(t)] for t in axis.tick_values] == ["fc0", "fc1", "fc2", "fc3"]
    assert w.charts.window.layout.display == "none" and not any(w.charts.bars.colors[k] == HIGHLIGHT for k in range(4))
    w.close()


def test_a_new_widget_compares_nothing_until_asked(outlier_path, tmp_path):
    """The store moves the selection to the most informative profile as profiles arrive; the compare boxes
    echo the store and must not push the earlier selection back into `compare`."""
    w = LossProfileWidget(outlier_path, profiles_dir=tmp_path / "fresh")
    wait(w)
    assert w.selected == "Baseline" and w.store.compare == ["Baseline"] and w.compare.value == ["Baseline"]
    assert len(w.charts.sensitivity.frame.names) == 1
    w.close()
