"""Run a model in onnxruntime with one weight swapped, recomputing only what the swap can change.

SparseML builds a new session for every (layer, level). Here the model is built once, split at the nodes
that apply layer weights into consecutive chunks, one onnxruntime session each, with each layer's weight
an overridable initializer (it is both an initializer and a graph input, so a run may feed a pruned copy).
A dense run keeps every tensor that crosses a chunk boundary; a pruned run starts at the first chunk that
reads the weight and re-runs only chunks whose inputs changed, feeding the rest from the dense cache.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from ..errors import ModelError


def _defined_in(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(o for o in node.output if o)
    return names


def _used_names(node: onnx.NodeProto) -> set[str]:
    """Names a node reads, including the outer-scope names its subgraphs read."""
    used = {i for i in node.input if i}
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            inner: set[str] = set()
            for n in g.node:
                inner |= _used_names(n)
            inner |= {o.name for o in g.output}
            used |= inner - _defined_in(g)
    return used


def hoist_weights(model: onnx.ModelProto, names: set[str]) -> None:
    """Make every named weight a main-graph initializer (from Constant nodes or subgraph initializers)."""
    main = model.graph
    have = {t.name for t in main.initializer}

    def visit(graph: onnx.GraphProto, is_main: bool) -> None:
        keep = []
        for node in graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] in names - have:
                value = next((a.t for a in node.attribute if a.name == "value" and a.type == AttributeProto.TENSOR), None)
                if value is not None:
                    t = TensorProto()
                    t.CopyFrom(value)
                    t.name = node.output[0]
                    main.initializer.append(t)
                    have.add(t.name)
                    continue
            keep.append(node)
            for attr in node.attribute:
                for g in ([attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)):
                    visit(g, False)
        if len(keep) != len(graph.node):
            del graph.node[:]
            graph.node.extend(keep)
        if not is_main:
            moved = [t for t in graph.initializer if t.name in names - have]
            for t in moved:
                main.initializer.append(t)
                have.add(t.name)
            if moved:
                rest = [t for t in graph.initializer if t.name not in {m.name for m in moved}]
                del graph.initializer[:]
                graph.initializer.extend(rest)

    visit(main, True)


@dataclass
class Chunk:
    session: object
    inputs: list[str]        # fed from the dense cache or from an earlier pruned chunk
    weights: list[str]       # layer weights it reads (overridable initializers)
    outputs: list[str]


class ChunkedModel:
    """The model as a chain of onnxruntime sessions (see the module doc)."""

    # onnxruntime's fixed cost per run() call, single-threaded, measured on the dev machines (~0.3-0.5 ms):
    # more chunks recompute less of the graph but pay it more often
    RUN_OVERHEAD_S = 0.0001

    def __init__(self, model: onnx.ModelProto, weights: list[str], threads: int | None = None,
                 probe: dict[str, np.ndarray] | None = None):
        """`probe`: one batch of inputs; its dense run time decides how many chunks pay off."""
        import onnxruntime as ort

        self.weights = set(weights)
        hoist_weights(model, self.weights)
        missing = self.weights - {t.name for t in model.graph.initializer}
        if missing:
            raise ModelError(f"Cannot make weights {sorted(missing)[:3]} overridable for onnxruntime.")
        self.graph_inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        self.graph_outputs = [o.name for o in model.graph.output]
        types = _value_types(model)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # many sessions live side by side: spinning idle threads of one would steal the cores of another
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self._ort, self._options = ort, options
        nodes = list(model.graph.node)
        used = [_used_names(n) for n in nodes]
        first_use = {w: next(i for i, u in enumerate(used) if w in u) for w in self.weights
                     if any(w in u for u in used)}
        whole = [(0, len(nodes))]
        self.chunks = [self._chunk(model, nodes, used, [], types)]
        wanted = 1
        if probe is not None and len(set(first_use.values())) > 1:
            self.run_dense(probe)                           # warm-up
            t0 = time.perf_counter()
            self.run_dense(probe)
            wanted = int(round(math.sqrt((time.perf_counter() - t0) / self.RUN_OVERHEAD_S)))
        bounds = _split(first_use, len(nodes), wanted, {w: _numel(model, w) for w in first_use})
        if bounds != whole and all(t in types for t in _boundary_names(nodes, used, bounds, self.graph_outputs)):
            self.chunks = [self._chunk(model, nodes[a:b], used[a:b], used[b:], types) for a, b in bounds]
        self.first_chunk = {w: next(i for i, c in enumerate(self.chunks) if w in c.weights) for w in self.weights
                            if any(w in c.weights for c in self.chunks)}

    def _chunk(self, model, nodes, used, later_used, types) -> Chunk:
        produced = {o for n in nodes for o in n.output if o}
        reads = set().union(*used) if used else set()
        inits = {t.name: t for t in model.graph.initializer}
        later = set().union(*later_used) if later_used else set()
        outputs = sorted(o for o in produced if o in later or o in self.graph_outputs)
        inputs = sorted(n for n in reads - produced if n not in inits)
        weights = sorted(n for n in reads if n in self.weights)
        g = helper.make_graph(
            nodes, "chunk",
            [_vi(n, types) for n in inputs] + [_vi(w, types, inits[w]) for w in weights],
            [_vi(o, types) for o in outputs],
            [inits[n] for n in sorted(reads & set(inits))])
        m = helper.make_model(g, opset_imports=model.opset_import, ir_version=max(model.ir_version, 4))
        m.functions.extend(model.functions)
        try:
            session = self._ort.InferenceSession(m.SerializeToString(), self._options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load this model: {str(exc).splitlines()[0][:300]}") from None
        return Chunk(session, inputs, weights, outputs)

    def run_dense(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(feeds)
        for c in self.chunks:
            env.update(zip(c.outputs, c.session.run(c.outputs, {n: env[n] for n in c.inputs})))
        return env

    def run_with(self, env: dict[str, np.ndarray], swaps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Graph outputs with the given weights replaced; `env` is a dense run's cache."""
        start = min(self.first_chunk[w] for w in swaps)
        changed, local = set(swaps), {}
        for c in self.chunks[start:]:
            if changed.isdisjoint(c.inputs) and changed.isdisjoint(c.weights):
                continue
            feeds = {n: local[n] if n in local else env[n] for n in c.inputs}
            feeds.update({w: swaps[w] for w in c.weights if w in swaps})
            local.update(zip(c.outputs, c.session.run(c.outputs, feeds)))
            changed.update(c.outputs)
        return {o: local.get(o, env.get(o)) for o in self.graph_outputs}


