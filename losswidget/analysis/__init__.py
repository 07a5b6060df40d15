"""The analysis methods and `analyze`, which runs one of them on a model and returns a LossProfile.

The registry below lists the method modules; each declares itself with `METHOD` (see base.py). Adding a
method touches its own module and this list, nothing else: `analyze`, `methods()`, the CLI's flags and the
widget's form are all built from the declarations.
"""
from __future__ import annotations

import importlib
import threading
from concurrent.futures import Future

import numpy as np

from ..errors import AnalysisCancelled, SettingsError
from ..graph import ModelGraph, read_graph
from ..onnxfile import open_model
from ..profile import LayerResult, LossProfile, ModelInfo, Recovery, from_sparseml_dict
from .base import Context, Measured, Method, Progress, Result, Setting

# display order; each module exposes METHOD
REGISTRY = ("approximated", "magnitude", "one_shot", "activation")

_METHODS: dict[str, Method] | None = None


def registry() -> dict[str, Method]:
    """name -> Method, in display order (modules are imported on first use)."""
    global _METHODS
    if _METHODS is None:
        found = {}
        for module in REGISTRY:
            method = importlib.import_module(f"{__name__}.{module}").METHOD
            found[method.name] = method
        _METHODS = found
    return _METHODS


def get_method(method: str) -> Method:
    methods_ = registry()
    if not isinstance(method, str) or method not in methods_:
        raise SettingsError(f"Unknown method {method!r}; available: {', '.join(methods_)}.")
    return methods_[method]


def methods() -> list[dict]:
    """The available methods: name, label, description, whether they need data, and their settings
    (name, type, default, range or choices, help)."""
    return [m.describe() for m in registry().values()]


def all_settings() -> dict[str, Setting]:
    """Every setting any method declares, by name (the first declaration wins): the CLI's flags."""
    out: dict[str, Setting] = {}
    for m in registry().values():
        for s in m.settings:
            out.setdefault(s.name, s)
    return out


def analyze(model, method: str = "magnitude", *, name: str | None = None, progress: Progress | None = None,
            cancel: threading.Event | None = None, executor=None, on_layer=None, **settings) -> LossProfile:
    """Profile `model` (a path or an onnx.ModelProto) with `method`; returns a LossProfile.

    `settings` are the method's declared settings (`losswidget.methods()` lists them; e.g.
    `sparsity_levels`, `target_sparsity`, and for data methods `data`, `labels`, `samples`, ...); anything
    else is a SettingsError. `progress(done, total, message)` is called as work finishes; `on_layer(index,
    measured)` as each layer finishes; setting the `cancel` event (threading.Event) stops the run with
    AnalysisCancelled, whose `partial` holds the layers finished so far as a profile marked partial (or
    None). `executor`: any concurrent.futures.Executor for methods that share layers out (workers load the
    model by path).
    """
    spec = get_method(method)
    values = spec.check(settings)
    if executor is not None and not spec.executor:
        raise SettingsError(f"Method '{spec.name}' runs in this process; it takes no executor.")
    levels = np.asarray(values["sparsity_levels"], dtype=np.float64)
    target = float(values["target_sparsity"])
    name = name or spec.label
    with open_model(model) as mf:
        graph = read_graph(mf)
        mf.hash_future()                  # hashed on a thread while the method runs (at once when cached)
        dataset = None
        if spec.needs_data:
            from ..data import load_data
            dataset = load_data(values["data"], mf.model, labels=values["labels"], samples=values["samples"],
                                batch_size=values["batch_size"], random_dims=values["random_dims"])
        ctx = Context(mf, graph.layers, levels, target, values, dataset, progress, cancel, executor, on_layer)
        record = _recorded(spec, values, dataset)
        try:
            result = spec.run(ctx)
        except AnalysisCancelled as exc:
            partial = getattr(exc, "result", None)
            exc.partial = _partial_profile(spec, name, mf, graph, levels, record, partial)
            exc.args = ("The analysis was cancelled; "
                        + (f"the {len(exc.partial.layers)} layer(s) finished are in .partial."
                           if exc.partial is not None else "no layer had finished."),)
            raise
        return build_profile(spec, name, mf, graph, levels, {**record, **result.record}, result)


def _recorded(spec: Method, values: dict, dataset) -> dict:
    """The settings as written into the profile: data objects become a description of where they came from."""
    out = {}
    for s in spec.settings:
        v = values[s.name]
        if s.kind == "data":
            v = dataset.source if dataset is not None else None
        elif s.kind == "labels":
            v = v if v is None or isinstance(v, str) else "array"
        out[s.name] = v
    if dataset is not None:
        out.update(samples=dataset.samples, random=dataset.random,
                   batch_size=len(next(iter(dataset.batches[0].values()))))
    return out


