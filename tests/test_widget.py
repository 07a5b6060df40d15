"""The widget driven from Python: traits set, buttons clicked, marks and cards read back (no browser)."""
import json
import time

import numpy as np
import pytest
from onnx import helper

import losswidget
from losswidget.widget.app import LossProfileWidget
from losswidget.widget.cards import card_values

from helpers import arr, init, model, save, vi


def net(tmp_path, layers=6, width=16, name="net.onnx", seed=0):
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        inits.append(init(f"fc{i}.weight", arr(width, width, seed=seed + i)))
        nodes += [helper.make_node("MatMul", [x, f"fc{i}.weight"], [f"h{i}"], name=f"fc{i}"),
                  helper.make_node("Tanh", [f"h{i}"], [f"t{i}"])]
        x = f"t{i}"
    return save(model(nodes, [vi("x", ["n", width])], [vi(x, ["n", width])], inits), tmp_path / name)


def wait(widget, timeout=60):
    for job in list(widget.store._handles.values()):
        try:
            job.result(timeout)
        except Exception:
            pass
    deadline = time.monotonic() + timeout
    while any(j.get("status") in ("queued", "running") for j in widget.jobs.values()):
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def widget(tmp_path):
    w = LossProfileWidget(net(tmp_path), data={"x": arr(8, 16)}, profiles_dir=tmp_path / "profiles")
    wait(w)
    yield w
    w.close()


def test_auto_profiles_cards_and_bars(widget):
    assert set(widget.profiles) == {"Approximated", "Baseline"}
    assert {j["status"] for j in widget.jobs.values()} == {"done"}
    widget.selected = "Baseline"
    p = widget.profiles["Baseline"]
    cards = {c["key"]: c for c in widget.cards.cards}
    s = p.summary_at(widget.store.target)
    assert cards["params"]["value"] == "1.5 k" and cards["reduction"]["value"] == f"{s.est_params_reduction:.2f}×"
    assert cards["recovery"]["label"] == "Weight energy kept" and s.est_recovery is None     # data-free
    assert cards["recovery"]["value"] == f"{s.weight_energy_kept:.1%}" and "not a recovery" in cards["recovery"]["detail"]
    assert cards["quantization"]["value"] == "not analysed" and cards["settings"]["value"] == "magnitude"
    bars = widget.charts.bars
    assert widget.charts.sens_fig.marks == [bars]
    np.testing.assert_allclose(bars.y, p.sensitivities)
    assert list(bars.x) == list(range(6)) and len(bars.colors) == 6
    first = np.sort(p.sensitivities)[-1]                      # 6 layers: a fifth of them is 1 highlighted bar
    assert [c == "#d62728" for c in bars.colors] == [v >= first for v in p.sensitivities]
    np.testing.assert_array_equal(widget.charts.param_bars.y, [256] * 6)


def test_tooltip_scale_modes_and_drill_down(widget):
    widget.selected = "Baseline"
    charts = widget.charts
    charts._hover(charts.bars, {"data": {"index": 2}})
    tip = charts.tooltip.value
    layer = widget.profiles["Baseline"].layers[2]
    for text in ("#2", "fc2", "MatMul", "fc2.weight", "[16, 16]", "256 params", f"{layer.sensitivity:.4g}"):
        assert text in tip
    charts.mode.value = "log"
    assert charts.bars.scales["y"] is charts.ys_log and charts.y_axis.scale is charts.ys_log
    assert charts.bars.y.min() > 0
    charts.mode.value = "percent"
    assert charts.bars.y.sum() == pytest.approx(100)
    charts._click(charts.bars, {"data": {"index": 4}})
    assert charts.curve_fig.title.startswith("#4 fc4")
    (line,) = charts.curves
    np.testing.assert_allclose(line.x, layer.levels)
    np.testing.assert_allclose(line.y, widget.profiles["Baseline"].layers[4].values)


def test_compare_grouped_and_normalised(widget):
    widget.selected = "Baseline"
    widget.compare.value = ("Baseline", "Approximated")
    assert widget.store.compare == ["Baseline", "Approximated"]
    marks = widget.charts.sens_fig.marks
    assert [m.labels for m in marks] == [["Baseline"], ["Approximated"]] and all(m.display_legend for m in marks)
    assert [np.abs(m.y).max() for m in marks] == pytest.approx([1.0, 1.0])   # normalised per profile
    assert marks[0].x[0] < 0 < marks[1].x[0] < 1 and marks[0].colors != marks[1].colors   # side by side
    widget.charts.normalise.value = False
    np.testing.assert_allclose(marks[1].y, widget.profiles["Approximated"].sensitivities)
    widget.charts.select_layer(0)
    assert [l.labels[0] for l in widget.charts.curves] == ["Baseline", "Approximated"]
    widget.compare.value = ("Baseline",)
    assert widget.charts.sens_fig.marks == [marks[0]] and not marks[0].display_legend


