"""The widget driven from Python: traits set, buttons clicked, marks and cards read back (no browser)."""
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from onnx import helper

import losswidget
from losswidget import analyze, load_profile
from losswidget.analysis import model_hash
from losswidget.widget.app import LossProfileWidget
from losswidget.widget.cards import card_values
from losswidget.widget.panel import AddProfilePanel
from losswidget.widget.progress import Eta
from losswidget.widget.store import ProfileStore

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
    widget.wait(timeout)
    assert not [n for n, j in widget.jobs.items() if j.get("status") in ("queued", "running")]


@pytest.fixture
def widget(tmp_path):
    w = LossProfileWidget(net(tmp_path), data={"x": arr(8, 16)}, profiles_dir=tmp_path / "profiles")
    wait(w)
    yield w
    w.close()


def test_auto_profiles_cards_and_bars(widget):
    # with data the widget measures an activation-aware profile too, and shows it first (measured on data)
    assert set(widget.profiles) == {"Approximated", "Baseline", "Activation-aware"}
    assert widget.selected == "Activation-aware" and widget.profiles["Activation-aware"].recovery is not None
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
    assert widget.charts.sens_fig.marks[0] is bars and bars not in widget.charts.sens_fig.marks[1:]
    np.testing.assert_allclose(bars.y, p.sensitivities)
    assert list(bars.x) == list(range(6)) and bars.colors == ["#4c78a8"] * 6    # six similar layers: no outlier
    np.testing.assert_array_equal(widget.charts.params.bars.y, [256] * 6)


def test_sensitivity_figure_keeps_its_marks_as_profiles_arrive(tmp_path):
    # bqplot draws marks set on a figure only once its first marks are drawn: the bars must be there from the start
    w = LossProfileWidget(net(tmp_path), profiles_dir=tmp_path / "profiles", autostart=False)
    try:
        fig, bars = w.charts.sens_fig, w.charts.bars
        assert fig.marks[0] is bars and len(bars.y) == 0
        changes = []
        fig.observe(lambda c: changes.append(c["new"]), names=["marks"])
        w.add_profile("Baseline").result(60)
        wait(w)
        assert changes == [] and w.charts.bars is bars
        np.testing.assert_allclose(bars.y, w.profiles["Baseline"].sensitivities)
    finally:
        w.close()


def test_views_below_wait_for_the_profiles_and_a_page_in_a_kernel(tmp_path, monkeypatch):
    # in a kernel the views under the bars are made on its loop once the saved profiles are in and a page
    # has drawn the widget (js/host.js sets `host`): made while a page is still connecting, Voilà lost them
    from losswidget.widget import focus

    class Loop:                                        # the kernel's io_loop, running callbacks at once
        def add_callback(self, fn, *args):
            fn(*args)

        def call_later(self, delay, fn):
            fn()
    monkeypatch.setattr(focus, "kernel_loop", lambda: Loop())
    folder = tmp_path / "profiles"
    first = LossProfileWidget(net(tmp_path), profiles_dir=folder, autostart=False)   # no kernel: at once
    first.add_profile("Baseline").result(60)
    wait(first)
    first.close()
    w = LossProfileWidget(net(tmp_path), profiles_dir=folder, autostart=False)
    try:
        deadline = time.monotonic() + 30
        while not w.store.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.store.ready and "Baseline" in w.profiles
        panels = lambda: [c for c in w.children if isinstance(c, AddProfilePanel)]
        assert not w.charts.built and not panels()              # profiles in, but no page yet
        w.host.host = "voila"                                   # a page drew it
        assert w.charts.built and len(panels()) == 1
        assert w.charts.box.children[-1].children[-1] is w.charts.table
    finally:
        w.close()


