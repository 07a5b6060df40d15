"""Run a model in onnxruntime with one weight swapped, recomputing only what the swap can change.

SparseML builds a new session for every (layer, level). Here the model is built once and split into
consecutive chunks, cut right after nodes that read layer weights (and the elementwise nodes that finish
their outputs: bias, activation), one onnxruntime session each. In the chunks every weight is a constant,
so onnxruntime prepacks it for its GEMMs (feeding weights as inputs cost up to a third more per MatMul,
measured). A dense run keeps every tensor that crosses a chunk boundary.
A run with one layer pruned starts in a small *entry* session made for that layer (its first reader to the
end of that chunk, the weight a plain input fed the pruned copy) and then runs only the chunks whose inputs
changed, feeding the rest from the dense cache. Entries are built when a layer is measured and dropped after.
Recovery (every layer pruned at once) runs one session of the whole graph with all layer weights as inputs.
A model made with `chunks=0` has only that session (`run_whole`), which may also return inner values
(`keep`): the activation-aware method reads the layers' inputs from it in its one dense pass.

Weights are never serialized into the sessions: the large ones are read from the file (ModelFile.stored)
and handed to onnxruntime as external initializers over those arrays; small ones are embedded. External
data that the chunks do not hand over (Constant values, subgraph initializers) is read into the message.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from ..errors import ModelError, first_line
from ..onnxfile import ModelFile, numel


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


def _inline_external(graph: onnx.GraphProto, mf: ModelFile, main: bool) -> None:
    """Read into the message every external tensor the chunks do not hand over themselves (Constant values,
    subgraph initializers): sessions are made from bytes, so onnxruntime would look for their data files
    relative to the working directory, not the model's folder."""
    for t in ([] if main else graph.initializer):
        if t.data_location == TensorProto.EXTERNAL:
            t.CopyFrom(mf.inline(t))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and attr.t.data_location == TensorProto.EXTERNAL:
                attr.t.CopyFrom(mf.inline(attr.t))
            for g in ([attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)):
                _inline_external(g, mf, main=False)


@dataclass
class Chunk:
    session: object
    inputs: list[str]        # activations, fed from the dense cache or from an earlier pruned run
    outputs: list[str]
    fed: list[str] = field(default_factory=list)   # layer weights fed on every run (entries, recovery)
    next_chunk: int = 0      # entries: the first chunk after the nodes they cover
    keep: tuple = ()         # the buffers behind its external initializers, alive as long as the session


