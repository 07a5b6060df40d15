"""The two data-free methods, checked against values computed by hand."""
import math
import threading

import numpy as np
import pytest
from onnx import helper

import losswidget
from losswidget.analysis.approximated import gaussian_energy_kept

from helpers import init, model, save, vi

W10 = np.array([0.5, -0.1, 0.3, -0.2, 0.4, 0.0, -0.6, 0.7, 0.9, -0.8], np.float32)


def test_magnitude_matches_sparseml_rules_by_hand(tmp_path):
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], [vi("x", [1, 2])], [vi("y", None)],
              [init("w", W10.reshape(2, 5))])
    p = losswidget.analyze(save(m, tmp_path / "m.onnx"), sparsity_levels=[0.95, 0.5, 0.15, 0.1, 0.05, 0.5])
    layer = p.layers[0]
    # sorted |w| = 0 .1 .2 .3 .4 .5 .6 .7 .8 .9; idx = min(round(s*10), 9), Python's half-to-even rounding:
    # .05 -> idx 0, not past prev 0 -> sorted[0]; .1 -> idx 1 -> sorted[1]; .15 -> idx 2 -> sorted[2];
    # .5 -> idx 5 > prev 3 -> mean(.3, .4); .95 -> idx 9 > 5 -> mean(.5 .6 .7 .8)
    assert layer.levels == (0.0, 0.05, 0.1, 0.15, 0.5, 0.95)
    np.testing.assert_allclose(layer.values, [0.0, 0.0, 0.1, 0.2, 0.35, 0.65], rtol=1e-6)
    assert layer.sensitivity == pytest.approx(0.65)
    energy = float((W10.astype(np.float64) ** 2).sum())
    assert layer.energy == pytest.approx(energy, rel=1e-6)
    # level .5 prunes the 5 smallest: 0 + .01 + .04 + .09 + .16
    assert layer.energy_kept[4] == pytest.approx(1 - 0.30 / energy, rel=1e-6)


def test_magnitude_flags_nan_and_all_zero_weights(tmp_path):
    bad = np.ones((2, 2), np.float32)
    bad[0, 0] = np.nan
    m = model([helper.make_node("MatMul", ["x", "bad"], ["a"], name="nan_layer"),
               helper.make_node("MatMul", ["a", "zero"], ["b"], name="dead"),
               helper.make_node("MatMul", ["b", "ok"], ["c"], name="fine")],
              [vi("x", [1, 2])], [vi("c", None)],
              [init("bad", bad), init("zero", np.zeros((2, 2), np.float32)), init("ok", np.eye(2, dtype=np.float32))])
    p = losswidget.analyze(save(m, tmp_path / "m.onnx"))
    assert [l.flags for l in p.layers] == [("non_finite",), ("all_zero",), ()]
    assert any("NaN/Inf or all-zero" in n and "bad" in n and "zero" in n for n in p.notes)
    assert math.isfinite(p.summary.avg_sensitivity)        # the NaN layer does not poison the average
    p.to_json(tmp_path / "p.json")                          # and the file stays valid JSON
    assert losswidget.load_profile(tmp_path / "p.json").layers[0].flags == ("non_finite",)


def test_approximated_by_hand(tmp_path):
    # MatMul [b, 4] x [4, 8]: in_vol 4 (symbolic b counts 1), out_vol 8, params 32
    # -> (4 + 8) / 32 * max(8/4, 4/8) = 0.75, a line from L(0) = 0 to L(1) = 0.75
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], [vi("x", ["b", 4])], [vi("y", None)],
              [init("w", np.ones((4, 8), np.float32))])
    p = losswidget.analyze(save(m, tmp_path / "m.onnx"), method="approximated", sparsity_levels=[0.5, 0.9])
    assert p.layers[0].values == pytest.approx((0.0, 0.375, 0.675))
    assert p.layers[0].sensitivity == pytest.approx(0.7125)           # extrapolated to 0.95 along the line
    assert p.layers[0].flags == ()


def test_gaussian_energy_model():
    kept = gaussian_energy_kept(np.array([0.0, 0.5, 0.9]))
    samples = np.sort(np.abs(np.random.default_rng(1).standard_normal(400_000)))
    sq = samples ** 2
    empirical = [1.0, 1 - sq[:200_000].sum() / sq.sum(), 1 - sq[:360_000].sum() / sq.sum()]
    np.testing.assert_allclose(kept, empirical, atol=2e-3)


def test_progress_and_cancel(mlp_path):
    path, _ = mlp_path
    calls = []
    losswidget.analyze(path, progress=lambda done, total, msg: calls.append((done, total, msg)))
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)]
    assert {c[2] for c in calls} == {"w1", "w2"}
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(losswidget.AnalysisCancelled, match="cancelled"):
        losswidget.analyze(path, cancel=cancel)
    stop = threading.Event()
    seen = []

    def cancel_after_first(done, total, msg):
        seen.append(done)
        stop.set()
    with pytest.raises(losswidget.AnalysisCancelled):
        losswidget.analyze(path, progress=cancel_after_first, cancel=stop)
    assert seen == [1]


def test_methods_listing_builds_forms():
    ms = {m["name"]: m for m in losswidget.methods()}
    assert set(ms) >= {"approximated", "magnitude"}
    assert ms["magnitude"]["settings"]["sparsity_levels"]["default"] == [i / 100 for i in range(100)]
    assert ms["approximated"]["needs_data"] is False and ms["magnitude"]["label"]


def test_in_memory_model_equals_file(tmp_path, mlp_path):
    import onnx
    path, _ = mlp_path
    a, b = losswidget.analyze(path), losswidget.analyze(onnx.load(path))
    assert [l.values for l in a.layers] == [l.values for l in b.layers]
    assert a.model.path.endswith("mlp.onnx") and b.model.path is None