def _numel(model: onnx.ModelProto, name: str) -> int:
    t = next(t for t in model.graph.initializer if t.name == name)
    return int(np.prod(t.dims)) if len(t.dims) else 1


def _split(first_use: dict[str, int], n_nodes: int, wanted: int, size: dict[str, int]) -> list[tuple[int, int]]:
    """Up to `wanted` chunks, cut at nodes where a layer weight is first read, balanced by weight size.

    With K chunks, a pruned run costs about K/2 run overheads plus the compute after the chunk start; the
    sqrt(dense time / overhead) chunks that `wanted` comes from balance the two.
    """
    cuts = sorted(set(first_use.values()))
    if wanted <= 1 or len(cuts) <= 1:
        return [(0, n_nodes)]
    weight_at = {}
    for w, i in first_use.items():
        weight_at[i] = weight_at.get(i, 0) + size[w]
    total = sum(weight_at.values())
    starts, acc, step = [0], 0, total / min(wanted, len(cuts))
    for i in cuts:
        if i > 0 and acc >= step * len(starts):
            starts.append(i)
        acc += weight_at[i]
    return list(zip(starts, starts[1:] + [n_nodes]))


def _boundary_names(nodes, used, bounds, graph_outputs) -> set[str]:
    names = set()
    for a, b in bounds:
        produced = {o for n in nodes[a:b] for o in n.output if o}
        later = set().union(*used[b:]) if b < len(nodes) else set()
        names |= {o for o in produced if o in later or o in graph_outputs}
    return names


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # best effort: unknown types make the runner fall back to one chunk
        inferred = model
    g = inferred.graph
    types = {}
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type
    return types


def _vi(name: str, types: dict, tensor: TensorProto | None = None) -> onnx.ValueInfoProto:
    if tensor is not None:
        return helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
    # element type only: inferred shapes may pin the batch size, and the last batch may be smaller
    return helper.make_tensor_value_info(name, types[name].tensor_type.elem_type, None)