def build_profile(spec: Method, name: str, mf, graph: ModelGraph, levels: np.ndarray, settings: dict, result: Result,
                  partial: bool = False, notes: tuple[str, ...] = ()) -> LossProfile:
    """Plain data from one run: a LayerResult per layer (failed layers kept with NaN values and their error)."""
    lv = tuple(float(x) for x in levels)
    nan = np.full(len(lv), np.nan)
    errors = list(result.errors) + [None] * (len(graph.layers) - len(result.errors))
    layers = []
    for l, m, e in zip(graph.layers, result.measured, errors):
        if m is None:
            m = Measured(nan, nan, float("nan"), ("failed",) if e else ())
        layers.append(LayerResult(
            index=l.index, id=l.id, name=l.name, op_type=l.op_type, weight=l.weight, shape=l.shape, params=l.params,
            levels=lv, values=tuple(float(v) for v in m.values), energy_kept=tuple(float(v) for v in m.energy_kept),
            energy=float(m.energy), flags=tuple(m.flags), error=e, input_norms=m.input_norms))
    notes = list(notes) + list(result.notes)
    notes += [f"Layer {l.name} failed: {e}" for l, e in zip(graph.layers, errors) if e]
    if not layers:
        notes.append("No prunable layers found (no Conv / Gemm / MatMul / ... node applies a stored weight).")
    flagged = [l.name for l in layers if set(l.flags) & {"non_finite", "all_zero"}]
    if flagged:
        notes.append(f"{len(flagged)} layer(s) have NaN/Inf or all-zero weights: {', '.join(flagged[:5])}"
                     + (" ..." if len(flagged) > 5 else ""))
    if settings.get("random"):
        notes.append("Measured on random data: rankings may not reflect real inputs.")
    info = ModelInfo(str(mf.path) if mf.path else None, mf.content_hash(), graph.total_params, graph.prunable_params)
    recovery = Recovery(result.recovery[0], tuple(sorted(result.recovery[1].items()))) if result.recovery else None
    return LossProfile(name=name, method=spec.name, model=info, settings=settings, layers=tuple(layers),
                       notes=tuple(notes), partial=partial, recovery=recovery, plan_cost=spec.plan_cost,
                       criterion=spec.criterion)


def _partial_profile(spec, name, mf, graph, levels, record, result: Result | None) -> LossProfile | None:
    if result is None:
        return None
    done = [i for i, r in enumerate(result.measured) if r is not None]
    if not done:
        return None
    sub = ModelGraph([graph.layers[i] for i in done], graph.total_params)
    errors = [result.errors[i] if i < len(result.errors) else None for i in done]
    part = Result([result.measured[i] for i in done], errors, None, result.record, result.notes)
    return build_profile(spec, name, mf, sub, levels, {**record, **result.record}, part, partial=True,
                         notes=(f"Partial: cancelled after {len(done)} of {len(graph.layers)} layers.",))


def model_hash(model, *, block: bool = True) -> str | None:
    """"blake3:<hex>" content hash of a model (path or ModelProto): what matches saved profiles to models.

    Hashes are remembered on disk per file state (losswidget/identity.py): a model seen before costs a
    stat, not a read. `block=False`: the hash if known, else None at once, with the hashing started in the
    background (`model_hash_future` gives a Future of it).
    """
    with open_model(model) as mf:
        return mf.content_hash(block=block)


def model_hash_future(model) -> Future:
    """A concurrent.futures.Future of `model_hash(model)`: done at once when the hash is known, else
    computed on a background thread (one per model file state, however many ask)."""
    with open_model(model) as mf:
        return mf.hash_future()


def from_sparseml(data, *, name: str | None = None, model=None) -> LossProfile:
    """A SparseML `PruningLossSensitivityAnalysis` JSON (dict or path) as a profile.

    With `model` (a path or ModelProto), params, op types and shapes are filled in by matching weight
    names, and the profile carries the model's hash.
    """
    info, total, digest = None, 0, ""
    if model is not None:
        with open_model(model) as mf:
            graph = read_graph(mf)
            info = {l.weight: (l.op_type, l.shape, l.params) for l in graph.layers}
            total, digest = graph.total_params, mf.content_hash()
    return from_sparseml_dict(data, name=name, layer_info=info, total_params=total, model_hash=digest)


__all__ = ["analyze", "methods", "get_method", "registry", "all_settings", "from_sparseml", "model_hash", "model_hash_future", "Measured", "Result",
           "Context", "Method", "Setting"]
