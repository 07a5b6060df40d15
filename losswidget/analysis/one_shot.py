"""One-shot profiles: prune one layer at a time on real data and measure how the outputs move.

For each layer and level s the round(s * n) smallest |w| (dequantized for quantized weights) are set to
zero (to the zero point for quantized storage), the data runs through onnxruntime (see runner.py: only
the part of the graph after the layer is recomputed) and the outputs are compared with the dense ones.
How the outputs are scored (metric auto / kl / mse / loss, `output=`, `axis=`) and how recovery is
measured at several targets are in recovery.py, shared with the other data methods, so that their numbers
mean the same thing; what each output was scored with is recorded in the profile.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import numpy as np

from ..data import Dataset, check_fits, memory_budget
from ..errors import AnalysisCancelled, DataError, LossWidgetError, ModelChanged, SettingsError, first_line
from ..graph import Layer, read_graph
from ..onnxfile import open_model
from ..weights import Weight, magnitudes, pruned_copy, sort_magnitudes
from .base import DATA_SETTINGS, TARGET, Context, Measured, Method, Result, Setting, check_cancel, levels_setting
from .recovery import METRICS, Comparison, Settings, record, recovery_points

DEFAULT_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)


class OneShotSession:
    """Everything one process needs to measure layers: the chunked model, data and dense outputs."""

    def __init__(self, model, dataset: Dataset, settings: Settings, threads: int | None = None,
                 prefetch: bool = False):
        """`prefetch`: sort the layers' magnitudes in a background thread while the sessions are built (for
        a run that measures every layer here; sorting is GIL-free, building sessions is not)."""
        self.mf = open_model(model)          # kept open: weights are read from it per layer
        self._orders: dict[int, Future] = {}
        self._orders_lock = threading.Lock()
        self._cached = 0
        self.layers = read_graph(self.mf).layers
        self._prefetch, self._closing = None, False
        if prefetch:
            self._prefetch = threading.Thread(target=self._prefetch_orders, name="losswidget-orders", daemon=True)
            self._prefetch.start()
        try:
            self._setup(dataset, settings, threads)
        except BaseException:
            self.close()
            raise

    def _setup(self, dataset: Dataset, settings: Settings, threads: int | None) -> None:
        from .runner import ChunkedModel

        self.settings = settings
        self.dataset = dataset
        try:                                  # the model's first dense run comes with its chunks
            self.model = ChunkedModel(self.mf, [l.weight for l in self.layers], threads, probe=dataset.batches[0])
            first = self.model.probe_env if self.model.probe_env is not None else self.model.run_dense(dataset.batches[0])
            # every batch's dense run is kept (the pruned runs start from it): refuse what cannot fit
            per_batch = sum(getattr(v, "nbytes", 0) for v in first.values())
            fit = max(1, int(dataset.samples * memory_budget() / max(per_batch * len(dataset.batches), 1)))
            check_fits(per_batch * len(dataset.batches), f"Keeping the dense run of {dataset.samples} samples",
                       f"pass samples= (at most about {fit})")
            self.envs = [first] + [self.model.run_dense(b) for b in dataset.batches[1:]]
        except LossWidgetError:
            raise
        except Exception as exc:
            raise DataError(f"onnxruntime could not run the model on this data: {first_line(exc)}") from None
        self.comparison = Comparison(self.envs, self.model.graph_outputs, dataset.labels, settings)
        self.rules, self.scorers = self.comparison.rules, self.comparison.scorers

    def _pruned(self, layer: Layer, level: float) -> np.ndarray:
        """The stored weight with its round(level * n) smallest |w| set to zero (or to the zero point)."""
        sorted_mags, order = self._order(layer)
        return pruned_copy(self.mf, layer.ref, int(round(level * sorted_mags.size)), sorted_mags, order)

    # pruning orders are kept for recovery() while they add up to fewer elements than this
    ORDER_CACHE_LIMIT = 20_000_000

    def _order(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """(|w| ascending, their flat indices), computed once per layer (whichever thread asks first)."""
        with self._orders_lock:
            future = self._orders.get(layer.index)
            mine = future is None
            if mine:
                future = self._orders[layer.index] = Future()
        if mine:
            try:
                future.set_result(sort_magnitudes(magnitudes(self.mf, layer.ref)))
            except BaseException as exc:
                future.set_exception(exc)
            size = future.result()[1].size if future.exception() is None else 0
            with self._orders_lock:
                if size and self._cached + size <= self.ORDER_CACHE_LIMIT:
                    self._cached += size
                else:                                 # too many to keep (or failed): computed again if asked
                    del self._orders[layer.index]
        return future.result()

    def _prefetch_orders(self) -> None:
        total = 0
        for layer in self.layers:
            total += layer.params                     # about the weight's size
            if total > self.ORDER_CACHE_LIMIT or self._closing:
                return
            try:
                self._order(layer)
            except Exception:  # measure() meets the same error for this layer and reports it
                pass

    def close(self) -> None:
        """Stop the background sorting and close the model file."""
        self._closing = True
        if self._prefetch is not None:
            self._prefetch.join()
        self.mf.close()

    def measure(self, index: int, levels, step=None) -> Measured:
        """Values per level for one layer; step(level) is called before each run (progress, cancel)."""
        layer = self.layers[index]
        mags, order = self._order(layer)            # ascending
        energy = _energy(mags)
        weight = Weight(self.mf, layer.ref)
        codes = weight.codes()                        # the stored elements (nbits: unpacked codes)
        work = codes.reshape(-1).copy()               # pruned in place, level after level
        zero = weight.zero_codes()
        zero = np.broadcast_to(zero, codes.shape).reshape(-1) if zero.ndim else zero
        done, pruned_energy = 0, 0.0
        values, kept = [], []
        measured = {0: 0.0}                           # pruned count -> value (small layers repeat counts)
        try:
            for level in levels:
                k = int(round(level * mags.size))
                if k < done:                          # levels out of order: start again from the weight
                    work[:] = codes.reshape(-1)
                    done, pruned_energy = 0, 0.0
                pruned_energy += _energy(mags[done:k])
                kept.append(1.0 - (pruned_energy / energy if k and energy > 0 else 0.0))
                if step is not None:
                    step(level)
                if k in measured:                     # the same weights as an earlier level: no run
                    values.append(measured[k])
                    continue
                idx = order[done:k].astype(np.intp)   # numpy converts int32 indices slowly
                work[idx] = zero[idx] if zero.size > 1 else zero
                done = k
                fed = weight.pack(work.reshape(codes.shape))
                totals = counts = 0.0
                for env, scorer in zip(self.envs, self.scorers):
                    totals = totals + scorer.score(self.model.run_with(env, {layer.weight: fed}))
                    counts = counts + scorer.counts
                values.append(float(np.mean(totals / np.maximum(counts, 1))))   # each output on its own scale
                measured[k] = values[-1]
        finally:
            self.model.release(layer.weight)
        return Measured(np.array(values), np.array(kept), energy)

    def recovery(self, sparsity: dict[int, float]) -> tuple[str, float]:
        """(kind, value): the model with these layers pruned at once (layer index -> sparsity) against the
        dense model (see the module doc)."""
        swaps = {}
        for index, level in sparsity.items():
            if level > 0:
                layer = self.layers[index]
                swaps[layer.weight] = self._pruned(layer, level)
        return self.comparison.recovery(self.model.run_with(env, swaps) if swaps else env for env in self.envs)


def _energy(values: np.ndarray) -> float:
    """Sum of squares, accumulated in float64 (einsum, not np.dot: BLAS threads would spin against the
    onnxruntime runs on the other cores)."""
    return float(np.einsum("i,i->", values, values, dtype=np.float64))


# -- processes -------------------------------------------------------------------------------------------
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _session_for(model_path: str, key: str, dataset: Dataset, settings: Settings, threads: int | None):
    with _CACHE_LOCK:
        if _CACHE.get("key") != key:
            _CACHE.clear()
            _CACHE["session"] = OneShotSession(model_path, dataset, settings, threads)
            _CACHE["key"] = key
        return _CACHE["session"]


def remote_measure(model_path, key, dataset, settings, threads, index, levels):
    """Executor task: measure one layer in this worker (the model is loaded once per worker process)."""
    session = _session_for(model_path, key, dataset, settings, threads)
    try:
        return index, session.measure(index, levels), None, session.rules
    except ModelChanged:
        raise
    except Exception as exc:  # reported for this layer; the others go on
        return index, None, f"{type(exc).__name__}: {first_line(exc)}", session.rules


def remote_recovery(model_path, key, dataset, settings, threads, sparsity):
    return _session_for(model_path, key, dataset, settings, threads).recovery(sparsity)


# -- the method ------------------------------------------------------------------------------------------
def run(ctx: Context, threads: int | None = None) -> Result:
    """Measures every layer, then recovery at several targets (the module doc).

    Without an executor the layers share one OneShotSession across a thread pool (its sessions run with one
    intra-op thread each); with one, each worker process builds its own session from the model path.
    """
    layers, levels, dataset = ctx.layers, ctx.levels, ctx.dataset
    settings = Settings(ctx.settings["metric"], ctx.settings["output"], ctx.settings["axis"])
    if settings.metric == "loss" and dataset.labels is None:
        raise SettingsError("metric='loss' needs labels (an array, or the key of the labels in the data).")
    results: list[Measured | None] = [None] * len(layers)
    errors: list[str | None] = [None] * len(layers)
    total = len(layers) * len(levels)
    ctx.check_cancel()
    if ctx.executor is None:
        workers = min(os.cpu_count() or 1, max(len(layers), 1))
        session = OneShotSession(ctx.mf.path or ctx.mf.model, dataset, settings, threads or default_threads(workers),
                                 prefetch=True)
        rules = session.rules
        try:
            _measure_here(ctx, session, workers, results, errors)
        except AnalysisCancelled as exc:
            session.close()
            exc.result = Result(results, errors, record=record(rules))
            raise
        recover = session.recovery
    else:
        if ctx.mf.path is None:
            raise SettingsError("An executor needs the model as a file path (workers load it themselves).")
        key = f"{ctx.mf.content_hash()}:{_fingerprint(dataset)}:{settings}"
        path = str(ctx.mf.path)
        pending = {ctx.executor.submit(remote_measure, path, key, dataset, settings, threads, i, levels)
                   for i in range(len(layers))}
        done = 0
        rules = None
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i, measured, error, rules = fut.result()
                    results[i], errors[i] = measured, error
                    done += len(levels)
                    if measured is not None:
                        ctx.layer_done(i, measured)
                    if ctx.progress is not None:
                        ctx.progress(done, total, layers[i].name)
                ctx.check_cancel()
        except AnalysisCancelled as exc:
            for fut in pending:
                fut.cancel()
            exc.result = Result(results, errors, record=record(rules))
            raise
        recover = lambda sparsity: ctx.executor.submit(  # noqa: E731
            remote_recovery, path, key, dataset, settings, threads, sparsity).result()
    try:
        recovery = recovery_points(ctx, results, recover)
    finally:
        if ctx.executor is None:
            session.close()
    return Result(results, errors, recovery, record(rules))


def _measure_here(ctx: Context, session: OneShotSession, workers: int, results: list, errors: list) -> None:
    layers, levels, cancel = ctx.layers, ctx.levels, ctx.cancel
    total = len(layers) * len(levels)
    events: queue.Queue = queue.Queue()

    def task(i: int):
        layer = layers[i]

        def step(level):
            check_cancel(cancel)
            events.put(f"{layer.name} @ {level:g}")
        try:
            results[i] = session.measure(i, levels, step)
        except (AnalysisCancelled, ModelChanged):
            raise
        except Exception as exc:  # this layer failed (e.g. an op onnxruntime cannot run); the rest go on
            errors[i] = f"{type(exc).__name__}: {first_line(exc)}"
            for _ in range(len(levels)):
                events.put(f"{layer.name} failed")

    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="losswidget-one-shot") as pool:
        # graph order: the earliest layers have the most graph after them, so the longest runs start first
        futures = [pool.submit(task, i) for i in range(len(layers))]
        # the session recovery runs in, made by the first worker out of layers (errors show in recovery);
        # recovery runs alone, so it gets every worker's core
        opening = pool.submit(_open_quietly, session.model, workers)
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _, i=i: events.put(i))        # wakes the loop when a layer ends
        finished = 0
        try:
            while finished < len(futures):
                try:
                    message = events.get(timeout=0.1)
                except queue.Empty:
                    check_cancel(cancel)
                    continue
                if isinstance(message, int):
                    finished += 1
                    if results[message] is not None:
                        ctx.layer_done(message, results[message])
                    continue
                done += 1
                if ctx.progress is not None:
                    ctx.progress(min(done, total), total, message)
            for f in futures:
                f.result()
        except AnalysisCancelled:
            for f in (*futures, opening):
                f.cancel()
            wait([*futures, opening])
            raise


def _fingerprint(dataset: Dataset) -> str:
    """Identifies the data for the per-worker cache (so a new analysis never reuses stale dense outputs)."""
    from blake3 import blake3
    h = blake3()
    for i, batch in enumerate(dataset.batches):
        for name in sorted(batch):
            h.update(name.encode())
            h.update(np.ascontiguousarray(batch[name]).tobytes())
        if dataset.labels is not None:
            h.update(np.ascontiguousarray(dataset.labels[i]).tobytes())
    return h.hexdigest()[:16]


def _open_quietly(model, threads: int) -> None:
    """Open the recovery session ahead of time; an error shows again (and is reported) when recovery opens it."""
    with contextlib.suppress(Exception):
        model.open_session(threads)


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


METHOD = Method(
    name="one-shot", label="One-shot",
    description="Prunes one layer at a time and runs your data through onnxruntime; compares the outputs with the "
                "dense model's.",
    run=run,
    settings=(levels_setting(DEFAULT_LEVELS), TARGET, *DATA_SETTINGS,
              Setting("metric", "choice", "auto", "how outputs are compared: auto (KL for probabilities and "
                      "classifier logits, per-channel standardised MSE otherwise), kl, mse, or loss (the task loss; "
                      "needs labels)", choices=METRICS),
              Setting("output", "text", None, "compare this model output only (default: every float output)"),
              Setting("axis", "axis", None, "the class axis (kl) or channel axis (mse) of the outputs")),
    needs_data=True, executor=True, rank=3, plan_cost="measured",
    recovery="measured on the data: the plan at several targets applied to all layers at once")
