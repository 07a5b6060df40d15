"""The analysis methods, and `analyze`, which runs one of them on a model and returns a LossProfile.

Each method module exposes `run(mf, layers, levels, progress=, cancel=, **settings) -> list[Measured]`,
one Measured per layer, aligned with `levels`. METHODS describes them (and their settings) so that the
CLI and the widget's add-profile form are built from it, not hard-coded.
"""
from __future__ import annotations

import importlib
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import AnalysisCancelled, SettingsError
from ..graph import read_graph
from ..onnxfile import open_model

SPARSEML_LEVELS = tuple(i / 100 for i in range(100))
ONE_SHOT_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Measured:
    """One layer's result: a value per level, the fraction of weight energy kept per level, and flags."""
    values: np.ndarray
    energy_kept: np.ndarray
    energy: float
    flags: tuple[str, ...] = ()


METHODS: dict[str, dict] = {
    "approximated": {
        "label": "Approximated",
        "description": "From the architecture alone (activation and weight shapes); instant, reads no weights.",
        "module": "approximated",
        "needs_data": False,
        "settings": {"sparsity_levels": {"type": "levels", "default": list(ONE_SHOT_LEVELS)},
                     "target_sparsity": {"type": "float", "default": 0.85, "min": 0.0, "max": 0.95}},
        "recovery": "modelled: weight energy kept, weights taken as Gaussian",
    },
    "magnitude": {
        "label": "Baseline (weight magnitude)",
        "description": "Mean |w| pruned at each level, as SparseML's pruning_loss_sens_magnitude computes it.",
        "module": "magnitude",
        "needs_data": False,
        "settings": {"sparsity_levels": {"type": "levels", "default": list(SPARSEML_LEVELS)},
                     "target_sparsity": {"type": "float", "default": 0.85, "min": 0.0, "max": 0.95}},
        "recovery": "fraction of weight energy (sum of w^2) kept by the allocation",
    },
    "one-shot": {
        "label": "One-shot",
        "description": "Prunes one layer at a time and runs your data through onnxruntime; compares the outputs "
                       "with the dense model's.",
        "module": "one_shot",
        "needs_data": True,
        "settings": {"sparsity_levels": {"type": "levels", "default": list(ONE_SHOT_LEVELS)},
                     "target_sparsity": {"type": "float", "default": 0.85, "min": 0.0, "max": 0.95},
                     "data": {"type": "data", "default": None},
                     "labels": {"type": "labels", "default": None},
                     "metric": {"type": "choice", "default": "kl", "choices": ["kl", "mse", "loss"]},
                     "output": {"type": "output", "default": None},
                     "samples": {"type": "int", "default": None},
                     "batch_size": {"type": "int", "default": None}},
        "recovery": "measured on the data with every layer pruned at its allocated sparsity",
    },
}


def methods() -> list[dict]:
    """The available methods: name, label, description, whether they need data, and their settings."""
    return [{"name": name, **{k: v for k, v in spec.items() if k != "module"}} for name, spec in METHODS.items()]


def normalize_levels(levels) -> np.ndarray:
    """Sorted unique levels in [0, 1), always including 0.0 (the dense reference)."""
    try:
        arr = np.asarray([float(x) for x in levels], dtype=np.float64)
    except (TypeError, ValueError):
        raise SettingsError(f"Sparsity levels must be numbers in [0, 1), got {levels!r}.") from None
    bad = arr[~np.isfinite(arr) | (arr < 0) | (arr >= 1)]
    if bad.size:
        raise SettingsError(
            f"Sparsity levels must lie in [0, 1) (0.9 means 90% of a layer's weights pruned); got {bad.tolist()}.")
    arr = np.array(sorted({0.0, *arr.tolist()}))   # (np.unique would import numpy.ma: 20-50 ms)
    if arr.size < 2:
        raise SettingsError("Give at least one sparsity level above 0, e.g. 0.5,0.9.")
    return arr


def check_target(target) -> float:
    try:
        target = float(target)
    except (TypeError, ValueError):
        raise SettingsError(f"Target sparsity must be a number in (0, 1), got {target!r}.") from None
    if not 0 < target < 1:
        raise SettingsError(f"Target sparsity must lie in (0, 1) (a fraction of prunable params), got {target}.")
    return target


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise AnalysisCancelled("The analysis was cancelled; no profile was made.")


def run_layers(fn: Callable, layers: list, progress: Progress | None, cancel: threading.Event | None,
               workers: int | None = None) -> list:
    """fn(layer) for every layer on a thread pool, largest first; progress per finished layer, in this thread.

    Cancel is checked before each layer starts; a cancelled or failed run stops the pool and raises.
    """
    check_cancel(cancel)
    results: list = [None] * len(layers)
    if not layers:
        return results
    workers = workers or min(len(layers), os.cpu_count() or 1, 8)
    stop = threading.Event()

    def task(i: int):
        if stop.is_set() or (cancel is not None and cancel.is_set()):
            return i, None
        return i, fn(layers[i])

    order = sorted(range(len(layers)), key=lambda i: -layers[i].params)
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="losswidget") as pool:
        pending = {pool.submit(task, i) for i in order}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i, result = fut.result()
                    if result is None:
                        continue
                    check_cancel(cancel)
                    results[i] = result
                    done += 1
                    if progress is not None:
                        progress(done, len(layers), layers[i].name)
                check_cancel(cancel)
        finally:
            stop.set()
            for fut in pending:
                fut.cancel()
    check_cancel(cancel)
    return results


