"""Summary metrics, allocation, and the profile files (JSON, CSV, DataFrame, SparseML import)."""
import json
import math

import numpy as np
import pytest

import losswidget
from dataclasses import replace

from losswidget.plan import allocate, grid_for, interp_rows
from losswidget.profile import LayerResult, LossProfile, ModelInfo, Recovery, value_at


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


def measured(values_a, values_b, params=(100, 100), levels=(0.0, 0.5, 0.9), **kw):
    """A two-layer profile whose plans weigh layers by the measurements themselves."""
    layers = [layer(0, values_a, levels, params[0]), layer(1, values_b, levels, params[1])]
    return replace(profile(layers, **kw), plan_cost="measured", method="one-shot")


def test_plan_takes_the_cheapest_cost_per_pruned_parameter_and_lands_on_the_target():
    # A: c(s) = s, B: c(s) = 2 s (linear, extended past 0.9): A is cheaper per parameter, so it goes to the
    # cap (95 of 200 params) and B takes the rest of 0.6 x 200 = 120: 25 params, 0.25
    p = measured([0, 0.5, 0.9], [0, 1.0, 1.8])
    plan = p.plan(0.6)
    assert plan.sparsity == pytest.approx({"layer 0": 0.95, "layer 1": 0.25})
    assert plan.achieved == pytest.approx(0.6) and plan.target == 0.6
    assert plan.warnings == ("Some layers are planned past the highest measured level (0.9); their costs there "
                             "are extrapolated.",)
    # convex A: slope 0.2 to 0.5, then 2.25; B: slope 1. A's first segment, then B, then A's second
    p = measured([0, 0.1, 1.0], [0, 0.5, 0.9])
    assert p.plan(0.5).sparsity == pytest.approx({"layer 0": 0.5, "layer 1": 0.5})
    assert p.plan(0.6).sparsity == pytest.approx({"layer 0": 0.5, "layer 1": 0.7})
    # per *parameter*: with 300 params A's steep segment (2.25 / 300) is cheaper than B's (1 / 100)
    big = measured([0, 0.1, 1.0], [0, 0.5, 0.9], params=(300, 100), total=400)
    assert big.plan(0.8).sparsity == pytest.approx({"layer 0": 0.95, "layer 1": 0.35})


def test_plan_exclusions_cap_and_an_unreachable_target():
    p = measured([0, 0.5, 0.9], [0, 1.0, 1.8])
    plan = p.plan(0.6, exclude=["layer 0"])
    assert plan.sparsity == {"layer 0": 0.0, "layer 1": pytest.approx(0.95)}
    assert plan.layers[0].excluded and plan.achieved == pytest.approx(0.475)
    assert "cannot be reached" in plan.warnings[0] and "47.5%" in plan.warnings[0]
    assert p.plan(0.4, cap=0.5).sparsity == pytest.approx({"layer 0": 0.5, "layer 1": 0.3})
    assert p.plan(0.6, exclude=[1]).sparsity["layer 1"] == 0.0                # by index too
    with pytest.raises(losswidget.LossWidgetError, match="Cannot exclude 'nope'"):
        p.plan(0.5, exclude=["nope"])
    with pytest.raises(losswidget.LossWidgetError, match="target must lie in"):
        p.plan(0.97)


def test_plan_cost_rules():
    levels = (0.0, 0.5, 0.9)
    # energy: 1 - energy kept; A loses energy faster than B, so B is pruned first whatever the values say
    a = layer(0, [0, 9, 9], levels, kept=(1.0, 0.5, 0.1))
    b = layer(1, [0, 0, 0], levels, kept=(1.0, 0.9, 0.8))
    assert profile([a, b]).plan(0.3).sparsity == pytest.approx({"layer 0": 0.0, "layer 1": 0.6})
    # modelled: L(1) x (1 - kept), so equal energy curves are split by the architecture scores
    m = replace(profile([layer(0, [0, 0.5, 0.9], levels, kept=(1, 0.9, 0.5)),
                         layer(1, [0, 5.0, 9.0], levels, kept=(1, 0.9, 0.5))]), plan_cost="modelled")
    plan = m.plan(0.3)
    assert plan.sparsity["layer 0"] > plan.sparsity["layer 1"] and "architecture only" in plan.warnings[0]
    # a layer without measurements stays dense and is named
    bad = measured([0, np.nan, np.nan], [0, 0.5, 0.9])
    plan = bad.plan(0.3)
    assert plan.sparsity["layer 0"] == 0.0 and "no usable measurements" in plan.warnings[0]


