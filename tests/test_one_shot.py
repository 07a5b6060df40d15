"""One-shot profiles: checked against numpy forward passes done by hand, and against whole-model runs."""
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import losswidget
from losswidget import AnalysisCancelled, DataError, ModelError, SettingsError

from helpers import arr, init, model, residual_mlp, save, vi

LEVELS = [0.25, 0.5, 0.75]


def prune(w, level):
    """Zero the round(level * n) smallest |w| (what one-shot promises), in numpy."""
    w = w.copy()
    k = int(round(level * w.size))
    w.flat[np.argsort(np.abs(w).ravel(), kind="stable")[:k]] = 0
    return w


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def mlp(tmp_path):
    """x[n, 4] -> MatMul(w1 [4, 6]) -> Relu -> MatMul(w2 [6, 5]) -> logits [n, 5]."""
    w1, w2 = arr(4, 6, seed=3), arr(6, 5, seed=4)
    x = arr(10, 4, seed=5)
    return save(two_layers(w1, w2), tmp_path / "mlp.onnx"), w1, w2, x


def two_layers(w1, w2):
    """x -> MatMul(w1) -> Relu -> MatMul(w2) -> logits (numpy: forward())."""
    return model([helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
                  helper.make_node("Relu", ["h"], ["r"]),
                  helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2")],
                 [vi("x", ["n", w1.shape[0]])], [vi("logits", ["n", w2.shape[1]])], [init("w1", w1), init("w2", w2)])


def forward(x, w1, w2):
    return np.maximum(x @ w1, 0) @ w2


def std_mse(out, dense):
    """What metric="mse" promises for [n, k] outputs: squared error, each column over its dense variance."""
    return (((out - dense) ** 2) / dense.var(axis=0)).mean()


def test_kl_mse_and_loss_match_numpy_by_hand(mlp):
    path, w1, w2, x = mlp
    dense = forward(x, w1, w2)
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    kl = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=LEVELS)
    mse = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=LEVELS, metric="mse")
    loss = losswidget.analyze(path, "one-shot", data={"x": x, "y": labels}, labels="y", metric="loss",
                              sparsity_levels=LEVELS)
    for li, (a, b) in enumerate([(True, False), (False, True)]):
        for k, level in enumerate(LEVELS, start=1):
            out = forward(x, prune(w1, level) if a else w1, prune(w2, level) if b else w2)
            lp, lq = log_softmax(dense), log_softmax(out)
            want_kl = (np.exp(lp) * (lp - lq)).sum(-1).mean()
            want_mse = std_mse(out, dense)
            ce = lambda logp: -logp[np.arange(10), labels].mean()  # noqa: E731
            want_loss = ce(lq) - ce(lp)
            assert kl.layers[li].values[k] == pytest.approx(want_kl, rel=1e-4, abs=1e-7)
            assert mse.layers[li].values[k] == pytest.approx(want_mse, rel=1e-4, abs=1e-7)
            assert loss.layers[li].values[k] == pytest.approx(want_loss, rel=1e-4, abs=1e-6)
    assert kl.settings["metric"] == "auto" and kl.settings["samples"] == 10 and kl.settings["random"] is False
    assert kl.settings["scoring"] == {"logits": "KL over axis 1 (logits)"}         # [n, classes] logits: KL
    assert mse.settings["scoring"] == {"logits": "MSE standardised per index of axis 1"}
    assert loss.settings["scoring"]["logits"].startswith("task loss: cross-entropy over axis 1 (logits)")
    assert kl.layers[0].values[0] == 0.0 and kl.method == "one-shot"