def get_method(method: str):
    if method not in METHODS:
        raise SettingsError(f"Unknown method {method!r}; available: {', '.join(METHODS)}.")
    return importlib.import_module(f"{__name__}.{METHODS[method]['module']}")


def analyze(model, method: str = "magnitude", *, name: str | None = None, sparsity_levels=None,
            target_sparsity: float = 0.85, progress: Progress | None = None,
            cancel: threading.Event | None = None, data=None, labels=None, metric: str = "kl",
            output: str | None = None, samples: int | None = None, batch_size: int | None = None,
            random_dims: dict | None = None, executor=None):
    """Profile `model` (a path or an onnx.ModelProto) with `method`; returns a LossProfile.

    `progress(done, total, message)` is called per layer (one-shot: per layer and level); `cancel` (a
    threading.Event) is checked between steps, and setting it raises AnalysisCancelled (one-shot: its
    `partial` attribute holds the layers measured so far, as a profile marked partial).
    One-shot only: `data` (dict of arrays, iterable of dicts, .npz path, or "random"), `labels`, `metric`
    (kl | mse | loss), `output`, `samples`, `batch_size`, `random_dims` (symbolic dim -> size for random
    data), `executor` (any concurrent.futures.Executor, e.g. a Dask client's; workers load the model by path).
    """
    from ..profile import LossProfile

    module = get_method(method)
    spec = METHODS[method]
    levels = normalize_levels(spec["settings"]["sparsity_levels"]["default"] if sparsity_levels is None
                              else sparsity_levels)
    target = check_target(target_sparsity)
    settings = {"sparsity_levels": levels.tolist(), "target_sparsity": target, "metric": None, "samples": None}
    with open_model(model) as mf:
        graph = read_graph(mf)
        hasher = threading.Thread(target=mf.content_hash, daemon=True)  # overlaps the hash with the measurements
        hasher.start()
        extra = {}
        try:
            if spec["needs_data"]:
                measured, extra = _run_with_data(module, mf, graph, levels, target, settings, progress, cancel,
                                                 data=data, labels=labels, metric=metric, output=output,
                                                 samples=samples, batch_size=batch_size, random_dims=random_dims,
                                                 executor=executor, name=name or spec["label"])
            else:
                measured = module.run(mf, graph.layers, levels, progress=progress, cancel=cancel)
        finally:
            hasher.join()
        return LossProfile.build(name=name or spec["label"], method=method, mf=mf, graph=graph, levels=levels,
                                 measured=measured, settings=settings, recovery_note=spec["recovery"], **extra)


def _run_with_data(module, mf, graph, levels, target, settings, progress, cancel, *, data, labels, metric, output,
                   samples, batch_size, random_dims, executor, name):
    from ..data import load_data
    from ..profile import LossProfile

    if metric not in module.METRICS:
        raise SettingsError(f"Unknown metric {metric!r}; use one of {', '.join(module.METRICS)}.")
    if metric == "loss" and labels is None:
        raise SettingsError("metric='loss' needs labels (an array, or the key of the labels in the data).")
    dataset = load_data(data, mf.model, labels=labels, samples=samples, batch_size=batch_size,
                        random_dims=random_dims)
    settings.update(metric=metric, samples=dataset.samples, data=dataset.source, random=dataset.random,
                    output=output, batch_size=len(next(iter(dataset.batches[0].values()))))
    opts = module.Settings(metric=metric, output=output)
    try:
        results, errors, recovery = module.run(mf, graph.layers, levels, progress, cancel, dataset=dataset,
                                               settings=opts, target=target, executor=executor)
    except AnalysisCancelled as exc:
        results, errors = getattr(exc, "results", ([], []))
        done = [i for i, r in enumerate(results) if r is not None]
        if done:
            sub = type(graph)([graph.layers[i] for i in done], graph.total_params)
            exc.partial = LossProfile.build(
                name=name, method="one-shot", mf=mf, graph=sub, levels=levels, measured=[results[i] for i in done],
                settings=settings, recovery_note="not measured (the run was cancelled)", partial=True,
                notes=(f"Partial: cancelled after {len(done)} of {len(graph.layers)} layers.",))
        raise
    nan = np.full(len(levels), np.nan)
    measured = [r if r is not None else Measured(nan, nan, float("nan"), ("failed",)) for r in results]
    notes = [f"Layer {graph.layers[i].name} failed: {e}" for i, e in enumerate(errors) if e]
    if dataset.random:
        notes.append("Measured on random data: rankings may not reflect real inputs.")
    return measured, {"measured_recovery": recovery, "errors": errors, "notes": tuple(notes)}
