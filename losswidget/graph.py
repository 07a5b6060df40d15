"""Find a model's prunable layers and count its params, as DESIGN.md's "Words" define them.

A layer is a node applying a stored weight. The weight is found by walking back from the node's input
through ops that only re-lay or re-type it (Identity, Cast, Transpose, Reshape, Squeeze, Unsqueeze) and
through DequantizeLinear (whose scale and zero point are kept so magnitudes are the dequantized ones), to an
initializer or a Constant node, in this graph or an enclosing one (If / Loop / Scan bodies see outer names).
No weight values are read here: only names, dims and types.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx
from onnx import NodeProto, TensorProto

from .onnxfile import PARAM_TYPES, ModelFile, constant_tensor, numel, stored_tensors, subgraphs

_PASS_THROUGH = {"Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "CastLike"}

# op type -> alternatives; each alternative is a tuple of weight slots (input index, scale index, zero point
# index, role). A node is a layer when exactly one alternative's weight slots all resolve to stored tensors.
_W = (1, None, None, "")
LAYER_OPS: dict[str, tuple[tuple[tuple, ...], ...]] = {
    "Conv": ((_W,),),
    "ConvTranspose": ((_W,),),
    "FusedConv": ((_W,),),
    "Gemm": (((0, None, None, ""),), (_W,)),
    "MatMul": (((0, None, None, ""),), (_W,)),
    "FusedMatMul": (((0, None, None, ""),), (_W,)),
    "LSTM": (((1, None, None, "W"), (2, None, None, "R")),),
    "GRU": (((1, None, None, "W"), (2, None, None, "R")),),
    "RNN": (((1, None, None, "W"), (2, None, None, "R")),),
    "QLinearConv": (((3, 4, 5, ""),),),
    "QLinearMatMul": (((0, 1, 2, ""),), ((3, 4, 5, ""),)),
    "ConvInteger": (((1, None, 3, ""),),),
    "MatMulInteger": (((0, None, 2, ""),), ((1, None, 3, ""),)),
    "DynamicQuantizeMatMul": (((1, 2, 3, ""),),),
    "MatMulIntegerToFloat": (((1, 3, 5, ""),),),
    "DynamicQuantizeLSTM": (((1, 8, 9, "W"), (2, 10, 11, "R")),),
}
# ops whose activation (for the approximated method's volumes) is whichever of inputs 0 / 1 is not the
# weight; for the others it is input 0
_EITHER_OPERAND = {"Gemm", "MatMul", "FusedMatMul", "QLinearMatMul", "MatMulInteger"}


@dataclass(frozen=True)
class WeightRef:
    """A stored weight tensor and how to turn it into the values the layer applies."""
    key: tuple[int, str]            # (graph number, tensor name) as onnxfile.stored_tensors keys stored tensors
    tensor: TensorProto             # initializer or Constant value (large data may be left on disk)
    scale: TensorProto | None = None
    zero_point: TensorProto | None = None
    axis: int = 1                   # DequantizeLinear's per-axis dimension
    block_size: int = 0


@dataclass(frozen=True)
class Layer:
    index: int
    id: str
    name: str
    op_type: str
    weight: str
    shape: tuple[int, ...]
    params: int
    dtype: str
    ref: WeightRef = field(repr=False, compare=False)
    input_name: str = ""            # activation in / out names, for shape lookups
    output_name: str = ""
    scope: int = 0


@dataclass
class ModelGraph:
    layers: list[Layer]
    total_params: int

    @property
    def prunable_params(self) -> int:
        return sum(layer.params for layer in self.layers)


class _Scope:
    def __init__(self, graph: onnx.GraphProto, parent: _Scope | None, number: int):
        self.id = number             # graphs numbered in walk order, as onnxfile.stored_tensors numbers them
        self.parent = parent
        self.inits = {t.name: t for t in graph.initializer}
        self.producers: dict[str, NodeProto] = {}
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producers[out] = node

    def lookup(self, name: str):
        scope = self
        while scope is not None:
            if name in scope.inits:
                return scope, scope.inits[name], None
            if name in scope.producers:
                return scope, None, scope.producers[name]
            scope = scope.parent
        return None, None, None


def _attr_int(node: NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return attr.i
    return default


def _resolve(name: str, scope: _Scope, depth: int = 0) -> WeightRef | None:
    """The stored tensor behind `name`, or None when it is computed from activations."""
    if not name or depth > 32:
        return None
    owner, init, node = scope.lookup(name)
    if init is not None:
        return WeightRef((owner.id, name), init)
    if node is None:
        return None
    if node.op_type == "Constant":
        tensor = constant_tensor(node)
        return WeightRef((owner.id, name), tensor) if tensor is not None else None
    if node.op_type in _PASS_THROUGH and node.input:
        return _resolve(node.input[0], scope, depth + 1)
    if node.op_type == "DequantizeLinear" and len(node.input) >= 2:
        base = _resolve(node.input[0], scope, depth + 1)
        scale = _resolve(node.input[1], scope, depth + 1)
        if base is None or scale is None:
            return None
        zp = _resolve(node.input[2], scope, depth + 1) if len(node.input) > 2 else None
        return WeightRef(base.key, base.tensor, scale.tensor, zp.tensor if zp else None,
                         _attr_int(node, "axis", 1), _attr_int(node, "block_size", 0))
    return None


def _slot_ref(node: NodeProto, slot: tuple, scope: _Scope) -> WeightRef | None:
    index, scale_i, zp_i, _ = slot
    if index >= len(node.input):
        return None
    ref = _resolve(node.input[index], scope)
    if ref is None or ref.tensor.data_type not in PARAM_TYPES:
        return None
    if scale_i is not None or zp_i is not None:
        scale = _resolve(node.input[scale_i], scope) if scale_i is not None and scale_i < len(node.input) else None
        zp = _resolve(node.input[zp_i], scope) if zp_i is not None and zp_i < len(node.input) else None
        ref = WeightRef(ref.key, ref.tensor, scale.tensor if scale else None, zp.tensor if zp else None,
                        _per_axis_default(node.op_type))
    return ref


def _per_axis_default(op_type: str) -> int:
    # QLinearConv / ConvInteger weights are per output channel (axis 0); matmul-like ones per column
    return 0 if "Conv" in op_type else 1


def _layer_slots(node: NodeProto, scope: _Scope) -> list[tuple[WeightRef, str, str]]:
    """[(weight, role, activation input name)] for a layer node, [] for any other node."""
    if node.op_type == "Einsum":
        refs = [(i, _resolve(name, scope)) for i, name in enumerate(node.input)]
        stored = [(i, r) for i, r in refs if r is not None and r.tensor.data_type in PARAM_TYPES]
        if len(stored) != 1 or len(node.input) < 2:
            return []
        data = next(n for i, n in enumerate(node.input) if i != stored[0][0])
        return [(stored[0][1], "", data)]
    alternatives = LAYER_OPS.get(node.op_type)
    if alternatives is None:
        return []
    found = []
    for slots in alternatives:
        refs = [_slot_ref(node, slot, scope) for slot in slots]
        if all(r is not None for r in refs):
            found.append((slots, refs))
    if len(found) != 1:  # no stored weight, or several (a constant-foldable product): not a layer
        return []
    slots, refs = found[0]
    weight_inputs = {slot[0] for slot in slots}
    if node.op_type in _EITHER_OPERAND:
        data = next((n for i, n in enumerate(node.input[:2]) if i not in weight_inputs), "")
    else:
        data = node.input[0] if node.input else ""
    return [(ref, slot[3], data) for ref, slot in zip(refs, slots)]


_GENERATED = re.compile(r"^(onnx::|val_|\d+$|c\d+$|const_?\d*$|.*(_output_\d+|constant|initializer))", re.I)


def _readable(weight: str, node: NodeProto, role: str, index: int) -> str:
    """A name a person recognises: the exporter's parameter name, else the node's, else op and index."""
    base = re.sub(r"(_quantized|_DequantizeLinear)+$", "", re.sub(r":0$", "", weight))
    base = re.sub(r"[._/](weight|weights|kernel|w)$", "", base, flags=re.I) or base
    if role:
        base = re.sub(rf"[._/]{role}$", "", base) or base
    if weight and not _GENERATED.match(weight):
        name = base
    elif node.name:
        name = node.name.lstrip("/")
    else:
        name = f"{node.op_type}_{index}"
    return f"{name} ({role})" if role else name


def read_graph(mf: ModelFile) -> ModelGraph:
    """Layers in graph order (subgraph layers in place of their parent node) and the total param count."""
    layers: list[Layer] = []
    seen: set[tuple[int, str]] = set()
    ids: set[str] = set()
    graphs = 0

    def walk(graph: onnx.GraphProto, parent: _Scope | None, prefix: str) -> None:
        nonlocal graphs
        scope = _Scope(graph, parent, graphs)
        graphs += 1
        for node in graph.node:
            for ref, role, data in _layer_slots(node, scope):
                if ref.key in seen:
                    continue  # a shared weight belongs to the first node that applies it
                seen.add(ref.key)
                mf.check(ref.tensor)
                out = next((o for o in node.output if o), "")
                lid = out + (f":{role}" if role else "")
                while lid in ids:
                    lid += "'"
                ids.add(lid)
                name = _readable(ref.tensor.name, node, role, len(layers))
                layers.append(Layer(
                    index=len(layers), id=lid, name=prefix + name, op_type=node.op_type, weight=ref.tensor.name,
                    shape=tuple(int(d) for d in ref.tensor.dims), params=numel(ref.tensor),
                    dtype=onnx.helper.tensor_dtype_to_string(ref.tensor.data_type).replace("TensorProto.", "").lower(),
                    ref=ref, input_name=data, output_name=out, scope=scope.id))
            for _, sub in subgraphs(node):
                walk(sub, scope, prefix)

    walk(mf.model.graph, None, "")
    total = 0
    counted: set[tuple[int, str]] = set()
    for tensor, key in stored_tensors(mf.model.graph):
        if tensor.data_type in PARAM_TYPES and key not in counted:
            counted.add(key)
            mf.check(tensor)
            total += numel(tensor)
    return ModelGraph(layers, total)
