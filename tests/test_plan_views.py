"""The plan in the widget, driven from Python: planned marks, the table's Planned and In plan columns, the
plan curve, exclusions, plan exports and "Save pruned model", read back from real widgets and real files."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from traitlets import TraitError

from losswidget import Plan
from losswidget.errors import LossWidgetError, SettingsError
from losswidget.widget.app import LossProfileWidget
from losswidget.widget.bars import PLANNED_HALF
from losswidget.widget.plancurve import TARGETS

from helpers import arr
from test_widget import net, wait


@pytest.fixture
def widget(tmp_path):
    w = LossProfileWidget(net(tmp_path), data={"x": arr(8, 16)}, profiles_dir=tmp_path / "profiles")
    wait(w)
    w.selected = "Baseline"
    yield w
    w.close()


def planned_marks(widget):
    """(layer x, planned sparsity) as the sensitivity chart draws them: a level line per layer, NaN between."""
    mark = widget.charts.sensitivity.planned
    x, y = np.append(np.asarray(mark.x, dtype=float), np.nan), np.append(np.asarray(mark.y, dtype=float), np.nan)
    assert np.isnan(y[2::3]).all() and np.allclose(x[1::3] - x[0::3], 2 * PLANNED_HALF)
    return (x[0::3] + x[1::3]) / 2, y[0::3]


def test_planned_marks_table_and_cards_follow_the_target(widget):
    p = widget.profiles["Baseline"]
    sens = widget.charts.sensitivity
    assert sens.p_axis in sens.fig.axes and sens.planned in sens.fig.marks
    for target in (0.85, 0.5, 0.3):
        widget.target.value = target                                   # the slider
        plan = p.plan(target)
        x, y = planned_marks(widget)
        np.testing.assert_array_equal(x, [l.index for l in p.layers])
        np.testing.assert_allclose(y, [l.sparsity for l in plan.layers])
        assert widget.charts.table.planned == {l.id: s for l, s in zip(p.layers, y)}
        cards = {c["key"]: c for c in widget.cards.cards}
        assert cards["reduction"]["value"] == f"{plan.est_params_reduction:.2f}×"
        assert f"planned sparsity at {target:.0%}" in sens.key.value
    assert len(set(np.round(y, 3))) > 1 or y[0] == pytest.approx(0.3)     # an allocation, not one number
    widget.charts.select_layer(2)
    widget.charts.focus.hovered = 2
    assert f"planned {widget.plan.layers[2].sparsity:.0%} at target 30%" in sens.readout.value


def test_exclusions_from_the_table_and_the_drill_down(widget):
    p, charts, store = widget.profiles["Baseline"], widget.charts, widget.store
    widget.target.value = 0.6
    before = charts.plan_curve.points[1].copy()
    charts.table.excluded = [p.layers[1].id]                          # a box unticked in the browser
    assert store.excluded == {"Baseline": [p.layers[1].name]}
    expected = p.plan(0.6, exclude=[p.layers[1].name])
    assert widget.plan.sparsity == expected.sparsity and widget.plan.layers[1].excluded
    _, y = planned_marks(widget)
    assert y[1] == 0 and y.tolist() == [l.sparsity for l in expected.layers]
    assert list(charts.sensitivity.excluded.x) == [1] and list(charts.sensitivity.excluded.text) == ["✕"]
    assert "✕ 1 excluded" in charts.sensitivity.key.value and p.layers[1].name in charts.plan_panel.summary.value
    cards = {c["key"]: c for c in widget.cards.cards}
    assert cards["reduction"]["value"] == f"{expected.est_params_reduction:.2f}×" and "1 layer excluded" in \
        cards["reduction"]["detail"]
    assert cards["recovery"]["value"] == f"{expected.weight_energy_kept:.1%}"
    assert not np.allclose(charts.plan_curve.points[1], before)          # the curve follows the exclusion
    # the drill-down: a bar clicked, its box ticked
    charts.select_layer(4)
    assert charts.curve.exclude in charts.curve.box.children and charts.curve.exclude.value is False
    charts.curve.exclude.value = True
    assert store.excluded["Baseline"] == [p.layers[1].name, p.layers[4].name]
    assert charts.table.excluded == [p.layers[1].id, p.layers[4].id]
    assert "excluded: kept dense" in charts.curve.key.value
    charts.focus.hovered = 4
    assert "excluded from the plan" in charts.sensitivity.readout.value
    charts.select_layer(1)
    assert charts.curve.exclude.value is True                          # shows the clicked layer's state
    # cleared, and the button says how many there were
    assert charts.plan_panel.clear.description == "Clear exclusions (2)" and not charts.plan_panel.clear.disabled
    charts.plan_panel.clear.click()
    assert store.excluded == {} and charts.table.excluded == [] and list(charts.sensitivity.excluded.x) == []
    assert charts.plan_panel.clear.disabled and charts.curve.exclude.value is False
    np.testing.assert_allclose(planned_marks(widget)[1], [l.sparsity for l in p.plan(0.6).layers])


def test_exclusions_are_per_profile_typed_and_follow_renames(widget):
    store = widget.store
    base, approx = widget.profiles["Baseline"], widget.profiles["Approximated"]
    widget.exclude(base.layers[0].name)
    store.set_excluded(approx.layers[3].name, profile="Approximated")
    assert store.excluded == {"Baseline": [base.layers[0].name], "Approximated": [approx.layers[3].name]}
    widget.selected = "Approximated"
    assert widget.charts.table.excluded == [approx.layers[3].id] and widget.plan.layers[3].excluded
    with pytest.raises(SettingsError, match="no layer named 'nope'"):
        widget.exclude("nope")
    with pytest.raises(TraitError):
        store.excluded = {"Baseline": [3]}
    widget.rename_profile("Baseline", "base")
    assert store.excluded["base"] == [base.layers[0].name] and "Baseline" not in store.excluded
    widget.remove_profile("base")
    assert list(store.excluded) == ["Approximated"]
    widget.exclude(approx.layers[3].name, excluded=False)
    assert store.excluded == {}


def test_plan_curve_data_free_and_measured(widget):
    curve = widget.charts.plan_curve
    p = widget.profiles["Baseline"]
    assert "Weight energy kept across targets" in curve.title.value and curve.y_axis.label == "weight energy kept"
    np.testing.assert_allclose(curve.line.y, [p.plan(t).weight_energy_kept for t in TARGETS])
    np.testing.assert_allclose(curve.line.x, [p.plan(t).achieved for t in TARGETS])
    assert len(curve.measured.x) == 0 and "not a recovery estimate" in curve.key.value
    assert list(curve.now.y) == [pytest.approx(widget.plan.weight_energy_kept)]
    assert list(curve.rule.x) == [pytest.approx(widget.plan.achieved)] * 2
    measured = widget.add_profile("os", "one-shot", sparsity_levels=[0.0, 0.5, 0.9]).result(60)
    widget.selected = "os"
    kind, points = measured.recovery.kind, dict(measured.recovery.points)
    assert curve.y_axis.label == kind and kind in curve.title.value and kind in curve.key.value
    assert list(curve.measured.x) == sorted(points) and list(curve.measured.y) == [points[t] for t in sorted(points)]
    last = max(points)
    assert max(curve.line.x) <= last + 0.005                          # no line past the last measured target
    for x, y in zip(curve.line.x, curve.line.y):
        assert y == pytest.approx(measured.recovery.at(x))
    widget.target.value = 0.95 if last < 0.95 else 0.5
    if last < 0.95:
        assert list(curve.now.x) == [] and "not measured" in curve.note.text[0]
    widget.target.value = 0.5
    assert list(curve.now.y) == [pytest.approx(measured.recovery.at(widget.plan.achieved))]
    assert curve.note.text == [f"50%: {widget.plan.est_recovery:.1%}"]
    cards = {c["key"]: c for c in widget.cards.cards}
    assert cards["recovery"]["detail"] == f"{kind}, measured" and "without your exclusions" not in curve.key.value
    widget.exclude(measured.layers[-1].name)                           # recovery was measured without it
    cards = {c["key"]: c for c in widget.cards.cards}
    assert cards["recovery"]["detail"] == f"{kind}, interpolated from plans without exclusions"
    assert "measured without your exclusions" in curve.key.value


def test_plan_exports(widget, monkeypatch):
    sent = []
    exporter = widget.charts.plan_panel.exporter
    monkeypatch.setattr(exporter, "send", lambda content, buffers=None: sent.append(content))
    p = widget.profiles["Baseline"]
    widget.exclude(p.layers[2].name)
    widget.target.value = 0.7
    assert exporter.what == "the plan of 'Baseline' at 70%"
    exporter._handle(exporter, {"kind": "plan", "id": "v-1"}, [])
    assert sent[-1]["id"] == "v-1" and sent[-1]["filename"] == "net-Baseline-plan70.json"
    plan = Plan.from_dict(json.loads(sent[-1]["text"]))
    assert plan.target == 0.7 and plan.profile == "Baseline" and plan.sparsity == widget.plan.sparsity
    assert [l.name for l in plan.layers if l.excluded] == [p.layers[2].name]
    exporter._handle(exporter, {"kind": "recipe", "id": "v-2"}, [])
    assert sent[-1]["filename"] == "net-Baseline-plan70.yaml" and sent[-1]["mime"] == "text/yaml"
    recipe = sent[-1]["text"]
    assert "!GMPruningModifier" in recipe and json.dumps(p.layers[0].weight) in recipe
    assert json.dumps(p.layers[2].weight) not in recipe                 # excluded: not in any modifier
    exporter._handle(exporter, {"kind": "csv", "id": "v-3"}, [])
    assert sent[-1] == {"error": "Unknown download 'csv'.", "id": "v-3"}


def weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_save_pruned_model(widget, tmp_path):
    panel = widget.charts.plan_panel
    p = widget.profiles["Baseline"]
    widget.exclude(p.layers[0].name)
    assert panel.path.placeholder == str(tmp_path / "net-Baseline-pruned85.onnx")
    out = widget.save_pruned().result(60)
    assert out == str(tmp_path / "net-Baseline-pruned85.onnx") and out in panel.status.value
    plan = widget.plan
    got = weights(out)
    for layer in plan.layers:
        assert int((got[layer.weight] == 0).sum()) == layer.pruned
    assert plan.layers[0].excluded and not (got[p.layers[0].weight] == 0).any()
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": arr(2, 16)})[0].shape == (2, 16)
    # a typed path, by the button
    panel.path.value = str(tmp_path / "typed.onnx")
    panel.save_button.click()
    assert panel.saving.result(60) == str(tmp_path / "typed.onnx") and "typed.onnx" in panel.status.value
    assert not panel.save_button.disabled
    # what goes wrong is said, not raised into the kernel
    panel.path.value = str(tmp_path / "missing" / "x.onnx")
    panel.save_button.click()
    assert "does not exist; create it or choose another path" in panel.status.value
    panel.path.value = str(tmp_path / "x.txt")
    panel.save_button.click()
    assert "should end in .onnx" in panel.status.value
    (tmp_path / "taken.onnx").mkdir()                                  # a folder where the file should go
    panel.path.value = str(tmp_path / "taken.onnx")
    panel.save_button.click()
    with pytest.raises(LossWidgetError):
        panel.saving.result(60)
    assert f"Cannot write the pruned model to {tmp_path / 'taken.onnx'}" in panel.status.value
    assert not panel.save_button.disabled
    with pytest.raises(SettingsError, match="over its source"):
        widget.save_pruned(tmp_path / "net.onnx").result(60)


def test_the_bundled_demo_is_saved_in_the_working_folder_not_the_package(tmp_path, monkeypatch):
    from losswidget.demo import demo

    path, _ = demo()
    monkeypatch.chdir(tmp_path)
    w = LossProfileWidget(path, autostart=False)
    try:
        w.store.put(__import__("losswidget").analyze(path, "magnitude", name="m"), save=False)
        expected = tmp_path / f"{Path(path).stem}-m-pruned85.onnx"
        assert w.charts.plan_panel.path.placeholder == str(expected)
        assert w.save_pruned().result(60) == str(expected) and expected.exists()
        assert not list(Path(path).parent.glob("*pruned*"))
    finally:
        w.close()
    # with a profiles folder (as the app has), there: the app's kernel runs in a cache folder
    (tmp_path / "profiles").mkdir()
    w = LossProfileWidget(path, autostart=False, profiles_dir=tmp_path / "profiles")
    try:
        w.store.put(__import__("losswidget").analyze(path, "magnitude", name="m"), save=False)
        assert w.charts.plan_panel.path.placeholder == str(tmp_path / "profiles" / expected.name)
        assert w.save_pruned().result(60) == str(tmp_path / "profiles" / expected.name)
    finally:
        w.close()


def test_in_memory_model_needs_a_typed_path(tmp_path):
    model = onnx.load(str(net(tmp_path)))
    w = LossProfileWidget(model, autostart=False)
    try:
        w.store.put(__import__("losswidget").analyze(model, "magnitude", name="m"), save=False)
        panel = w.charts.plan_panel
        assert panel.path.placeholder == "path/to/pruned.onnx"
        panel.save_button.click()
        assert "type a path ending in .onnx" in panel.status.value
        assert w.save_pruned(tmp_path / "mem.onnx").result(60) == str(tmp_path / "mem.onnx")
    finally:
        w.close()
