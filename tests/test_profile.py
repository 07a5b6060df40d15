"""Summary metrics, allocation, and the profile files (JSON, CSV, DataFrame, SparseML import)."""
import json
import math

import numpy as np
import pytest

import losswidget
from losswidget.plan import allocate
from losswidget.profile import LayerResult, LossProfile, ModelInfo, value_at


def layer(i, values, levels=(0.0, 0.5, 0.9), params=100, energy=1.0, kept=None):
    return LayerResult(index=i, id=f"l{i}", name=f"layer {i}", op_type="MatMul", weight=f"w{i}", shape=(10, 10),
                       params=params, levels=tuple(levels), values=tuple(values), energy=energy,
                       energy_kept=tuple(kept) if kept else (1.0, 0.8, 0.5))


def profile(layers, total=None, target=0.5):
    total = total if total is not None else sum(l.params for l in layers)
    return LossProfile(name="p", method="magnitude", model=ModelInfo("m.onnx", "abc", total, total),
                       settings={"sparsity_levels": list(layers[0].levels), "target_sparsity": target},
                       layers=tuple(layers))


def test_sensitivity_interpolates_and_extrapolates():
    assert value_at([0, 0.9, 1.0 - 1e-9], [0, 1, 2]) == pytest.approx(1.5, rel=1e-6)
    assert value_at([0, 0.5, 0.9], [0, 1, 2]) == pytest.approx(2.125)   # past the last level: slope 2.5 of the last two
    assert layer(0, [0.2, 1.0, 2.0]).sensitivity == pytest.approx(1.925)  # minus L(0)


def test_allocation_takes_cheapest_steps_until_target():
    levels = np.array([0.0, 0.5, 0.9])
    curves = np.array([[0, 1, 2], [0, 0.1, 0.2]], float)
    # scaled costs: A .5 -> .5, A .9 -> 1; B .5 -> .05, B .9 -> .1. Need 100 of 200 params:
    # B@.5 (+50), B@.9 (+40), A@.5 (+50) -> 140 >= 100
    chosen = allocate(levels, curves, np.array([100.0, 100.0]), 0.5)
    assert levels[chosen].tolist() == [0.5, 0.9]
    # running max: A's dip at .9 (raw 0) stays at cost 2, so B takes both steps (50 + 40 >= 60)
    chosen = allocate(levels, np.array([[0, 2, 0.0], [0, 1, 1.5]]), np.array([100.0, 100.0]), 0.3)
    assert levels[chosen].tolist() == [0.0, 0.9]
    # the cap: nothing is pruned past 0.95 even when asked for more
    lv = np.array([0.0, 0.9, 0.99])
    assert lv[allocate(lv, np.zeros((1, 3)), np.array([10.0]), 0.99)].tolist() == [0.9]


def test_summary_metrics():
    p = profile([layer(0, [0, 1, 2], kept=(1, 0.8, 0.5), energy=3.0), layer(1, [0, 0.1, 0.2], kept=(1, 0.9, 0.6))],
                total=250)
    s = p.summary
    assert s.total_params == 250 and s.prunable_params == 200
    assert s.avg_sensitivity == pytest.approx((2.125 + 0.2125) / 2)
    assert s.allocation == (0.5, 0.9)
    assert s.est_params_reduction == pytest.approx(250 / (250 - 140))
    assert s.est_recovery == pytest.approx((3.0 * 0.8 + 1.0 * 0.6) / 4.0)
    low = p.summary_at(0.1)                                     # the slider: less pruning, more recovery
    assert low.est_params_reduction < s.est_params_reduction and low.est_recovery > s.est_recovery
    assert p.summary_at(0.0001).allocation == (0.0, 0.5)


