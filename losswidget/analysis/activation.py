"""Activation-aware profiles: one dense pass over the data, then each layer's estimated output error.

The dense pass (onnxruntime, the layers' inputs returned as extra outputs; batches one at a time, so memory
holds one batch's activations) records for every layer the squared L2 norm of each input feature x_j over
all samples and positions: the feature weight w multiplies. For MatMul / Gemm / MatMulNBits a feature is a
row of the weight's reduction axis (Gemm's transA / transB, the weight as either operand and batched
MatMul included); for Conv it is an (input channel, kernel offset) pair over the im2col window, with strides,
pads (auto_pad too), dilations and groups; for ConvTranspose an (input channel, kernel offset) over the
input positions whose output is kept; for LSTM / GRU / RNN the input (W) or the previous hidden state (R);
quantized forms use their dequantized input (the float input of a DynamicQuantizeLinear). A layer whose
inputs cannot be read (inside a subgraph, an op without a definition here) is flagged `not_measured`, with
the reason in the profile's notes, and stays dense in plans.

Per level s a layer's value is Sum_pruned (w ||x_j||)^2 / Sum_all (w ||x_j||)^2 for the s-fraction of its
weights with the lowest score |w| ||x_j|| (Wanda's score; dequantized w; equal scores in index order):
the relative change of the layer's output energy when those weights go, exact when the input features
are uncorrelated. It says how much one layer's output moves, not how the model's loss does: a layer early
in a network or before a sensitive head can matter more than its own error says. Plans weigh layers by it
("measured"), and recovery is measured on the data as one-shot measures it (recovery.py): each target's
plan pruned in this order, all layers at once. Plans carry the norms, so `prune` removes the same weights.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
from onnx import helper

from ..errors import AnalysisCancelled, DataError, LossWidgetError, SettingsError, first_line
from ..graph import Layer
from ..onnxfile import ModelFile, constant_tensor
from ..plan import InputNorms
from ..weights import criterion_scores, keep_mask, lowest_cuts_in, lowest_square_sums, magnitudes, masked_copy
from .base import DATA_SETTINGS, TARGET, Context, Measured, Method, Result, Setting, levels_setting, run_layers
from .recovery import METRICS, RECOVERY_TARGETS, Comparison, Settings, recovery_points

# one-shot's levels, so that the two data methods' curves compare level for level
DEFAULT_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
NOT_MEASURED = "not_measured"
# recovery keeps, per weight, how many of the plans keep it (one byte each) while the model has at most
# this many params; past it each run finds its weights from the scores again
KEEP_COUNTS_LIMIT = 500_000_000


# -- kernels: squared input-feature norms of one batch, shaped to broadcast against the weight --------------
def _fold_batch(s: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """s [..., K] summed over the batch axes the weight does not have (or has as 1), broadcast over those it
    has and s lacks: [*batch, K]."""
    extra = s.ndim - 1 - len(batch)
    if extra > 0:
        s = s.sum(axis=tuple(range(extra)))
    elif extra < 0:
        s = s.reshape((1,) * -extra + s.shape)
    axes = tuple(i for i, (a, b) in enumerate(zip(s.shape[:-1], batch)) if b == 1 and a != 1)
    if axes:
        s = s.sum(axis=axes, keepdims=True)
    return np.broadcast_to(s, tuple(batch) + s.shape[-1:])


def matmul_norms(x: np.ndarray, w_shape, weight_first: bool = False, trans_x: bool = False,
                 trans_w: bool = False) -> np.ndarray:
    """Squared norms of the input features of a MatMul / Gemm weight over one batch, shaped to broadcast
    against the weight (`w_shape`, as the node reads it).

    Weight second (y = x @ w, w [..., K, N]): feature k is x[..., k] over every row; weight first
    (y = w @ x, w [..., M, K]): feature k is x[..., k, :] over every column. `trans_x` / `trans_w`: the
    operand's last two axes are swapped before the product (Gemm's transA / transB). Batch axes the weight
    has keep their own norms; those it broadcasts over are summed.
    """
    x = np.asarray(x)
    w_shape = tuple(w_shape)
    if x.ndim == 1:
        x = x[:, None] if weight_first else x[None, :]
    elif trans_x:
        x = np.swapaxes(x, -1, -2)
    s = np.square(x, dtype=np.float64).sum(axis=-1 if weight_first else -2)       # [..., K]
    if len(w_shape) == 1:
        return s.reshape(-1, s.shape[-1]).sum(axis=0)
    s = _fold_batch(s, w_shape[:-2])
    s = s[..., None, :] if weight_first else s[..., :, None]
    return np.swapaxes(s, -1, -2) if trans_w else s


def conv_pads(sizes, kernel, strides, dilations, pads, auto_pad: str) -> list[tuple[int, int]]:
    """(begin, end) padding of each spatial axis, as ONNX Conv pads (auto_pad SAME_UPPER / SAME_LOWER:
    output size ceil(in / stride), the odd pixel at the end / at the start)."""
    n = len(kernel)
    out = []
    for a, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            out.append((begin, total - begin))
        elif auto_pad == "VALID":
            out.append((0, 0))
        else:
            out.append((int(pads[a]), int(pads[a + n])))
    return out


def _batch_squares(x: np.ndarray) -> np.ndarray:
    """Sum over the batch axis of x^2 (float64), one sample at a time: no float64 copy of the whole batch."""
    q = np.zeros(x.shape[1:])
    for sample in x:
        q += np.square(sample, dtype=np.float64)
    return q


def conv_norms(x: np.ndarray, w_shape, strides, pads: list[tuple[int, int]], dilations, group: int) -> np.ndarray:
    """Squared norms of a Conv weight's input features over one batch: for each group, input channel c and
    kernel offset i, the sum of x_pad[n, c, p * stride + i * dilation]^2 over samples n and output positions
    p (the im2col column of that weight), made from strided slices of the padded sum of squares, axis by
    axis. Shaped [group, 1, C/group, *kernel] against the weight viewed as [group, M/group, C/group, *kernel]."""
    m, per_group, *kernel = (int(d) for d in w_shape)
    q = _batch_squares(np.asarray(x))                                         # [C, *spatial]
    if q.shape[0] != per_group * group:
        raise ValueError(f"input of {q.shape[0]} channels does not fit a weight of {per_group} x {group} groups")
    q = np.pad(q, [(0, 0)] + [tuple(p) for p in pads])
    for a, (k, s, d) in enumerate(zip(kernel, strides, dilations)):
        axis = a + 1
        outs = (q.shape[axis] - (k - 1) * d - 1) // s + 1
        if outs <= 0:
            raise ValueError(f"the kernel does not fit the padded input along spatial axis {a}")
        index = [slice(None)] * q.ndim
        parts = []
        for i in range(k):
            index[axis] = slice(i * d, i * d + (outs - 1) * s + 1, s)
            parts.append(q[tuple(index)].sum(axis=axis))
        q = np.stack(parts, axis=axis)
    return q.reshape((group, 1, per_group, *kernel))


def conv_transpose_norms(x: np.ndarray, w_shape, strides, pads: list[tuple[int, int]], dilations,
                         output_padding) -> np.ndarray:
    """Squared norms of a ConvTranspose weight's input features over one batch: input channel c and kernel
    offset i see x[n, c, p] for the input positions p whose output p * stride + i * dilation - pad_begin
    lies inside the output. Shaped [C, 1, *kernel] against the weight [C, M/group, *kernel]."""
    channels, _, *kernel = (int(d) for d in w_shape)
    q = _batch_squares(np.asarray(x))                                         # [C, *spatial]
    if q.shape[0] != channels:
        raise ValueError(f"input of {q.shape[0]} channels does not fit a weight for {channels}")
    for a, (k, s, d, (begin, end), extra) in enumerate(zip(kernel, strides, dilations, pads, output_padding)):
        axis = a + 1
        size = q.shape[axis]
        outs = s * (size - 1) + extra + (k - 1) * d + 1 - begin - end
        shape = list(q.shape)
        shape[axis] = 1
        cum = np.concatenate([np.zeros(shape), np.cumsum(q, axis=axis)], axis=axis)
        parts = []
        for i in range(k):
            lo = max(0, -((i * d - begin) // s))                      # ceil((begin - i d) / s)
            hi = min(size - 1, (outs - 1 + begin - i * d) // s)
            if hi < lo:
                parts.append(np.zeros(shape).squeeze(axis))
            else:
                parts.append(np.take(cum, hi + 1, axis=axis) - np.take(cum, lo, axis=axis))
        q = np.stack(parts, axis=axis)
    return q.reshape((channels, 1, *kernel))


def recurrent_input_norms(x: np.ndarray, layout: int = 0) -> np.ndarray:
    """Squared norms of the input features of a recurrent W over one batch: x [T, B, I] (layout 1:
    [B, T, I]) summed over steps and samples -> [I]."""
    return np.square(np.asarray(x), dtype=np.float64).sum(axis=(0, 1))


def recurrent_state_norms(y: np.ndarray, initial_h: np.ndarray | None, direction: str, layout: int = 0) -> np.ndarray:
    """Squared norms of the hidden-state features a recurrent R multiplies over one batch, per direction:
    the states each step starts from, i.e. initial_h (zeros when absent) and Y without its last step (the
    first, for the reverse direction). y [T, D, B, H] (layout 1: [B, T, D, H]); -> [D, H]."""
    y = np.asarray(y)
    if layout:
        y = np.transpose(y, (1, 2, 0, 3))
        initial_h = None if initial_h is None else np.swapaxes(np.asarray(initial_h), 0, 1)
    directions = y.shape[1]
    out = np.zeros((directions, y.shape[-1]))
    for d in range(directions):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        states = y[1:, d] if reverse else y[:-1, d]
        out[d] = np.square(states, dtype=np.float64).sum(axis=(0, 1))
        if initial_h is not None:
            out[d] += np.square(np.asarray(initial_h)[d], dtype=np.float64).sum(axis=0)
    return out


def einsum_operands(equation: str) -> tuple[list[str], str] | None:
    """(operand subscripts, output subscripts) of an explicit or implicit equation; None for what is not
    mapped here (ellipses, a letter repeated within one operand)."""
    eq = equation.replace(" ", "")
    if "..." in eq:
        return None
    lhs, arrow, out = eq.partition("->")
    ops = lhs.split(",")
    if any(len(set(o)) != len(o) for o in ops) or not all(o.isalpha() or o == "" for o in [*ops, out]):
        return None
    if not arrow:
        letters = "".join(ops)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return ops, out


def einsum_norms(equation: str, w_slot: int, x: np.ndarray, w_shape) -> np.ndarray:
    """Squared norms of the input features of an Einsum's stored operand (two operands): x's letters that
    appear in neither the weight nor the output are summed first (they meet the weight as a sum), then the
    squares are summed over the letters the weight lacks. Shaped to broadcast against the weight."""
    ops, out = einsum_operands(equation)
    ws, xs = ops[w_slot], ops[1 - w_slot]
    x = np.asarray(x, dtype=np.float64)
    keep = "".join(c for c in xs if c in ws or c in out)
    if keep != xs:
        x = np.einsum(f"{xs}->{keep}", x)
    feats = "".join(c for c in ws if c in keep)
    s = np.einsum(f"{keep}->{feats}", x * x)
    shape = [s.shape[feats.index(c)] if c in feats else 1 for c in ws]
    return s.reshape(shape)


# -- which values a layer's norms come from ----------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """How one layer's input-feature norms come out of a dense run."""
    reads: tuple[str, ...]               # values it reads: the layer's input, its scale / zero point ("" absent)
    measure: Callable[..., np.ndarray]   # (*values) -> squared norms of one batch, broadcasting against `view`
    view: tuple[int, ...]                # the stored weight's elements viewed so (storage order)


