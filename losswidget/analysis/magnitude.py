"""Weight-magnitude measurements, number for number what SparseML's `pruning_loss_sens_magnitude` gives.

For each level s the measurement is the mean |w| of the weights that pruning from the previous level to s
removes (see DESIGN.md). The ranks come from analysis/ranks.py's counting kernels, not from sorting
|w|, the kernel chosen by how the weight is stored (`_source`): 16-bit floats counted by bit pattern in one
pass, MatMulNBits 2/4-bit codes counted per block without dequantizing, anything else as float32 |w| in two
histogram passes. Weights come by slices (weights.Weight), so memory stays bounded whatever a
layer's size; dequantized values are kept for the second pass when they fit KEEP_BYTES.
Layers are spread over a thread pool, largest first (numba's passes release the GIL; so do the numpy
engine's ufunc steps). Plans from these profiles weigh layers by the weight energy they lose (plan cost
"energy", see plan.py): the mean |w| values carry each layer's own weight scale.

With `executor=` (a concurrent.futures Executor: a process pool, or a Dask cluster's
`client.get_executor()`), layers are shared out by their stored size: each task is one large layer, or
small layers together up to TASK_BYTES, largest first so the last tasks to finish are short ones; each
worker process opens the model from its path (once per model state) and reads only its layers.
"""
from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, wait

import numpy as np
from onnx import TensorProto

from ..errors import AnalysisCancelled, ModelError, SettingsError
from ..graph import Layer, read_graph
from ..identity import file_key
from ..onnxfile import ModelFile, open_model, stored_bytes
from ..weights import Weight
from .base import TARGET, Context, Measured, Method, Result, levels_setting, run_layers
from .kernels import load_async
from .ranks import default_engine, measure, measure_codes, measure_half

SPARSEML_LEVELS = tuple(i / 100 for i in range(100))
TASK_BYTES = 64 << 20              # small layers go to a worker together, up to this many stored bytes
KEEP_BYTES = 256 << 20             # computed |w| kept between the kernel's passes (per worker thread)
CODE_BITS = (2, 4)                 # n-bit codes counted per block (8-bit blocks have too many codes to pay)
CODE_SLICE_BYTES = 16 << 20        # code slices by their float32 size: 4M codes, 2 MB packed (fewer calls)


def _source(layer: Layer) -> str:
    """How the kernel reads this layer's weight: 16-bit float patterns, n-bit codes or float32 |w|."""
    ref = layer.ref
    if ref.kind == "nbits" and ref.bits in CODE_BITS and ref.g_idx is None:
        return "codes"
    if ref.kind == "plain" and ref.tensor.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
        return "half"
    return "values"


def _measure_layer(mf: ModelFile, layer: Layer, levels: np.ndarray, engine: str) -> Measured:
    """One layer through the kernel that fits its storage (analysis/ranks.py), its weight read by slices
    (weights.Weight): 16-bit floats counted by bit pattern in one pass; MatMulNBits codes counted per block,
    never dequantized; anything else as float32 |w| in two passes (dequantized values kept between them
    when they fit KEEP_BYTES)."""
    w, t = Weight(mf, layer.ref), layer.ref.tensor
    source = _source(layer)
    if source == "codes":
        r = measure_codes(lambda: w.code_blocks(CODE_SLICE_BYTES), layer.ref.bits, levels, engine)
    elif source == "half":
        r = measure_half(w.half_slices, levels, engine, bfloat16=t.data_type == TensorProto.BFLOAT16)
    else:
        r = measure(w.reader(keep=KEEP_BYTES, absolute=True), levels, engine)
    mf.release(t)
    return Measured(r.values, r.energy_kept, r.energy, r.flags)


def run(ctx: Context) -> Result:
    engine = default_engine(sum(layer.params for layer in ctx.layers))
    if ctx.executor is not None:
        return _run_shared(ctx, engine)
    if engine == "numba":
        # loading starts while the first slices are read; layers wait for it rather than run on numpy
        # meanwhile: numpy's passes hold the GIL the load needs (t12: the load took 3.7-6.6 s, not 1.1 s)
        load_async()
    return Result(run_layers(ctx, lambda layer: _measure_layer(ctx.mf, layer, ctx.levels, engine)))


