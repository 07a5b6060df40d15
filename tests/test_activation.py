"""Activation-aware profiles: input-feature norms against numpy references and against onnxruntime itself
(a linear op run with a one-hot weight outputs exactly the inputs that weight element multiplies), L(s) by
hand, batching, cancel, flagged layers, quantized models, and prune reproducing the recovery runs."""
import json
import subprocess
import sys
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import losswidget
from losswidget import AnalysisCancelled, SettingsError
from losswidget.analysis.activation import relative_errors

from helpers import arr, init, model, residual_mlp, save, vi

FAST = {"sparsity_levels": [0.5]}


def profile(m, tmp_path, data, name="m.onnx", **kw):
    return losswidget.analyze(save(m, tmp_path / name), "activation", data=data, **{**FAST, **kw})


def squared(layer, shape):
    """The layer's recorded ||x_j||^2 for every weight element, in the weight's shape."""
    n = layer.input_norms
    return np.broadcast_to(n.values.astype(np.float64) ** 2, n.view).reshape(shape)


def onehot_reference(node, inputs: dict, w_shape, outputs=("y",)) -> np.ndarray:
    """For every element e of the weight (graph input "w"): the squared norm of the node's output with w set to
    the one-hot e (a linear op then outputs exactly the inputs e multiplies), over the whole data."""
    feeds = {k: v for k, v in inputs.items()}
    g = helper.make_graph([node], "ref", [vi(k, list(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in feeds.items()]
                          + [vi("w", list(w_shape))], [vi(o, None) for o in outputs])
    sess = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    out = np.zeros(w_shape)
    for e in np.ndindex(*w_shape):
        w = np.zeros(w_shape, np.float32)
        w[e] = 1
        out[e] = float((sess.run(None, {**feeds, "w": w})[0].astype(np.float64) ** 2).sum())
    return out


def im2col_reference(x, w_shape, strides, pads, dilations, group):
    """Conv's input features by an explicit im2col: for each (group, channel, kernel offset), the sum over
    samples and output positions of the padded input under that offset."""
    m, cg, kh, kw = w_shape
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    oh = (h + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    out = np.zeros((group, cg, kh, kw))
    for oy in range(oh):
        for ox in range(ow):
            for i in range(kh):
                for j in range(kw):
                    col = xp[:, :, oy * strides[0] + i * dilations[0], ox * strides[1] + j * dilations[1]]   # [n, c]
                    out[:, :, i, j] += (col ** 2).sum(axis=0).reshape(group, cg)
    # weight element [o, ci, i, j] of output channel o (group o // (m / group)) sees out[group, ci, i, j]
    return np.repeat(out, m // group, axis=0).reshape(w_shape)


# -- norms ----------------------------------------------------------------------------------------------
def test_matmul_and_gemm_norms_by_hand(tmp_path):
    x = arr(5, 3, 4, seed=1)
    w1, w2 = arr(4, 6, seed=2), arr(4, 6, seed=3)        # w2 stored [out, in]: Gemm transB=1
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
             helper.make_node("Reshape", ["h", "flat"], ["h2"]),
             helper.make_node("Gemm", ["h2", "w2"], ["y"], transB=1, name="gemm")]
    m = model(nodes, [vi("x", ["n", 3, 4])], [vi("y", None)],
              [init("w1", w1), init("w2", w2), init("flat", np.array([-1, 6], np.int64))])
    p = profile(m, tmp_path, {"x": x})
    want1 = (x.astype(np.float64) ** 2).sum(axis=(0, 1))                 # feature k = x[..., k]
    np.testing.assert_allclose(squared(p.layers[0], w1.shape), np.repeat(want1[:, None], 6, axis=1), rtol=1e-6)
    h = (x.reshape(-1, 4) @ w1).astype(np.float64)
    want2 = (h ** 2).sum(axis=0)                                          # transB: feature k is column k of w2
    np.testing.assert_allclose(squared(p.layers[1], w2.shape), np.repeat(want2[None, :], 4, axis=0), rtol=1e-5)
    assert p.layers[0].input_norms.shape == (4, 1) and p.layers[1].input_norms.shape == (1, 6)   # compact


@pytest.mark.parametrize("case", ["gemm-transA", "gemm-weight-A", "gemm-weight-A-transA", "matmul-weight-first",
                                  "matmul-batched", "matmul-broadcast-weight", "matmul-vector-weight", "einsum"])
def test_linear_norms_equal_onnxruntime_one_hot_runs(tmp_path, case):
    x3 = arr(2, 3, 4, seed=5)
    cases = {   # node, data, stored weight shape
        "gemm-transA": (helper.make_node("Gemm", ["x", "w"], ["y"], transA=1), {"x": arr(4, 5, seed=6)}, (4, 3)),
        "gemm-weight-A": (helper.make_node("Gemm", ["w", "x"], ["y"]), {"x": arr(4, 5, seed=6)}, (3, 4)),
        "gemm-weight-A-transA": (helper.make_node("Gemm", ["w", "x"], ["y"], transA=1, transB=1),
                                 {"x": arr(5, 4, seed=6)}, (4, 3)),
        "matmul-weight-first": (helper.make_node("MatMul", ["w", "x"], ["y"]), {"x": x3}, (5, 3)),
        "matmul-batched": (helper.make_node("MatMul", ["x", "w"], ["y"]), {"x": x3}, (2, 4, 3)),
        "matmul-broadcast-weight": (helper.make_node("MatMul", ["x", "w"], ["y"]), {"x": arr(2, 1, 3, 4, seed=7)},
                                    (3, 4, 2)),
        "matmul-vector-weight": (helper.make_node("MatMul", ["x", "w"], ["y"]), {"x": x3}, (4,)),
        "einsum": (helper.make_node("Einsum", ["x", "w"], ["y"], equation="bsk,kn->bn"), {"x": x3}, (4, 3)),
    }
    node, data, shape = cases[case]
    w = arr(*shape, seed=8)
    m = model([node], [vi("x", ["n", *data["x"].shape[1:]])], [vi("y", None)], [init("w", w)])
    p = profile(m, tmp_path, data)
    assert p.layers[0].flags == () and p.layers[0].input_norms is not None
    reference = onehot_reference(helper.make_node(node.op_type, list(node.input), ["y"], **{
        a.name: helper.get_attribute_value(a) for a in node.attribute}), data, shape)
    np.testing.assert_allclose(squared(p.layers[0], shape), reference, rtol=1e-5)


@pytest.mark.parametrize("strides, pads, dilations, group, auto_pad", [
    ([1, 1], [0, 0, 0, 0], [1, 1], 1, None),
    ([2, 1], [1, 0, 2, 1], [1, 2], 1, None),
    ([2, 2], [1, 1, 1, 1], [2, 1], 2, None),
    ([1, 1], [0, 0, 0, 0], [1, 1], 4, None),               # depthwise
    ([2, 2], None, [1, 1], 1, "SAME_UPPER"),
    ([2, 3], None, [1, 1], 2, "SAME_LOWER"),
    ([2, 2], None, [1, 1], 1, "VALID"),
])
def test_conv_norms_equal_an_im2col_reference(tmp_path, strides, pads, dilations, group, auto_pad):
    x = arr(3, 4, 7, 6, seed=11)
    shape = (4, 4 // group, 3, 2)
    attrs = {"strides": strides, "dilations": dilations, "group": group}
    attrs.update({"auto_pad": auto_pad} if auto_pad else {"pads": pads})
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    m = model([conv], [vi("x", ["n", 4, 7, 6])], [vi("y", None)], [init("w", arr(*shape, seed=12))])
    p = profile(m, tmp_path, {"x": x})
    if auto_pad:                      # the pads onnxruntime used: its output size tells the total; ONNX's rule the split
        from losswidget.analysis.activation import conv_pads
        pp = conv_pads((7, 6), (3, 2), strides, dilations, [0] * 4, auto_pad)
        pads = [pp[0][0], pp[1][0], pp[0][1], pp[1][1]]
    reference = im2col_reference(x, shape, strides, pads, dilations, group)
    np.testing.assert_allclose(squared(p.layers[0], shape), reference, rtol=1e-6)
    # and onnxruntime agrees (this also checks the SAME_* split against the runtime)
    np.testing.assert_allclose(reference, onehot_reference(conv, {"x": x}, shape), rtol=1e-5)


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 1], "pads": [1, 0, 0, 1], "dilations": [1, 2]},
                                   {"strides": [2, 2], "output_padding": [1, 0], "group": 2},
                                   {"auto_pad": "VALID", "strides": [3, 1]}])
