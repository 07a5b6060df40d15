"""One-shot profiles: prune one layer at a time on real data and measure how the outputs move.

For each layer and level s the round(s * n) smallest |w| (dequantized for quantized weights) are set to
zero (to the zero point for quantized storage), the data runs through onnxruntime (see runner.py: only
the part of the graph after the layer is recomputed) and the outputs are compared with the dense ones.
Each float output (or the one `output=` names) is scored on its own scale, then the outputs' scores are
averaged:
- auto (default): an output that already holds probabilities (non-negative, summing to 1 along an axis)
  gets KL on those probabilities; a classifier's logits ([N, C], or an output named like "logits", whose
  columns share one scale) get KL over the class axis (the last); any other output gets MSE standardised
  per output channel;
- kl: KL(softmax(dense) || softmax(pruned)) over the class axis (probabilities are used as they are);
- mse: mean squared difference, each channel divided by its variance in the dense outputs, so a head of
  small values (class scores beside box coordinates) weighs as much as a head of large ones;
- loss: the task loss (cross-entropy for integer class labels, squared error for float targets) with
  pruning minus without, on the first scored output.
`axis=` sets the class axis (kl) or channel axis (mse; auto: the axis whose per-index variances differ
most). What each output was scored with is recorded in the profile.
Recovery is measured at several targets: the plan at each target (plan.py, from these curves) applied to
all layers at once, then top-1 agreement with the dense model (kl outputs), 1 - standardised MSE (mse
outputs), or pruned / dense accuracy (loss with class labels; dense / pruned loss for float targets).
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from ..data import Dataset, check_fits, memory_budget
from ..errors import AnalysisCancelled, DataError, LossWidgetError, ModelChanged, SettingsError, first_line
from ..graph import Layer, read_graph
from ..onnxfile import open_model
from ..plan import plan_sparsity
from ..weights import Weight, magnitudes, pruned_copy, sort_magnitudes
from .base import DATA_SETTINGS, TARGET, Context, Measured, Method, Result, Setting, check_cancel, levels_setting

METRICS = ("auto", "kl", "mse", "loss")
DEFAULT_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
# targets recovery is measured at (and the profile's own); the widget's slider interpolates between them
RECOVERY_TARGETS = (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.95)
KIND_AGREEMENT, KIND_MSE = "top-1 agreement", "1 - normalised MSE"


@dataclass(frozen=True)
class Settings:
    metric: str = "auto"
    output: str | None = None
    axis: int | None = None


@dataclass(frozen=True)
class Scoring:
    """How one output is compared: KL over a class axis (of logits, or of probabilities) or MSE with each
    index of a channel axis standardised by its dense variance."""
    output: str
    kind: str                 # "kl" | "mse"
    axis: int                 # non-negative
    probabilities: bool = False

    def describe(self) -> str:
        if self.kind == "kl":
            return f"KL over axis {self.axis} ({'probabilities' if self.probabilities else 'logits'})"
        return f"MSE standardised per index of axis {self.axis}"


def _is_probabilities(arrays: list[np.ndarray], axis: int) -> bool:
    for a in arrays:
        if a.shape[axis] < 2 or (a < 0).any() or (a > 1 + 1e-4).any():
            return False
        if not np.allclose(a.sum(axis=axis, dtype=np.float64), 1.0, atol=1e-3):
            return False
    return True


# logits of one softmax live on one scale: an [N, C] output whose columns' variances differ more than this
# mixes quantities (box coordinates and scores) and is compared by standardised MSE instead
LOGIT_SPREAD = 1e3


def _spread(arrays: list[np.ndarray], axis: int) -> float:
    """max / min of the per-index variances along `axis` (ignoring constant indices)."""
    var = _channel_variance(arrays, axis)
    var = var[var > 0]
    return float(var.max() / var.min()) if var.size else 1.0


def _channel_axis(arrays: list[np.ndarray]) -> int:
    """The non-sample axis whose per-index variances differ most (the last on ties): where an output mixes
    quantities of different scales (box coordinates and class scores), standardising along it evens them."""
    ndim = arrays[0].ndim
    if ndim < 2:
        return 0
    best, spread = ndim - 1, -1.0
    for axis in range(1, ndim):
        if arrays[0].shape[axis] < 2:
            continue
        ratio = _spread(arrays, axis)
        if ratio > spread * (1 + 1e-9) or (ratio >= spread and axis > best):
            best, spread = axis, ratio
    return best


def _channel_variance(arrays: list[np.ndarray], axis: int) -> np.ndarray:
    """Variance of each index along `axis` over every other axis and all batches (float64, two passes)."""
    moved = [np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1) for a in arrays]
    count = sum(m.shape[1] for m in moved)
    mean = sum(m.sum(axis=1, dtype=np.float64) for m in moved) / max(count, 1)
    sq = sum(((m - mean[:, None]) ** 2).sum(axis=1) for m in moved)
    return sq / max(count, 1)


def choose_scoring(name: str, arrays: list[np.ndarray], metric: str, axis: int | None) -> Scoring:
    """The scoring rule for one output from its dense values over all batches (see the module doc)."""
    ndim = arrays[0].ndim
    if axis is not None:
        if not -ndim <= axis < ndim:
            raise SettingsError(f"axis {axis} does not exist in output '{name}' of rank {ndim}.")
        axis %= ndim
    last = max(ndim - 1, 0)
    if metric in ("kl", "loss"):
        a = last if axis is None else axis
        return Scoring(name, "kl", a, _is_probabilities(arrays, a) if ndim else False)
    if metric == "mse":
        return Scoring(name, "mse", _channel_axis(arrays) if axis is None else axis)
    # auto
    if ndim >= 2:
        for a in ([axis] if axis is not None else [last, 1] if last != 1 else [last]):
            if _is_probabilities(arrays, a):
                return Scoring(name, "kl", a, True)
        classes = arrays[0].shape[last]
        if (axis is None and classes >= 2 and (ndim == 2 or "logit" in name.lower())
                and _spread(arrays, last) < LOGIT_SPREAD):
            return Scoring(name, "kl", last)
    return Scoring(name, "mse", _channel_axis(arrays) if axis is None else axis)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)


def _kl(p: np.ndarray, pruned: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """KL(softmax(dense) || softmax(pruned)) per position, from the logit change d = pruned - dense.

    With u = d - sum(p d) (so sum(p u) = 0): KL = log sum(p e^u) = log1p(sum(p (e^u - 1 - u))), a sum of
    non-negative terms of the size of the change. The textbook form (sum p log p - sum p x + logsumexp x)
    subtracts numbers of the size of the logits and was off by 5-30% on slightly pruned layers in float32.
    Positions where e^u overflows or KL > 30 (the outputs changed beyond recognition) take the textbook
    form in float64, exact enough there. Rows go in blocks of ~128 KB, so that u and e^u - 1 - u stay in
    cache (a fifth less time than whole-array passes, in the measure loop).
    """
    n = dense.shape[-1]
    P, A, D = (x.reshape(-1, n) for x in (p, pruned, dense))
    rows = max(1, 32768 // max(n, 1))
    u = np.empty((min(rows, len(D)), n), np.promote_types(dense.dtype, np.float32))
    phi = np.empty_like(u)
    sums = np.empty(len(D))
    with np.errstate(over="ignore", invalid="ignore"):
        for a in range(0, len(D), rows):
            b = min(a + rows, len(D))
            ub, pb = u[:b - a], phi[:b - a]
            np.subtract(A[a:b], D[a:b], out=ub)
            ub -= np.einsum("ij,ij->i", P[a:b], ub)[:, None]
            np.expm1(ub, out=pb)
            pb -= ub
            sums[a:b] = np.einsum("ij,ij->i", P[a:b], pb)       # terms >= 0: float32 sums hold
        kl = np.log1p(sums).reshape(dense.shape[:-1])
    big = ~np.isfinite(kl) | (kl > 30)                 # e^u overflowed, or close to it in float32 sums
    if big.any():
        lp, lq = _log_softmax64(dense[big]), _log_softmax64(pruned[big])
        kl[big] = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    return kl


def _log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# probabilities below this are taken as it, so their logs (the logits KL works on) stay finite
_TINY_PROB = 1e-30


def _as_logits(x: np.ndarray, rule: Scoring) -> np.ndarray:
    """The output with the class axis last, as logits (log of probabilities for probability outputs)."""
    x = np.moveaxis(x, rule.axis, -1)
    if rule.probabilities:
        x = np.log(np.maximum(x.astype(np.float32), _TINY_PROB))
    return np.ascontiguousarray(x)


class _Scorer:
    """Compares pruned outputs with the dense ones for one batch: sums per scored output, averaged later."""

    def __init__(self, dense: dict[str, np.ndarray], rules: list[Scoring], metric: str, labels, inv_var):
        self.rules, self.metric, self.labels = rules, metric, labels
        self.dense = {r.output: (_as_logits(dense[r.output], r) if r.kind == "kl" else dense[r.output]) for r in rules}
        self.p = {r.output: np.exp(_log_softmax(self.dense[r.output])) for r in rules if r.kind == "kl"}
        self.inv_var = inv_var                      # output -> 1/variance, shaped to broadcast along its axis
        if metric == "loss":
            self.dense_loss = self._task_loss(dense)
            self.counts = np.array([float(self.dense_loss[1])])
        else:
            self.dense_loss = None
            self.counts = np.array([float(self._count(r)) for r in rules])

    def _count(self, rule: Scoring) -> int:
        d = self.dense[rule.output]
        return d.size // d.shape[-1] if rule.kind == "kl" else d.size

    def _task_loss(self, out: dict) -> tuple[float, int, float]:
        """(sum of per-position losses, count, number correct) for the first scored output."""
        rule = self.rules[0]
        y, lab = out[rule.output], self.labels
        if np.issubdtype(lab.dtype, np.integer):
            logp = _log_softmax(_as_logits(y, rule))
            if logp.shape[:-1] != lab.shape:
                raise DataError(f"Labels of shape {list(lab.shape)} do not fit output '{rule.output}' of shape "
                                f"{list(y.shape)} (expected {list(logp.shape[:-1])} class indices).")
            picked = np.take_along_axis(logp, lab[..., None].astype(np.int64), axis=-1)[..., 0]
            return float(-picked.sum()), picked.size, float((logp.argmax(-1) == lab).sum())
        if lab.shape != y.shape:
            raise DataError(f"Float labels of shape {list(lab.shape)} do not match output '{rule.output}' of "
                            f"shape {list(y.shape)}.")
        err = (y.astype(np.float64) - lab) ** 2
        return float(err.sum()), err.size, float("nan")

    def score(self, pruned: dict) -> np.ndarray:
        """Per scored output, the sum of the metric over this batch (divide by `counts`)."""
        if self.metric == "loss":
            return np.array([self._task_loss(pruned)[0] - self.dense_loss[0]])
        sums = np.empty(len(self.rules))
        for k, rule in enumerate(self.rules):
            d = self.dense[rule.output]
            if rule.kind == "kl":
                sums[k] = float(_kl(self.p[rule.output], _as_logits(pruned[rule.output], rule), d).sum(dtype=np.float64))
            else:
                # float32 differences of float32 outputs are exact where they matter (Sterbenz)
                diff = np.subtract(pruned[rule.output], d, dtype=np.promote_types(d.dtype, np.float32))
                diff *= diff
                diff *= self.inv_var[rule.output]
                sums[k] = float(diff.sum(dtype=np.float64))
        return sums

    def agreement(self, pruned: dict):
        """For recovery: (correct pruned, correct dense) or (dense loss, pruned loss) for loss; else per
        output (sum, count) of top-1 agreement (kl) or standardised squared error (mse)."""
        if self.metric == "loss":
            lp, _, correct_p = self._task_loss(pruned)
            ld, _, correct_d = self.dense_loss
            return ("loss", ld, lp) if np.isnan(correct_p) else ("accuracy", correct_p, correct_d)
        out = []
        for rule, s in zip(self.rules, self.score(pruned)):
            if rule.kind == "kl":
                same = self.dense[rule.output].argmax(-1) == _as_logits(pruned[rule.output], rule).argmax(-1)
                out.append((float(same.sum()), same.size))
            else:
                out.append((s, self.dense[rule.output].size))
        return ("outputs", out)


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
        outs = self.model.graph_outputs
        if settings.output is not None and settings.output not in outs:
            raise SettingsError(f"Unknown output '{settings.output}'; the model's outputs are {outs}.")
        names = [settings.output] if settings.output else [
            o for o in outs if np.issubdtype(self.envs[0][o].dtype, np.floating) and self.envs[0][o].size]
        if not names:
            raise DataError("The model has no floating-point output with values to compare.")
        empty = [n for n in names if not np.asarray(self.envs[0][n]).size]
        if empty:
            raise DataError(f"Output '{empty[0]}' holds no values on this data (shape "
                            f"{list(np.shape(self.envs[0][empty[0]]))}); there is nothing to compare.")
        if settings.metric == "loss":
            if dataset.labels is None:
                raise SettingsError("metric='loss' needs labels (labels=array or the key of the labels in the data).")
            names = names[:1]
        self.rules = [choose_scoring(n, [e[n] for e in self.envs], settings.metric, settings.axis) for n in names]
        inv_var = {}
        for rule in self.rules:
            if rule.kind == "mse":
                arrays = [e[rule.output] for e in self.envs]
                var = _channel_variance(arrays, rule.axis) if arrays[0].ndim else np.array(
                    [float(np.var(np.array(arrays, dtype=np.float64)))])
                # a channel constant on the data is measured on the scale of the least varying other one
                positive = var[var > 0]
                var = np.where(var > 0, var, positive.min() if positive.size else 1.0)
                shape = [1] * max(arrays[0].ndim, 1)
                shape[rule.axis if arrays[0].ndim else 0] = -1
                inv_var[rule.output] = (1.0 / var).astype(np.float32).reshape(shape if arrays[0].ndim else ())
        if settings.metric == "loss":
            _check_class_labels(dataset.labels, self.rules[0], self.envs[0][self.rules[0].output])
        labels = dataset.labels or [None] * len(self.envs)
        self.scorers = [_Scorer({n: e[n] for n in outs}, self.rules, settings.metric, lab, inv_var)
                        for e, lab in zip(self.envs, labels)]

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
        parts = [scorer.agreement(self.model.run_with(env, swaps) if swaps else env)
                 for env, scorer in zip(self.envs, self.scorers)]
        if parts[0][0] in ("accuracy", "loss"):
            a, b = sum(p[1] for p in parts), sum(p[2] for p in parts)
            kind = "accuracy ratio" if parts[0][0] == "accuracy" else "loss ratio"
            return kind, float(min(1.0, a / b)) if b > 0 else 1.0
        values = []
        for k, rule in enumerate(self.rules):
            total, count = sum(p[1][k][0] for p in parts), sum(p[1][k][1] for p in parts)
            share = total / max(count, 1)
            values.append(share if rule.kind == "kl" else max(0.0, 1.0 - share))
        kinds = {KIND_AGREEMENT if r.kind == "kl" else KIND_MSE for r in self.rules}
        kind = kinds.pop() if len(kinds) == 1 else f"mean of {KIND_AGREEMENT} and {KIND_MSE}"
        return kind, float(np.mean(values))


def _check_class_labels(labels: list[np.ndarray], rule: Scoring, output: np.ndarray) -> None:
    """DataError when integer labels are not class indices of the output (negative ones would wrap around)."""
    flat = np.concatenate([np.ravel(l) for l in labels])
    if not flat.size or not np.issubdtype(flat.dtype, np.integer) or not output.ndim:
        return
    classes = output.shape[rule.axis]
    if flat.min() < 0 or flat.max() >= classes:
        raise DataError(f"Labels hold class indices from {flat.min()} to {flat.max()}, but output '{rule.output}' "
                        f"has {classes} classes (0 to {classes - 1}).")


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
            exc.result = Result(results, errors, record=_record(rules))
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
            exc.result = Result(results, errors, record=_record(rules))
            raise
        recover = lambda sparsity: ctx.executor.submit(  # noqa: E731
            remote_recovery, path, key, dataset, settings, threads, sparsity).result()
    try:
        recovery = _recovery_points(ctx, results, recover)
    finally:
        if ctx.executor is None:
            session.close()
    return Result(results, errors, recovery, _record(rules))


def _record(rules: list[Scoring] | None) -> dict:
    return {"scoring": {r.output: r.describe() for r in rules}} if rules else {}


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
        opening = pool.submit(lambda: contextlib.suppress(Exception)(session.model.open_session)(workers))
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


def _recovery_points(ctx: Context, results: list, recover) -> tuple[str, dict[float, float]] | None:
    """Recovery of the plan (plan.py, from these curves) at each of RECOVERY_TARGETS and the profile's target."""
    if not any(r is not None for r in results):
        return None
    nan = np.full(len(ctx.levels), np.nan)
    values = [r.values if r is not None else nan for r in results]
    kept = [r.energy_kept if r is not None else nan for r in results]
    params = [l.params for l in ctx.layers]
    points, kind = {}, None
    for target in sorted({*RECOVERY_TARGETS, ctx.target}):
        ctx.check_cancel()
        sparsity = plan_sparsity("measured", ctx.levels, values, kept, params, target)
        kind, points[float(target)] = recover({i: float(s) for i, s in enumerate(sparsity) if s > 0})
    return kind, points


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