# op -> (slot of A, slot of B, (scale slot, zero point slot) of A, of B): the matmul-like layers (MatMulNBits'
# weight is read as its logical [N, K]: B transposed)
_MATMUL = {
    "MatMul": (0, 1, None, None), "FusedMatMul": (0, 1, None, None), "Gemm": (0, 1, None, None),
    "MatMulNBits": (0, 1, None, None),
    "DynamicQuantizeMatMul": (0, 1, None, None), "MatMulInteger": (0, 1, (None, 2), (None, 3)),
    "QLinearMatMul": (0, 3, (1, 2), (4, 5)), "MatMulIntegerToFloat": (0, 1, (2, 4), (3, 5)),
}
# op -> (weight slot, (scale slot, zero point slot) of the input)
_CONV = {"Conv": (1, None), "FusedConv": (1, None), "QLinearConv": (3, (1, 2)), "ConvInteger": (1, (None, 2))}
_RECURRENT = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}
_SAME_VALUES = {"Identity", "Cast", "CastLike", "DequantizeLinear"}
_RESHAPING = {"Reshape", "Squeeze", "Unsqueeze", "Flatten"}


class _Graph:
    """The main graph as lookups: who produces each value, and the constants."""

    def __init__(self, mf: ModelFile):
        g = mf.model.graph
        self.producers = {o: n for n in g.node for o in n.output if o}
        self.consts = {t.name: t for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.output and (t := constant_tensor(n)) is not None:
                self.consts[n.output[0]] = t

    def weight_chain(self, name: str):
        """(stored tensor name, composed Transpose perm or None, whether a reshape lies between) behind an
        input, through ops that keep the weight's values; None when it is computed from activations."""
        perm, reshaped = None, False
        for _ in range(64):
            if name in self.consts and name not in self.producers:
                return name, perm, reshaped
            node = self.producers.get(name)
            if node is None:
                return None
            if node.op_type == "Constant":
                return name, perm, reshaped
            if node.op_type == "Transpose":
                p = _attrs(node).get("perm")
                if p is None:
                    return name, perm, True       # the rank is not known here: treated as unmapped
                p = np.asarray(p)
                perm = p if perm is None else p[perm]
            elif node.op_type in _RESHAPING:
                reshaped = True
            elif node.op_type not in _SAME_VALUES:
                return None
            name = node.input[0]
        return None

    def data(self, node, slot: int, dequant) -> tuple[str, str, str]:
        """(input, scale, zero point) names for a layer's data input; a DynamicQuantizeLinear's float input
        stands for its quantized output."""
        name = node.input[slot]
        if dequant is not None:
            prod = self.producers.get(name)
            if prod is not None and prod.op_type == "DynamicQuantizeLinear":
                return prod.input[0], "", ""
        scale_i, zp_i = dequant or (None, None)
        pick = lambda i: node.input[i] if i is not None and i < len(node.input) else ""  # noqa: E731
        return name, pick(scale_i), pick(zp_i)


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _text(value, default: str) -> str:
    return value.decode() if isinstance(value, bytes) else default if value is None else str(value)


def _dequantize(x: np.ndarray, scale: np.ndarray | None, zero_point: np.ndarray | None) -> np.ndarray:
    if scale is None and zero_point is None:
        return x
    for what, v in (("zero point", zero_point), ("scale", scale)):
        if v is not None and np.size(v) != 1:
            raise LossWidgetError(f"its input has a {what} of {np.size(v)} values (per row); only per-tensor "
                                  "input quantization is measured")
    out = np.asarray(x, dtype=np.float64)
    if zero_point is not None:
        out = out - float(np.asarray(zero_point).reshape(()))
    if scale is not None:
        out = out * float(np.asarray(scale).reshape(()))
    return out


def probe(layer: Layer, graph: _Graph) -> Probe | str:
    """How to measure a layer's input-feature norms, or why they cannot be measured (one line)."""
    if layer.scope != 0:
        return "inside an If / Loop / Scan body: onnxruntime returns no values from subgraphs"
    node = graph.producers.get(layer.output_name)
    if node is None:
        return "its node was not found in the main graph"
    slot = perm = None
    reshaped = False
    for i, name in enumerate(node.input):
        chain = graph.weight_chain(name) if name else None
        if chain is not None and chain[0] == layer.weight:
            slot, (_, perm, reshaped) = i, chain
            break
    if slot is None:
        return "its weight input was not found"
    if reshaped:
        return "its weight reaches the node through a reshape: input features are not mapped to stored elements"
    stored = tuple(layer.shape)
    seen = stored if perm is None else tuple(stored[p] for p in perm)           # the weight as the node reads it
    back = None if perm is None else tuple(int(a) for a in np.argsort(perm))
    op, attrs = node.op_type, _attrs(node)

    def stored_view(measure):
        return measure if back is None else (lambda *v: np.transpose(measure(*v), back))

    if op in _MATMUL:
        a, b, dq_a, dq_b = _MATMUL[op]
        if slot not in (a, b):
            return f"its weight is not a {op} operand"
        if attrs.get("transBatchA") or attrs.get("transBatchB"):
            return f"{op} with transBatchA / transBatchB: input features are not mapped"
        first = slot == a
        ta, tb = bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0)) or op == "MatMulNBits"
        reads = graph.data(node, b if first else a, dq_b if first else dq_a)
        trans_x, trans_w = (tb, ta) if first else (ta, tb)
        return Probe(reads, stored_view(lambda x, scale, zp: matmul_norms(_dequantize(x, scale, zp), seen, first,
                                                                          trans_x, trans_w)), stored)
    if op in _CONV:
        w_slot, dequant = _CONV[op]
        group = int(attrs.get("group", 1))
        if slot != w_slot or len(seen) < 3:
            return f"its weight is not the {op} kernel"
        if perm is not None:
            return "its kernel is transposed before the Conv: input features are not mapped"
        kernel = seen[2:]
        strides = attrs.get("strides") or [1] * len(kernel)
        dilations = attrs.get("dilations") or [1] * len(kernel)
        pads = attrs.get("pads") or [0] * (2 * len(kernel))
        auto_pad = _text(attrs.get("auto_pad"), "NOTSET")

        def conv(x, scale, zp):
            x = _dequantize(x, scale, zp)
            return conv_norms(x, seen, strides, conv_pads(np.shape(x)[2:], kernel, strides, dilations, pads, auto_pad),
                              dilations, group)
        return Probe(graph.data(node, 0, dequant), conv, (group, seen[0] // group, *seen[1:]))
    if op == "ConvTranspose":
        auto_pad = _text(attrs.get("auto_pad"), "NOTSET")
        if slot != 1 or len(seen) < 3:
            return "its weight is not the ConvTranspose kernel"
        if auto_pad not in ("NOTSET", "VALID") or "output_shape" in attrs:
            return ("ConvTranspose with auto_pad SAME_* or output_shape: where the padding goes differs between "
                    "ONNX versions and runtimes")
        kernel = seen[2:]
        strides = attrs.get("strides") or [1] * len(kernel)
        dilations = attrs.get("dilations") or [1] * len(kernel)
        pads = [0] * (2 * len(kernel)) if auto_pad == "VALID" else attrs.get("pads") or [0] * (2 * len(kernel))
        pairs = [(int(pads[i]), int(pads[i + len(kernel)])) for i in range(len(kernel))]
        extra = attrs.get("output_padding") or [0] * len(kernel)
        return Probe(graph.data(node, 0, None), stored_view(
            lambda x, s_, z_: conv_transpose_norms(x, seen, strides, pairs, dilations, extra)), stored)
    if op in _RECURRENT:
        if len(node.input) > 4 and node.input[4]:
            return "sequence_lens given: the padded steps of shorter sequences are not told apart"
        if perm is not None:
            return "its weight is transposed before the node: input features are not mapped"
        layout = int(attrs.get("layout", 0))
        direction = _text(attrs.get("direction"), "forward")
        quantized = op == "DynamicQuantizeLSTM"             # W [D, I, 4H], R [D, H, 4H]; else [D, gates H, I]
        if slot == 1:
            shape = (1, -1, 1) if quantized else (1, 1, -1)
            return Probe((node.input[0],), lambda x: recurrent_input_norms(x, layout).reshape(shape), stored)
        if slot == 2:
            y = node.output[0] if node.output else ""
            if not y:
                return "the node does not output Y, the hidden states R is applied to"
            if op == "GRU" and not attrs.get("linear_before_reset", 0):
                return "GRU with linear_before_reset=0 applies R to r * h, which the node does not return"
            initial = node.input[5] if len(node.input) > 5 else ""
            shape = (seen[0], -1, 1) if quantized else (seen[0], 1, -1)
            return Probe((y, initial), lambda y_, h: recurrent_state_norms(y_, h, direction, layout).reshape(shape),
                         stored)
        return f"its weight is not the W or R input of the {op}"
    if op == "Einsum":
        equation = _text(attrs.get("equation"), "")
        parsed = einsum_operands(equation)
        if parsed is None or len(parsed[0]) != 2 or slot > 1:
            return f"Einsum '{equation}': input features are mapped for two operands without '...' or repeats only"
        return Probe((node.input[1 - slot],), stored_view(lambda x: einsum_norms(equation, slot, x, seen)), stored)
    return f"{op}: its input features are not defined here"


# -- L(s) from the scores -------------------------------------------------------------------------------
def relative_errors(levels: np.ndarray, n: int, scored: np.ndarray, weighed: np.ndarray) -> Measured:
    """L(s) per level and the weight energy each level keeps, from the sums over the round(s n) lowest
    scores of score^2 (`scored`, per level) and of w^2 (`weighed`), the last of each being the whole layer's
    (a count of n): L(s) = scored / scored total, kept = 1 - weighed / weighed total."""
    total, energy = float(scored[-1]), float(weighed[-1])
    scored, weighed = np.asarray(scored[:-1]), np.asarray(weighed[:-1])
    if n == 0:
        return Measured(np.zeros(len(levels)), np.ones(len(levels)), 0.0, ("empty",))
    flags: tuple[str, ...] = ()
    if not (math.isfinite(total) and math.isfinite(energy)):
        flags = ("non_finite",)
    elif energy == 0:
        flags = ("all_zero",)
    elif total == 0:
        flags = ("zero_input",)       # its inputs are all zero on this data: pruning it changes nothing here
    values = scored / total if total > 0 else np.zeros(len(levels))
    kept = 1.0 - weighed / energy if energy > 0 and math.isfinite(energy) else np.ones(len(levels))
    return Measured(values, kept, energy, flags)


def level_counts(levels, n: int) -> list[int]:
    """Weights pruned at each level: round(s n), half to even, as prune's round(s * params)."""
    return [int(round(float(s) * n)) for s in levels]


def _measure(mf: ModelFile, layer: Layer, levels: np.ndarray, norms: InputNorms):
    """(Measured, the histogram of the scores: what recovery finds its cuts with, weights.lowest_cuts_in)."""
    mags = magnitudes(mf, layer.ref)                # this thread's buffer: used before the next call
    scores = norms.scores(mags)
    n = scores.size
    _, sums, histogram = lowest_square_sums(scores, level_counts(levels, n) + [n], scores, mags)
    measured = relative_errors(levels, n, sums[0], sums[1])
    return replace(measured, input_norms=norms), histogram.astype(np.int32 if n < 2**31 else np.int64)


# -- the method ------------------------------------------------------------------------------------------
def run(ctx: Context) -> Result:
    """The dense pass, each layer's L(s), then recovery at several targets (the module doc)."""
    from .runner import ChunkedModel

    settings = Settings(ctx.settings["metric"], ctx.settings["output"], ctx.settings["axis"])
    dataset, layers = ctx.dataset, ctx.layers
    if settings.metric == "loss" and dataset.labels is None:
        raise SettingsError("metric='loss' needs labels (an array, or the key of the labels in the data).")
    graph = _Graph(ctx.mf)
    probes = [probe(layer, graph) for layer in layers]
    active = {i: p for i, p in enumerate(probes) if isinstance(p, Probe)}
    targets = sorted({*RECOVERY_TARGETS, ctx.target})
    batches = dataset.batches
    total = len(batches) + len(layers) + len(targets)
    report = ctx.progress or (lambda *_: None)
    results: list = [None] * len(layers)
    errors: list = [None] * len(layers)
    ctx.check_cancel()
    model = ChunkedModel(ctx.mf, [l.weight for l in layers], chunks=0)
    model.open_session(os.cpu_count(), keep={n for p in active.values() for n in p.reads if n in graph.producers})

    def value(name: str, out: dict, batch: dict):
        if not name:
            return None
        if name in out:
            return out[name]
        if name in batch:
            return batch[name]
        return np.asarray(ctx.mf.array(graph.consts[name]))

    # the dense pass: one batch's activations at a time
    sums: dict[int, np.ndarray] = {}
    dense = []
    for b, batch in enumerate(batches):
        _cancel_point(ctx, results, errors)
        try:
            out = model.run_whole(batch)
        except LossWidgetError:
            raise
        except Exception as exc:
            raise DataError(f"onnxruntime could not run the model on this data: {first_line(exc)}") from None
        for i, p in list(active.items()):
            try:
                s = p.measure(*(value(n, out, batch) for n in p.reads))
                sums[i] = s if i not in sums else sums[i] + s
            except Exception as exc:  # this layer's input does not fit what was expected; the others go on
                errors[i] = f"{type(exc).__name__}: {first_line(exc)}"
                del active[i]
        dense.append({o: out[o] if o in out else batch[o] for o in model.graph_outputs})
        del out
        report(b + 1, total, f"dense pass: batch {b + 1} of {len(batches)}")
    norms = {i: InputNorms.from_array(np.sqrt(sums[i]), active[i].view) for i in active}
    del sums

    nan = np.full(len(ctx.levels), np.nan)
    for i, p in enumerate(probes):
        if not isinstance(p, Probe):
            results[i] = Measured(nan, nan, math.nan, (NOT_MEASURED,))
            ctx.layer_done(i, results[i])
    skipped = len(layers) - len(norms)
    if skipped:
        report(len(batches) + skipped, total, f"{skipped} layer(s) not measured")

    # each layer's L(s)
    order = sorted(norms)
    histograms: dict[int, np.ndarray] = {}

    def measure(layer: Layer) -> Measured:
        measured, histograms[layer.index] = _measure(ctx.mf, layer, ctx.levels, norms[layer.index])
        return measured
    sub = replace(ctx, layers=[layers[i] for i in order],
                  progress=lambda d, t, m: report(len(batches) + skipped + d, total, m),
                  on_layer=lambda j, m: ctx.layer_done(order[j], m))
    try:
        for j, m in enumerate(run_layers(sub, measure)):
            results[order[j]] = m
    except AnalysisCancelled as exc:
        for j, m in enumerate(exc.result.measured):
            results[order[j]] = m
        exc.result = Result(results, errors, notes=_notes(layers, probes))
        raise

    # recovery: each target's plan pruned in this order, all layers at once
    comparison = Comparison(dense, model.graph_outputs, dataset.labels, settings)
    done = [0]

    # per layer, the pruned counts of every plan, and how many of those plans keep each weight: plans prune
    # nested sets (the k lowest of one order), so plan j keeps the weights kept by more than j of them
    counts: dict[int, list[int]] = {}
    kept_by: dict[int, np.ndarray] = {}
    cuts: dict[tuple[int, int], tuple] = {}
    copies: dict[int, np.ndarray] = {}            # one pruned copy per layer, rewritten by each run
    small = sum(l.params for l in layers) <= KEEP_COUNTS_LIMIT

    def prepare_layer(i: int) -> None:
        scores = criterion_scores(ctx.mf, layers[i].ref, norms[i])
        found = lowest_cuts_in(scores, counts[i], histograms[i])
        cuts.update(zip(((i, k) for k in counts[i]), found))
        if small:
            kept = np.zeros(scores.size, np.uint8)
            mask = np.empty(scores.size, np.bool_)
            for k, cut in zip(counts[i], found):
                kept += keep_mask(scores, k, cut, out=mask)
            kept_by[i] = kept

    def prepare(plans: list[dict[int, float]]) -> None:
        for plan in plans:
            for i, s in plan.items():
                counts.setdefault(i, set()).add(int(round(s * layers[i].params)))
        counts.update((i, sorted(c)) for i, c in counts.items())
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="losswidget-cuts") as pool:
            list(pool.map(prepare_layer, counts))

    def pruned(i: int, sparsity: float) -> np.ndarray:
        layer = layers[i]
        k = int(round(sparsity * layer.params))
        if i in kept_by:
            keep = kept_by[i] > counts[i].index(k)
        else:
            keep = keep_mask(criterion_scores(ctx.mf, layer.ref, norms[i]), k, cuts[i, k])
        copies[i] = masked_copy(ctx.mf, layer.ref, keep, out=copies.get(i))
        return copies[i]

    def recover(sparsity: dict[int, float]) -> tuple[str, float]:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="losswidget-prune") as pool:
            swaps = dict(zip((layers[i].weight for i in sparsity), pool.map(pruned, sparsity, sparsity.values())))
        outputs = [{**batch, **model.run_whole(batch, swaps, model.graph_outputs)} for batch in batches]
        done[0] += 1
        report(len(batches) + len(layers) + done[0], total, f"recovery: plan {done[0]} of {len(targets)}")
        return comparison.recovery(outputs)
    try:
        recovery = recovery_points(ctx, results, recover, prepare)
    except AnalysisCancelled as exc:
        exc.result = Result(results, errors, None, comparison.record(), _notes(layers, probes))
        raise
    return Result(results, errors, recovery, comparison.record(), _notes(layers, probes))