def test_kl_is_exact_for_small_changes_of_large_logits(tmp_path):
    """KL of a lightly pruned layer under logits of size ~100 over 1000 classes: the textbook form on
    float32 probabilities lost it (off by 120% at 0.2% pruning); the reported value must match float64 on
    onnxruntime's own logits."""
    w1, w2 = arr(16, 64, seed=1), arr(64, 1000, seed=2) * 2
    path = save(two_layers(w1, w2), tmp_path / "big.onnx")
    x = arr(256, 16, seed=3)
    levels = [0.002, 0.01, 0.05]
    p = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=levels)
    run = lambda a, b: ort.InferenceSession(  # noqa: E731
        save(two_layers(a, b), tmp_path / "p.onnx")).run(None, {"x": x})[0].astype(np.float64)
    dense = run(w1, w2)
    assert np.abs(dense).max() > 50
    lp = log_softmax(dense)
    for k, level in enumerate(levels, start=1):
        lq = log_softmax(run(prune(w1, level), w2))
        want = (np.exp(lp) * (lp - lq)).sum(-1).mean()
        assert p.layers[0].values[k] == pytest.approx(want, rel=1e-4)
    assert 0 < p.layers[0].values[1] < 1e-6             # a small change, measured, not rounding noise


def test_recovery_is_measured_at_several_targets_with_the_plan_of_each(mlp):
    path, w1, w2, x = mlp
    dense = forward(x, w1, w2)
    mse = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=LEVELS, metric="mse",
                             target_sparsity=0.6)
    kl = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=LEVELS, target_sparsity=0.6)
    assert mse.recovery.kind == "1 - normalised MSE" and kl.recovery.kind == "top-1 agreement"
    assert mse.recovery.targets == (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)      # the profile's target too
    for t, value in mse.recovery.points:
        s1, s2 = mse.plan(t).sparsity.values()
        out = forward(x, prune(w1, s1), prune(w2, s2))
        assert value == pytest.approx(max(0.0, 1 - std_mse(out, dense)), rel=1e-4, abs=1e-7)
    for t, value in kl.recovery.points:
        s1, s2 = kl.plan(t).sparsity.values()
        agree = (forward(x, prune(w1, s1), prune(w2, s2)).argmax(-1) == dense.argmax(-1)).mean()
        assert value == pytest.approx(agree)
    # the summary at a measured target is that measurement; between targets it interpolates, past them None
    assert kl.summary.est_recovery == pytest.approx(dict(kl.recovery.points)[0.6], abs=0.02)
    a, b = dict(kl.recovery.points)[0.7], dict(kl.recovery.points)[0.8]
    assert min(a, b) - 1e-9 <= kl.summary_at(0.75).est_recovery <= max(a, b) + 1e-9
    assert kl.recovery.at(0.97) is None and kl.summary.recovery_kind == "top-1 agreement"


def test_batches_npz_and_batch_size_give_the_same_numbers(mlp, tmp_path):
    path, _, _, x = mlp
    whole = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=LEVELS)
    np.savez(tmp_path / "d.npz", x=x)
    for data, kw in [({"x": x}, {"batch_size": 3}), ([{"x": x[:4]}, {"x": x[4:]}], {}),
                     (str(tmp_path / "d.npz"), {})]:
        other = losswidget.analyze(path, "one-shot", data=data, sparsity_levels=LEVELS, **kw)
        for a, b in zip(whole.layers, other.layers):
            np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-9)
    capped = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=LEVELS, samples=4)
    first4 = losswidget.analyze(path, "one-shot", data={"x": x[:4]}, sparsity_levels=LEVELS)
    assert capped.settings["samples"] == 4 and capped.layers[1].values == first4.layers[1].values


def residual_net(tmp_path, blocks=3, width=8):
    m = residual_mlp(blocks, width)
    return save(m, tmp_path / "res.onnx"), m


def test_cached_partial_runs_equal_whole_model_runs(tmp_path):
    path, m = residual_net(tmp_path)
    x = arr(6, 8, seed=7)
    p = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=[0.5, 0.9], metric="mse")
    dense = ort.InferenceSession(path).run(None, {"x": x})[0]
    weights = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for layer in p.layers:
        for k, level in enumerate([0.5, 0.9], start=1):
            pruned = onnx.ModelProto()
            pruned.CopyFrom(m)
            for t in pruned.graph.initializer:
                if t.name == layer.weight:
                    t.CopyFrom(numpy_helper.from_array(prune(weights[t.name], level), t.name))
            out = ort.InferenceSession(pruned.SerializeToString()).run(None, {"x": x})[0]
            assert layer.values[k] == pytest.approx(std_mse(out, dense), rel=1e-4)


