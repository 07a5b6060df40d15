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