def test_conv_transpose_norms_equal_onnxruntime_one_hot_runs(tmp_path, attrs):
    x = arr(2, 4, 3, 4, seed=13)
    shape = (4, 2, 3, 2)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
    p = profile(model([node], [vi("x", ["n", 4, 3, 4])], [vi("y", None)], [init("w", arr(*shape, seed=14))]), tmp_path,
                {"x": x})
    np.testing.assert_allclose(squared(p.layers[0], shape), onehot_reference(node, {"x": x}, shape), rtol=1e-5)


def test_transposed_weight_maps_back_to_storage(tmp_path):
    w = arr(6, 4, seed=15)                    # stored [out, in], Transpose to [in, out] before the MatMul
    x = arr(8, 4, seed=16)
    m = model([helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
               helper.make_node("MatMul", ["x", "wt"], ["y"], name="fc")], [vi("x", ["n", 4])], [vi("y", None)],
              [init("w", w)])
    p = profile(m, tmp_path, {"x": x})
    want = (x.astype(np.float64) ** 2).sum(axis=0)
    np.testing.assert_allclose(squared(p.layers[0], w.shape), np.repeat(want[None, :], 6, axis=0), rtol=1e-6)


def lstm_model(hidden=3, inputs=4, direction="forward", h0=None):
    """x [T, 2, inputs] -> LSTM -> Y; its initial state h0 [directions, 2, hidden] a constant (the data's first
    axis is the one cut into batches: here the steps, all in one batch)."""
    d = 2 if direction == "bidirectional" else 1
    w, r = arr(d, 4 * hidden, inputs, seed=17), arr(d, 4 * hidden, hidden, seed=18)
    node = helper.make_node("LSTM", ["x", "W", "R", "", "", "h0" if h0 is not None else ""], ["Y"],
                            hidden_size=hidden, direction=direction, name="rnn")
    return model([node], [vi("x", ["t", 2, inputs])], [vi("Y", None)],
                 [init("W", w), init("R", r)] + ([init("h0", h0)] if h0 is not None else []))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_norms_are_the_inputs_and_the_states_each_step_starts_from(tmp_path, direction):
    d = 2 if direction == "bidirectional" else 1
    x, h0 = arr(5, 2, 4, seed=19), arr(d, 2, 3, seed=20)
    m = lstm_model(direction=direction, h0=h0)
    p = profile(m, tmp_path, {"x": x})
    w_layer, r_layer = p.layers
    assert (w_layer.weight, r_layer.weight) == ("W", "R") and w_layer.input_norms.shape == (1, 1, 4)
    want_w = (x.astype(np.float64) ** 2).sum(axis=(0, 1))
    np.testing.assert_allclose(w_layer.input_norms.values.ravel() ** 2, want_w, rtol=1e-5)
    y = ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0].astype(np.float64)    # [T, D, B, H]
    for k in range(d):
        reverse = direction == "reverse" or k == 1
        states = np.concatenate([h0[k][None], y[1:, k] if reverse else y[:-1, k]])
        np.testing.assert_allclose(r_layer.input_norms.values[k].ravel() ** 2, (states ** 2).sum(axis=(0, 1)), rtol=1e-5)