def test_allocate_by_hand_on_the_grid():
    grid = grid_for(0.05)
    assert grid.tolist() == pytest.approx([0, 0.01, 0.02, 0.03, 0.04, 0.05])
    assert grid_for(0.955)[-1] == 0.955
    costs = np.array([[0, 1, 2, 3, 4, 5], [0, 0, 0, 10, 10, 10]], float)
    # B is free up to 0.02 (2 of its 100 params), then A at 1 per 0.01, B's jump to 0.03 costs 10
    s = allocate(grid, costs, [100, 100], 0.03)
    assert s.tolist() == pytest.approx([0.04, 0.02])


def test_summary_metrics():
    p = profile([layer(0, [0, 1, 2], kept=(1, 0.8, 0.5), energy=3.0), layer(1, [0, 0.1, 0.2], kept=(1, 0.9, 0.6))],
                total=250)
    s = p.summary
    assert s.total_params == 250 and s.prunable_params == 200
    assert s.avg_sensitivity == pytest.approx((2.125 + 0.2125) / 2)
    plan = p.plan()
    assert s.achieved_sparsity == pytest.approx(0.5) == plan.achieved
    assert s.est_params_reduction == pytest.approx(250 / (250 - 100))
    kept = {l.name: np.interp(plan.sparsity[l.name], l.levels, l.energy_kept) for l in p.layers}
    assert s.weight_energy_kept == pytest.approx((3.0 * kept["layer 0"] + 1.0 * kept["layer 1"]) / 4.0)
    assert s.est_recovery is None and s.recovery_kind is None              # data-free: no recovery estimate
    low = p.summary_at(0.1)                                     # the slider: less pruning, more energy kept
    assert low.est_params_reduction < s.est_params_reduction and low.weight_energy_kept > s.weight_energy_kept


def test_recovery_points_interpolate_and_stop_at_the_last_measured_target():
    r = Recovery("top-1 agreement", ((0.5, 0.9), (0.7, 0.7)))
    assert r.at(0.0) == 1.0 and r.at(0.25) == pytest.approx(0.95) and r.at(0.6) == pytest.approx(0.8)
    assert r.at(0.7) == pytest.approx(0.7) and r.at(0.75) is None
    p = replace(measured([0, 0.5, 0.9], [0, 1.0, 1.8]), recovery=r)
    assert p.summary_at(0.6).est_recovery == pytest.approx(0.8) and p.summary_at(0.6).recovery_kind == r.kind
    assert p.summary_at(0.8).est_recovery is None                          # never swapped for another number


def test_plan_files(tmp_path):
    p = replace(measured([0, 0.5, 0.9], [0, 1.0, 1.8]), recovery=Recovery("accuracy ratio", ((0.6, 0.93),)))
    plan = p.plan(0.6)
    plan.to_json(tmp_path / "plan.json")
    back = losswidget.load_plan(tmp_path / "plan.json")
    assert back.sparsity == plan.sparsity and back.est_recovery == pytest.approx(0.93)
    assert back.recovery_kind == "accuracy ratio" and back.achieved == plan.achieved
    rows = plan.to_csv(tmp_path / "plan.csv").strip().split("\n")
    assert rows[0] == "index,name,weight,op_type,params,sparsity,pruned,excluded"
    assert rows[1] == "0,layer 0,w0,MatMul,100,0.950000,95,0"
    recipe = plan.to_recipe(tmp_path / "r.yaml")
    assert "!GMPruningModifier" in recipe and "final_sparsity: 0.95" in recipe and '- "w0"' in recipe
    assert recipe.index("final_sparsity: 0.95") < recipe.index('- "w0"') < recipe.index("final_sparsity: 0.25")
    (tmp_path / "bad.json").write_text(json.dumps({**plan.to_dict(), "version": 7}))
    with pytest.raises(losswidget.ProfileError, match="plan format version 7"):
        losswidget.load_plan(tmp_path / "bad.json")


def test_json_round_trip_atomic_and_versioned(tmp_path, mlp_path):
    path, _ = mlp_path
    p = losswidget.analyze(path, sparsity_levels=[0.5, 0.9], name="mine")
    out = tmp_path / "sub" / "p.json"
    out.parent.mkdir()                                                # folders are not made (issue 14)
    p.to_json(out)
    assert [f.name for f in out.parent.iterdir()] == ["p.json"]      # no temp file left behind
    d = json.loads(out.read_text())
    assert d["format"] == "losswidget.profile" and d["version"] == 2
    assert set(d["summary"]) == {"total_params", "prunable_params", "avg_sensitivity", "target_sparsity",
                                 "achieved_sparsity", "est_params_reduction", "est_recovery", "recovery_kind",
                                 "weight_energy_kept"}
    assert d["plan_cost"] == "energy" and d["recovery"] is None
    assert [l["planned_sparsity"] for l in d["layers"]] == list(p.plan().sparsity.values())
    assert d["layers"][0]["measurements"] == {"0.0": 0.0, "0.5": p.layers[0].values[1], "0.9": p.layers[0].values[2]}
    assert d["model"]["hash"].startswith("blake3:") and len(d["model"]["hash"]) == 7 + 64
    q = losswidget.load_profile(out)
    assert q.layers == p.layers and q.name == "mine" and q.summary.to_dict() == p.summary.to_dict()
    d["version"] = 3
    out.write_text(json.dumps(d))
    with pytest.raises(losswidget.ProfileError, match="version 3.*Upgrade"):
        losswidget.load_profile(out)


