"""Find a model's prunable layers and count its params, as DESIGN.md's "Words" define them.

A layer is a node applying a stored weight. The weight is found by walking back from the node's input
through ops that only re-lay or re-type it (Identity, Cast, Transpose, Reshape, Squeeze, Unsqueeze) and
through DequantizeLinear (whose scale and zero point are kept so magnitudes are the dequantized ones), to an
initializer or a Constant node, in this graph or an enclosing one (If / Loop / Scan bodies see outer names).
No weight values are read here: only names, dims and types.

Each weight's `WeightRef` says how its stored bytes become the values the layer applies (weights.py does
the arithmetic): "plain" (float, as stored), "linear" ((q - zero point) x scale per tensor, axis or block:
DequantizeLinear, QLinear* / *Integer ops) or "nbits" (MatMulNBits' [N, K/block, block·bits/8] uint8 B:
2/4/8-bit codes packed along K, a scale and zero point per block, optionally regrouped by g_idx). Packed
tensors count their logical elements as params (a 4-bit byte holds two), wherever they are consumed
(MatMulNBits, GatherBlockQuantized). GatherBlockQuantized is not a layer: like a plain Gather's table, an
embedding is looked up, not multiplied, and is not pruned (README "What counts").
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import onnx
from onnx import NodeProto, TensorProto

from .errors import ModelError
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
    """A stored weight tensor and how to turn it into the values the layer applies (see the module doc)."""
    key: tuple[int, str]            # (graph number, tensor name) as onnxfile.stored_tensors keys stored tensors
    tensor: TensorProto             # initializer or Constant value (large data may be left on disk)
    scale: TensorProto | None = None
    zero_point: TensorProto | None = None
    axis: int = 1                   # the quantization axis (per-axis and blocked scales)
    block_size: int = 0             # elements per scale along `axis` (0: per tensor / per axis)
    kind: str = "plain"             # "plain" | "linear" | "nbits"
    bits: int = 0                   # nbits: bits per packed code (2, 4 or 8)
    logical: tuple[int, ...] | None = None  # nbits: the weight's logical shape (N, K); else the stored dims
    g_idx: TensorProto | None = None        # nbits: the block of each of the K inputs (int32 [K]), if regrouped

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the values the layer applies (MatMulNBits: [N, K], the transposed MatMul weight)."""
        return self.logical if self.logical is not None else tuple(int(d) for d in self.tensor.dims)

    @property
    def params(self) -> int:
        return math.prod(self.shape)


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
                         _attr_int(node, "axis", 1), _attr_int(node, "block_size", 0), kind="linear")
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
                        _per_axis_default(node.op_type), kind="linear")
    return ref


def _per_axis_default(op_type: str) -> int:
    # QLinearConv / ConvInteger weights are per output channel (axis 0); matmul-like ones per column
    return 0 if "Conv" in op_type else 1


_MS = ("com.microsoft",)
_INT_TYPES = (TensorProto.INT32, TensorProto.INT64)


def _input(node: NodeProto, i: int, scope: _Scope) -> WeightRef | None:
    return _resolve(node.input[i], scope) if i < len(node.input) and node.input[i] else None


