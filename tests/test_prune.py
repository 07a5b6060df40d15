"""Plans applied: the pruned model holds exactly the planned zeros, runs in onnxruntime, and nothing else moved."""
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import losswidget
from losswidget import ModelError, SettingsError

from helpers import arr, init, model, residual_mlp, save, vi


def smallest(w, k):
    """Indices of the k smallest |w|, ties in index order (what prune promises)."""
    return np.argsort(np.abs(w).ravel(), kind="stable")[:k]


def weights(path):
    m = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


@pytest.fixture
def res(tmp_path):
    path = save(residual_mlp(blocks=2, width=8), tmp_path / "res.onnx")
    x = arr(16, 8, seed=3)
    profile = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=[0.25, 0.5, 0.75])
    return path, x, profile


def test_pruned_model_has_the_planned_zeros_and_runs(res, tmp_path):
    path, x, profile = res
    plan = profile.plan(0.6)
    (tmp_path / "out").mkdir()                          # output folders are not made (issue 14)
    out = losswidget.prune(path, plan, tmp_path / "out" / "pruned.onnx")
    assert out == str(tmp_path / "out" / "pruned.onnx")
    before, after = weights(path), weights(out)
    assert before.keys() == after.keys()
    for layer in plan.layers:
        w, p = before[layer.weight], after[layer.weight]
        want = w.copy().ravel()
        want[smallest(w, layer.pruned)] = 0
        np.testing.assert_array_equal(p.ravel(), want)
    zeros = sum(int((after[l.weight] == 0).sum()) for l in plan.layers)
    assert zeros == plan.pruned_params and abs(plan.achieved - 0.6) < 0.005
    y = ort.InferenceSession(out).run(None, {"x": x})[0]
    assert y.shape == (16, 6) and np.isfinite(y).all()
    assert onnx.load(out).graph.node == onnx.load(path).graph.node            # only weights change