def test_unmeasurable_layers_are_flagged_kept_dense_and_named(tmp_path):
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "wt"], ["o1"], name="then_fc")], "then", [],
                               [vi("o1", None)], [init("wt", arr(4, 3, seed=2))])
    else_g = helper.make_graph([helper.make_node("Neg", ["x3"], ["o2"])], "else", [], [vi("o2", None)])
    gru = helper.make_node("GRU", ["x3r", "gw", "gr"], ["gy"], hidden_size=2, name="gru")   # linear_before_reset=0
    m = model([helper.make_node("MatMul", ["x", "w3"], ["x3"], name="fc"),
               helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
               helper.make_node("Unsqueeze", ["x3", "zero"], ["x3r"]), gru],
              [vi("x", ["n", 4]), vi("cond", [], TensorProto.BOOL)], [vi("y", None), vi("gy", None)],
              [init("w3", arr(4, 3)), init("gw", arr(1, 6, 3, seed=3)), init("gr", arr(1, 6, 2, seed=4)),
               init("zero", np.array([0], np.int64))])
    p = profile(m, tmp_path, {"x": arr(5, 4), "cond": np.array(True)}, target_sparsity=0.5)
    by = {l.weight: l for l in p.layers}
    assert by["w3"].flags == () and by["gw"].flags == ()
    for w in ("wt", "gr"):
        assert by[w].flags == ("not_measured",) and np.isnan(by[w].values).all() and by[w].input_norms is None
    note = next(n for n in p.notes if "not measured" in n)
    assert "wt (inside an If" in note and "gr (R) (GRU with linear_before_reset=0" in note
    plan = p.plan(0.5)
    assert plan.sparsity["wt"] == 0 and any("stay dense" in w for w in plan.warnings)
    p.to_json(tmp_path / "p.json")                               # NaN values and flags survive the file
    assert {l.weight: l.flags for l in losswidget.load_profile(tmp_path / "p.json").layers}["wt"] == ("not_measured",)