def _nbits_ref(node: NodeProto, scope: _Scope) -> WeightRef | None:
    """MatMulNBits' logical weight [N, K], or None when B is not stored (or is in an EP's own prepacked
    layout, which only that EP can read); ModelError when the node's tensors contradict its attributes."""
    b = _input(node, 1, scope)
    if b is None or b.tensor.data_type != TensorProto.UINT8 or _attr_int(node, "weight_prepacked", 0):
        return None
    k, n, bits, bs = (_attr_int(node, a, d) for a, d in (("K", 0), ("N", 0), ("bits", 4), ("block_size", 0)))
    where = f"MatMulNBits node '{node.name or node.output[0]}'"
    if bits not in (2, 4, 8):
        raise ModelError(f"{where} has bits={bits}; only 2, 4 and 8-bit MatMulNBits weights can be read.")
    if k <= 0 or n <= 0 or bs < 16 or bs & (bs - 1):
        raise ModelError(f"{where} has K={k}, N={n}, block_size={bs}: K and N must be positive and block_size a "
                         "power of two >= 16. The model is corrupt.")
    blocks = -(-k // bs)
    if numel(b.tensor) == 0:
        return None                          # an omitted projection (zero-sized B): nothing is applied
    if numel(b.tensor) != n * blocks * bs * bits // 8:
        raise ModelError(f"{where}: B '{b.tensor.name}' has shape {list(b.tensor.dims)}, but K={k}, N={n}, "
                         f"bits={bits}, block_size={bs} need {n} x {blocks} x {bs * bits // 8} bytes.")
    scale, zp, g_idx = _input(node, 2, scope), _input(node, 3, scope), _input(node, 4, scope)
    if scale is None or numel(scale.tensor) != n * blocks:
        raise ModelError(f"{where}: its scales must be a stored tensor of {n} x {blocks} values (one per block).")
    if zp is not None:
        packed = zp.tensor.data_type == TensorProto.UINT8
        want = n * (-(-blocks * bits // 8)) if packed else n * blocks
        if numel(zp.tensor) != want:
            raise ModelError(f"{where}: zero points '{zp.tensor.name}' have {numel(zp.tensor)} values, expected "
                             f"{want} ({'packed uint8' if packed else 'one per block'}).")
    elif len(node.input) > 3 and node.input[3]:
        return None                          # zero points computed at run time: not a stored weight
    if g_idx is not None and (g_idx.tensor.data_type not in _INT_TYPES or numel(g_idx.tensor) != k):
        raise ModelError(f"{where}: g_idx '{g_idx.tensor.name}' must hold {k} int32 block indices.")
    if g_idx is None and len(node.input) > 4 and node.input[4]:
        return None
    return WeightRef(b.key, b.tensor, scale.tensor, zp.tensor if zp else None, axis=1, block_size=bs, kind="nbits",
                     bits=bits, logical=(n, k), g_idx=g_idx.tensor if g_idx else None)


def _packed_counts(node: NodeProto, scope: _Scope) -> dict[tuple[int, str], int]:
    """Logical element counts of the bit-packed uint8 tensors a node reads (MatMulNBits' B and zero points,
    GatherBlockQuantized's table and zero points below 8 bits): their params."""
    if node.domain not in _MS:
        return {}
    out = {}
    if node.op_type == "MatMulNBits":
        try:
            ref = _nbits_ref(node, scope)
        except ModelError:
            return {}                         # reported where the layer is read
        if ref is not None:
            out[ref.key] = ref.params
            zp = _input(node, 3, scope)
            if zp is not None and zp.tensor.data_type == TensorProto.UINT8:
                out[zp.key] = ref.shape[0] * -(-ref.shape[1] // ref.block_size)
    elif node.op_type == "GatherBlockQuantized":
        bits = _attr_int(node, "bits", 4)
        if bits in (2, 4):
            for i in (0, 3):
                r = _input(node, i, scope)
                if r is not None and r.tensor.data_type == TensorProto.UINT8:
                    out[r.key] = numel(r.tensor) * (8 // bits)
    return out


def _layer_slots(node: NodeProto, scope: _Scope) -> list[tuple[WeightRef, str, str]]:
    """[(weight, role, activation input name)] for a layer node, [] for any other node."""
    if node.op_type == "MatMulNBits" and node.domain in _MS:
        ref = _nbits_ref(node, scope)
        return [(ref, "", node.input[0])] if ref is not None and node.input else []
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


def _strip_suffixes(text: str, suffixes: tuple[str, ...]) -> str:
    """text without any run of the suffixes at its end (a loop over indices: the regex `(a|b)+$` tried every
    start position and took quadratic time on a name of many repeats, 16 s at 200 kB)."""
    end = len(text)
    while True:
        for suffix in suffixes:
            if text.endswith(suffix, 0, end):
                end -= len(suffix)
                break
        else:
            return text[:end]


def _readable(weight: str, node: NodeProto, role: str, index: int) -> str:
    """A name a person recognises: the exporter's parameter name, else the node's, else op and index."""
    base = _strip_suffixes(weight[:-2] if weight.endswith(":0") else weight,
                           ("_quantized", "_DequantizeLinear", "_DQ", "_Q2", "_Q4", "_Q8"))
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
    packed: dict[tuple[int, str], int] = {}
    graphs = 0

    def walk(graph: onnx.GraphProto, parent: _Scope | None, prefix: str) -> None:
        nonlocal graphs
        scope = _Scope(graph, parent, graphs)
        graphs += 1
        for node in graph.node:
            packed.update(_packed_counts(node, scope))
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
                    shape=ref.shape, params=ref.params,
                    dtype=f"uint{ref.bits}" if ref.kind == "nbits" else
                    onnx.helper.tensor_dtype_to_string(ref.tensor.data_type).replace("TensorProto.", "").lower(),
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
            total += packed.get(key, numel(tensor))
    return ModelGraph(layers, total)