def test_tooltip_scale_modes_and_drill_down(widget):
    widget.selected = "Baseline"
    charts = widget.charts
    charts.bars._handle_custom_msgs(None, {"event": "hover", "data": {"index": 2}})
    tip = charts.sensitivity.readout.value
    layer = widget.profiles["Baseline"].layers[2]
    for text in ("#2", "fc2", "MatMul", "fc2.weight", "[16, 16]", "256 params", f"{layer.sensitivity:.3g}"):
        assert text in tip
    charts.mode.value = "log"
    assert charts.bars.y.min() >= charts.bars.base and np.isfinite(charts.bars.y).all()
    charts.mode.value = "percent"
    assert charts.bars.y.sum() == pytest.approx(1.0)
    charts.bars._handle_custom_msgs(None, {"event": "element_click", "data": {"index": 4}})
    assert "#4 fc4" in charts.curve.title.value
    (line,) = charts.curve.curves
    np.testing.assert_allclose(line.x, layer.levels)
    np.testing.assert_allclose(line.y, widget.profiles["Baseline"].layers[4].values)


def test_compare_grouped_and_normalised(widget):
    widget.selected = "Baseline"
    widget.compare.value = ["Baseline", "Approximated"]
    assert widget.store.compare == ["Baseline", "Approximated"]
    marks = widget.charts.sensitivity.marks
    assert widget.charts.sens_fig.marks[:2] == marks and [m.labels for m in marks] == [["Baseline"], ["Approximated"]]
    assert [np.abs(m.y).max() for m in marks] == pytest.approx([1.0, 1.0])   # normalised per profile
    assert marks[0].x[0] < 0 < marks[1].x[0] < 1 and marks[0].colors != marks[1].colors   # side by side
    widget.charts.normalise.value = False
    np.testing.assert_allclose(marks[1].y, widget.profiles["Approximated"].sensitivities)
    widget.charts.select_layer(0)
    assert [l.labels[0] for l in widget.charts.curve.curves] == ["Baseline", "Approximated"]
    widget.compare.value = ["Baseline"]
    assert widget.charts.sens_fig.marks[0] is marks[0] and marks[1] not in widget.charts.sens_fig.marks


def test_target_slider_updates_cards(widget):
    widget.selected = "Baseline"
    p = widget.profiles["Baseline"]
    widget.target.value = 0.5
    cards = {c["key"]: c["value"] for c in widget.cards.cards}
    assert cards["reduction"] == f"{p.summary_at(0.5).est_params_reduction:.2f}×"
    assert cards["recovery"] == f"{p.summary_at(0.5).weight_energy_kept:.1%}"


def test_selection_sends_only_what_changed(widget):
    changes = []
    widget.charts.params.bars.observe(lambda c: changes.append(c["name"]), names=["x", "y"])
    widget.selected = "Baseline"
    widget.selected = "Approximated"
    assert changes == []                                    # same layers: params bars untouched
    assert widget.charts.bars.y.tolist() == pytest.approx(widget.profiles["Approximated"].sensitivities.tolist())


SLOW = [i / 100 for i in range(100)]      # 100 levels: a one-shot run of a few seconds on `net`