def test_quantized_model_measures_the_float_inputs_of_dynamic_quantization(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    src = save(residual_mlp(2, 8), tmp_path / "f.onnx")
    dst = str(tmp_path / "q.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    x = arr(16, 8, seed=21)
    q = losswidget.analyze(dst, "activation", data={"x": x}, **FAST)
    f = losswidget.analyze(src, "activation", data={"x": x}, **FAST)
    assert [l.op_type for l in q.layers] == ["MatMulInteger"] * 5 and all(l.flags == () for l in q.layers)
    # the first layer reads the model's input: its norms are the float model's, exactly
    assert q.layers[0].input_norms == f.layers[0].input_norms
    for a, b in zip(q.layers, f.layers):       # later ones read slightly different (quantized) activations
        qa, fa = a.input_norms.values, b.input_norms.values
        assert np.linalg.norm(qa - fa) < 0.1 * np.linalg.norm(fa)
        assert 0 < a.values[1] < 1
    assert q.recovery is not None and q.recovery.kind == "top-1 agreement"


def test_quantized_lstm_and_what_cannot_be_measured(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    m = lstm_model(h0=arr(1, 2, 3, seed=20))
    then_g = helper.make_graph([helper.make_node("MatMul", ["s", "wt"], ["o1"], name="then_fc")], "then", [],
                               [vi("o1", None)], [init("wt", arr(3, 3, seed=2))])
    else_g = helper.make_graph([helper.make_node("Neg", ["s"], ["o2"])], "else", [], [vi("o2", None)])
    m.graph.node.extend([helper.make_node("ReduceSum", ["Y"], ["s"], keepdims=0, axes=[0, 1]),
                         helper.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=else_g)])
    m.graph.input.append(vi("cond", [], TensorProto.BOOL))
    m.graph.output.append(vi("z", None))
    m.opset_import[0].version = 12
    src, dst = save(m, tmp_path / "f.onnx"), str(tmp_path / "q.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM", "MatMul"])
    x = arr(5, 2, 4, seed=19)
    p = losswidget.analyze(dst, "activation", data={"x": x, "cond": np.array(True)}, **FAST)
    lstm = [l for l in p.layers if l.op_type == "DynamicQuantizeLSTM"]
    assert len(lstm) == 2 and all(l.flags == () and l.values[1] > 0 for l in lstm)
    w = lstm[0].input_norms                       # W stored [directions, inputs, 4 hidden]
    assert w.shape == (1, 4, 1) and w.view == (1, 4, 12)
    np.testing.assert_allclose(w.values.ravel() ** 2, (x.astype(np.float64) ** 2).sum(axis=(0, 1)), rtol=1e-5)
    inner = [l for l in p.layers if l.op_type == "MatMul"]                   # inside the If: not measured
    assert inner and all(l.flags == ("not_measured",) for l in inner) and any("subgraph" in n for n in p.notes)


# -- L(s) -----------------------------------------------------------------------------------------------
def test_relative_error_by_hand(tmp_path):
    # w = [[1, -2], [3, 0.5]] (rows: input features), ||x_0|| = 2, ||x_1|| = 1
    # -> scores [[2, 4], [3, 0.5]]; ascending 0.5, 2, 3, 4; squares .25, 4, 9, 16 (sum 29.25)
    w = np.array([[1, -2], [3, 0.5]], np.float32)
    x = np.array([[2, 0], [0, 1]], np.float32) * np.array([[1], [1]], np.float32)     # column norms 2 and 1
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], [vi("x", ["n", 2])], [vi("y", None)],
              [init("w", w)])
    p = profile(m, tmp_path, {"x": x}, sparsity_levels=[0.25, 0.5, 0.75])
    layer = p.layers[0]
    np.testing.assert_allclose(layer.values, [0, 0.25 / 29.25, 4.25 / 29.25, 13.25 / 29.25], rtol=1e-6)
    # weight energy 1 + 4 + 9 + .25; at 0.5 the weights 0.5 (score .5) and 1 (score 2) are gone
    np.testing.assert_allclose(layer.energy_kept[2], 1 - 1.25 / 14.25, rtol=1e-6)
    assert layer.sensitivity == pytest.approx(13.25 / 29.25 + (13.25 - 4.25) / 29.25 * 0.8, rel=1e-6)