def test_quantized_and_subgraph_layers(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src, _ = residual_net(tmp_path, blocks=2)
    dst = str(tmp_path / "q.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    p = losswidget.analyze(dst, "one-shot", data={"x": arr(4, 8, seed=1)}, sparsity_levels=[0.5, 0.9])
    assert [l.op_type for l in p.layers] == ["MatMulInteger"] * 5
    assert all(l.values[2] > 0 and not l.flags for l in p.layers)
    # a layer inside an If branch, reading an outer-scope input
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "wt"], ["o1"], name="then_fc")], "then", [],
                               [vi("o1", None)], [init("wt", arr(4, 3, seed=2))])
    else_g = helper.make_graph([helper.make_node("Neg", ["x3"], ["o2"])], "else", [], [vi("o2", None)])
    m = model([helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
               helper.make_node("MatMul", ["x", "w3"], ["x3"])],
              [vi("x", ["n", 4]), vi("cond", [], TensorProto.BOOL)], [vi("y", None)], [init("w3", arr(4, 3))])
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend([nodes[1], nodes[0]])
    path = save(m, tmp_path / "if.onnx")
    p = losswidget.analyze(path, "one-shot", data={"x": arr(5, 4), "cond": np.array(True)}, sparsity_levels=[0.9],
                           metric="mse")
    assert [l.weight for l in p.layers] == ["w3", "wt"]
    assert p.layers[0].values[1] == 0.0          # the taken branch does not read w3
    assert p.layers[1].values[1] > 0.0


def test_progress_cancel_and_partial(tmp_path, monkeypatch):
    from losswidget.analysis import one_shot
    path, _ = residual_net(tmp_path)
    x = arr(4, 8)
    seen = []
    losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=[0.5],
                       progress=lambda d, t, msg: seen.append((d, t, msg)))
    assert [s[0] for s in seen] == list(range(1, 15)) and seen[-1][1] == 14
    assert any("b0.w1 @ 0.5" in s[2] for s in seen)
    cancel = threading.Event()
    real = one_shot.OneShotSession.measure

    def held(self, index, levels, step=None):      # layers after the third wait until the user cancels
        if index >= 3:
            assert cancel.wait(10)
        return real(self, index, levels, step)
    monkeypatch.setattr(one_shot.OneShotSession, "measure", held)

    def stop_midway(done, total, msg):
        if done >= 6:                               # the first three layers' two levels (0 and 0.5)
            cancel.set()
    with pytest.raises(AnalysisCancelled) as info:
        losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=[0.5], progress=stop_midway,
                           cancel=cancel)
    partial = info.value.partial
    assert partial.partial and len(partial.layers) == 3 and "Partial" in partial.notes[0]
    assert all(l.values[1] > 0 for l in partial.layers)


def test_a_failing_layer_is_reported_and_the_rest_kept(tmp_path, monkeypatch):
    from losswidget.analysis import one_shot
    path, _ = residual_net(tmp_path)
    real = one_shot.OneShotSession.measure

    def flaky(self, index, levels, step=None):
        if self.layers[index].weight == "b1.w1":
            raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : no kernel")
        return real(self, index, levels, step)
    monkeypatch.setattr(one_shot.OneShotSession, "measure", flaky)
    p = losswidget.analyze(path, "one-shot", data={"x": arr(4, 8)}, sparsity_levels=[0.5])
    bad = [l for l in p.layers if l.flags == ("failed",)]
    assert [l.weight for l in bad] == ["b1.w1"] and "NOT_IMPLEMENTED" in bad[0].error
    assert all(l.values[1] > 0 for l in p.layers if l.weight != "b1.w1")
    assert any("b1.w1 failed" in n for n in p.notes)
    p.to_json(tmp_path / "p.json")
    assert losswidget.load_profile(tmp_path / "p.json").layers[2].error == bad[0].error


