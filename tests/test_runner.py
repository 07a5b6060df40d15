"""The chunked runner: a run with weights swapped equals a whole-model onnxruntime run with those weights
written into the model, however the graph is cut and wherever the weights live."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from losswidget.analysis.runner import ChunkedModel
from losswidget.graph import read_graph
from losswidget.onnxfile import open_model

from helpers import arr, init, model, residual_mlp, save, vi

W = 32  # 32 x 32 floats = 4 KB: large enough to stay in the file (memory-mapped, fed as external initializers)


def residual(blocks=2):
    return residual_mlp(blocks, W, classes=10), {"x": arr(6, W, seed=7)}


def tied():
    """One weight read by two nodes, a second output read from the middle of the graph."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc1"),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "v"], ["u"], name="fc2"),
             helper.make_node("MatMul", ["u", "w"], ["y"], name="fc3")]
    m = model(nodes, [vi("x", ["n", W])], [vi("y", ["n", W]), vi("t", ["n", W])],
              [init("w", arr(W, W, seed=1)), init("v", arr(W, W, seed=2))])
    return m, {"x": arr(5, W, seed=3)}


def branches():
    """A layer inside an If branch (its weight a subgraph initializer, its input from the outer scope) and a
    weight given by a Constant node."""
    then_g = helper.make_graph([helper.make_node("MatMul", ["a", "wt"], ["o1"], name="then_fc")], "then", [],
                               [vi("o1", None)], [init("wt", arr(W, W, seed=4))])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["o2"])], "else", [], [vi("o2", None)])
    const = helper.make_node("Constant", [], ["wc"], value=numpy_helper.from_array(arr(W, W, seed=5)))
    nodes = [const,
             helper.make_node("MatMul", ["x", "w0"], ["a"], name="fc0"),
             helper.make_node("If", ["cond"], ["b"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("MatMul", ["c", "wc"], ["y"], name="fc_const")]
    m = model(nodes, [vi("x", ["n", W]), vi("cond", [], TensorProto.BOOL)], [vi("y", None)],
              [init("w0", arr(W, W, seed=6))])
    return m, {"x": arr(4, W, seed=8), "cond": np.array(True)}


def biased():
    """MatMul + bias Add + GELU written out (Div, Erf, Add, Mul, Mul), then a second MatMul and a skip Add
    with the input: the nodes that finish fc1's output belong to its chunk, the skip Add does not."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Div", ["hb", "sqrt2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["hb", "e1"], ["g0"]),
             helper.make_node("Mul", ["g0", "half"], ["g"]),
             helper.make_node("MatMul", ["g", "w2"], ["m"], name="fc2"),
             helper.make_node("Add", ["x", "m"], ["r"]),
             helper.make_node("MatMul", ["r", "head"], ["y"], name="head")]
    consts = [init("b1", arr(W, seed=11)), init("sqrt2", np.float32(np.sqrt(2))), init("one", np.float32(1)),
              init("half", np.float32(0.5))]
    m = model(nodes, [vi("x", ["n", W])], [vi("y", ["n", W])],
              [init("w1", arr(W, W, seed=12)), init("w2", arr(W, W, seed=13)), init("head", arr(W, W, seed=14)),
               *consts])
    return m, {"x": arr(5, W, seed=15)}


def quantized(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    m, feeds = residual()
    src, dst = save(m, tmp_path / "float.onnx"), str(tmp_path / "q.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    return onnx.load(dst), feeds


def build(kind, tmp_path):
    if kind == "quantized":
        m, feeds = quantized(tmp_path)
    else:
        m, feeds = {"residual": residual, "tied": tied, "branches": branches, "biased": biased,
                    "external": residual}[kind]()
    path = tmp_path / f"{kind}.onnx"
    if kind == "external":
        onnx.save(m, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    else:
        save(m, path)
    return str(path), feeds


def swapped(a):
    """Any other values will do: the runner must give what onnxruntime gives with them."""
    return (a // 2).astype(a.dtype) if np.issubdtype(a.dtype, np.integer) else (a * -0.5).astype(a.dtype)


def whole_model_run(path, feeds, swaps):
    m = onnx.load(path)

    def visit(g):
        for t in g.initializer:
            if t.name in swaps:
                t.CopyFrom(numpy_helper.from_array(swaps[t.name], t.name))
        for n in g.node:
            if n.op_type == "Constant" and n.output[0] in swaps:
                n.attribute[0].t.CopyFrom(numpy_helper.from_array(swaps[n.output[0]]))
            for a in n.attribute:
                for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                    visit(sub)
    visit(m.graph)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def stored(mf, layer):
    return np.array(mf.array(layer.ref.tensor))


@pytest.mark.parametrize("kind", ["residual", "tied", "branches", "biased", "quantized", "external"])
@pytest.mark.parametrize("chunks", [1, 2, 100])
def test_swapped_runs_equal_whole_model_runs(tmp_path, kind, chunks):
    path, feeds = build(kind, tmp_path)
    mf = open_model(path)
    layers = read_graph(mf).layers
    weights = sorted({l.weight for l in layers})
    cm = ChunkedModel(mf, weights, threads=1, chunks=chunks)
    assert len(cm.chunks) <= chunks
    env = cm.run_dense(feeds)
    for name, want in whole_model_run(path, feeds, {}).items():
        np.testing.assert_allclose(env[name], want, rtol=1e-5, atol=1e-5)
    arrays = {l.weight: stored(mf, l) for l in layers}
    for w in weights:                                        # one weight swapped: entry + later chunks
        got = cm.run_with(env, {w: swapped(arrays[w])})
        for name, want in whole_model_run(path, feeds, {w: swapped(arrays[w])}).items():
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=f"{kind} {w} {name}")
        cm.release(w)
    every = {w: swapped(a) for w, a in arrays.items()}       # all at once: the recovery run
    got = cm.run_with(env, every)
    for name, want in whole_model_run(path, feeds, every).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5)


def test_many_chunks_are_cut_after_layers_and_weights_stay_in_the_file(tmp_path):
    path, feeds = build("residual", tmp_path)
    mf = open_model(path)
    cm = ChunkedModel(mf, [l.weight for l in read_graph(mf).layers], threads=1, chunks=100)
    assert len(cm.chunks) == 5                               # a cut after each of the first four layers
    for c in cm.chunks:                                      # each weight is a read-only view of the file
        views = c.keep[0]
        assert len(views) == 1 and not views[0].flags.writeable and views[0].nbytes >= 4 * W * 10


def test_a_chunk_ends_after_the_bias_and_activation_of_its_layer(tmp_path):
    path, feeds = build("biased", tmp_path)
    mf = open_model(path)
    cm = ChunkedModel(mf, [l.weight for l in read_graph(mf).layers], threads=1, chunks=100)
    # fc1 and the six nodes that finish it | fc2 (the skip Add reads the input: not fc2's) | skip Add, head
    assert cm.bounds == [(0, 7), (7, 8), (8, 10)]
    assert cm.chunks[0].outputs == ["g"]                      # the pre-activation tensors stay inside


def test_a_sequence_crossing_a_cut_gives_one_chunk(tmp_path):
    """Chunks pass tensors only: a sequence made before a layer and read after it keeps the graph whole."""
    nodes = [helper.make_node("SequenceConstruct", ["x"], ["seq"]),
             helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("SequenceAt", ["seq", "zero"], ["t"]),
             helper.make_node("Add", ["h", "t"], ["s"]),
             helper.make_node("MatMul", ["s", "w2"], ["y"], name="fc2")]
    m = model(nodes, [vi("x", ["n", W])], [vi("y", ["n", W])],
              [init("w1", arr(W, W, seed=1)), init("w2", arr(W, W, seed=2)), init("zero", np.int64(0))])
    path, feeds = save(m, tmp_path / "seq.onnx"), {"x": arr(3, W, seed=3)}
    mf = open_model(path)
    cm = ChunkedModel(mf, [l.weight for l in read_graph(mf).layers], threads=1, chunks=100)
    assert len(cm.chunks) == 1
    env = cm.run_dense(feeds)
    tensors = {t.name: t for t in mf.model.graph.initializer}
    for w in ("w1", "w2"):
        new = swapped(np.array(mf.array(tensors[w])))
        np.testing.assert_allclose(cm.run_with(env, {w: new})["y"], whole_model_run(path, feeds, {w: new})["y"],
                                   rtol=1e-5, atol=1e-5)


def test_a_fast_model_is_cut_into_fewer_chunks(tmp_path, monkeypatch):
    path, feeds = build("residual", tmp_path)
    mf = open_model(path)
    layers = [l.weight for l in read_graph(mf).layers]
    finest = len(ChunkedModel(mf, layers, threads=1).chunks)
    assert finest >= 3
    # the choice compares the probe's run time with the per-run overhead: an overhead far above any run
    # time this model can take on a loaded machine makes it "fast" for sure, so the finest cut is undone
    monkeypatch.setattr(ChunkedModel, "RUN_OVERHEAD_S", 1.0)
    monkeypatch.setattr(ChunkedModel, "FIRST_RUN_EXTRA_S", 0.0)
    cm = ChunkedModel(mf, layers, threads=1, probe=feeds)
    assert len(cm.chunks) < 3 and cm.probe_env is None
    # and an overhead of nothing keeps the finest cut and the probe's dense run
    monkeypatch.setattr(ChunkedModel, "RUN_OVERHEAD_S", 1e-12)
    cm = ChunkedModel(mf, layers, threads=1, probe=feeds)
    assert len(cm.chunks) == finest and cm.probe_env is not None