def test_target_slider_updates_cards(widget):
    widget.selected = "Baseline"
    p = widget.profiles["Baseline"]
    widget.target.value = 0.5
    cards = {c["key"]: c["value"] for c in widget.cards.cards}
    assert cards["reduction"] == f"{p.summary_at(0.5).est_params_reduction:.2f}×"
    assert cards["recovery"] == f"{p.summary_at(0.5).weight_energy_kept:.1%}"


def test_selection_sends_only_what_changed(widget):
    changes = []
    widget.charts.param_bars.observe(lambda c: changes.append(c["name"]), names=["x", "y"])
    widget.selected = "Baseline"
    widget.selected = "Approximated"
    assert changes == []                                    # same layers: params bars untouched
    assert widget.charts.bars.y.tolist() == pytest.approx(widget.profiles["Approximated"].sensitivities.tolist())


def test_panel_validation_run_and_errors(widget):
    panel = widget.panel
    panel.run.click()
    assert "Give the profile a name" in panel.name_message.value
    panel.name.value = "Baseline"
    assert "exists" in panel.name_message.value
    panel.name.value = "coarse"
    levels = panel.fields["sparsity_levels"]
    levels.input.value = "coarse (0, .5, .9)"
    job = panel.submit()
    assert job.result(60).levels == (0.0, 0.5, 0.9)
    wait(widget)
    assert "coarse" in widget.select.options and widget.jobs["coarse"]["status"] == "done"
    panel.name.value = "custom bad"
    levels.input.value = "custom"
    levels.extra.value = "0.5, 1.5"
    panel.run.click()
    wait(widget)
    assert "Sparsity levels must lie in [0, 1)" in panel.error.value
    panel.name.value = "oneshot missing file"
    levels.input.value = "method default"
    assert panel.fields["data"].box.layout.display == "none"           # magnitude takes no data
    panel.method.value = "one-shot"
    assert panel.fields["data"].box.layout.display == "" and panel.fields["metric"].box.layout.display == ""
    panel.fields["data"].input.value = ".npz file"
    panel.fields["data"].extra.value = "/nonexistent/data.npz"
    panel.run.click()
    wait(widget)
    assert widget.jobs["oneshot missing file"]["status"] == "failed"
    assert "Data file not found" in panel.error.value
    widget.selected = "coarse"                              # the widget keeps working
    assert widget.cards.title == "coarse"