def test_version_1_files_still_load(tmp_path):
    v1 = {"format": "losswidget.profile", "version": 1, "name": "old", "method": "one-shot", "created": "",
          "model": {"path": "m.onnx", "hash": "blake3:00", "total_params": 200, "prunable_params": 200},
          "settings": {"sparsity_levels": [0.0, 0.5, 0.9], "target_sparsity": 0.7, "metric": "loss"},
          "measured_recovery": 0.91, "recovery_note": "measured",
          "layers": [{"index": i, "id": f"l{i}", "name": f"l{i}", "params": 100,
                      "measurements": {"0.0": 0.0, "0.5": 0.1 * (i + 1), "0.9": 0.5 * (i + 1)}} for i in range(2)]}
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    p = losswidget.load_profile(tmp_path / "v1.json")
    assert p.recovery == Recovery("accuracy ratio", ((0.7, 0.91),)) and p.plan_cost == "measured"
    assert p.summary.est_recovery == pytest.approx(0.91, abs=1e-3) and p.summary.achieved_sparsity == pytest.approx(0.7)


def test_failed_write_keeps_the_old_file(tmp_path, mlp_path, monkeypatch):
    path, _ = mlp_path
    p = losswidget.analyze(path)
    out = tmp_path / "p.json"
    out.write_text("old")
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(losswidget.ProfileError, match="Cannot write profile .*p.json: disk full"):
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
    assert rows[0] == "index,id,name,op_type,weight,shape,params,sensitivity,planned_sparsity@0.85,flags,L@0,L@0.5"
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
    assert p.summary.est_params_reduction == 1.0 and p.summary.est_recovery is None
    assert p.plan().layers == () and p.summary.achieved_sparsity == 0.0
    assert math.isnan(p.summary.avg_sensitivity)
    p.to_json(tmp_path / "e.json")
    assert losswidget.load_profile(tmp_path / "e.json").layers == ()


def test_hull_walk_matches_a_monotone_chain():
    """plan.segments walks every layer's lower convex hull at once; check it against Andrew's monotone chain
    done point by point on random non-decreasing curves (with flat runs and jumps)."""
    from losswidget.plan import segments

    def chain(grid, cost):
        hull = []
        for k in range(len(grid)):
            while len(hull) >= 2 and ((cost[hull[-1]] - cost[hull[-2]]) * (grid[k] - grid[hull[-2]])
                                      >= (cost[k] - cost[hull[-2]]) * (grid[hull[-1]] - grid[hull[-2]])):
                hull.pop()
            hull.append(k)
        return hull

    rng = np.random.default_rng(1)
    grid = grid_for(0.95)
    costs = np.maximum.accumulate(np.where(rng.random((40, grid.size)) < 0.3, 0, rng.exponential(1, (40, grid.size)))
                                  .cumsum(axis=1) ** rng.uniform(0.5, 2, (40, 1)), axis=1)
    seg = segments(grid, costs, np.full(40, 10.0))
    for i in range(40):
        mine = seg.start[seg.layer == i], seg.end[seg.layer == i]
        vertices = sorted({*mine[0].tolist(), *mine[1].tolist()})
        assert vertices == pytest.approx(grid[chain(grid, costs[i])].tolist())


def test_interp_rows_by_hand():
    levels = [0.0, 0.5, 1.0]
    rows = [[1.0, 0.8, 0.0], [1.0, 0.5, 0.1], [2.0, 2.0, 4.0], [1.0, 0.0, 0.0]]
    # 0.25 halfway to 0.8; 0.5 on a level; 0.75 halfway 2 -> 4; past the end held
    np.testing.assert_array_equal(interp_rows(levels, rows, [0.25, 0.5, 0.75, 1.2]), [0.9, 0.5, 3.0, 0.0])
    assert interp_rows(levels, rows, [-0.1, 1.0, 0.0, 1.0]).tolist() == [1.0, 0.1, 2.0, 0.0]      # ends held
    rng = np.random.default_rng(0)                                  # and np.interp's numbers, row by row
    lv = np.sort(rng.random(9))
    r, x = rng.random((200, 9)), rng.random(200) * 1.2 - 0.1
    np.testing.assert_allclose(interp_rows(lv, r, x), [np.interp(a, lv, b) for a, b in zip(x, r)], rtol=1e-12)
    assert interp_rows([0.3], [[0.7], [0.2]], [0.0, 0.9]).tolist() == [0.7, 0.2]
