"""Models for the tests, built with onnx.helper (or the shared generator): nothing comes from a network."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def arr(*shape, dtype=np.float32, seed=None):
    rng = np.random.default_rng(seed) if seed is not None else RNG
    return rng.standard_normal(shape).astype(dtype)


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def save(m, path, **kw):
    onnx.save(m, str(path), **kw)
    return str(path)


def mlp(hidden=8, seed=0):
    """x[1,4] -> Gemm(w1) -> Relu -> MatMul(w2): two layers, known weights."""
    w1, w2 = arr(hidden, 4, seed=seed), arr(hidden, 3, seed=seed + 1)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    return model(nodes, [vi("x", [1, 4])], [vi("y", [1, 3])],
                 [init("w1", w1), init("b1", np.zeros(hidden, np.float32)), init("w2", w2)]), (w1, w2)




def residual_mlp(blocks=3, width=8, classes=6):
    """x[n, width] -> blocks of MatMul-Tanh-MatMul with a skip Add -> MatMul head: pruning one block changes
    everything after it, through the skip connections too."""
    nodes, inits, x = [], [], "x"
    for b in range(blocks):
        inits += [init(f"b{b}.w1", arr(width, width, seed=b)), init(f"b{b}.w2", arr(width, width, seed=10 + b))]
        nodes += [helper.make_node("MatMul", [x, f"b{b}.w1"], [f"h{b}"], name=f"b{b}.fc1"),
                  helper.make_node("Tanh", [f"h{b}"], [f"t{b}"]),
                  helper.make_node("MatMul", [f"t{b}", f"b{b}.w2"], [f"m{b}"], name=f"b{b}.fc2"),
                  helper.make_node("Add", [x, f"m{b}"], [f"r{b}"])]
        x = f"r{b}"
    inits.append(init("head", arr(width, classes, seed=99)))
    nodes.append(helper.make_node("MatMul", [x, "head"], ["y"], name="head"))
    return model(nodes, [vi("x", ["n", width])], [vi("y", ["n", classes])], inits)


def outlier_cnn(convs=63, channels=16, size=8, tiny_at=20, seed=0):
    """x[1, channels, size, size] -> `convs` 3x3 Conv+Relu layers with one tiny fixed-weight layer among
    them at `tiny_at`: a depthwise 1x1 Conv of `channels` weights all 0.5 ("features.blur"). Its
    approximated sensitivity is ~140x the others' (few params, full-size activations), as a fixed
    filter in a real detector is."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(convs + 1):
        if i == tiny_at:
            inits.append(init("blur.weight", np.full((channels, 1, 1, 1), 0.5, np.float32)))
            nodes.append(helper.make_node("Conv", [x, "blur.weight"], [f"c{i}"], group=channels, name="features.blur"))
            x = f"c{i}"
            continue
        w = (rng.standard_normal((channels, channels, 3, 3)) * 0.1 * (1 + rng.random())).astype(np.float32)
        inits.append(init(f"features.{i}.conv.weight", w))
        nodes += [helper.make_node("Conv", [x, f"features.{i}.conv.weight"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   name=f"features.{i}.conv"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    shape = [1, channels, size, size]
    return model(nodes, [vi("x", shape)], [vi(x, shape)], inits)
