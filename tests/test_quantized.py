"""4-bit and blocked formats (issue 15): MatMulNBits, blocked DequantizeLinear, GatherBlockQuantized.

Models come from onnxruntime's own MatMulNBitsQuantizer (its default and QDQ formats) on a small LLaMA-shaped
stack, and by hand for the edges the quantizer does not write (8 and 2 bits, no zero points, float zero
points, K not a multiple of the block, g_idx). What we read is checked against what onnxruntime computes:
the dequantized weight (an identity input through the node), the pruned model's outputs (onnxruntime on
the model `prune` wrote against numpy's dequantize-prune-matmul), and every method runs on them.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import losswidget
from losswidget.errors import ModelError
from losswidget.graph import read_graph
from losswidget.onnxfile import open_model
from losswidget.weights import Weight

from helpers import arr, init, llama, model, quantize_nbits, save, vi

MS = helper.make_opsetid("com.microsoft", 1)
LEVELS = [0.0, 0.3, 0.5, 0.9]


def sparseml_rule(mags, levels):
    """SparseML's magnitude measurements over sorted |w| (DESIGN.md), written out by hand."""
    s = np.sort(np.asarray(mags, np.float64).ravel())
    n, out, prev = s.size, [], 0
    for level in levels:
        idx = min(round(level * n), n - 1)
        if level <= 1e-9:
            out.append(0.0)
        elif idx > prev:
            out.append(s[prev:idx].mean())
            prev = idx
        else:
            out.append(s[idx])
            prev = idx + 1
    return np.array(out)


def prune_dense(w, k):
    """w with its k smallest |w| set to 0, ties in index order (what `prune` promises)."""
    flat = w.ravel().copy()
    flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
    return flat.reshape(w.shape)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """(float model, default-format model, QDQ-format model) paths, 4-bit blocks of 32, from onnxruntime's quantizer."""
    pytest.importorskip("onnx_ir")
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    folder = tmp_path_factory.mktemp("quantized")
    float_path = save(llama(layers=2, hidden=64, inter=96, vocab=100), folder / "llama.onnx")
    paths = [float_path]
    for fmt, name in ((QuantFormat.QOperator, "default.onnx"), (QuantFormat.QDQ, "qdq.onnx")):
        q = MatMulNBitsQuantizer(onnx.load(float_path), block_size=32, is_symmetric=False, quant_format=fmt)
        q.process()
        paths.append(save(q.model.model, folder / name))
    return paths


def test_quantizer_models_have_every_linear_layer_and_logical_params(quantized):
    float_path, default, qdq = quantized
    with open_model(float_path) as mf:
        plain = read_graph(mf)
    ops = {n.op_type for n in onnx.load(default).graph.node}
    assert "MatMulNBits" in ops and "MatMul" in ops          # attention's activation MatMuls stay MatMul
    for path in (default, qdq):
        with open_model(path) as mf:
            g = read_graph(mf)
        assert [l.name for l in g.layers] == [l.name for l in plain.layers]        # names as in the float model
        assert [l.params for l in g.layers] == [l.params for l in plain.layers]    # K·N, not packed bytes
        assert g.prunable_params == plain.prunable_params == 2 * (4 * 64 * 64 + 3 * 64 * 96) + 64 * 100
        assert {l.dtype for l in g.layers} == {"uint4"}
    with open_model(default) as a, open_model(qdq) as b:
        # the same weights, scales and zero points in both formats: the same params, packed or not
        assert read_graph(a).total_params == read_graph(b).total_params


