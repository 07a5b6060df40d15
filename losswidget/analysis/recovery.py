"""Comparing a pruned model's outputs with the dense ones, and recovery: what a plan keeps of the model.

Shared by the data methods (one-shot, activation-aware) so that their numbers mean the same thing.
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
most).
Recovery is measured at several targets (`recovery_points`): the plan at each target (plan.py, from the
method's curves) applied to all layers at once, in the method's pruning order, then top-1 agreement with
the dense model (kl outputs), 1 - standardised MSE (mse outputs), or pruned / dense accuracy (loss with
class labels; dense / pruned loss for float targets).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError, SettingsError
from ..plan import plan_sparsity
from .base import Context

METRICS = ("auto", "kl", "mse", "loss")
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
    task_loss: bool = False   # metric="loss": the task loss on this output, not the comparison above

    def describe(self) -> str:
        if self.task_loss:
            return (f"task loss: cross-entropy over axis {self.axis} "
                    f"({'probabilities' if self.probabilities else 'logits'}) for class labels, "
                    "squared error for float targets")
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
        return Scoring(name, "kl", a, _is_probabilities(arrays, a) if ndim else False, task_loss=metric == "loss")
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


class Comparison:
    """The dense outputs of every batch, the rule each output is scored by, and one scorer per batch."""

    def __init__(self, dense: list[dict[str, np.ndarray]], outputs: list[str], labels, settings: Settings):
        """`dense`: per batch, the graph outputs (and whatever else the run kept); `outputs`: the graph's
        output names; `labels`: per batch, or None."""
        if settings.output is not None and settings.output not in outputs:
            raise SettingsError(f"Unknown output '{settings.output}'; the model's outputs are {outputs}.")
        names = [settings.output] if settings.output else [
            o for o in outputs if np.issubdtype(dense[0][o].dtype, np.floating) and dense[0][o].size]
        if not names:
            raise DataError("The model has no floating-point output with values to compare.")
        empty = [n for n in names if not np.asarray(dense[0][n]).size]
        if empty:
            raise DataError(f"Output '{empty[0]}' holds no values on this data (shape "
                            f"{list(np.shape(dense[0][empty[0]]))}); there is nothing to compare.")
        if settings.metric == "loss":
            if labels is None:
                raise SettingsError("metric='loss' needs labels (labels=array or the key of the labels in the data).")
            names = names[:1]
        self.rules = [choose_scoring(n, [e[n] for e in dense], settings.metric, settings.axis) for n in names]
        inv_var = {}
        for rule in self.rules:
            if rule.kind == "mse":
                arrays = [e[rule.output] for e in dense]
                var = _channel_variance(arrays, rule.axis) if arrays[0].ndim else np.array(
                    [float(np.var(np.array(arrays, dtype=np.float64)))])
                # a channel constant on the data is measured on the scale of the least varying other one
                positive = var[var > 0]
                var = np.where(var > 0, var, positive.min() if positive.size else 1.0)
                shape = [1] * max(arrays[0].ndim, 1)
                shape[rule.axis if arrays[0].ndim else 0] = -1
                inv_var[rule.output] = (1.0 / var).astype(np.float32).reshape(shape if arrays[0].ndim else ())
        if settings.metric == "loss":
            _check_class_labels(labels, self.rules[0], dense[0][self.rules[0].output])
        labels = labels or [None] * len(dense)
        self.scorers = [_Scorer({n: e[n] for n in outputs}, self.rules, settings.metric, lab, inv_var)
                        for e, lab in zip(dense, labels)]

    def recovery(self, pruned) -> tuple[str, float]:
        """(kind, value): the pruned model's outputs (per batch, in batch order) against the dense ones."""
        parts = [scorer.agreement(out) for out, scorer in zip(pruned, self.scorers)]
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

    def record(self) -> dict:
        """What the profile records of the scoring: the rule of each output."""
        return record(self.rules)


def _check_class_labels(labels: list[np.ndarray], rule: Scoring, output: np.ndarray) -> None:
    """DataError when integer labels are not class indices of the output (negative ones would wrap around)."""
    flat = np.concatenate([np.ravel(l) for l in labels])
    if not flat.size or not np.issubdtype(flat.dtype, np.integer) or not output.ndim:
        return
    classes = output.shape[rule.axis]
    if flat.min() < 0 or flat.max() >= classes:
        raise DataError(f"Labels hold class indices from {flat.min()} to {flat.max()}, but output '{rule.output}' "
                        f"has {classes} classes (0 to {classes - 1}).")


def record(rules: list[Scoring] | None) -> dict:
    return {"scoring": {r.output: r.describe() for r in rules}} if rules else {}


def recovery_points(ctx: Context, results: list, recover, prepare=None) -> tuple[str, dict[float, float]] | None:
    """Recovery of the plan (plan.py, from these curves) at each of RECOVERY_TARGETS and the profile's target:
    `recover({layer index: sparsity})` -> (kind, value) runs one plan; `prepare(plans)`, when given, sees
    every plan first (to do per layer once what the runs share)."""
    if not any(r is not None for r in results):
        return None
    nan = np.full(len(ctx.levels), np.nan)
    values = [r.values if r is not None else nan for r in results]
    kept = [r.energy_kept if r is not None else nan for r in results]
    params = [l.params for l in ctx.layers]
    plans = {}
    for target in sorted({*RECOVERY_TARGETS, ctx.target}):
        sparsity = plan_sparsity("measured", ctx.levels, values, kept, params, target)
        plans[float(target)] = {i: float(s) for i, s in enumerate(sparsity) if s > 0}
    if prepare is not None:
        prepare(list(plans.values()))
    points, kind = {}, None
    for target, plan in plans.items():
        ctx.check_cancel()
        kind, points[target] = recover(plan)
    return kind, points