def test_random_data_only_when_asked_and_recorded(mlp):
    path = mlp[0]
    with pytest.raises(DataError, match="need data"):
        losswidget.analyze(path, "one-shot")
    p = losswidget.analyze(path, "one-shot", data="random", samples=3, sparsity_levels=[0.5])
    assert p.settings["random"] is True and p.settings["data"] == "random" and p.settings["samples"] == 3
    assert any("random data" in n for n in p.notes)


@pytest.mark.parametrize("data, kw, message", [
    ({"z": np.zeros((2, 4), np.float32)}, {}, r"unknown input name\(s\) \['z'\]"),
    ({"x": np.zeros((2, 5), np.float32)}, {}, r"axis 1 must be 4"),
    ({"x": np.zeros((2, 4, 1), np.float32)}, {}, r"has shape \[2, 4, 1\], the model expects \[n, 4\]"),
    ({"x": np.zeros((2, 4), np.int64)}, {}, r"dtype int64, the model expects float32"),
    ({"x": np.zeros((0, 4), np.float32)}, {}, r"holds no samples"),
    ([], {}, r"holds no batches"),
    ({"x": np.zeros((3, 4), np.float32)}, {"labels": np.zeros(2, np.int64)}, r"Labels hold 2 samples but the data holds 3"),
])
def test_bad_data(mlp, data, kw, message):
    with pytest.raises(DataError, match=message):
        losswidget.analyze(mlp[0], "one-shot", data=data, **kw)


def test_bad_settings(mlp, tmp_path):
    path, _, _, x = mlp
    with pytest.raises(SettingsError, match="metric='loss' needs labels"):
        losswidget.analyze(path, "one-shot", data={"x": x}, metric="loss")
    with pytest.raises(SettingsError, match="metric of method 'one-shot' must be one of auto, kl, mse, loss; got 'l1'"):
        losswidget.analyze(path, "one-shot", data={"x": x}, metric="l1")
    with pytest.raises(SettingsError, match="Unknown output 'nope'"):
        losswidget.analyze(path, "one-shot", data={"x": x}, output="nope")
    with pytest.raises(DataError, match="Data file not found"):
        losswidget.analyze(path, "one-shot", data=str(tmp_path / "none.npz"))


def test_model_onnxruntime_cannot_load(tmp_path):
    m = model([helper.make_node("MatMul", ["x", "w"], ["h"]),
               helper.make_node("Frobnicate", ["h"], ["y"], domain="com.example")],
              [vi("x", [1, 4])], [vi("y", None)], [init("w", arr(4, 4))],
              extra_opsets=[helper.make_opsetid("com.example", 1)])
    path = save(m, tmp_path / "custom.onnx")
    with pytest.raises(ModelError, match="onnxruntime cannot load this model"):
        losswidget.analyze(path, "one-shot", data={"x": arr(1, 4)})
    assert len(losswidget.analyze(path).layers) == 1          # data-free methods still work on it


def test_process_pool_and_dask_give_the_same_profile(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from distributed import Client, LocalCluster
    path, _ = residual_net(tmp_path)
    x = arr(6, 8, seed=11)
    local = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=[0.5, 0.9])
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=[0.5, 0.9], executor=pool)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dasked = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=[0.5, 0.9],
                                    executor=client.get_executor())
    for other in (pooled, dasked):
        assert [l.weight for l in other.layers] == [l.weight for l in local.layers]
        for a, b in zip(local.layers, other.layers):
            np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-9)
        assert other.recovery.kind == local.recovery.kind
        np.testing.assert_allclose([v for _, v in other.recovery.points], [v for _, v in local.recovery.points],
                                   rtol=1e-5)
    with pytest.raises(SettingsError, match="needs the model as a file path"):
        with ProcessPoolExecutor(1) as pool:
            losswidget.analyze(onnx.load(path), "one-shot", data={"x": x}, executor=pool)