def _cancel_point(ctx: Context, results: list, errors: list) -> None:
    try:
        ctx.check_cancel()
    except AnalysisCancelled as exc:
        exc.result = Result(results, errors)
        raise


def _notes(layers: list[Layer], probes: list) -> tuple[str, ...]:
    skipped = [(l.name, p) for l, p in zip(layers, probes) if not isinstance(p, Probe)]
    if not skipped:
        return ()
    shown = "; ".join(f"{name} ({why})" for name, why in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
    return (f"{len(skipped)} layer(s) not measured (their input-feature norms cannot be read) and kept dense in "
            f"plans: {shown}",)


METHOD = Method(
    name="activation", label="Activation-aware",
    description="One dense pass over your data records each layer's input-feature norms ||x_j||; L(s) is the "
                "layer's estimated relative output error when its s-fraction of lowest |w|·||x_j|| is pruned "
                "(Wanda-style scores).",
    run=run,
    settings=(levels_setting(DEFAULT_LEVELS), TARGET, *DATA_SETTINGS,
              Setting("metric", "choice", "auto", "how recovery compares the pruned model's outputs with the dense "
                      "ones: auto (top-1 agreement for probabilities and classifier logits, 1 - standardised MSE "
                      "otherwise), kl, mse, or loss (accuracy ratio; needs labels)", choices=METRICS),
              Setting("output", "text", None, "score recovery on this model output only (default: every float "
                      "output)"),
              Setting("axis", "axis", None, "the class axis (kl) or channel axis (mse) of the outputs")),
    needs_data=True, rank=2, plan_cost="measured", criterion="activation",
    recovery="measured on the data: the plan at several targets applied to all layers at once, pruned by "
             "|w|·||x_j||")