def test_selection_kernel_by_hand_equal_scores_nan_and_flags():
    from losswidget.weights import lowest_cuts_in, lowest_square_sums
    scores = np.array([1, 1, 1, 1], np.float32)
    w = np.array([1, 2, 3, 4], np.float32)
    cuts, sums, hist = lowest_square_sums(scores, [0, 2, 4], scores, w)
    # equal scores go in index order: the 2 lowest are the first two weights (|w| 1 and 2: energy 5 of 30)
    np.testing.assert_allclose(sums, [[0, 2, 4], [0, 5, 30]])
    assert cuts == [None, (1.0, 0, 4), (1.0, 0, 4)] and lowest_cuts_in(scores, [2], hist) == [(1.0, 0, 4)]
    m = relative_errors(np.array([0.0, 0.5]), 4, np.append(sums[0, :2], sums[0, 2]), np.append(sums[1, :2], sums[1, 2]))
    np.testing.assert_allclose(m.values, [0, 0.5])
    np.testing.assert_allclose(m.energy_kept, [1, 1 - 5 / 30])
    # NaN last; values spread over many buckets; cuts say (value, lower, lower or equal)
    v = np.array([3.0, np.nan, 0.5, 2.0, 0.5, 1e-30, 7e5], np.float32)
    cuts, sums, hist = lowest_square_sums(v, [1, 3, 6, 7], np.nan_to_num(v))
    assert cuts[:3] == [(pytest.approx(1e-30), 0, 1), (0.5, 1, 3), (7e5, 5, 6)] and np.isnan(cuts[3][0])
    np.testing.assert_allclose(sums[0, :3], [1e-60, 0.5, 0.5 + 4 + 9 + 49e10])
    assert relative_errors(np.array([0.0]), 3, [0, 0], [0, 3]).flags == ("zero_input",)
    assert relative_errors(np.array([0.0]), 3, [0, 0], [0, 0]).flags == ("all_zero",)
    assert relative_errors(np.array([0.0]), 3, [0, np.nan], [0, 3]).flags == ("non_finite",)


