"""The magnitude kernel: sorting |w| (the old path) against the two-pass histogram of analysis/ranks.py.

Per array: the median wall time of --repeat runs of each path in this process, after one warm-up run, on
the same array, with the floor beside them (reading the values once: |w| into a buffer, and a sum). Arrays
are weight-like: N(0, 1/fan_in) with heavier tails as in ../shared/bench/make_models.py, the same cast
through float16 (many exact ties), and 4-bit-like values (|q| ≤ 8 times a per-32-block scale: few distinct
values per block, a 1/16 tie at zero). Prints the CPU model and the load; run it under the bench lock:

  flock /work/locks/bench.lock python benchmarks/ranks.py [--repeat 7] [--sizes 262144,2359296,7077888] [--clock cpu]

Also prints the one-off cost of the numba engine in a fresh process (import numba, load the cached kernels).
`--split MODEL` instead shows where a magnitude profile of MODEL spends its time, step by step.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

from losswidget.analysis.ranks import has_numba, measure_array

LEVELS = np.arange(100) / 100


def sort_path(values: np.ndarray, buf: np.ndarray, levels: np.ndarray):
    """The path ranks.py replaces: |w| into a buffer, sort it, then SparseML's loop over the sorted values."""
    np.abs(values, out=buf)
    buf.sort()
    return measure_sorted(buf, levels)


def measure_sorted(values: np.ndarray, levels: np.ndarray):
    """The previous magnitude.py's measurements over sorted |w| (float32 segment sums), kept here as the
    baseline."""
    n = values.size
    counts = np.round(levels * n).astype(np.int64)
    index = np.minimum(counts, n - 1)
    out = np.zeros(len(levels))
    seg_k, seg_lo, seg_hi = [], [], []
    prev = 0
    for k, (level, i) in enumerate(zip(levels.tolist(), index.tolist())):
        if level <= 1e-9:
            continue
        if i > prev:
            seg_k.append(k), seg_lo.append(prev), seg_hi.append(i)
            prev = i
        else:
            out[k] = values[i]
            prev = i + 1
    if seg_k:
        lo, hi = np.array(seg_lo), np.array(seg_hi)
        starts = np.empty(2 * len(lo), np.int64)
        starts[0::2], starts[1::2] = lo, np.minimum(hi, n - 1)
        out[seg_k] = np.add.reduceat(values, starts)[0::2].astype(np.float64) / (hi - lo)
    bounds = np.array(sorted({0, n, *counts[counts < n].tolist()}))
    parts = np.array([np.einsum("i,i->", values[a:b], values[a:b]) for a, b in zip(bounds[:-1], bounds[1:])],
                     dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(parts)])
    pruned = cum[np.searchsorted(bounds[:-1], np.minimum(counts, n))]
    energy = float(cum[-1])
    kept = 1.0 - pruned / energy if energy > 0 and np.isfinite(energy) else np.ones(len(levels))
    return out, kept


