"""Sparsify's "Approximated" profile: a sensitivity guessed from the architecture alone.

Per layer: (in_vol + out_vol) / params x max(in_vol / out_vol, out_vol / in_vol), over shapes inferred by
ONNX shape inference (symbolic dims count as 1), as a straight line from L(0) = 0 to L(1) = that value.
Missing shapes are handled as SparseML's `pruning_loss_sens_approx` does (a missing volume counts 0 and the
shape-change factor is 1) and flagged. No weight is read, so plans use a model of the weights: each
layer's weights are taken as zero-mean Gaussians of equal variance, whose energy kept at sparsity s is
1 - (s - 2 q phi(q)) with q = Phi^-1((1 + s) / 2) (plan cost "modelled", see plan.py).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import onnx
from onnx import TensorProto

from ..onnxfile import light_model, subgraphs
from .base import TARGET, Context, Measured, Method, Result, levels_setting

DEFAULT_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)

_N = NormalDist()


def gaussian_energy_kept(levels: np.ndarray) -> np.ndarray:
    q = np.array([_N.inv_cdf((1 + s) / 2) for s in levels])
    phi = np.exp(-q * q / 2) / math.sqrt(2 * math.pi)
    return 1.0 - (levels - 2 * q * phi)


def _standard_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy in which MatMulNBits / GatherBlockQuantized (com.microsoft, unknown to ONNX shape inference,
    which would stop at the first one) are MatMul / Gather with a stand-in weight of their logical shape
    (dims only, no data)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    count = 0

    def visit(graph: onnx.GraphProto) -> None:
        nonlocal count
        types = {t.name: t.data_type for t in graph.initializer}
        for node in graph.node:
            for _, sub in subgraphs(node):
                visit(sub)
            if node.domain != "com.microsoft" or node.op_type not in ("MatMulNBits", "GatherBlockQuantized"):
                continue
            attrs = {a.name: a for a in node.attribute}
            scale_type = types.get(node.input[2] if len(node.input) > 2 else "", TensorProto.FLOAT)
            stub = f"losswidget_stand_in_{count}"
            count += 1
            if node.op_type == "MatMulNBits":
                if "K" not in attrs or "N" not in attrs or not node.input:
                    continue
                graph.initializer.add(name=stub, data_type=scale_type, dims=[attrs["K"].i, attrs["N"].i])
                new = onnx.helper.make_node("MatMul", [node.input[0], stub], node.output[:1], name=node.name)
            else:
                data = next((t for t in graph.initializer if t.name == node.input[0]), None)
                if data is None or len(node.input) < 2:
                    continue
                dims = list(data.dims)
                bits = attrs["bits"].i if "bits" in attrs else 4
                if data.data_type == TensorProto.UINT8 and bits < 8 and dims:
                    dims[-1] *= 8 // bits            # packed along the last axis
                graph.initializer.add(name=stub, data_type=scale_type, dims=dims)
                axis = attrs["gather_axis"].i if "gather_axis" in attrs else 0
                new = onnx.helper.make_node("Gather", [stub, node.input[1]], node.output[:1], name=node.name, axis=axis)
            node.CopyFrom(new)

    visit(out.graph)
    return out if count else model


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    model = _standard_ops(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is best effort: custom ops and odd exports make it give up
        pass
    shapes: dict[str, list[int]] = {}

    def collect(graph: onnx.GraphProto) -> None:
        for vi in (*graph.input, *graph.output, *graph.value_info):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        for node in graph.node:
            for _, sub in subgraphs(node):
                collect(sub)

    collect(model.graph)
    return shapes


def approx_value(in_shape, out_shape, params: int) -> float:
    in_vol = math.prod(d for d in in_shape if d) if in_shape else 0
    out_vol = math.prod(d for d in out_shape if d) if out_shape else 0
    if not params:
        return 0.0
    mult = max(in_vol / out_vol, out_vol / in_vol) if in_vol and out_vol else 1.0
    return (in_vol + out_vol) / params * mult


def run(ctx: Context) -> Result:
    shapes = _shapes(light_model(ctx.mf))
    ctx.check_cancel()
    kept = gaussian_energy_kept(ctx.levels)
    results = []
    for i, layer in enumerate(ctx.layers):
        in_shape, out_shape = shapes.get(layer.input_name), shapes.get(layer.output_name)
        value = approx_value(in_shape, out_shape, layer.params)
        flags = () if in_shape is not None and out_shape is not None else ("shape_unknown",)
        results.append(Measured(ctx.levels * value, kept, float(layer.params), flags))
        ctx.layer_done(i, results[-1])
        if ctx.progress is not None:
            ctx.progress(i + 1, len(ctx.layers), layer.name)
    return Result(results)


METHOD = Method(
    name="approximated", label="Approximated",
    description="From the architecture alone (activation and weight shapes); instant, reads no weights.",
    run=run, settings=(levels_setting(DEFAULT_LEVELS), TARGET), rank=0, plan_cost="modelled",
    recovery="none: reads no weights or data (plans report the weight energy a Gaussian weight model keeps)")