def test_selection_kernel_equals_a_stable_sort():
    from losswidget.weights import lowest_cuts_in, lowest_square_sums, sort_magnitudes
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(1, 5000))
        v = [np.abs(rng.standard_normal(n)), rng.integers(0, 4, n), 1 + rng.random(n) * 1e-6][trial % 3].astype(np.float32)
        if trial % 4 == 0:
            v[rng.integers(0, n, n // 10)] = np.nan
        w = rng.standard_normal(n).astype(np.float32)
        counts = sorted(set(rng.integers(0, n + 1, 6).tolist()) | {n})
        cuts, sums, hist = lowest_square_sums(v, counts, w)
        s, order = sort_magnitudes(v)
        np.testing.assert_allclose(sums[0], [float((w[order[:k]].astype(np.float64) ** 2).sum()) for k in counts],
                                   rtol=1e-9)
        for k, cut, again in zip(counts, cuts, lowest_cuts_in(v, counts, hist)):
            if k == 0:
                continue
            value = s[k - 1]
            lower = int((~np.isnan(v)).sum()) if np.isnan(value) else int((v < value).sum())
            upto = n if np.isnan(value) else int((v <= value).sum())
            assert cut[1:] == again[1:] == (lower, upto) and (cut[0] == value or np.isnan(value))


def test_values_match_a_numpy_reference_on_a_residual_net(tmp_path):
    m = residual_mlp(2, 8)
    x = arr(12, 8, seed=22)
    levels = [0.1, 0.3, 0.5, 0.9]
    p = profile(m, tmp_path, {"x": x}, sparsity_levels=levels)
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    h = x.astype(np.float64)
    acts = {}
    for b in range(2):
        acts[f"b{b}.w1"] = h
        t = np.tanh(h @ weights[f"b{b}.w1"])
        acts[f"b{b}.w2"] = t
        h = h + t @ weights[f"b{b}.w2"]
    acts["head"] = h
    for layer in p.layers:
        w, a = weights[layer.weight], acts[layer.weight]
        score = np.abs(w) * np.sqrt((a ** 2).sum(axis=0))[:, None]
        s = np.sort(score.ravel())
        want = [float((s[:int(round(lv * s.size))] ** 2).sum() / (s ** 2).sum()) for lv in [0.0] + levels]
        np.testing.assert_allclose(layer.values, want, rtol=1e-4, atol=1e-9)


def test_batches_give_the_same_numbers_as_one_batch(tmp_path):
    path = save(residual_mlp(2, 8), tmp_path / "r.onnx")
    x = arr(10, 8, seed=23)
    whole = losswidget.analyze(path, "activation", data={"x": x}, **FAST)
    np.savez(tmp_path / "d.npz", x=x)
    for data, kw in [({"x": x}, {"batch_size": 3}), ([{"x": x[:4]}, {"x": x[4:]}], {}), (str(tmp_path / "d.npz"), {})]:
        other = losswidget.analyze(path, "activation", data=data, **FAST, **kw)
        for a, b in zip(whole.layers, other.layers):
            np.testing.assert_allclose(a.input_norms.values, b.input_norms.values, rtol=1e-6)
            np.testing.assert_allclose(a.values, b.values, rtol=1e-5)
        assert dict(other.recovery.points) == pytest.approx(dict(whole.recovery.points))


def test_recovery_is_the_plan_at_each_target_in_activation_order(tmp_path):
    m = residual_mlp(2, 8)
    x = arr(40, 8, seed=24)
    path = save(m, tmp_path / "r.onnx")
    p = losswidget.analyze(path, "activation", data={"x": x}, sparsity_levels=[0.2, 0.5, 0.8, 0.9], target_sparsity=0.6)
    assert p.recovery.targets == (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
    dense = ort.InferenceSession(path).run(None, {"x": x})[0]
    for t, value in p.recovery.points:
        out = tmp_path / f"p{t}.onnx"
        losswidget.prune(path, p.plan(t), out)
        pruned = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
        assert value == pytest.approx((pruned.argmax(-1) == dense.argmax(-1)).mean())


@pytest.mark.parametrize("counts_limit", [None, 0])       # 0: each run finds its weights from the scores again
def test_prune_zeroes_exactly_what_the_recovery_runs_zeroed(tmp_path, monkeypatch, counts_limit):
    from losswidget.analysis import activation, runner
    if counts_limit is not None:
        monkeypatch.setattr(activation, "KEEP_COUNTS_LIMIT", counts_limit)
    m = residual_mlp(3, 8)
    path = save(m, tmp_path / "r.onnx")
    seen = []
    real = runner.ChunkedModel.run_whole

    def spy(self, feeds, swaps=None, outputs=None):
        if swaps:
            seen.append({k: v.copy() for k, v in swaps.items()})
        return real(self, feeds, swaps, outputs)
    monkeypatch.setattr(runner.ChunkedModel, "run_whole", spy)
    p = losswidget.analyze(path, "activation", data={"x": arr(20, 8, seed=25)}, batch_size=20,
                           sparsity_levels=[0.3, 0.6, 0.9])
    assert len(seen) == len(p.recovery.points)                    # one run per target (one batch)
    p.to_json(tmp_path / "p.json")
    loaded = losswidget.load_profile(tmp_path / "p.json")
    magnitude_plan_differs = False
    for (t, _), swaps in zip(p.recovery.points, seen):
        plan = loaded.plan(t)
        assert plan.criterion == "activation"
        plan.to_json(tmp_path / "plan.json")
        out = losswidget.prune(path, tmp_path / "plan.json", tmp_path / "pruned.onnx")
        pruned = {i.name: numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}
        assert set(swaps) == {l.weight for l in plan.layers if l.pruned > 0}
        for name, w in swaps.items():
            np.testing.assert_array_equal(pruned[name], w)
            assert int((w == 0).sum()) == next(l.pruned for l in plan.layers if l.weight == name)
        # the same plan by magnitude would remove other weights (so this test can tell the orders apart)
        mag = losswidget.Plan.from_dict({**json.loads(plan.to_json()), "criterion": "magnitude"})
        other = {i.name: numpy_helper.to_array(i) for i in onnx.load(losswidget.prune(
            path, mag, tmp_path / "mag.onnx")).graph.initializer}
        magnitude_plan_differs |= any(not np.array_equal(other[n], w) for n, w in swaps.items())
    assert magnitude_plan_differs


def test_plan_and_profile_files_carry_the_norms_compactly(tmp_path):
    path = save(residual_mlp(2, 8), tmp_path / "r.onnx")
    p = losswidget.analyze(path, "activation", data={"x": arr(6, 8)}, **FAST)
    d = json.loads(p.to_json())
    norms = d["layers"][0]["input_norms"]
    assert norms["shape"] == [8, 1] and norms["view"] == [8, 8] and isinstance(norms["float32"], str)
    plan = p.plan(0.5)
    back = losswidget.Plan.from_dict(json.loads(plan.to_json()))
    assert back.layers == plan.layers and back.layers[0].input_norms == p.layers[0].input_norms
    assert "criterion activation" in plan.to_recipe()
    d["layers"][0]["input_norms"]["float32"] = "AAAA"                            # one float, not eight
    with pytest.raises(losswidget.ProfileError, match="damaged"):
        losswidget.LossProfile.from_dict(d)
    bad = json.loads(plan.to_json())
    del bad["layers"][0]["input_norms"]
    with pytest.raises(SettingsError, match="no input norms"):
        losswidget.prune(path, losswidget.Plan.from_dict(bad), tmp_path / "o.onnx")


# -- the run ---------------------------------------------------------------------------------------------
def test_progress_cancel_and_partial(tmp_path, monkeypatch):
    from losswidget.analysis import activation
    path = save(residual_mlp(3, 8), tmp_path / "r.onnx")
    seen = []
    losswidget.analyze(path, "activation", data={"x": arr(6, 8)}, batch_size=2, **FAST,
                       progress=lambda d, t, msg: seen.append((d, t, msg)))
    assert [s[0] for s in seen] == list(range(1, len(seen) + 1)) and seen[-1][0] == seen[-1][1]
    assert seen[0][2] == "dense pass: batch 1 of 3" and any("recovery" in s[2] for s in seen)
    cancel = threading.Event()
    real = activation._measure

    def held(mf, layer, levels, norms):            # every layer after the first waits until the user cancels
        held.calls.append(layer)
        if len(held.calls) > 1:
            assert cancel.wait(10)
        return real(mf, layer, levels, norms)
    held.calls = []
    monkeypatch.setattr(activation, "_measure", held)
    with pytest.raises(AnalysisCancelled) as info:
        losswidget.analyze(path, "activation", data={"x": arr(6, 8)}, **FAST, cancel=cancel,
                           progress=lambda d, t, msg: cancel.set() if d > 1 else None)
    partial = info.value.partial
    assert partial.partial and 1 <= len(partial.layers) < 7 and all(l.values[1] > 0 for l in partial.layers)
    cancel.clear()
    with pytest.raises(AnalysisCancelled, match="no layer"):              # in the dense pass: nothing finished
        losswidget.analyze(path, "activation", data={"x": arr(6, 8)}, batch_size=2, **FAST, cancel=cancel,
                           progress=lambda d, t, msg: cancel.set())


def test_settings_and_data_are_checked(tmp_path):
    path = save(residual_mlp(1, 8), tmp_path / "r.onnx")
    with pytest.raises(losswidget.DataError, match="need data"):
        losswidget.analyze(path, "activation")
    with pytest.raises(SettingsError, match="needs labels"):
        losswidget.analyze(path, "activation", data={"x": arr(4, 8)}, metric="loss")
    with pytest.raises(SettingsError, match="not a setting"):
        losswidget.analyze(path, "activation", data={"x": arr(4, 8)}, workers=2)
    y = np.arange(6) % 6
    p = losswidget.analyze(path, "activation", data={"x": arr(6, 8), "y": y}, labels="y", metric="loss", **FAST)
    assert p.recovery.kind == "accuracy ratio" and p.method == "activation" and p.criterion == "activation"


def test_cli_profile_and_methods(tmp_path):
    path = save(residual_mlp(2, 8), tmp_path / "r.onnx")
    np.savez(tmp_path / "d.npz", x=arr(8, 8))
    out = subprocess.run([sys.executable, "-m", "losswidget", "profile", path, "--method", "activation", "--data",
                          str(tmp_path / "d.npz"), "--levels", "0.5,0.9", "--json", str(tmp_path / "p.json")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Activation-aware" in out.stdout and losswidget.load_profile(tmp_path / "p.json").method == "activation"
    methods = subprocess.run([sys.executable, "-m", "losswidget", "methods"], capture_output=True, text=True)
    assert methods.returncode == 0 and "activation" in methods.stdout
    listed = {m["name"]: m for m in losswidget.methods()}["activation"]
    assert listed["needs_data"] and listed["rank"] == 2 and listed["settings"]["metric"]["choices"] == [
        "auto", "kl", "mse", "loss"]


def test_matmulnbits_is_measured_and_pruned_in_activation_order(tmp_path):
    from helpers import quantize_nbits
    from losswidget.onnxfile import open_model
    from losswidget.graph import read_graph
    from losswidget.weights import Weight
    k, n = 64, 24
    b, s, z, _ = quantize_nbits(arr(k, n, seed=3), 4, 16, "packed")
    node = helper.make_node("MatMulNBits", ["x", "B", "s", "z"], ["y"], name="proj", domain="com.microsoft", K=k, N=n,
                            bits=4, block_size=16)
    m = model([node], [vi("x", ["batch", k])], [vi("y", ["batch", n])], [init("B", b), init("s", s), init("z", z)],
              extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    path = save(m, tmp_path / "nbits.onnx")
    x = arr(20, k, seed=5)
    p = losswidget.analyze(path, "activation", data={"x": x}, sparsity_levels=[0.5])
    layer = p.layers[0]
    assert layer.flags == () and (layer.input_norms.shape, layer.input_norms.view) == ((1, k), (n, k))   # [N, K]
    np.testing.assert_allclose(layer.input_norms.values.ravel() ** 2, (x.astype(np.float64) ** 2).sum(axis=0),
                               rtol=1e-5)
    plan = p.plan(0.5)
    out = losswidget.prune(path, plan, tmp_path / "pruned.onnx")
    with open_model(path) as mf:
        values = Weight(mf, read_graph(mf).layers[0].ref).values().reshape(n, k)
    with open_model(out) as mf:
        pruned = Weight(mf, read_graph(mf).layers[0].ref).values().reshape(n, k)
    scores = np.multiply(np.abs(values), layer.input_norms.values, dtype=np.float32).ravel()
    gone = np.zeros(n * k, bool)
    gone[np.argsort(scores, kind="stable")[:plan.layers[0].pruned]] = True          # the lowest |w|·||x_j||
    assert plan.layers[0].pruned > 0 and (pruned.ravel()[gone] == 0).all()           # zero point codes: exactly 0
    np.testing.assert_array_equal(pruned.ravel()[~gone], values.ravel()[~gone])