def until(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def names_on_disk(folder):
    return sorted(load_profile(f).name for f in folder.glob("*.json"))


def test_panel_checks_every_field_before_queueing(widget, tmp_path):
    panel = widget.panel
    assert panel.run.disabled and "Give the profile a name" in panel.name_message.value
    panel.name.value = "Baseline"
    assert "exists" in panel.name_message.value and panel.run.disabled
    panel.name.value = "coarse"
    assert panel.name_message.value == "" and not panel.run.disabled
    levels = panel.fields["sparsity_levels"]
    levels.input.value = "custom"
    assert levels.extra.layout.display == "" and panel.run.disabled and "Give at least one sparsity level" in levels.message.value
    levels.extra.value = "0.5, 1.5"
    assert "must lie in [0, 1)" in levels.message.value and panel.run.disabled
    assert panel.submit() is None and "coarse" not in widget.jobs             # nothing queued while invalid
    levels.extra.value = "0.5; 0.9"
    assert levels.message.value == "" and not panel.run.disabled
    job = panel.submit()
    assert job.result(60).levels == (0.0, 0.5, 0.9)
    wait(widget)
    assert panel.name.value == "coarse" and "Queued as 'coarse'" in panel.name_message.value   # the name stays
    assert panel.run.disabled                                                  # (and is taken now)
    assert widget.selected == "coarse" and "coarse is done and shown" in panel.status.value
    # data methods: data file, labels, samples and batch size, each checked beside its field
    panel.name.value = "measured"
    panel.method.value = "one-shot"
    shown = {f.setting.name for f in panel.shown()}
    assert {"data", "labels", "samples", "batch_size", "metric"} <= shown and "random_dims" not in shown
    data, labels = panel.fields["data"], panel.fields["labels"]
    samples, batch = panel.fields["samples"], panel.fields["batch_size"]
    assert data.message.value == "" and not panel.run.disabled                # the widget's data {"x": ...}
    samples.input.value = "0"
    assert "must lie in [1, inf]" in samples.message.value and panel.run.disabled
    samples.input.value = "many"
    assert "must be an integer" in samples.message.value
    samples.input.value, batch.input.value = "6", "4"
    assert samples.message.value == batch.message.value == "" and not panel.run.disabled
    data.input.value = ".npz file"
    assert "Give the path of an .npz file" in data.message.value and panel.run.disabled
    data.extra.value = str(tmp_path / "missing.npz")
    assert "No file at" in data.message.value
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    data.extra.value = str(tmp_path / "junk.npz")
    assert "not a readable .npz file" in data.message.value
    np.savez(tmp_path / "wrong.npz", image=arr(4, 16))
    data.extra.value = str(tmp_path / "wrong.npz")
    assert "no array for the model's input(s) x; it has image" in data.message.value
    np.savez(tmp_path / "val.npz", x=arr(10, 16), y=np.arange(10) % 16)
    data.extra.value = str(tmp_path / "val.npz")
    assert data.message.value == "" and list(labels.input.options) == ["y"]
    assert labels.input.value == "y" and not panel.run.disabled               # the one non-input array
    labels.input.value = "z"
    assert "No array 'z' in the data; it has x, y" in labels.message.value and panel.run.disabled
    labels.input.value = ""
    assert "'y', not a model input" in labels.message.value and panel.run.disabled
    labels.input.value = "y"
    p = panel.submit().result(60)
    assert (p.settings["samples"], p.settings["batch_size"], p.settings["labels"]) == (6, 4, "y")
    assert p.settings["data"] == str(tmp_path / "val.npz")
    data.input.value = "random (smoke test)"
    assert panel.fields["random_dims"].box.layout.display == "" and labels.message.value == ""
    # what only the run can tell still comes back beside the queue, and the typed name is free again
    np.savez(tmp_path / "ints.npz", x=np.full((10, 16), "a"))
    panel.name.value = "strings"
    data.input.value = ".npz file"
    data.extra.value = str(tmp_path / "ints.npz")
    labels.input.value = ""
    panel.submit()
    wait(widget)
    assert widget.jobs["strings"]["status"] == "failed" and "strings failed: " in panel.error.value
    # (without a kernel the panel is updated from worker threads too: wait for the last update)
    until(lambda: not panel.run.disabled, what="Run enabled again")
    assert panel.name.value == "strings" and "strings" not in widget.profiles
    widget.selected = "coarse"                                                  # the widget keeps working
    assert widget.cards.title == "coarse"


def test_panel_without_widget_data(tmp_path):
    w = LossProfileWidget(net(tmp_path), autostart=False)
    w.panel.name.value = "x"
    w.panel.method.value = "one-shot"
    assert "The widget has no data" in w.panel.fields["data"].message.value and w.panel.run.disabled
    w.panel.fields["data"].input.value = "random (smoke test)"
    assert not w.panel.run.disabled
    w.close()


def test_bars_fill_in_live_and_cancel_keeps_the_partial_profile(widget, tmp_path):
    seen = {"fills": [], "slow": []}
    started = threading.Event()

    def record(change):
        for name, versions in seen.items():
            p = change["new"].get(name)
            if p is not None and (not versions or versions[-1] is not p):
                versions.append(p)
                if p.partial and name == "slow":
                    started.set()
    widget.store.observe(record, "profiles")
    final = widget.add_profile("fills", "one-shot", sparsity_levels=SLOW[::2]).result(60)
    wait(widget)
    live = seen["fills"][:-1]
    assert live and all(p.partial and len(p.layers) == 6 for p in live)          # all layers, in place
    first = np.isfinite(live[0].sensitivities)
    assert 0 < first.sum() < 6 and "layers measured so far" in live[0].notes[0]
    assert seen["fills"][-1] is final is widget.profiles["fills"] and not final.partial   # the finished one replaces it
    assert widget.selected == "fills"
    job = widget.add_profile("slow", "one-shot", sparsity_levels=SLOW)
    assert started.wait(60)
    assert widget.selected == "slow" and widget.store.profiles["slow"].partial     # shown while it runs
    until(lambda: widget.jobs["slow"].get("partial") and "fill in" in widget.panel.status.value, what="live status")
    widget.panel.cancel.click()
    with pytest.raises(losswidget.AnalysisCancelled) as cancelled:
        job.result(60)
    wait(widget)
    kept = widget.profiles["slow"]
    assert kept is cancelled.value.partial and kept.partial and 0 < len(kept.layers) <= 6
    assert widget.jobs["slow"]["status"] == "cancelled" and "kept as a partial profile" in widget.panel.queue.value
    assert names_on_disk(tmp_path / "profiles").count("slow") == 1
    assert widget.cards.title == "slow (partial)"


def test_one_shot_from_widget_data(widget):
    p = widget.add_profile("kl", "one-shot", sparsity_levels=[0.5, 0.9]).result(60)
    assert p.method == "one-shot" and p.settings["samples"] == 8 and p.recovery is not None
    wait(widget)
    cards = {c["key"]: c for c in card_values(p, p.target_sparsity)}
    assert cards["recovery"]["label"] == "Est. recovery"
    assert cards["recovery"]["detail"].startswith(p.recovery.kind) and cards["settings"]["value"] == "one-shot (auto)"


def test_cancel_a_chosen_queued_job_and_remove_running_ones(widget, tmp_path):
    running = widget.add_profile("running", "one-shot", sparsity_levels=SLOW)
    queued = [widget.add_profile(n, "magnitude") for n in ("b", "c", "d")]
    panel = widget.panel
    until(lambda: widget.jobs["running"]["status"] == "running", what="the one-shot to start")
    assert [v for _, v in panel.job_choice.options] == ["running", "b", "c", "d"]
    assert panel.job_choice.layout.display == "" and panel.job_choice.value == "running"
    panel.job_choice.value = "c"
    panel.cancel.click()
    assert widget.jobs["c"]["status"] == "cancelled" and widget.jobs["running"]["status"] == "running"
    widget.remove_profile("d")                                  # queued: cancelled, gone
    widget.remove_profile("running")                            # running: cancelled, its results dropped
    assert "running" not in widget.jobs and "d" not in widget.jobs
    with pytest.raises(losswidget.AnalysisCancelled):
        running.result(60)
    assert queued[0].result(60).name == "b"
    wait(widget)
    assert set(widget.profiles) == {"Approximated", "Activation-aware", "Baseline", "b"}
    assert names_on_disk(tmp_path / "profiles") == ["Activation-aware", "Approximated", "Baseline", "b"]
    with pytest.raises(losswidget.SettingsError, match="No profile named 'running'"):
        widget.remove_profile("running")


def test_rename_rerun_remove_from_the_panel(widget, tmp_path):
    panel, folder = widget.panel, tmp_path / "profiles"
    widget.selected = "Baseline"
    assert "<b>Baseline</b>" in panel.chosen.value and not panel.rerun.disabled
    panel.new_name.value = "Approximated"
    panel.rename.click()
    assert "exists" in panel.manage_message.value and "Baseline" in widget.profiles
    panel.new_name.value = "magnitude (SparseML)"
    panel.rename.click()
    assert set(widget.profiles) == {"Activation-aware", "Approximated", "magnitude (SparseML)"}
    assert widget.selected == "magnitude (SparseML)" and widget.select.value == "magnitude (SparseML)"
    assert names_on_disk(folder) == ["Activation-aware", "Approximated", "magnitude (SparseML)"]
    old = widget.profiles["magnitude (SparseML)"]
    panel.rerun.click()
    assert "Computing 'magnitude (SparseML)' again" in panel.manage_message.value
    wait(widget)
    new = widget.profiles["magnitude (SparseML)"]
    assert new is not old and new.name == old.name and new.levels == old.levels
    np.testing.assert_allclose(new.sensitivities, old.sensitivities)
    assert names_on_disk(folder) == ["Activation-aware", "Approximated", "magnitude (SparseML)"]
    panel.remove.click()                                            # asks first
    assert panel.remove.description == "Remove magnitude (SparseML)?" and "magnitude (SparseML)" in widget.profiles
    panel.remove.click()
    assert set(widget.profiles) == {"Activation-aware", "Approximated"} and widget.selected == "Activation-aware"
    assert names_on_disk(folder) == ["Activation-aware", "Approximated"] and panel.remove.description == "Remove"


def test_rerun_uses_the_settings_and_a_cancelled_rerun_keeps_the_old_profile(widget):
    first = widget.add_profile("os", "one-shot", sparsity_levels=[0.5, 0.9], samples=6).result(60)
    wait(widget)
    shown = threading.Event()
    widget.store.observe(lambda c: c["new"].get("os") is not first and shown.set(), "profiles")
    job = widget.rerun_profile("os")
    again = job.result(60)
    wait(widget)
    assert again is widget.profiles["os"] and again.settings["samples"] == 6 and again.levels == first.levels
    assert widget.store.recorded_settings(again) == {"sparsity_levels": [0.0, 0.5, 0.9], "target_sparsity": 0.85,
                                                     "samples": 6, "batch_size": 6, "metric": "auto"}
    last = widget.store.job("os")
    last.settings = last.settings | {"sparsity_levels": SLOW}  # the next rerun takes a while
    shown.clear()
    job = widget.rerun_profile("os")
    assert shown.wait(60)                                       # the live one replaces it while running ...
    job.cancel()
    with pytest.raises(losswidget.AnalysisCancelled):
        job.result(60)
    wait(widget)
    assert widget.profiles["os"] is again                      # ... and the old one is back after a cancel
    assert "the previous profile is kept" in widget.jobs["os"]["message"]


def test_persistence_reload_and_remove(tmp_path, widget):
    folder = tmp_path / "profiles"
    assert len(list(folder.glob("*.json"))) == 3
    again = LossProfileWidget(widget.store.model, profiles_dir=folder)
    again.wait()
    assert set(again.profiles) == {"Approximated", "Baseline", "Activation-aware"} and again.jobs == {}  # none redone
    assert again.selected == "Activation-aware" and again.select.value == "Activation-aware"   # measured on data first
    assert again.cards.cards[0]["value"] == "1.5 k" and len(again.charts.bars.y) == 6
    assert again.profiles["Baseline"].layers == widget.profiles["Baseline"].layers
    assert again.store.model_hash == model_hash(widget.store.model) and again.store.ready
    other = LossProfileWidget(net(tmp_path, name="other.onnx", seed=50), profiles_dir=folder, autostart=False)
    other.wait()
    assert other.profiles == {} and other.store.notices == []                           # matched by content hash
    again.remove_profile("Baseline")
    assert "Baseline" not in again.profiles and len(list(folder.glob("*.json"))) == 2
    again.close()
    other.close()


def test_most_informative_profile_first_until_the_user_chooses(tmp_path):
    path, folder = net(tmp_path), tmp_path / "profiles"
    folder.mkdir()
    made = {"guess": analyze(path, "approximated", name="guess"),
            "weights": analyze(path, "magnitude", name="weights"),
            "measured": analyze(path, "one-shot", name="measured", data={"x": arr(4, 16)}, sparsity_levels=[0.5])}
    sparseml = {"results": [{"param": l.weight, "index": l.index, "sparse_measurements": [[0.0, 0.0], [0.9, 9.0]]}
                            for l in made["weights"].layers]}
    imported = losswidget.from_sparseml(sparseml, name="imported", model=path)
    for p in [*made.values(), imported]:
        p.to_json(folder / f"{p.name}.json")
    w = LossProfileWidget(path, profiles_dir=folder, autostart=False)
    w.wait()
    assert w.selected == "measured"                           # one-shot 3 > magnitude 1 > approximated 0 > unknown
    (folder / "measured.json").unlink()
    w2 = LossProfileWidget(path, profiles_dir=folder, autostart=False)
    w2.wait()
    assert w2.selected == "weights"
    store = w2.store
    store.remove("weights")
    assert store.selected == "guess"
    store.autostart([("Baseline", "magnitude")])              # finishes later and ranks higher: shown
    store.wait(60)
    assert store.selected == "Baseline"
    store.selected = "guess"                                  # the user's choice ...
    store.autostart([("Baseline 2", "magnitude")])
    store.wait(60)
    assert "Baseline 2" in store.profiles and store.selected == "guess"       # ... is kept
    w.close()
    w2.close()


class GatedStore(ProfileStore):
    """A store whose hash waits for the test: the widget must work before the hash is known."""
    gate = threading.Event()

    def _hash(self):
        assert self.gate.wait(30)
        return super()._hash()


def test_hash_in_the_background_then_saved_profiles_then_jobs(tmp_path):
    path, folder = net(tmp_path), tmp_path / "profiles"
    folder.mkdir()                                    # files are written into existing folders (issue 14)
    analyze(path, "magnitude", name="saved").to_json(folder / "saved.json")
    store = GatedStore(path, profiles_dir=folder)
    panel = AddProfilePanel(store)
    assert not store.ready and store.model_hash == "" and store.profiles == {}      # constructed, not hashed
    job = store.add("queued early", "approximated")
    store.autostart([("saved", "magnitude"), ("Baseline", "magnitude")])
    time.sleep(0.3)
    assert job.status == "queued" and store.profiles == {}
    GatedStore.gate.set()
    store.wait(60)
    assert store.ready and store.model_hash == model_hash(path)
    assert set(store.profiles) == {"saved", "queued early", "Baseline"}     # "saved" loaded, not recomputed
    assert "saved" not in store.jobs and store.selected == "queued early"  # the user asked for it
    assert "No profile selected" not in panel.chosen.value
    with pytest.raises(losswidget.ModelError, match="not found"):           # a bad model still fails at once
        LossProfileWidget(tmp_path / "missing.onnx")
    store.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_profiles_dir_that_cannot_be_used(tmp_path):
    path = net(tmp_path)
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    for where in (blocker, blocker / "sub"):
        w = LossProfileWidget(path, profiles_dir=where)
        profiles = w.wait(60)
        assert set(profiles) == {"Approximated", "Baseline"} and {j["status"] for j in w.jobs.values()} == {"done"}
        (notice,) = w.store.notices
        assert f"profiles_dir {where} cannot be used" in notice and "kept in memory only" in notice
        assert "cannot be used" in w.panel.notices.value and w.panel.dismiss.layout.display == ""
        w.panel.dismiss.click()
        assert w.store.notices == [] and w.panel.notices.value == ""
        w.close()
    # a folder that turns into a file while the widget is open: the profile stays, with a notice
    folder = tmp_path / "profiles"
    w = LossProfileWidget(path, profiles_dir=folder, autostart=False)
    w.wait()
    shutil.rmtree(folder)
    folder.write_text("now a file")
    p = w.add_profile("m", "magnitude").result(60)
    profiles = w.wait(60)
    assert profiles["m"] is p and w.jobs["m"]["status"] == "done" and w.jobs["m"]["warning"]
    (notice,) = w.store.notices
    assert f"Could not save profile 'm' to {folder}" in notice and "kept in memory" in notice
    assert "not saved" in w.panel.queue.value
    w.close()
    with pytest.raises(losswidget.ModelError):               # a failed constructor leaves nothing to trip over
        LossProfileWidget(blocker)
    gc.collect()


def test_bad_files_in_profiles_dir_are_skipped_with_one_notice(tmp_path):
    path, folder = net(tmp_path), tmp_path / "profiles"
    folder.mkdir()                                    # files are written into existing folders (issue 14)
    good = analyze(path, "magnitude", name="good")
    good.to_json(folder / "good.json")
    d = good.to_dict()
    text = json.dumps({**d, "name": "inf"})
    (folder / "inf.json").write_text(text.replace(f'"total_params": {good.model.total_params}',
                                                  '"total_params": Infinity'))
    (folder / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    uneven = json.loads(json.dumps({**d, "name": "uneven"}))
    uneven["layers"][0]["measurements"].pop("0.5")
    (folder / "uneven.json").write_text(json.dumps(uneven))
    (folder / "recovery.json").write_text(json.dumps({**d, "name": "recovery", "version": 1,
                                                      "measured_recovery": "abc"}))
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    # another model's profile is known by its head and not read further (a shared folder stays quick)
    (folder / "other.json").write_text('{"format": "losswidget.profile", "version": 2, "name": "other", "model": '
                                       '{"path": null, "hash": "blake3:0123", "total_params": ' + "9" * 10_000)
    w = LossProfileWidget(path, profiles_dir=folder, autostart=False)
    w.wait()
    assert set(w.profiles) == {"good"} and w.selected == "good"
    (notice,) = w.store.notices
    assert "Skipped 5 profile file(s)" in notice
    for name in ("inf.json", "nested.json", "uneven.json", "recovery.json", "binary.json"):
        assert name in notice
    assert "other.json" not in notice
    w.close()


STORE_WITH_A_FIFO = """
import os, sys, time
sys.path.insert(0, sys.argv[2])
from helpers import mlp, save
from losswidget.widget.store import ProfileStore
folder = os.path.join(sys.argv[1], "profiles")
os.mkdir(folder)
os.mkfifo(os.path.join(folder, "a.json"))           # a FIFO named like a profile: a plain open() blocks on it
m, _ = mlp()
store = ProfileStore(save(m, os.path.join(sys.argv[1], "m.onnx")), profiles_dir=folder)
store.wait()
print(store.notices)
store.close()
"""


def test_a_fifo_in_profiles_dir_is_skipped_not_waited_on(tmp_path):
    # in a child process: were the FIFO opened, the store's hash thread would block for ever
    out = subprocess.run([sys.executable, "-c", STORE_WITH_A_FIFO, str(tmp_path), os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Skipped 1 profile file(s)" in out.stdout and "a.json" in out.stdout and "FIFO" in out.stdout


def test_a_model_changed_on_disk_is_reported(tmp_path):
    path, folder = net(tmp_path), tmp_path / "profiles"
    w = LossProfileWidget(path, profiles_dir=folder, autostart=False)
    w.wait()
    w.add_profile("before", "magnitude").result(60)
    time.sleep(0.05)                                          # a new mtime, so the hash is not taken from the cache
    net(tmp_path, seed=7)                                     # re-exported to the same path
    w.add_profile("after", "magnitude").result(60)
    w.wait()
    (notice,) = w.store.notices
    assert "changed on disk" in notice and "'after'" in notice
    assert w.profiles["after"].model.hash != w.store.model_hash == w.profiles["before"].model.hash
    again = LossProfileWidget(path, profiles_dir=folder, autostart=False)
    again.wait()
    assert set(again.profiles) == {"after"}
    (notice,) = again.store.notices
    assert "1 saved profile(s)" in notice and "earlier version of net.onnx" in notice
    w.close()
    again.close()


def test_time_left_is_an_average_of_the_recent_rate():
    eta = Eta(tau=10.0)
    assert eta.update(0, 100, 30.0) is None                   # the first step comes after 30 s of loading
    assert eta.update(5, 100, 30.01) == pytest.approx(95 / 500)   # a first burst: the average since then ...
    assert eta.update(20, 100, 40.0) == pytest.approx(40.0)    # ... 2 steps/s over 10 s (from the start: 160 s)
    # past tau, a burst of 10 steps in 0.1 s counts for 0.1 s: the rate moves 1 - exp(-0.01) of the way to 100/s
    rate = 2 + (1 - math.exp(-0.01)) * (100 - 2)
    assert eta.update(30, 100, 40.1) == pytest.approx(70 / rate)
    # then 1 step/s for 30 s: three time constants, the rate is e^-3 of the way back from `rate` to 1
    rate = 1 + (rate - 1) * math.exp(-3)
    assert eta.update(60, 100, 70.1) == pytest.approx(40 / rate)
    assert eta.update(60, 100, 70.1) == pytest.approx(40 / rate)   # no time passed: unchanged


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
    empty = LossProfileWidget(net(widget.store.folder.path.parent, name="empty.onnx"), autostart=False)
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


def test_activation_profile_from_the_panel(widget, tmp_path):
    panel = widget.panel
    assert [m for _, m in panel.method.options][-1] == "activation" and panel.method.value != "activation"
    panel.method.value = "activation"
    shown = {n for n, f in panel.fields.items() if f.box.layout.display == ""}
    assert {"data", "labels", "metric", "sparsity_levels", "samples"} <= shown
    panel.name.value = "wanda"
    panel.fields["sparsity_levels"].input.value = "coarse (0, .5, .9)"
    job = panel.submit()
    p = job.result(60)
    wait(widget)
    assert widget.jobs["wanda"]["status"] == "done" and "wanda" in widget.profiles
    assert p.method == "activation" and p.criterion == "activation" and p.levels == (0.0, 0.5, 0.9)
    assert p.settings["samples"] == 8 and all(l.input_norms is not None for l in p.layers)
    widget.selected = "wanda"
    cards = {c["key"]: c for c in widget.cards.cards}
    assert cards["recovery"]["label"] == "Est. recovery" and cards["settings"]["value"] == "activation (auto)"
    saved = losswidget.load_profile(next((tmp_path / "profiles").glob("*wanda*.json")))
    assert saved.plan(0.5).layers == p.plan(0.5).layers            # the norms are saved with it


def test_data_gives_an_activation_profile_with_its_labels_set_aside(tmp_path):
    path = net(tmp_path)
    x, y = arr(12, 16), np.arange(12) % 4
    w = LossProfileWidget(path, data={"x": x, "y": y})
    wait(w)
    assert w.store.labels == "y" and w.selected == "Activation-aware"
    p = w.profiles["Activation-aware"]
    assert p.method == "activation" and p.settings["samples"] == 12 and p.recovery is not None
    w.close()
    # two arrays beside the input: which one holds labels is not guessed; the failure says what to pass
    w = LossProfileWidget(path, data={"x": x, "y": y, "z": y.astype(np.float32)})
    wait(w)
    assert w.store.labels is None and "Activation-aware" not in w.profiles
    assert w.jobs["Activation-aware"]["status"] == "failed" and "pass labels='y'" in w.jobs["Activation-aware"]["error"]
    w.close()
    w = LossProfileWidget(path, data={"x": x}, labels=y)                     # labels given as an array
    wait(w)
    job = w.store.job("Activation-aware")
    assert job.settings["labels"] is y and w.profiles["Activation-aware"].method == "activation"
    w.close()