def test_one_shot_from_widget_data_and_cancel(widget):
    job = widget.add_profile("kl", "one-shot", sparsity_levels=[0.5, 0.9])
    p = job.result(60)
    assert p.method == "one-shot" and p.settings["samples"] == 8 and p.recovery is not None
    wait(widget)
    cards = {c["key"]: c for c in card_values(p, p.target_sparsity)}
    assert cards["recovery"]["label"] == "Est. recovery"
    assert cards["recovery"]["detail"].startswith(p.recovery.kind) and cards["settings"]["value"] == "one-shot (auto)"
    slow = widget.add_profile("slow", "one-shot", sparsity_levels=[i / 100 for i in range(100)])
    queued = widget.add_profile("queued", "magnitude")
    queued.cancel()
    deadline = time.monotonic() + 30
    while widget.jobs["slow"]["status"] != "running" or not widget.jobs["slow"].get("done"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert "slow" in widget.panel.status.value and widget.panel.progress.value > 0
    widget.panel.cancel.click()                             # cancels the running one
    with pytest.raises(losswidget.AnalysisCancelled):
        slow.result(60)
    wait(widget)
    assert widget.jobs["slow"]["status"] == "cancelled" and widget.jobs["queued"]["status"] == "cancelled"
    assert "slow" not in widget.profiles and "queued" not in widget.profiles


def test_persistence_reload_and_remove(tmp_path, widget):
    folder = tmp_path / "profiles"
    assert len(list(folder.glob("*.json"))) == 2
    again = LossProfileWidget(widget.store.model, profiles_dir=folder)
    assert set(again.profiles) == {"Approximated", "Baseline"} and again.jobs == {}      # nothing recomputed
    assert again.selected == "Approximated" and again.select.value == "Approximated"
    assert again.cards.cards[0]["value"] == "1.5 k" and len(again.charts.bars.y) == 6    # drawn at once
    assert again.profiles["Baseline"].layers == widget.profiles["Baseline"].layers
    other = LossProfileWidget(net(tmp_path, name="other.onnx", seed=50), profiles_dir=folder, autostart=False)
    assert other.profiles == {}                                                          # matched by content hash
    again.remove_profile("Baseline")
    assert "Baseline" not in again.profiles and len(list(folder.glob("*.json"))) == 1
    again.close()
    other.close()


def test_export_payloads(widget):
    widget.selected = "Baseline"
    widget.store.compare = ["Baseline"]
    payload = widget.exporter.payload("json")
    assert payload["filename"] == "net-Baseline.json"                       # model and profile in the name
    assert json.loads(payload["text"])["layers"][0]["name"] == "fc0"
    csv = widget.exporter.payload("csv")
    assert csv["mime"] == "text/csv" and csv["text"].startswith("index,id,name")
    assert csv["filename"] == "net-Baseline.csv" and widget.exporter.what == "profile 'Baseline'"
    df = widget.profiles["Baseline"].to_dataframe()
    assert list(df["name"]) == [f"fc{i}" for i in range(6)]


def test_export_when_comparing_gives_every_compared_profile(widget, tmp_path):
    widget.compare_profiles("Baseline", "Approximated")
    assert "2 compared profiles" in widget.exporter.what
    payload = widget.exporter.payload("json")
    assert payload["filename"] == "net-Baseline+Approximated.json"
    (tmp_path / payload["filename"]).write_text(payload["text"])
    back = losswidget.load_profiles(tmp_path / payload["filename"])
    assert [p.name for p in back] == ["Baseline", "Approximated"]
    assert back[0].layers == widget.profiles["Baseline"].layers
    with pytest.raises(losswidget.ProfileError, match="holds 2 profiles.*load_profiles"):
        losswidget.load_profile(tmp_path / payload["filename"])
    rows = widget.exporter.payload("csv")["text"].splitlines()
    head = rows[0].split(",")
    assert head[:2] == ["profile", "index"] and len(rows) == 1 + 2 * 6
    levels = set(widget.profiles["Baseline"].levels) | set(widget.profiles["Approximated"].levels)
    assert len(head) == 12 + len(levels)                                      # the union of both profiles' levels
    assert head[9:11] == ["target", "planned_sparsity"]
    only_magnitude = sorted(set(widget.profiles["Baseline"].levels) - set(widget.profiles["Approximated"].levels))
    column = head.index(f"L@{only_magnitude[0]:g}")
    approx_row = next(r.split(",") for r in rows if r.startswith("Approximated,"))
    magnitude_row = next(r.split(",") for r in rows if r.startswith("Baseline,"))
    assert approx_row[column] == "" and float(magnitude_row[column]) >= 0     # blank where not measured


def test_export_answers_the_request_it_was_asked(widget, monkeypatch):
    sent = []
    monkeypatch.setattr(widget.exporter, "send", lambda content, buffers=None: sent.append(content))
    widget.selected = "Baseline"
    widget.exporter._handle(widget.exporter, {"kind": "csv", "id": "view-a-1"}, [])
    assert sent[-1]["id"] == "view-a-1" and sent[-1]["filename"] == "net-Baseline.csv"
    empty = LossProfileWidget(net(widget.store.folder.parent, name="empty.onnx"), autostart=False)
    monkeypatch.setattr(empty.exporter, "send", lambda content, buffers=None: sent.append(content))
    empty.exporter._handle(empty.exporter, {"kind": "json", "id": "view-b-7"}, [])
    assert sent[-1] == {"error": "No profile to download yet: wait for one to finish.", "id": "view-b-7"}
    empty.close()


def test_sidebar(widget, monkeypatch):
    monkeypatch.setenv("LOSSWIDGET_FRONTEND", "vscode")
    assert widget.show_sidebar() is None and "No JupyterLab sidebar in vscode" in widget.message.value
    monkeypatch.setenv("LOSSWIDGET_FRONTEND", "jupyterlab")
    widget.show_sidebar(anchor="split-right")
    assert type(widget.sidecar).__name__ == "Sidecar" and widget.sidecar.anchor == "split-right"
    assert "main area (split-right)" in widget.message.value
    widget.show_sidebar()
    assert "Also open in JupyterLab's right sidebar" in widget.message.value


def test_sidebar_in_notebook_7_says_it_stays_inline(widget, monkeypatch):
    monkeypatch.setenv("LOSSWIDGET_FRONTEND", "jupyterlab")    # the kernel's guess: Lab and Notebook 7 look alike
    widget.host.host = "notebook7"                              # what the page reported
    widget.show_sidebar()
    assert widget.sidecar is None and "Notebook 7 has no sidebar for widgets" in widget.message.value
    # the page reports after show_sidebar ran (a notebook run top to bottom): the sidecar is closed again
    widget.host.host = ""
    widget.show_sidebar()
    sidecar = widget.sidecar
    assert sidecar is not None
    widget.host.host = "notebook7"
    assert widget.sidecar is None and sidecar.comm is None and "stays here" in widget.message.value
