"""Layer discovery and param counts on the shapes real exports take (DESIGN.md "Words")."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import losswidget
from losswidget.graph import read_graph
from losswidget.onnxfile import open_model

from helpers import arr, init, model, save, vi


def layers_of(m):
    with open_model(m) as mf:
        g = read_graph(mf)
        return [(l.name, l.op_type, l.weight, l.params) for l in g.layers], g.total_params


def test_initializer_layers_params_and_shared_weight_counted_once(tmp_path):
    w = arr(4, 4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
             helper.make_node("MatMul", ["a", "w"], ["b"], name="again"),          # same weight reused
             helper.make_node("MatMul", ["w2", "b"], ["c"], name="left"),          # weight on the left
             helper.make_node("MatMul", ["c", "c"], ["d"], name="activations"),    # no stored operand
             helper.make_node("Conv", ["img", "k"], ["e"], name="conv")]
    m = model(nodes, [vi("x", [4, 4]), vi("img", [1, 2, 5, 5])], [vi("d", None), vi("e", None)],
              [init("w", w), init("w2", arr(4, 4)), init("k", arr(3, 2, 3, 3)),
               init("shape", np.array([1, 2], np.int64))])
    layers, total = layers_of(save(m, tmp_path / "m.onnx"))
    assert [l[:3] for l in layers] == [("w", "MatMul", "w"), ("w2", "MatMul", "w2"), ("k", "Conv", "k")]
    assert total == 16 + 16 + 54          # int64 shape tensor is not a param; w counted once


def test_constant_node_weights_behind_reshape_transpose_cast_identity(tmp_path):
    # OCR exports keep weights in Constant nodes, often re-laid before use
    w = arr(6, 4).astype(np.float16)
    nodes = [helper.make_node("Constant", [], ["onnx::MatMul_42"], value=numpy_helper.from_array(w, "v")),
             helper.make_node("Cast", ["onnx::MatMul_42"], ["w32"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["w32"], ["wt"], perm=[1, 0]),
             helper.make_node("Identity", ["wt"], ["wi"]),
             helper.make_node("MatMul", ["x", "wi"], ["y"], name="/rec/fc/MatMul")]
    m = model(nodes, [vi("x", [1, 4])], [vi("y", [1, 6])])
    layers, total = layers_of(save(m, tmp_path / "ocr.onnx"))
    assert layers == [("rec/fc/MatMul", "MatMul", "onnx::MatMul_42", 24)]
    assert total == 24
    p = losswidget.analyze(str(tmp_path / "ocr.onnx"), sparsity_levels=[0.5])
    s = np.sort(np.abs(w.astype(np.float32).ravel()))
    assert p.layers[0].values[1] == pytest.approx(s[:12].mean(), rel=1e-6)


def test_qdq_per_channel_weights_are_dequantized(tmp_path):
    q = np.array([[[[10]], [[-20]]], [[[3]], [[-4]]]], np.int8)          # (2, 2, 1, 1)
    scale, zp = np.array([0.5, 2.0], np.float32), np.array([0, 1], np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    m = model(nodes, [vi("x", [1, 2, 3, 3])], [vi("y", None)], [init("q", q), init("s", scale), init("z", zp)])
    path = save(m, tmp_path / "qdq.onnx")
    layers, total = layers_of(path)
    assert layers == [("q", "Conv", "q", 4)] and total == 4 + 2 + 2
    p = losswidget.analyze(path, sparsity_levels=[0.5, 0.75])
    # dequantized |w|: 5, 10, |3-1|*2=4, |-4-1|*2=10 -> sorted 4, 5, 10, 10
    assert p.layers[0].values == (0.0, 4.5, 10.0)


def test_quantized_layer_ops(tmp_path):
    w8 = np.arange(-8, 10, dtype=np.int8).reshape(2, 1, 3, 3)
    b8 = np.arange(12, dtype=np.uint8).reshape(4, 3)
    nodes = [
        helper.make_node("QLinearConv", ["x", "xs", "xz", "w8", "ws", "wz", "ys", "yz"], ["c"], name="qconv"),
        helper.make_node("QLinearMatMul", ["a", "xs", "xz", "b8", "ws", "bz", "ys", "yz"], ["m"], name="qmm"),
        helper.make_node("ConvInteger", ["x", "w8i", "xz", "wz"], ["ci"], name="cint"),
        helper.make_node("MatMulInteger", ["a", "b8i", "xz", "bz"], ["mi"], name="mmint")]
    inits = [init("xs", np.float32(0.1)), init("xz", np.uint8(0)), init("w8", w8), init("ws", np.float32(0.5)),
             init("wz", np.int8(0)), init("ys", np.float32(0.2)), init("yz", np.uint8(0)), init("b8", b8),
             init("bz", np.uint8(2)), init("w8i", w8.copy()), init("b8i", b8.copy())]
    m = model(nodes, [vi("x", [1, 1, 4, 4], TensorProto.UINT8), vi("a", [2, 4], TensorProto.UINT8)],
              [vi("c", None, TensorProto.UINT8), vi("m", None, TensorProto.UINT8), vi("ci", None, TensorProto.INT32),
               vi("mi", None, TensorProto.INT32)], inits)
    path = save(m, tmp_path / "q.onnx")
    layers, _ = layers_of(path)
    assert [(l[1], l[2]) for l in layers] == [("QLinearConv", "w8"), ("QLinearMatMul", "b8"),
                                              ("ConvInteger", "w8i"), ("MatMulInteger", "b8i")]
    p = losswidget.analyze(path, sparsity_levels=[0.99])
    # |b - 2| sorted: 0 1 1 2 2 3 4 5 6 7 8 9; level 0.99 -> mean of the 11 smallest = 39 / 11,
    # scaled by 0.5 for QLinearMatMul, unscaled for MatMulInteger (its scale is applied after the op)
    assert p.layers[1].values[-1] == pytest.approx(39 / 11 * 0.5) and p.layers[3].values[-1] == pytest.approx(39 / 11)


def test_onnxruntime_dynamic_quantization_output(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv"),
             helper.make_node("Reshape", ["c", "sh"], ["f"]),
             helper.make_node("MatMul", ["f", "fc.weight"], ["m"], name="fc"),
             helper.make_node("LSTM", ["m", "lstm.W", "lstm.R"], ["", "yh"], hidden_size=4, name="lstm")]
    m = model(nodes, [vi("x", [1, 3, 8, 8])], [vi("yh", None)],
              [init("conv.weight", arr(8, 3, 3, 3)), init("sh", np.array([1, 1, -1], np.int64)),
               init("fc.weight", arr(288, 5)), init("lstm.W", arr(1, 16, 5)), init("lstm.R", arr(1, 16, 4))])
    src, dst = save(m, tmp_path / "f.onnx"), str(tmp_path / "f_q.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "LSTM"])
    layers, _ = layers_of(dst)
    assert [(l[0], l[1], l[3]) for l in layers] == [
        ("conv", "ConvInteger", 216), ("fc", "MatMulInteger", 1440),
        ("lstm (W)", "DynamicQuantizeLSTM", 80), ("lstm (R)", "DynamicQuantizeLSTM", 64)]
    p = losswidget.analyze(dst)
    assert all(np.isfinite(l.sensitivity) and l.sensitivity > 0 for l in p.layers)


def test_einsum_recurrent_and_subgraph_layers_in_graph_order(tmp_path):
    # voice-model style: convolution and LSTM inside If branches, using outer-scope weights
    then_g = helper.make_graph(
        [helper.make_node("Conv", ["x", "k_outer"], ["t"], name="then_conv"),
         helper.make_node("ReduceMean", ["t"], ["then_out"], keepdims=0)], "then", [], [vi("then_out", None)])
    else_g = helper.make_graph(
        [helper.make_node("LSTM", ["seq", "W", "R"], ["", "h"], hidden_size=3, name="else_lstm"),
         helper.make_node("ReduceMean", ["h"], ["else_out"], keepdims=0)], "else", [], [vi("else_out", None)],
        [init("W", arr(1, 12, 2)), init("R", arr(1, 12, 3))])
    body = helper.make_graph(
        [helper.make_node("MatMul", ["v_in", "loop_w"], ["v_out"], name="loop_mm"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("v_in", [1, 2])],
        [vi("cond_out", [], TensorProto.BOOL), vi("v_out", [1, 2])], [init("loop_w", arr(2, 2))])
    nodes = [helper.make_node("Einsum", ["a", "E"], ["e"], equation="ij,jk->ik", name="einsum"),
             helper.make_node("If", ["flag"], ["o"], then_branch=then_g, else_branch=else_g, name="branch"),
             helper.make_node("Loop", ["trip", "", "v0"], ["v_final"], body=body, name="loop"),
             helper.make_node("GRU", ["seq", "GW", "GR"], ["", "gh"], hidden_size=2, name="gru")]
    m = model(nodes, [vi("a", [1, 5]), vi("flag", [], TensorProto.BOOL), vi("x", [1, 1, 4, 4]),
                      vi("seq", [3, 1, 2]), vi("trip", [], TensorProto.INT64), vi("v0", [1, 2])],
              [vi("e", None), vi("o", None), vi("v_final", None), vi("gh", None)],
              [init("E", arr(5, 6)), init("k_outer", arr(2, 1, 3, 3)), init("GW", arr(1, 6, 2)),
               init("GR", arr(1, 6, 2))])
    layers, total = layers_of(save(m, tmp_path / "voice.onnx"))
    assert [(l[1], l[2]) for l in layers] == [
        ("Einsum", "E"), ("Conv", "k_outer"), ("LSTM", "W"), ("LSTM", "R"), ("MatMul", "loop_w"),
        ("GRU", "GW"), ("GRU", "GR")]
    assert total == 30 + 18 + 24 + 36 + 4 + 12 + 12


def test_fp16_bf16_and_int4_weights(tmp_path):
    w16 = arr(3, 4).astype(np.float16)
    bf = helper.make_tensor("wbf", TensorProto.BFLOAT16, [2, 2], [1.0, -2.0, 0.5, 4.0])
    i4 = helper.make_tensor("w4", TensorProto.INT4, [2, 4], [-8, -3, 0, 1, 2, 5, 7, -1])
    nodes = [helper.make_node("MatMul", ["x", "w16"], ["a"], name="half"),
             helper.make_node("MatMul", ["b", "wbf"], ["c"], name="bf"),
             helper.make_node("DequantizeLinear", ["w4", "s4"], ["w4f"]),
             helper.make_node("MatMul", ["d", "w4f"], ["e"], name="int4")]
    m = model(nodes, [vi("x", [1, 3], TensorProto.FLOAT16), vi("b", [1, 2], TensorProto.BFLOAT16), vi("d", [1, 2])],
              [vi("a", None, TensorProto.FLOAT16), vi("c", None, TensorProto.BFLOAT16), vi("e", None)],
              [init("w16", w16), bf, i4, init("s4", np.float32(0.25))], opset=21)
    path = save(m, tmp_path / "types.onnx")
    p = losswidget.analyze(path, sparsity_levels=[0.5, 0.9])
    assert [l.params for l in p.layers] == [12, 4, 8]
    assert p.layers[1].values[1] == pytest.approx(0.75)                      # mean of 0.5, 1.0
    assert p.layers[2].values[1] == pytest.approx(np.mean([0, 0.25, 0.25, 0.5]))
    assert p.layers[0].values[1] == pytest.approx(np.sort(np.abs(w16.astype(np.float32).ravel()))[:6].mean())


def test_jax_style_export_einsum_with_constant_weights(tmp_path):
    # jax2onnx-like: weights are Constants reshaped before dot_general (Einsum) and a bias add
    w = arr(2, 3, 4)
    nodes = [helper.make_node("Constant", [], ["c0"], value=numpy_helper.from_array(w, "c0")),
             helper.make_node("Constant", [], ["shp"], value=numpy_helper.from_array(np.array([6, 4], np.int64))),
             helper.make_node("Reshape", ["c0", "shp"], ["w2"]),
             helper.make_node("Einsum", ["x", "w2"], ["y"], equation="bi,io->bo", name="jit/dot_general")]
    m = model(nodes, [vi("x", ["b", 6])], [vi("y", ["b", 4])])
    layers, total = layers_of(save(m, tmp_path / "jax.onnx"))
    assert layers == [("jit/dot_general", "Einsum", "c0", 24)] and total == 24


def test_external_data_and_names_from_the_generator(tmp_path):
    import subprocess, sys
    from pathlib import Path
    gen = Path(__file__).resolve().parents[2] / "shared" / "bench" / "make_models.py"
    if not gen.exists():
        pytest.skip("shared/bench/make_models.py is not beside this checkout")
    out = tmp_path / "t.onnx"
    subprocess.run([sys.executable, str(gen), "transformer", str(out), "--layers", "1", "--hidden", "32",
                    "--external"], check=True, capture_output=True)
    ext = losswidget.analyze(str(out))
    inline = losswidget.analyze(onnx.load(str(out)))                          # same model, in memory
    assert [l.name for l in ext.layers] == ["l0.attn.q", "l0.attn.k", "l0.attn.v", "l0.attn.o", "l0.mlp.fc1",
                                            "l0.mlp.fc2", "head"]
    assert [l.values for l in ext.layers] == [l.values for l in inline.layers]


def test_external_data_beyond_4_gib_is_read_by_offset(tmp_path):
    # a sparse external data file over 4 GiB: the weight sits past the 32-bit offset range
    w = arr(16, 8)
    offset = 2**32 + 4096
    with open(tmp_path / "big.data", "wb") as f:
        f.seek(offset)
        f.write(w.tobytes())
    t = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[16, 8])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "big.data"), ("offset", str(offset)), ("length", str(w.nbytes))):
        t.external_data.add(key=k, value=v)
    huge = onnx.TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[32768, 32768])   # 4 GiB of weights
    huge.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "big.data"), ("offset", "0"), ("length", str(4 * 32768 * 32768))):
        huge.external_data.add(key=k, value=v)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
             helper.make_node("MatMul", ["z", "huge"], ["u"], name="huge_fc")]
    m = model(nodes, [vi("x", [1, 16]), vi("z", [1, 32768])], [vi("y", None), vi("u", None)], [t, huge])
    path = save(m, tmp_path / "big.onnx")
    with open_model(path) as mf:
        g = read_graph(mf)
        assert g.total_params == 128 + 32768 * 32768
        layer = g.layers[0]
        np.testing.assert_array_equal(mf.array(layer.ref.tensor), w)
    approx = losswidget.analyze(path, method="approximated")                  # reads no weights
    assert approx.model.total_params == 128 + 32768 * 32768 and len(approx.layers) == 2