def test_json_round_trip_atomic_and_versioned(tmp_path, mlp_path):
    path, _ = mlp_path
    p = losswidget.analyze(path, sparsity_levels=[0.5, 0.9], name="mine")
    out = tmp_path / "sub" / "p.json"
    p.to_json(out)
    assert [f.name for f in out.parent.iterdir()] == ["p.json"]      # no temp file left behind
    d = json.loads(out.read_text())
    assert d["format"] == "losswidget.profile" and d["version"] == 1
    assert set(d["summary"]) == {"total_params", "prunable_params", "avg_sensitivity", "est_params_reduction",
                                 "est_recovery"}
    assert d["layers"][0]["measurements"] == {"0.0": 0.0, "0.5": p.layers[0].values[1], "0.9": p.layers[0].values[2]}
    assert d["model"]["hash"].startswith("blake3:") and len(d["model"]["hash"]) == 7 + 64
    q = losswidget.load_profile(out)
    assert q.layers == p.layers and q.name == "mine" and q.summary.to_dict() == p.summary.to_dict()
    d["version"] = 2
    out.write_text(json.dumps(d))
    with pytest.raises(losswidget.ProfileError, match="version 2.*Upgrade"):
        losswidget.load_profile(out)


def test_failed_write_keeps_the_old_file(tmp_path, mlp_path, monkeypatch):
    path, _ = mlp_path
    p = losswidget.analyze(path)
    out = tmp_path / "p.json"
    out.write_text("old")
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        p.to_json(out)
    assert out.read_text() == "old" and sorted(f.name for f in tmp_path.iterdir()) == ["mlp.onnx", "p.json"]


def test_damaged_profiles_get_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "losswidget.profile", "version": 1, "name": "x"')
    with pytest.raises(losswidget.ProfileError, match="not valid JSON"):
        losswidget.load_profile(bad)
    bad.write_text('{"format": "losswidget.profile", "version": 1, "name": "x"}')
    with pytest.raises(losswidget.ProfileError, match="damaged"):
        losswidget.load_profile(bad)
    bad.write_text('{"hello": 1}')
    with pytest.raises(losswidget.ProfileError, match="not a losswidget profile"):
        losswidget.load_profile(bad)
    with pytest.raises(losswidget.ProfileError, match="not found"):
        losswidget.load_profile(tmp_path / "missing.json")


def test_csv_and_dataframe(tmp_path, mlp_path):
    path, _ = mlp_path
    p = losswidget.analyze(path, sparsity_levels=[0.5])
    text = p.to_csv(tmp_path / "p.csv")
    rows = text.strip().split("\n")
    assert rows[0] == "index,id,name,op_type,weight,shape,params,sensitivity,flags,L@0,L@0.5"
    assert rows[1].startswith("0,h,w1,Gemm,w1,8x4,32,") and len(rows) == 3
    df = p.to_dataframe()
    assert list(df["name"]) == ["w1", "w2"] and df["sensitivity"].tolist() == pytest.approx(list(p.sensitivities))


def test_sparseml_json_import(tmp_path, mlp_path):
    path, _ = mlp_path
    sparseml = {"results": [
        {"id": "h", "name": "w1", "index": 0, "sparse_measurements": [[0.0, [0.0]], [0.5, [0.2, 0.4]], [0.9, [1.0]]]},
        {"id": "y", "name": "w2", "index": 1, "sparse_measurements": [[0.0, [0.0]], [0.5, [0.1]], [0.9, [0.5]]]}]}
    f = tmp_path / "sparseml.json"
    f.write_text(json.dumps(sparseml))
    p = losswidget.load_profile(f)
    assert p.method == "sparseml" and [l.values for l in p.layers] == [pytest.approx((0.0, 0.3, 1.0)), (0.0, 0.1, 0.5)]
    with_model = losswidget.from_sparseml(f, model=path)
    assert [l.params for l in with_model.layers] == [32, 24] and with_model.layers[0].op_type == "Gemm"


def test_empty_profile_for_a_model_without_layers(tmp_path):
    from onnx import helper
    from helpers import model, save, vi
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 2])], [vi("y", [1, 2])])
    p = losswidget.analyze(save(m, tmp_path / "relu.onnx"))
    assert p.layers == () and "No prunable layers" in p.notes[0]
    assert p.summary.est_params_reduction == 1.0 and p.summary.est_recovery == 1.0
    assert math.isnan(p.summary.avg_sensitivity)
    p.to_json(tmp_path / "e.json")
    assert losswidget.load_profile(tmp_path / "e.json").layers == ()