# -- sharing layers out ----------------------------------------------------------------------------------
def tasks_by_size(layers: list[Layer], task_bytes: int = TASK_BYTES) -> list[list[int]]:
    """Layer indices in tasks: a layer of task_bytes or more alone, smaller ones together up to task_bytes;
    the tasks largest first."""
    size = {l.index: stored_bytes(l.ref.tensor) for l in layers}
    tasks: list[tuple[int, list[int]]] = []
    small: list[int] = []
    held = 0
    for i in sorted(size, key=lambda i: -size[i]):
        if size[i] >= task_bytes:
            tasks.append((size[i], [i]))
            continue
        if held + size[i] > task_bytes and small:
            tasks.append((held, small))
            small, held = [], 0
        small.append(i)
        held += size[i]
    if small:
        tasks.append((held, small))
    return [t for _, t in sorted(tasks, key=lambda t: -t[0])]


def _run_shared(ctx: Context, engine: str) -> Result:
    if ctx.mf.path is None:
        raise SettingsError("An executor needs the model as a file path (workers load it themselves).")
    path = str(ctx.mf.path)
    key = model_state(path, ctx.mf)
    position = {l.index: k for k, l in enumerate(ctx.layers)}
    results: list[Measured | None] = [None] * len(ctx.layers)
    try:
        ctx.check_cancel()
    except AnalysisCancelled as exc:
        exc.result = Result(results)
        raise
    levels = np.asarray(ctx.levels)
    pending = {ctx.executor.submit(remote_measure, path, key, [(i, ctx.layers[position[i]].weight) for i in task],
                                   levels, engine) for task in tasks_by_size(ctx.layers)}
    done = 0
    try:
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for fut in finished:
                for index, measured in fut.result():
                    k = position[index]
                    results[k] = measured
                    done += 1
                    ctx.layer_done(k, measured)
                    if ctx.progress is not None:
                        ctx.progress(done, len(ctx.layers), ctx.layers[k].name)
            ctx.check_cancel()
    except AnalysisCancelled as exc:
        exc.result = Result(results)
        raise
    finally:
        for fut in pending:
            fut.cancel()
    return Result(results)


def model_state(path: str, mf: ModelFile) -> str:
    """The model files' state (identity.file_key): a worker that opened another state opens the path again."""
    return repr(file_key([path] + sorted(mf.external_paths())))


_OPENED: dict = {}
_OPENED_LOCK = threading.Lock()


def _opened(path: str, key: str) -> tuple[ModelFile, list[Layer]]:
    with _OPENED_LOCK:
        if _OPENED.get("key") != key:
            old = _OPENED.pop("mf", None)
            if old is not None:
                old.close()
            _OPENED.clear()
            mf = open_model(path)
            _OPENED.update(key=key, mf=mf, layers=read_graph(mf).layers)
        return _OPENED["mf"], _OPENED["layers"]


def remote_measure(path: str, key: str, layers: list[tuple[int, str]], levels: np.ndarray,
                   engine: str = "numpy") -> list[tuple[int, Measured]]:
    """Executor task: measure these layers (index, weight name) of the model at `path` in this worker."""
    mf, found = _opened(path, key)
    if key != model_state(path, mf):
        raise ModelError(f"{path} changed while it was being profiled; profile it again.")
    out = []
    for index, weight in layers:
        if index >= len(found) or found[index].weight != weight:
            raise ModelError(f"{path} changed while it was being profiled; profile it again.")
        out.append((index, _measure_layer(mf, found[index], levels, engine)))
    return out


METHOD = Method(
    name="magnitude", label="Baseline (weight magnitude)",
    description="Mean |w| pruned at each level, as SparseML's pruning_loss_sens_magnitude computes it.",
    run=run, settings=(levels_setting(SPARSEML_LEVELS), TARGET), rank=1, plan_cost="energy", executor=True,
    recovery="none: data-free (plans report the weight energy they keep, which does not predict accuracy)")