def test_cli_one_shot(tmp_path, mlp):
    import subprocess
    import sys
    path, _, _, x = mlp
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(10) % 5)
    out = subprocess.run([sys.executable, "-m", "losswidget", "profile", path, "--method", "one-shot", "--data",
                          str(tmp_path / "d.npz"), "--labels", "y", "--metric", "loss", "--levels", "0.5,0.9",
                          "--workers", "2", "--json", str(tmp_path / "p.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "method one-shot" in out.stdout and "est. recovery" in out.stdout and "accuracy ratio" in out.stdout
    p = losswidget.load_profile(tmp_path / "p.json")
    assert p.settings["metric"] == "loss" and p.settings["samples"] == 10 and len(p.layers) == 2
    bad = subprocess.run([sys.executable, "-m", "losswidget", "profile", path, "--method", "one-shot", "--data",
                          str(tmp_path / "d.npz")], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown input name(s) ['y']" in bad.stderr and "Traceback" not in bad.stderr


def test_energy_kept_agrees_with_the_magnitude_profile(tmp_path):
    path, _ = residual_net(tmp_path, width=32)
    levels = [0.2, 0.5, 0.9]
    one = losswidget.analyze(path, "one-shot", data={"x": arr(4, 32, seed=2)}, sparsity_levels=levels, metric="mse")
    mag = losswidget.analyze(path, "magnitude", sparsity_levels=levels)
    for a, b in zip(one.layers, mag.layers):
        assert a.energy == pytest.approx(b.energy, rel=1e-6)
        np.testing.assert_allclose(a.energy_kept, b.energy_kept, rtol=1e-6, atol=1e-7)


def test_levels_that_prune_the_same_weights_run_once(mlp, monkeypatch):
    from losswidget.analysis import one_shot
    from losswidget.analysis.runner import ChunkedModel
    path, w1, w2, x = mlp
    runs = []
    real = ChunkedModel.run_with
    monkeypatch.setattr(ChunkedModel, "run_with", lambda self, env, swaps: runs.append(sorted(swaps)) or
                        real(self, env, swaps))
    monkeypatch.setattr(one_shot.OneShotSession, "recovery",                  # count the layers' runs only
                        lambda self, sparsity: ("1 - normalised MSE", 1.0))
    # w1 has 24 weights: 0.02 -> 0 pruned, 0.05 and 0.06 -> 1; w2 has 30: 0.02 -> 1, 0.05 and 0.06 -> 2
    p = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=[0.02, 0.05, 0.06], metric="mse")
    assert sorted(runs) == [["w1"], ["w2"], ["w2"]]
    a, b = p.layers
    assert a.values[1] == 0.0 and a.values[2] == a.values[3] > 0
    assert b.values[1] > 0 and b.values[2] == b.values[3] > b.values[1]
    want = std_mse(forward(x, prune(w1, 0.05), w2), forward(x, w1, w2))
    assert a.values[2] == pytest.approx(want, rel=1e-4)


def test_equal_magnitudes_are_pruned_in_index_order(tmp_path):
    """Weights with many equal |w|: each level prunes exactly round(s * n) of them, ties by position, the
    same in the per-layer runs and in the recovery run (which prunes by a mask below the cut)."""
    from losswidget.analysis.one_shot import OneShotSession, Settings
    from losswidget.weights import sort_magnitudes
    from losswidget.data import load_data
    rng = np.random.default_rng(6)
    w1 = rng.choice([-2.0, -1.0, 1.0, 2.0], size=(4, 6)).astype(np.float32)
    w2 = rng.choice([-0.5, 0.5, 1.5], size=(6, 5)).astype(np.float32)
    path = save(two_layers(w1, w2), tmp_path / "ties.onnx")
    x = arr(10, 4, seed=5)
    levels = [0.1, 0.25, 0.5, 0.9]
    session = OneShotSession(path, load_data({"x": x}, onnx.load(path)), Settings(metric="mse"), 1)
    try:
        for layer, w in zip(session.layers, (w1, w2)):
            for level in levels:
                np.testing.assert_array_equal(session._pruned(layer, level), prune(w, level))
        dense = forward(x, w1, w2)
        got = session.measure(0, levels).values
        want = [std_mse(forward(x, prune(w1, s), w2), dense) for s in levels]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    finally:
        session.close()
    mags = np.abs(rng.standard_normal(1000)).astype(np.float32)
    mags[::7] = 0.5
    mags[3] = np.nan
    values, order = sort_magnitudes(mags)
    np.testing.assert_array_equal(order, np.argsort(mags, kind="stable"))
    np.testing.assert_array_equal(values, np.sort(mags))


def test_probability_outputs_are_scored_by_kl_on_the_probabilities(mlp, tmp_path):
    """A model that ends in Softmax: KL of its probabilities, which equals KL of the logits before it (KL of
    softmax(probabilities) squashed these ~1000x and changed the ranking)."""
    path, w1, w2, x = mlp
    m = two_layers(w1, w2)
    m.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    m.graph.output[0].CopyFrom(vi("probs", ["n", 5]))
    probs = save(m, tmp_path / "probs.onnx")
    a = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=LEVELS)
    b = losswidget.analyze(probs, "one-shot", data={"x": x}, sparsity_levels=LEVELS)
    assert b.settings["scoring"] == {"probs": "KL over axis 1 (probabilities)"}
    for la, lb in zip(a.layers, b.layers):
        np.testing.assert_allclose(lb.values, la.values, rtol=1e-3, atol=1e-7)
    assert b.recovery.kind == "top-1 agreement"


def two_head_model():
    """x[n, 16] -> trunk MatMul -> Tanh -> a box-like head (values ~1e3) and a score-like head (~1e-3),
    concatenated into one output [n, 8], as a detector mixes box coordinates and class scores."""
    nodes = [helper.make_node("MatMul", ["x", "trunk"], ["t"], name="trunk"),
             helper.make_node("Tanh", ["t"], ["h"]),
             helper.make_node("MatMul", ["h", "big"], ["b0"], name="big"),
             helper.make_node("Mul", ["b0", "k_big"], ["b"]),
             helper.make_node("MatMul", ["h", "small"], ["s0"], name="small"),
             helper.make_node("Mul", ["s0", "k_small"], ["s"]),
             helper.make_node("Concat", ["b", "s"], ["out"], axis=1)]
    inits = [init("trunk", arr(16, 16, seed=1) / 4), init("big", arr(16, 4, seed=2)),
             init("small", arr(16, 4, seed=3)), init("k_big", np.float32(1e3)), init("k_small", np.float32(1e-3))]
    return model(nodes, [vi("x", ["n", 16])], [vi("out", ["n", 8])], inits)


def test_the_default_metric_protects_a_head_of_small_values(tmp_path):
    path = save(two_head_model(), tmp_path / "heads.onnx")
    x = arr(64, 16, seed=4)
    p = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=[0.5, 0.9])
    assert p.settings["scoring"] == {"out": "MSE standardised per index of axis 1"}
    sens = {l.name: l.sensitivity for l in p.layers}
    assert 0.2 < sens["small"] / sens["big"] < 5                 # both heads count, on their own scales
    # what a variance over the whole output made of it: the small head's change vanishes next to the big one
    dense = ort.InferenceSession(path).run(None, {"x": x})[0]
    m = two_head_model()
    for t in m.graph.initializer:
        if t.name == "small":
            t.CopyFrom(init("small", prune(numpy_helper.to_array(t), 0.9)))
    pruned = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]
    assert ((pruned - dense) ** 2).mean() / dense.var() < 1e-9
    plan = p.plan(0.5)
    assert plan.sparsity["small"] < 0.95 and plan.sparsity["big"] < 0.95   # neither head is sacrificed
