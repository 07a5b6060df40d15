"""What the views highlight and how they scale a profile's numbers: small pure functions, tested by hand.

- **Outliers** (red bars): modified z-scores (Iglewicz and Hoaglin) of log10 sensitivity. A layer is an
  outlier when its z > 3.5 *and* the outlier set stands apart: its lowest member lies at least one z unit
  above the next lower layer, so near-ties (0.1108 vs 0.1107) are never split. A set holding more than a
  tenth of the layers is a group, not outliers: nothing is red then (24 tied layers never turn red). Fewer
  than 8 positive values: no outliers (too few to tell). Zero or negative values are never outliers.
  Log scale because sensitivities spread over decades; z from the median and MAD (not mean and standard
  deviation) because the outliers would inflate those; when over half the values tie (MAD = 0) the mean
  absolute deviation stands in (1.2533 × mean |x - median|, Iglewicz and Hoaglin's alternative).
- **Cut axis**: when an outlier is over 3x the largest other bar it would flatten the chart, so the linear
  axis stops at 1.15x the largest other bar and the outliers are drawn to that line with their value.
- **Tiny layers** (faded bars, "tiny" in the table): fewer params than 1% of the median layer's. Their
  sensitivity is often extreme (a 16-weight fixed filter) while pruning them saves nothing.
- **Log axis**: log10 of the values drawn on a linear scale with 1-2-5 tick labels, bars rising from a
  third of the smallest positive value; values <= 0 have no height there. Not bqplot's LogScale: Bars draw
  from `base` (0 by default) and put it in the y domain, so on a LogScale every bar is NaN.
"""
from __future__ import annotations

import math

import numpy as np

Z_OUTLIER = 3.5          # Iglewicz and Hoaglin's cut for modified z-scores
Z_GAP = 1.0              # the outlier set must stand this many z units above the next layer
MAX_OUTLIER_SHARE = 0.1  # more than this share of the layers is a group, not outliers
MIN_LAYERS = 8           # fewer positive values than this: no outliers
CUT_RATIO = 3.0          # an outlier this many times the largest other bar cuts the axis
CUT_HEADROOM = 1.15      # the cut axis ends this much above the largest other bar
TINY_SHARE = 0.01        # a layer under this share of the median layer's params is tiny


def outliers(values) -> np.ndarray:
    """Boolean mask of the layers whose sensitivity stands apart above the rest (module docstring)."""
    v = np.asarray(values, dtype=float)
    flagged = np.zeros(v.shape, dtype=bool)
    positive = np.isfinite(v) & (v > 0)
    n = int(positive.sum())
    if n < MIN_LAYERS:
        return flagged
    x = np.log10(v[positive])
    median = float(np.median(x))
    dev = np.abs(x - median)
    mad = float(np.median(dev))
    scale = mad / 0.6745 if mad > 0 else 1.2533 * float(dev.mean())
    if scale == 0:
        return flagged                                   # all equal
    xs = np.sort(x)
    z = (xs - median) / scale
    cut = None
    for k in np.flatnonzero(z > Z_OUTLIER):
        if k == 0 or (xs[k] - xs[k - 1]) / scale >= Z_GAP:
            cut = xs[k]
            break
    if cut is None:
        return flagged
    chosen = x >= cut
    if chosen.sum() > max(1, math.floor(MAX_OUTLIER_SHARE * n)):
        return flagged
    flagged[np.flatnonzero(positive)[chosen]] = True
    return flagged


def axis_cut(values, flagged) -> float | None:
    """Where to stop a linear axis so outliers don't flatten the other bars, or None (module docstring)."""
    v = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    flagged = np.asarray(flagged, dtype=bool)
    if not flagged.any() or flagged.all():
        return None
    rest = float(v[~flagged].max())
    if rest <= 0 or float(v[flagged].max()) <= CUT_RATIO * rest:
        return None
    return rest * CUT_HEADROOM