def identity_through(m: onnx.ModelProto, node: onnx.NodeProto, k: int, feeds_b=None) -> np.ndarray:
    """What onnxruntime applies as this node's weight: the node alone on an identity input ([K, N])."""
    inits = [t for t in m.graph.initializer if t.name in node.input]
    extra = [vi(node.input[1], list(feeds_b.shape), TensorProto.UINT8)] if feeds_b is not None else []
    if feeds_b is not None:
        inits = [t for t in inits if t.name != node.input[1]]
    g = helper.make_graph([node], "one", [vi(node.input[0], [k, k])] + extra, [vi(node.output[0], None)], inits)
    one = helper.make_model(g, opset_imports=m.opset_import)
    feeds = {node.input[0]: np.eye(k, dtype=np.float32)}
    if feeds_b is not None:
        feeds[node.input[1]] = feeds_b
    return ort.InferenceSession(one.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_dequantized_values_are_what_onnxruntime_applies(quantized):
    _, default, qdq = quantized
    m = onnx.load(default)
    with open_model(default) as mf:
        for layer in read_graph(mf).layers:
            node = next(n for n in m.graph.node if n.op_type == "MatMulNBits" and n.input[1] == layer.weight)
            n, k = layer.shape
            assert np.array_equal(Weight(mf, layer.ref).values().reshape(n, k).T, identity_through(m, node, k))
    with open_model(qdq) as mf, open_model(default) as mf2:
        for a, b in zip(read_graph(mf).layers, read_graph(mf2).layers):   # QDQ stores [K, N]; MatMulNBits [N, K]
            assert np.allclose(Weight(mf, a.ref).values(), Weight(mf2, b.ref).values().reshape(b.shape).T,
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["approximated", "magnitude", "one-shot"])
def test_every_method_runs_on_both_formats_and_they_agree(quantized, method):
    _, default, qdq = quantized
    kw = {"data": "random", "random_dims": {"seq": 6}, "samples": 2} if method == "one-shot" else {}
    a, b = (losswidget.analyze(p, method, sparsity_levels=LEVELS, **kw) for p in (default, qdq))
    for p in (a, b):
        assert len(p.layers) == 15 and not any(l.error for l in p.layers)
        assert not any("shape_unknown" in l.flags for l in p.layers)      # shapes inferred past MatMulNBits
        assert all(np.isfinite(l.values).all() for l in p.layers)
    # the same quantized weights in two layouts: the same measurements (one-shot: the same pruned weights
    # on the same data; values differ by float summation order only)
    for x, y in zip(a.layers, b.layers):
        assert np.allclose(x.values, y.values, rtol=1e-4, atol=1e-6), x.name


def test_magnitude_of_the_quantized_model_is_sparseml_rule_over_dequantized_weights(quantized):
    _, default, _ = quantized
    p = losswidget.analyze(default, "magnitude", sparsity_levels=LEVELS)
    with open_model(default) as mf:
        for layer, result in zip(read_graph(mf).layers, p.layers):
            w = Weight(mf, layer.ref).values()
            assert np.allclose(result.values, sparseml_rule(np.abs(w), LEVELS), rtol=1e-6)


def prune_and_compare(path, tmp_path, sparsity, x):
    """Prune `path` by a plan at `sparsity` per layer; onnxruntime's outputs of the pruned model and
    numpy's (the dequantized weights, pruned, multiplied) for the single-layer model."""
    from losswidget.plan import Plan, PlannedLayer

    with open_model(path) as mf:
        layers = read_graph(mf).layers
        dense = [Weight(mf, l.ref).values().reshape(l.shape) for l in layers]
    plan = Plan(target=sparsity, achieved=sparsity, total_params=0, layers=tuple(
        PlannedLayer(l.index, l.name, l.weight, l.op_type, l.params, sparsity) for l in layers))
    out = losswidget.prune(path, plan, tmp_path / "pruned.onnx")
    with open_model(out) as mf:
        pruned = [Weight(mf, l.ref).values().reshape(l.shape) for l in read_graph(mf).layers]
    y = session(out).run(None, {"x": x})[0]
    return layers, dense, pruned, y


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # onnxruntime fuses int4 DequantizeLinear -> MatMul / Gemm into MatMulNBits with int8 activations unless
    # told not to: the float arithmetic is what the comparisons here are about
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


NBITS_CASES = {
    "4-bit packed zero points": dict(bits=4, block_size=16, zero_points="packed", k=64),
    "8-bit": dict(bits=8, block_size=16, zero_points="packed", k=64),
    "2-bit": dict(bits=2, block_size=16, zero_points="packed", k=64),
    "no zero points": dict(bits=4, block_size=32, zero_points=None, k=64),
    "8-bit no zero points": dict(bits=8, block_size=32, zero_points=None, k=64),
    "float zero points": dict(bits=4, block_size=16, zero_points="float", k=64),
    "K not a multiple of the block": dict(bits=4, block_size=32, zero_points="packed", k=40),
    # onnxruntime's CPU kernel ignores packed zero points together with g_idx (it takes 8): float and none here
    "g_idx, float zero points": dict(bits=4, block_size=16, zero_points="float", k=64, g_idx=True),
    "g_idx, no zero points": dict(bits=4, block_size=16, zero_points=None, k=64, g_idx=True),
}


def nbits_model(bits, block_size, zero_points, k, g_idx=False, n=24, seed=3):
    w = arr(k, n, seed=seed)
    group = np.random.default_rng(seed).permutation(np.arange(k) // block_size) if g_idx else None
    b, s, z, deq = quantize_nbits(w, bits, block_size, zero_points, group)
    inputs = ["x", "B", "s", "z" if z is not None else ""] + (["g"] if g_idx else [])
    inits = [init("B", b), init("s", s)] + ([init("z", z)] if z is not None else [])
    inits += [init("g", group.astype(np.int32))] if g_idx else []
    node = helper.make_node("MatMulNBits", inputs, ["y"], name="proj", domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block_size)
    return model([node], [vi("x", ["batch", k])], [vi("y", ["batch", n])], inits, extra_opsets=[MS]), deq


@pytest.mark.parametrize("case", list(NBITS_CASES))
def test_hand_built_matmulnbits_read_pruned_and_run(case, tmp_path):
    spec = NBITS_CASES[case]
    m, deq = nbits_model(**spec)
    path = save(m, tmp_path / "nbits.onnx")
    k, n = spec["k"], 24
    with open_model(path) as mf:
        g = read_graph(mf)
        (layer,) = g.layers
        assert (layer.shape, layer.params, layer.op_type) == ((n, k), n * k, "MatMulNBits")
        # the packed B counts K·N; scales and zero points count what they hold (packed: one per block)
        blocks = -(-k // spec["block_size"])
        assert g.total_params == n * k + n * blocks + (n * blocks if spec["zero_points"] else 0)
        values = Weight(mf, layer.ref).values().reshape(n, k)
    assert np.allclose(values.T, deq, rtol=1e-6, atol=1e-7)                          # our reading
    assert np.allclose(identity_through(m, m.graph.node[0], k), deq, rtol=1e-5, atol=1e-6)   # onnxruntime's

    x = arr(5, k, seed=7)
    _, _, (pruned,), y = prune_and_compare(path, tmp_path, 0.5, x)
    expected = prune_dense(values, round(0.5 * n * k))
    if spec["zero_points"] == "float":
        # a float zero point is not on the code grid: a pruned code is the nearest one, |value| < scale / 2
        changed = pruned != values
        cut = np.zeros(values.size, bool)
        cut[np.argsort(np.abs(values).ravel(), kind="stable")[:round(0.5 * n * k)]] = True
        cut = cut.reshape(values.shape)
        assert not (changed & ~cut).any() and np.all(np.abs(pruned[cut]) <= np.abs(values[cut]) + 1e-7)
    else:
        assert np.array_equal(pruned, expected)                                      # zero point codes: exactly 0
    assert np.allclose(y, x @ pruned.T, rtol=1e-4, atol=1e-4)                        # onnxruntime runs it

    for method, kw in (("approximated", {}), ("magnitude", {}),
                       ("one-shot", {"data": {"x": arr(4, k, seed=9)}})):
        p = losswidget.analyze(path, method, sparsity_levels=LEVELS, **kw)
        assert p.layers[0].params == n * k and p.layers[0].error is None and np.isfinite(p.layers[0].values).all()
        if method == "magnitude":
            assert np.allclose(p.layers[0].values, sparseml_rule(np.abs(values), LEVELS), rtol=1e-6)


def test_one_shot_prunes_the_packed_weight_as_numpy_would(tmp_path):
    """One-shot's value for a level is the output change of the pruned copy of the packed B it feeds:
    checked against numpy's dequantize-prune-matmul with an MSE on the single output."""
    m, _ = nbits_model(bits=4, block_size=16, zero_points="packed", k=64)
    path = save(m, tmp_path / "nbits.onnx")
    x = arr(16, 64, seed=11)
    p = losswidget.analyze(path, "one-shot", data={"x": x}, sparsity_levels=LEVELS, metric="mse")
    with open_model(path) as mf:
        (layer,) = read_graph(mf).layers
        w = Weight(mf, layer.ref).values().reshape(layer.shape)
    dense = x @ w.T
    var = dense.var(axis=0)
    for level, got in zip(LEVELS, p.layers[0].values):
        pruned = x @ prune_dense(w, round(level * w.size)).T
        assert got == pytest.approx(float((((pruned - dense) ** 2) / var).mean()), rel=1e-3, abs=1e-9)


def test_quantizer_models_prune_to_runnable_models(quantized, tmp_path):
    float_path, default, qdq = quantized
    x = arr(1, 5, 64, seed=5)
    for path in (default, qdq):
        layers, dense, pruned, y = prune_and_compare(path, tmp_path, 0.6, x)
        for layer, d, p in zip(layers, dense, pruned):
            assert np.array_equal(p, prune_dense(d, round(0.6 * layer.params))), layer.name
        # the float model with the pruned weights, run by onnxruntime: the same outputs
        fm = onnx.load(float_path)
        byname = {l.name: p for l, p in zip(layers, pruned)}
        for t in fm.graph.initializer:
            name = t.name.removesuffix(".weight")
            if name in byname:
                w = byname[name]
                t.CopyFrom(onnx.numpy_helper.from_array(w.T if path == default else w, t.name))
        want = ort.InferenceSession(fm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert np.allclose(y, want, rtol=1e-3, atol=1e-3)


def test_blocked_dequantize_linear_with_a_partial_block_feeds_gemm_and_conv(tmp_path):
    # opset 21 DequantizeLinear with block_size: int4 Gemm weight blocked along K with a partial last block,
    # and an int8 Conv weight blocked along the input channels
    k, n = 40, 6
    q = np.random.default_rng(0).integers(-8, 8, (k, n)).astype(np.int8)
    scale = np.abs(arr(-(-k // 16), n, seed=1)) + 0.1
    zp = np.random.default_rng(2).integers(-2, 3, scale.shape).astype(np.int8)
    kq = np.random.default_rng(3).integers(-100, 100, (4, 6, 3, 3)).astype(np.int8)
    kscale = np.abs(arr(4, 2, 3, 3, seed=4)) + 0.01
    q4 = onnx.helper.make_tensor("q", TensorProto.INT4, [k, n], q.ravel().tolist())
    z4 = onnx.helper.make_tensor("z", TensorProto.INT4, list(zp.shape), zp.ravel().tolist())
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0, block_size=16),
             helper.make_node("Gemm", ["x", "w"], ["y"], name="fc"),
             helper.make_node("DequantizeLinear", ["kq", "ks"], ["kw"], axis=1, block_size=3),
             helper.make_node("Conv", ["img", "kw"], ["c"], name="conv")]
    m = model(nodes, [vi("x", [2, k]), vi("img", [1, 6, 5, 5])], [vi("y", None), vi("c", None)],
              [q4, init("s", scale), z4, init("kq", kq), init("ks", kscale)], opset=21)
    path = save(m, tmp_path / "blocked.onnx")
    expected = (q.astype(np.float32) - np.repeat(zp, 16, axis=0)[:k]) * np.repeat(scale, 16, axis=0)[:k]
    kexpected = kq.astype(np.float32) * np.repeat(kscale, 3, axis=1)
    with open_model(path) as mf:
        fc, conv = read_graph(mf).layers
        assert np.allclose(Weight(mf, fc.ref).values(), expected)
        assert np.allclose(Weight(mf, conv.ref).values().reshape(conv.shape), kexpected)
        # row slices of blocks (fc: blocks run down the rows) give the same values as the whole
        w = Weight(mf, fc.ref)
        steps = w.steps(budget=16 * n * 4)
        assert all(a % 16 == 0 for a, _ in steps) and len(steps) == 3
        assert np.array_equal(np.concatenate([w.values(a, b) for a, b in steps]), w.values())
    x = arr(2, k, seed=5)
    p = losswidget.analyze(path, "magnitude", sparsity_levels=LEVELS)
    assert np.allclose(p.layers[0].values, sparseml_rule(np.abs(expected), LEVELS), rtol=1e-6)
    assert np.allclose(p.layers[1].values, sparseml_rule(np.abs(kexpected), LEVELS), rtol=1e-6)
    from losswidget.plan import Plan, PlannedLayer
    plan = Plan(0.5, 0.5, (PlannedLayer(0, "fc", "q", "Gemm", k * n, 0.5),), 0)
    out = losswidget.prune(path, plan, tmp_path / "pruned.onnx")
    got = session(out).run(["y"], {"x": x, "img": arr(1, 6, 5, 5, seed=6)})[0]
    assert np.allclose(got, x @ prune_dense(expected, round(0.5 * k * n)), rtol=1e-5, atol=1e-5)


def test_a_hostile_block_size_is_one_clear_error_not_a_huge_allocation(tmp_path):
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0, block_size=2**40),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    m = model(nodes, [vi("x", [1, 8])], [vi("y", None)],
              [init("q", np.ones((8, 4), np.int8)), init("s", np.ones((1, 4), np.float32) * 2)], opset=21)
    path = save(m, tmp_path / "hostile.onnx")
    with open_model(path) as mf:
        (layer,) = read_graph(mf).layers
        assert np.array_equal(Weight(mf, layer.ref).values(), np.full((8, 4), 2.0, np.float32))   # one block: fine
    m.graph.initializer[1].CopyFrom(init("s", np.ones((3, 4), np.float32)))     # 3 blocks cannot cover 8 rows
    path = save(m, tmp_path / "hostile2.onnx")
    with pytest.raises(ModelError, match="block"):
        losswidget.analyze(path, "magnitude")


def test_matmulnbits_whose_tensors_contradict_its_attributes_is_a_model_error(tmp_path):
    m, _ = nbits_model(bits=4, block_size=16, zero_points="packed", k=64)
    for attr, value, message in (("K", 96, "need"), ("bits", 3, "bits=3"), ("block_size", 24, "power of two")):
        bad = onnx.ModelProto()
        bad.CopyFrom(m)
        next(a for a in bad.graph.node[0].attribute if a.name == attr).i = value
        with pytest.raises(ModelError, match=message):
            losswidget.analyze(save(bad, tmp_path / f"bad_{attr}.onnx"), "magnitude")


def test_gather_block_quantized_embedding_counts_logical_params_and_is_no_layer(tmp_path):
    vocab, hidden, bs = 50, 32, 16
    table = np.random.default_rng(0).integers(0, 256, (vocab, hidden // 2)).astype(np.uint8)   # 4-bit, packed
    scales = np.abs(arr(vocab, hidden // bs, seed=1)) + 0.1
    b, s, z, _ = quantize_nbits(arr(hidden, 8, seed=2), 4, 16, "packed")
    nodes = [helper.make_node("GatherBlockQuantized", ["emb", "ids", "es"], ["e"], domain="com.microsoft",
                              bits=4, block_size=bs, gather_axis=0, quantize_axis=1),
             helper.make_node("MatMulNBits", ["e", "B", "s", "z"], ["y"], name="proj", domain="com.microsoft",
                              K=hidden, N=8, bits=4, block_size=16)]
    m = model(nodes, [vi("ids", [1, "seq"], TensorProto.INT64)], [vi("y", None)],
              [init("emb", table), init("es", scales), init("B", b), init("s", s), init("z", z)], extra_opsets=[MS])
    path = save(m, tmp_path / "emb.onnx")
    with open_model(path) as mf:
        g = read_graph(mf)
    assert [(l.op_type, l.weight) for l in g.layers] == [("MatMulNBits", "B")]
    assert g.total_params == vocab * hidden + scales.size + hidden * 8 + s.size + 8 * 2
    p = losswidget.analyze(path, "approximated")
    assert p.layers[0].flags == ()                 # the embedding's output shape was inferred