def weights(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    fan_in = 768 if n > 1 << 20 else 512
    w = (rng.standard_normal(n) / np.sqrt(fan_in)).astype(np.float32)
    w *= (1 + 0.5 * rng.standard_exponential(n)).astype(np.float32)
    if kind == "fp16":
        return w.astype(np.float16).astype(np.float32)
    if kind == "4bit":
        blocks = w[: n - n % 32].reshape(-1, 32)
        scale = np.abs(blocks).max(axis=1, keepdims=True) / 7
        q = np.clip(np.round(blocks / scale), -8, 7)
        return (q * scale).astype(np.float32).reshape(-1)
    return w


def median_seconds(fn, repeat: int) -> float:
    """Median wall time; with `CLOCK` = "cpu", median thread CPU time (what a shared, loaded host distorts
    least: time spent waiting for a core is not counted)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = CLOCKS[CLOCK]()
        fn()
        times.append(CLOCKS[CLOCK]() - t0)
    return float(np.median(times))


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK = "wall"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def numba_start_cost() -> float:
    code = ("import time, numpy as np; t = time.perf_counter(); from losswidget.analysis.ranks import measure_array;"
            "measure_array(np.ones(10, np.float32), [0.5], 'numba'); print(time.perf_counter() - t)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)       # compiles into the cache
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def split(model: str, repeat: int) -> None:
    """Where a magnitude profile's time goes: each step over all layers in one thread, then analyze()."""
    import losswidget
    from losswidget.analysis import magnitude
    from losswidget.graph import read_graph
    from losswidget.onnxfile import open_model
    from losswidget.weights import magnitudes

    def step(label, fn, note=""):
        fn()
        t, c = [], []
        for _ in range(repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            t.append(time.perf_counter() - w0)
            c.append(time.process_time() - c0)
        print(f"  {label:44s} {np.median(t):7.3f} s wall {np.median(c):7.3f} s CPU {note}")

    with open_model(model) as mf:
        layers = read_graph(mf).layers
        values = sum(layer.params for layer in layers)
        print(f"{model}: {len(layers)} layers, {values / 1e6:.1f}M values; medians of {repeat}")

        def each(fn):
            def run():
                for layer in layers:
                    fn(layer)
                    mf.release(layer.ref.tensor)
            return run

        step("open + read_graph", lambda: read_graph(open_model(model)))
        step("read the weights once (sum)", each(lambda l: mf.array(l.ref.tensor).sum()), "the floor")
        step("|w| into a buffer", each(lambda l: magnitudes(mf, l.ref)))
        step("|w| + sort + rule (the old path)",
             each(lambda l: sort_path(mf.array(l.ref.tensor).reshape(-1),
                                      np.empty(l.params, np.float32), LEVELS)))
        for e in ["numpy"] + (["numba"] if has_numba() else []):
            step(f"ranks kernel, {e} engine", each(lambda l: measure_array(mf.array(l.ref.tensor), LEVELS, e)))
        step("content hash (blake3 of the file)", lambda: _blake3(model), "analyze() runs it in its own thread")
    default = magnitude.default_engine
    for e in ["numpy"] + (["numba"] if has_numba() else []):
        magnitude.default_engine = lambda _values, e=e: e
        step(f"analyze(method='magnitude'), {e} engine", lambda: losswidget.analyze(model, method="magnitude"),
             "2 threads; hash cached in-process after the first run")
    magnitude.default_engine = default


def _blake3(path: str) -> str:
    import hashlib

    from blake3 import blake3
    with open(path, "rb") as f:
        return hashlib.file_digest(f, blake3).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--sizes", default="262144,2359296,7077888")
    ap.add_argument("--split", metavar="MODEL", help="instead: where a magnitude profile of MODEL spends its time")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    a = ap.parse_args()
    global CLOCK
    CLOCK = a.clock
    if a.split:
        print(f"CPU: {cpu_model()} ({os.cpu_count()} logical); load {os.getloadavg()[0]:.2f}")
        split(a.split, a.repeat)
        print(f"load {os.getloadavg()[0]:.2f} after")
        return
    engines = ["numpy"] + (["numba"] if has_numba() else [])
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical); numpy {np.__version__}; load {os.getloadavg()[0]:.2f}")
    if "numba" in engines:
        import numba
        print(f"numba {numba.__version__}: import + cached kernels in a fresh process {numba_start_cost():.2f} s")
    rng = np.random.default_rng(0)
    head = f"{'values':>9} {'kind':>6} | {'read floor':>10} {'sum':>7} | {'sort path':>9} | " + " | ".join(
        f"{e:>6} {'vs sort':>7} {'vs floor':>8}" for e in engines) + " | max rel. diff"
    print(head)
    for n in [int(s) for s in a.sizes.split(",")]:
        for kind in ("gauss", "fp16", "4bit"):
            w = weights(n, kind, rng)
            buf = np.empty_like(w)
            floor = median_seconds(lambda: np.abs(w, out=buf), a.repeat)
            total = median_seconds(lambda: w.sum(), a.repeat)
            ref_values, _ = sort_path(w, buf, LEVELS)
            ref = median_seconds(lambda: sort_path(w, buf, LEVELS), a.repeat)
            cells, worst = [], 0.0
            for e in engines:
                got = measure_array(w, LEVELS, e)
                worst = max(worst, float(np.max(np.abs(got.values - ref_values) / np.maximum(ref_values, 1e-30))))
                t = median_seconds(lambda: measure_array(w, LEVELS, e), a.repeat)
                cells.append(f"{t * 1e3:6.1f} {ref / t:6.2f}x {t / floor:7.1f}x")
            print(f"{w.size:>9} {kind:>6} | {floor * 1e3:8.2f}ms {total * 1e3:5.2f}ms | {ref * 1e3:7.1f}ms | "
                  + " | ".join(cells) + f" | {worst:.1e}")
    print(f"{a.clock} times in ms, medians of {a.repeat}; load {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