def tiny(params) -> np.ndarray:
    """Boolean mask of layers with fewer params than TINY_SHARE of the median layer's."""
    p = np.asarray(params, dtype=float)
    if p.size < 2:
        return np.zeros(p.shape, dtype=bool)
    return p < TINY_SHARE * float(np.median(p))


def log_floor(values) -> float:
    """The log axis' bottom (as log10): a third of the smallest positive value, so it still has height."""
    v = np.asarray(values, dtype=float)
    positive = v[np.isfinite(v) & (v > 0)]
    return math.log10(float(positive.min()) / 3) if positive.size else -1.0


def log_values(values, floor: float) -> np.ndarray:
    """log10 of the values, those <= 0 (or NaN) at the floor: no height on the log axis."""
    v = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(np.where(np.isfinite(v) & (v > 0), v, np.nan))
    return np.where(np.isfinite(out), np.maximum(out, floor), floor)


def log_ticks(lo: float, hi: float, most: int = 8) -> tuple[list[float], dict[float, str]]:
    """Tick positions (log10) and their labels for a log axis from lo to hi: 1-2-5 steps, or decades only
    when that gives more than `most` ticks."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        return [], {}
    ticks = []
    for mult in ((1, 2, 5), (1,)):
        ticks = [math.log10(m) + k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in mult
                 if lo - 1e-9 <= math.log10(m) + k <= hi + 1e-9]
        if len(ticks) <= most:
            break
    return ticks, {t: short(10 ** t) for t in ticks}


def short(x: float) -> str:
    """A number as a tick, a readout or the layer table shows it: 3 significant digits, no trailing zeros
    (0.05, 60.8, 0.00841), whole numbers from 1000 to 9999 in full (1234), others below 0.001 or from 10000
    up with a short exponent (7.54e-5, -3.56e-4, 1.23e4: 8 characters at most, so a narrow table column
    holds it; js/table.js formats the same way)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    size = abs(x)
    if size == 0:
        return "0"
    if 1000 <= size < 10000:
        return f"{x:.0f}"
    if size < 1e-3 or size >= 1e4:
        mantissa, exponent = f"{x:.2e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{x:.3g}"


def scaled(values, mode: str) -> np.ndarray:
    """Sensitivities as drawn on a linear axis: raw ("values") or as a share of the total ("percent",
    0-1, shown with a % axis)."""
    v = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    if mode == "percent":
        total = np.abs(v).sum()
        return v / total if total else v
    return v


def scale_of(values, skip=None) -> float:
    """What a profile is normalised by: its largest |value| among the layers not in `skip` (its
    outliers, so one outlier does not flatten its bars); 1 when that is 0."""
    v = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    rest = v if skip is None else v[~np.asarray(skip, dtype=bool)]
    top = float(np.abs(rest).max()) if rest.size else 0.0
    return top if top else 1.0


def normalised(values, skip=None) -> np.ndarray:
    """A profile over scale_of(values, skip), so profiles of different methods share one axis."""
    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0) / scale_of(values, skip)


def loglog_slope(params, values) -> float | None:
    """Least-squares slope of log10(sensitivity) on log10(params) over layers with both positive; None when
    fewer than 3 such layers or all params equal. Negative: fewer params, more sensitive."""
    p, v = np.asarray(params, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(p) & np.isfinite(v) & (p > 0) & (v > 0)
    if ok.sum() < 3:
        return None
    x, y = np.log10(p[ok]), np.log10(v[ok])
    if np.ptp(x) == 0:
        return None
    return float(np.polyfit(x, y, 1)[0])


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart, chosen as d3's ticks() does)
    from lo to hi: bqplot leaves ticks unrounded once a scale's min and max are set (0.256, 0.534, ...)."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return []
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    error = raw / power
    step = power * (10 if error >= math.sqrt(50) else 5 if error >= math.sqrt(10) else 2 if error >= math.sqrt(2) else 1)
    first = math.ceil(lo / step - 1e-9)
    ticks = [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [0.0 if t == 0 else t for t in ticks]