class ChunkedModel:
    """The model as a chain of onnxruntime sessions (see the module doc)."""

    # onnxruntime's fixed cost per run() call with its feeds, single-threaded, measured on the dev machines
    # (11-22 us): more chunks recompute less of the graph but pay it more often
    RUN_OVERHEAD_S = 0.00005
    # what a session's first run costs more than later ones (allocation), at most: 0.2 ms on the dev
    # machines, 0.4-1.1 ms per t4 chunk on the 2-core hosts
    FIRST_RUN_EXTRA_S = 0.001
    # sessions cost ~5 ms each to make: a model with thousands of layers gets at most this many chunks
    MAX_CHUNKS = 128

    def __init__(self, mf: ModelFile, weights: list[str], threads: int | None = None,
                 probe: dict[str, np.ndarray] | None = None, chunks: int | None = None):
        """`probe`: one batch of inputs; its dense run time decides whether fewer chunks pay off (its dense
        run is kept in `probe_env`). `chunks` forces a count: 1 for the whole graph, 0 for none (the model runs
        whole through `open_session` / `run_whole` only)."""
        import onnxruntime as ort

        self._ort, self._threads, self._mf = ort, threads, mf
        self.weights = set(weights)
        model = onnx.ModelProto()
        model.CopyFrom(mf.model)             # light: the large weights stay in the file
        hoist_weights(model, self.weights)
        _inline_external(model.graph, mf, main=True)
        self._inits = {t.name: t for t in model.graph.initializer}
        missing = self.weights - set(self._inits)
        if missing:
            raise ModelError(f"Cannot make weights {sorted(missing)[:3]} overridable for onnxruntime.")
        self._model = model
        self.graph_inputs = [i.name for i in model.graph.input if i.name not in self._inits]
        self.graph_outputs = [o.name for o in model.graph.output]
        self._types = _declared_types(model)     # more as onnxruntime infers them, chunk by chunk
        self._nodes = nodes = list(model.graph.node)
        self._used = used = [_used_names(n) for n in nodes]
        readers: dict[str, list[int]] = {}
        for i, u in enumerate(used):
            for w in u & self.weights:
                readers.setdefault(w, []).append(i)
        self._readers = readers
        self._last_read = {name: i for i, u in enumerate(used) for name in u}   # index of the last reader
        self._consts = set(self._inits) - self.weights
        self._entries: dict[str, Chunk] = {}
        self._dense_weights: dict[str, np.ndarray] = {}
        self._open: Chunk | None = None
        self._lock = threading.Lock()
        self.probe_env = None
        n = len(nodes)
        ends = {w: e for w, r in readers.items() if (e := self._cut_after(r[-1])) < n}
        sizes = {w: numel(self._inits[w]) for w in ends}
        # finest first (a cut after every layer, up to MAX_CHUNKS); a model so fast that run overheads
        # dominate is re-cut into fewer chunks
        if chunks == 0:
            self.bounds, self.chunks = [(0, n)], []
            return
        self._build(_split(ends, n, chunks or self.MAX_CHUNKS, sizes))
        if chunks is None and probe is not None and len(self.chunks) > 1:
            t0 = time.perf_counter()
            self.probe_env = self.run_dense(probe)
            # a second run is timed only when the first, less its allocation, leaves room for fewer
            # chunks to pay off
            first = time.perf_counter() - t0 - len(self.chunks) * self.FIRST_RUN_EXTRA_S
            if first < (len(self.chunks) / 2) ** 2 * self.RUN_OVERHEAD_S:
                t0 = time.perf_counter()
                self.run_dense(probe)
                wanted = int(round(math.sqrt((time.perf_counter() - t0) / self.RUN_OVERHEAD_S)))
                if wanted < len(self.chunks) / 2:
                    self._build(_split(ends, n, wanted, sizes))
                    self.probe_env = None

    def _cut_after(self, i: int) -> int:
        """Where a chunk ending with reader node i ends: after it and the elementwise nodes that only finish
        its output (a bias Add, an activation), so that they run in place in its session instead of on a
        fed copy at the start of the next one."""
        nodes, region, e = self._nodes, {o for o in self._nodes[i].output if o}, i + 1
        while e < len(nodes) and nodes[e].op_type in _FINISHING and nodes[e].domain in ("", "ai.onnx"):
            reads = self._used[e]
            if not reads & region or not reads <= region | self._consts:
                break
            region.update(o for o in nodes[e].output if o)
            e += 1
        return e

    def _build(self, bounds: list[tuple[int, int]]) -> None:
        """Sessions for the chunks, in order: each one's inputs are typed by what onnxruntime inferred for
        the outputs of the ones before (no ONNX shape inference: it cost 25 ms in every process for its
        schema tables). A value that is not a tensor (a sequence, an optional) crossing a cut: one chunk."""
        self.bounds, self.chunks = bounds, []
        for a, b in bounds:
            chunk = self._chunk(a, b)
            if not self._learn_types(chunk) and len(bounds) > 1:
                return self._build([(0, len(self._nodes))])
            self.chunks.append(chunk)

    def _learn_types(self, chunk: Chunk) -> bool:
        """Keep the element types onnxruntime inferred for the chunk's outputs; False if one is no tensor."""
        tensors = True
        for out in chunk.session.get_outputs():
            elem = _elem_type(out.type)
            if elem is None:
                tensors = False
            else:
                self._types[out.name] = elem
        return tensors

    # -- building ----------------------------------------------------------------------------------------
    def _produced(self, a: int, b: int) -> set[str]:
        return {o for n in self._nodes[a:b] for o in n.output if o}

    def _needed_after(self, name: str, b: int) -> bool:
        """Whether a node from b on, or the caller, reads this value."""
        return self._last_read.get(name, -1) >= b or name in self.graph_outputs

    def _reads(self, a: int, b: int) -> set[str]:
        return set().union(*self._used[a:b]) if b > a else set()

    def _entry_span(self, w: str) -> tuple[int, int, int]:
        """(first node, end node, next chunk) of the nodes the entry for weight w runs."""
        r = self._readers[w]
        last = next(k for k, (a, b) in enumerate(self.bounds) if a <= r[-1] < b)
        first = r[0]
        a = next(a for a, b in self.bounds if a <= first < b)
        # values made between the chunk start and the first reader are fed in (its dense run keeps them)
        if not all(n in self._types for n in (self._reads(first, self.bounds[last][1]) & self._produced(a, first))):
            first = a
        return first, self.bounds[last][1], last + 1

    def _chunk(self, a: int, b: int) -> Chunk:
        """Nodes a..b with every weight a constant."""
        # dense runs also keep what the entries starting inside this chunk read from it
        keep: set[str] = set()
        for r in self._readers.values():
            if a < r[0] < b:
                keep |= self._reads(r[0], b) & self._produced(a, r[0])
        return self._session(a, b, fed=[], keep=keep)

    def _session(self, a: int, b: int, fed: list[str], next_chunk: int = 0, keep: set[str] = frozenset(),
                 threads: int | None = None) -> Chunk:
        """Nodes a..b as a session giving what later nodes, the caller or `keep` need; `fed` weights become
        plain inputs, other initializers constants."""
        ort, inits = self._ort, self._inits
        produced, reads = self._produced(a, b), self._reads(a, b)
        outputs = sorted(o for o in produced if self._needed_after(o, b) or o in keep)
        inputs = sorted(n for n in reads - produced if n not in inits)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # many sessions live side by side: spinning idle threads of one would steal the cores of another
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # blocked int4 DequantizeLinear -> MatMul is fused into MatMulNBits, by default with int8 activations;
        # a fed (pruned) weight is not fused: both must do the same float arithmetic to be compared
        options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        if threads or self._threads:
            options.intra_op_num_threads = threads or self._threads
        consts, names, values, keep = [], [], [], []
        for name in sorted(reads & set(inits) - set(fed)):
            t = inits[name]
            view = self._mf.stored(t)
            if view is None:
                consts.append(self._mf.inline(t))
                continue
            # a stand-in that names the bytes; onnxruntime uses the array read from the file (not serialized)
            stub = TensorProto(name=name, data_type=t.data_type, dims=t.dims, data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "losswidget-memory"), ("offset", "0"), ("length", str(view.nbytes))):
                stub.external_data.add(key=key, value=value)
            consts.append(stub)
            names.append(name)
            values.append(ort.OrtValue.ortvalue_from_numpy(view))
            keep.append(view)
        if names:
            options.add_external_initializers(names, values)
        g = helper.make_graph(
            self._nodes[a:b], "chunk",
            [_vi(n, self._types) for n in inputs] + [_vi(w, self._types, inits[w]) for w in fed],
            [_vi(o, self._types) for o in outputs], consts)
        m = helper.make_model(g, opset_imports=self._model.opset_import, ir_version=max(self._model.ir_version, 4))
        m.functions.extend(self._model.functions)
        try:
            session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load this model: {first_line(exc)}") from None
        return Chunk(session, inputs, outputs, list(fed), next_chunk, (keep, values))

    def _entry(self, w: str) -> Chunk:
        entry = self._entries.get(w)
        if entry is None:
            a, b, next_chunk = self._entry_span(w)
            entry = self._session(a, b, [w], next_chunk)
            with self._lock:
                self._entries[w] = entry
        return entry

    def open_session(self, threads: int | None = None, keep=()) -> Chunk:
        """The whole graph with every layer weight fed (runs with several weights swapped: recovery), made
        on first use with `threads` intra-op threads (default: as the chunks); it also returns the values
        named in `keep` that nodes produce (graph inputs and initializers are not outputs)."""
        with self._lock:
            if self._open is None:
                self._open = self._session(0, len(self._nodes), sorted(self._readers), len(self.chunks),
                                           keep=set(keep), threads=threads)
            return self._open

    def release(self, w: str) -> None:
        """Drop the entry session of weight w (once its layer is measured)."""
        with self._lock:
            self._entries.pop(w, None)

    def _unswapped(self, w: str) -> np.ndarray:
        """Weight w as stored, for runs that feed it unchanged (read from the file once, then kept)."""
        value = self._dense_weights.get(w)
        if value is None:
            value = self._dense_weights[w] = self._mf.array(self._inits[w])
        return value

    # -- running -----------------------------------------------------------------------------------------
    def _feedable(self, value: np.ndarray, tensor: TensorProto, alive: list):
        """The value as onnxruntime takes it: sub-byte types (int4, uint4, ...) as an OrtValue over their
        packed bytes (onnxruntime's numpy bridge knows no 4-bit dtype; it reads a buffer the size of the
        logical tensor from its start, so the packed bytes go first in one, kept in `alive`: the OrtValue
        does not own it)."""
        if np.dtype(value.dtype).itemsize != 1 or tensor.data_type not in _SUB_BYTE:
            return value
        packed = onnx.numpy_helper.from_array(np.asarray(value), tensor.name).raw_data
        buf = np.zeros(max(value.size, len(packed)), np.uint8)
        buf[:len(packed)] = np.frombuffer(packed, np.uint8)
        alive.append(buf)
        return self._ort.OrtValue.ortvalue_from_numpy_with_onnx_type(buf[:value.size].reshape(value.shape),
                                                                     tensor.data_type)

    def run_dense(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = dict(feeds)
        for c in self.chunks:
            env.update(zip(c.outputs, c.session.run(c.outputs, {n: env[n] for n in c.inputs})))
        return env

    def run_whole(self, feeds: dict[str, np.ndarray], swaps: dict[str, np.ndarray] | None = None,
                  outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """The whole-graph session's outputs (default: all of them, graph outputs and kept values), the layer
        weights from `swaps` where given, else as stored (read from the memory map, not copied)."""
        c = self.open_session()
        inputs = {n: feeds[n] for n in c.inputs}
        alive: list = []                               # buffers behind OrtValues, until the run is over
        for w in c.fed:
            inputs[w] = self._feedable(swaps[w] if swaps and w in swaps else self._mf.array(self._inits[w]),
                                       self._inits[w], alive)
        names = c.outputs if outputs is None else [o for o in c.outputs if o in outputs]
        return dict(zip(names, c.session.run(names, inputs)))

    def run_with(self, env: dict[str, np.ndarray], swaps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Graph outputs with the given weights replaced; `env` is a dense run's cache."""
        swaps = {w: a for w, a in swaps.items() if w in self._readers}
        if not swaps:                                  # nothing reads them
            return {o: env[o] for o in self.graph_outputs}
        if len(swaps) == 1:
            first = self._entry(next(iter(swaps)))
        else:
            first = self.open_session()
        feeds = {n: env[n] for n in first.inputs}
        alive: list = []                               # buffers behind OrtValues, until the run is over
        for w in first.fed:
            feeds[w] = self._feedable(swaps[w] if w in swaps else self._unswapped(w), self._inits[w], alive)
        local = dict(zip(first.outputs, first.session.run(first.outputs, feeds)))
        changed = set(local)
        for c in self.chunks[first.next_chunk:]:
            if changed.isdisjoint(c.inputs):
                continue
            feeds = {n: local[n] if n in local else env[n] for n in c.inputs}
            local.update(zip(c.outputs, c.session.run(c.outputs, feeds)))
            changed.update(c.outputs)
        return {o: local[o] if o in local else env[o] for o in self.graph_outputs}


_SUB_BYTE = frozenset(getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                      if hasattr(TensorProto, n))

# elementwise ops that commonly finish a layer's output (bias, activation, GELU's pieces)
_FINISHING = frozenset({"Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "Tanh",
                        "Erf", "Gelu", "Elu", "Selu", "Softplus", "HardSwish", "Clip", "Cast", "Neg", "Sqrt", "Pow"})


def _split(ends: dict[str, int], n_nodes: int, wanted: int, size: dict[str, int]) -> list[tuple[int, int]]:
    """Up to `wanted` chunks, cut at the given ends of layers (ChunkedModel._cut_after), balanced by weight size.

    With K chunks, a pruned run costs about K/2 run overheads plus the compute after the pruned layer; the
    sqrt(dense time / overhead) chunks that `wanted` comes from balance the two.
    """
    cuts = sorted(set(ends.values()))
    if wanted <= 1 or not cuts:
        return [(0, n_nodes)]
    if wanted > len(cuts):
        return list(zip([0] + cuts, cuts + [n_nodes]))
    weight_at: dict[int, int] = {}
    for w, i in ends.items():
        weight_at[i] = weight_at.get(i, 0) + size[w]
    starts, acc, step = [0], 0, sum(weight_at.values()) / wanted
    for i in cuts:
        acc += weight_at[i]
        if len(starts) < wanted and acc >= step * len(starts):
            starts.append(i)
    return list(zip(starts, starts[1:] + [n_nodes]))


def _declared_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of the graph's inputs and outputs, as the model declares them."""
    return {vi.name: vi.type.tensor_type.elem_type for vi in (*model.graph.input, *model.graph.output)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}


def _elem_type(ort_type: str) -> int | None:
    """TensorProto element type of an onnxruntime type name ('tensor(float16)'); None if not a tensor."""
    if not (ort_type.startswith("tensor(") and ort_type.endswith(")")):
        return None
    try:
        return TensorProto.DataType.Value(ort_type[7:-1].upper())
    except ValueError:
        return None


def _vi(name: str, types: dict, tensor: TensorProto | None = None) -> onnx.ValueInfoProto:
    if tensor is not None:
        return helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
    if name not in types:                  # an output: onnxruntime infers its type
        return helper.make_empty_tensor_value_info(name)
    # element type only: shapes would pin the batch size, and the last batch may be smaller
    return helper.make_tensor_value_info(name, types[name], None)
