"""A small convnet built here (no download) so `losswidget demo` runs anywhere, offline.

Its weights are random with heavier tails (like trained ones); a trained demo model is future work.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def demo_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name, shape):
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_normal(shape) / np.sqrt(fan_in) * (1 + 0.5 * rng.standard_exponential(shape))
        inits.append(numpy_helper.from_array(w.astype(np.float32), name))
        return name

    x = "image"
    for i, (cin, cout) in enumerate([(1, 16), (16, 32), (32, 64)]):
        nodes.append(helper.make_node("Conv", [x, weight(f"features.conv{i}.weight", (cout, cin, 3, 3))], [f"c{i}"],
                                      pads=[1, 1, 1, 1], name=f"features.conv{i}"))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        nodes.append(helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
        x = f"p{i}"
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", weight("classifier.fc1.weight", (128, 64 * 4 * 4))], ["h"],
                                  transB=1, name="classifier.fc1"))
    nodes.append(helper.make_node("Relu", ["h"], ["hr"]))
    nodes.append(helper.make_node("Gemm", ["hr", weight("classifier.fc2.weight", (10, 128))], ["logits"],
                                  transB=1, name="classifier.fc2"))
    graph = helper.make_graph(nodes, "demo_convnet",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