def test_excluded_layers_and_the_cli(res, tmp_path):
    path, x, profile = res
    profile.to_json(tmp_path / "p.json")
    first = profile.layers[0].name
    run = lambda *a: subprocess.run([sys.executable, "-m", "losswidget", *a], capture_output=True,  # noqa: E731
                                    text=True)
    out = run("plan", str(tmp_path / "p.json"), "--target", "0.5", "--exclude", first, "--json",
              str(tmp_path / "plan.json"), "--csv", str(tmp_path / "plan.csv"), "--recipe", str(tmp_path / "r.yaml"))
    assert out.returncode == 0, out.stderr
    assert "(excluded)" in out.stdout and "est. recovery" in out.stdout and "top-1 agreement" in out.stdout
    plan = losswidget.load_plan(tmp_path / "plan.json")
    assert plan.sparsity[first] == 0.0 and abs(plan.achieved - 0.5) < 0.005
    assert (tmp_path / "r.yaml").read_text().count("!GMPruningModifier") >= 1
    out = run("prune", path, "--plan", str(tmp_path / "plan.json"), "--out", str(tmp_path / "a.onnx"))
    assert out.returncode == 0, out.stderr
    out = run("prune", path, "--profile", str(tmp_path / "p.json"), "--target", "0.5", "--exclude", first,
              "--out", str(tmp_path / "b.onnx"))
    assert out.returncode == 0, out.stderr
    a, b = weights(tmp_path / "a.onnx"), weights(tmp_path / "b.onnx")
    assert all(np.array_equal(a[k], b[k]) for k in a)                   # the same plan both ways
    assert np.array_equal(a[profile.layers[0].weight], weights(path)[profile.layers[0].weight])
    bad = run("prune", path, "--plan", str(tmp_path / "plan.json"), "--target", "0.3", "--out", "x.onnx")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_quantized_storage_is_set_to_its_zero_point(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src = save(residual_mlp(blocks=2, width=16), tmp_path / "f.onnx")
    dst = str(tmp_path / "q.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QUInt8)
    x = arr(8, 16, seed=1)
    profile = losswidget.analyze(dst, "one-shot", data={"x": x}, sparsity_levels=[0.5, 0.9])
    plan = profile.plan(0.5)
    out = losswidget.prune(dst, plan, tmp_path / "qp.onnx")
    before, after = weights(dst), weights(out)
    for layer in profile.layers:
        planned = next(p for p in plan.layers if p.weight == layer.weight)
        if planned.pruned == 0:
            continue
        q = before[layer.weight]
        zp = before[next(n for n in before if n.startswith(layer.weight.replace("_quantized", "")) and
                         n.endswith("zero_point"))]
        deq = q.astype(np.int32) - zp.astype(np.int32)
        want = q.copy().ravel()
        want[smallest(deq, planned.pruned)] = np.broadcast_to(zp, q.shape).ravel()[smallest(deq, planned.pruned)]
        np.testing.assert_array_equal(after[layer.weight].ravel(), want)
    assert np.isfinite(ort.InferenceSession(out).run(None, {"x": x})[0]).all()


def test_external_data_stays_external_and_the_source_is_untouched(tmp_path):
    m = residual_mlp(blocks=2, width=32)
    src = tmp_path / "src" / "ext.onnx"
    src.parent.mkdir()
    onnx.save(m, str(src), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    data_before = (src.parent / "ext.data").read_bytes()
    profile = losswidget.analyze(str(src), "magnitude")
    plan = profile.plan(0.7)
    (tmp_path / "dst").mkdir()                          # output folders are not made (issue 14)
    out = losswidget.prune(str(src), plan, tmp_path / "dst" / "pruned.onnx")
    assert (src.parent / "ext.data").read_bytes() == data_before
    assert (tmp_path / "dst" / "pruned.onnx.data").exists()
    pruned = onnx.load(out, load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in pruned.graph.initializer)
    after = weights(out)
    zeros = sum(int((after[l.weight] == 0).sum()) for l in plan.layers)
    assert zeros == plan.pruned_params
    x = arr(4, 32, seed=2)
    assert np.isfinite(ort.InferenceSession(out).run(None, {"x": x})[0]).all()
    with pytest.raises(SettingsError, match="over its source"):
        losswidget.prune(str(src), plan, src)


def test_constant_and_subgraph_weights(tmp_path):
    w_const, w_then, w_else = arr(4, 4, seed=1), arr(4, 4, seed=2), arr(4, 4, seed=3)
    then_g = helper.make_graph([helper.make_node("MatMul", ["h", "wt"], ["yt"], name="then_mm")], "then", [],
                               [vi("yt", None)], [init("wt", w_then)])
    else_g = helper.make_graph([helper.make_node("MatMul", ["h", "we"], ["ye"], name="else_mm")], "else", [],
                               [vi("ye", None)], [init("we", w_else)])
    m = model([helper.make_node("Constant", [], ["wc"], value=numpy_helper.from_array(w_const)),
               helper.make_node("MatMul", ["x", "wc"], ["h"], name="first"),
               helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
              [vi("x", [2, 4]), vi("cond", [], onnx.TensorProto.BOOL)], [vi("y", None)])
    path = save(m, tmp_path / "if.onnx")
    profile = losswidget.analyze(path, "magnitude")
    assert [l.weight for l in profile.layers] == ["wc", "wt", "we"]
    plan = profile.plan(0.5)
    out = losswidget.prune(path, plan, tmp_path / "p.onnx")
    pm = onnx.load(out)
    const = numpy_helper.to_array(pm.graph.node[0].attribute[0].t)
    subs = {g.name: numpy_helper.to_array(g.initializer[0]) for g in (pm.graph.node[2].attribute[0].g,
                                                                      pm.graph.node[2].attribute[1].g)}
    for got, w, name in ((const, w_const, "wc"), (subs["then"], w_then, "wt"), (subs["else"], w_else, "we")):
        k = next(l.pruned for l in plan.layers if l.weight == name)
        want = w.copy().ravel()
        want[smallest(w, k)] = 0
        np.testing.assert_array_equal(got.ravel(), want)
    ort.InferenceSession(out).run(None, {"x": arr(2, 4), "cond": np.array(True)})


def test_a_plan_for_another_model_is_refused(res, tmp_path):
    path, _, profile = res
    other = save(residual_mlp(blocks=3, width=8), tmp_path / "other.onnx")
    plan = profile.plan(0.5)
    bigger = save(residual_mlp(blocks=2, width=12), tmp_path / "wide.onnx")
    with pytest.raises(ModelError, match="not in this model"):
        losswidget.prune(bigger, plan, tmp_path / "x.onnx")
    losswidget.prune(other, plan, tmp_path / "y.onnx")          # same names and sizes: applies (logged)
    with pytest.raises(SettingsError, match="should end in .onnx"):
        losswidget.prune(path, plan, tmp_path / "x.txt")
