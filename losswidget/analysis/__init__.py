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
    arr = np.unique(np.concatenate([[0.0], arr]))
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
            cancel: threading.Event | None = None):
    """Profile `model` (a path or an onnx.ModelProto) with `method`; returns a LossProfile.

    `progress(done, total, message)` is called once per layer; `cancel` (a threading.Event) is checked
    between layers, and setting it makes this raise AnalysisCancelled.
    """
    from ..profile import LossProfile

    module = get_method(method)
    spec = METHODS[method]
    levels = normalize_levels(spec["settings"]["sparsity_levels"]["default"] if sparsity_levels is None
                              else sparsity_levels)
    target = check_target(target_sparsity)
    with open_model(model) as mf:
        graph = read_graph(mf)
        hasher = threading.Thread(target=mf.content_hash, daemon=True)  # overlaps the hash with the measurements
        hasher.start()
        try:
            measured = module.run(mf, graph.layers, levels, progress=progress, cancel=cancel)
        finally:
            hasher.join()
        return LossProfile.build(
            name=name or spec["label"], method=method, mf=mf, graph=graph, levels=levels, measured=measured,
            settings={"sparsity_levels": levels.tolist(), "target_sparsity": target, "metric": None,
                      "samples": None},
            recovery_note=spec["recovery"])
