"""Magnitude profiles side by side with SparseML 1.8: speed, peak memory and agreement.

Each side runs in its own fresh process and profiles the model twice, the clock started after imports:
- cold: the first profile in the process (a notebook kernel's first): ours includes numba's import and
  the load of its cached kernels (started while the model opens), SparseML its own first call;
- warm: the same call again in the same process (a later profile in that kernel): the median of WARM calls.
Peak memory is the process's ru_maxrss after the first call. Before the timed runs, one untimed run of ours
fills numba's on-disk cache of compiled kernels and the model's hash cache (as a user has them after their
first profile ever); it is printed, not counted. The host's CPU model and load are printed with the figures.
SparseML comes from ../shared/bench/sparseml_peer.sh.

  python benchmarks/magnitude_vs_sparseml.py                       # t12: 85.7M-param transformer
  python benchmarks/magnitude_vs_sparseml.py --model some.onnx     # any model SparseML can read
  python benchmarks/magnitude_vs_sparseml.py --suite               # agreement on several generated models
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from common import make_model, peer_python, run_json

WARM = 3                          # warm calls per process (after the cold one); their median is reported

# argv: model [calls]; "seconds" is the first call's time, "warm_seconds" the later calls' (the same profile
# again in the same process), "peak_mb" ru_maxrss after the first call, "warm_same" whether they gave equal values
OURS = r"""
import json, resource, sys, time
import losswidget
times, values = [], None
for call in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
    t0 = time.perf_counter()
    p = losswidget.analyze(sys.argv[1], method="magnitude")
    times.append(time.perf_counter() - t0)
    got = {l.weight: list(l.values) for l in p.layers}
    if values is None:
        values, peak, same = got, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, True
    same = same and got == values
print(json.dumps({"seconds": times[0], "warm_seconds": times[1:], "peak_mb": peak, "warm_same": same,
                  "numba": "numba" in sys.modules, "layers": values, "levels": list(p.levels)}))
"""

PEER = r"""
import json, logging, resource, sys, time
logging.disable(logging.CRITICAL)
from sparseml.onnx.optim.sensitivity_pruning import pruning_loss_sens_magnitude
times, values = [], None
for call in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
    t0 = time.perf_counter()
    a = pruning_loss_sens_magnitude(sys.argv[1], show_progress=False)
    times.append(time.perf_counter() - t0)
    got = {r.name: [v[0] for v in r.sparse_measurements.values()] for r in a.results}
    if values is None:
        values, peak, same = got, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, True
    same = same and got == values
print(json.dumps({"seconds": times[0], "warm_seconds": times[1:], "peak_mb": peak, "warm_same": same,
                  "layers": values,
                  "levels": [float(k) for k in a.results[0].sparse_measurements] if a.results else []}))
"""


def agreement(ours: dict, peer: dict) -> tuple[float, int]:
    """Largest relative difference over all (layer, level) measurements, and the number of layers."""
    if set(ours["layers"]) != set(peer["layers"]):
        missing = set(peer["layers"]) ^ set(ours["layers"])
        raise SystemExit(f"layer sets differ: {sorted(missing)[:10]}")
    worst = 0.0
    for name, theirs in peer["layers"].items():
        for a, b in zip(ours["layers"][name], theirs):
            worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    return worst, len(peer["layers"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--suite", action="store_true")
    a = ap.parse_args()
    peer = peer_python()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.suite:
            models = [make_model("transformer", tmp / "t4.onnx", "--layers", "4", "--hidden", "256"),
                      make_model("convnet", tmp / "c8.onnx", "--blocks", "8", "--width", "64"),
                      make_model("convnet", tmp / "c3.onnx", "--blocks", "3", "--width", "24", "--classes", "7"),
                      make_model("transformer", tmp / "t2x.onnx", "--layers", "2", "--hidden", "128", "--external")]
            for m in models:
                worst, n = agreement(run_json(sys.executable, OURS, m)[1], run_json(peer, PEER, m)[1])
                print(f"{Path(m).name}: {n} layers, max relative difference {worst:.2e}")
            return
        model = a.model or make_model("transformer", tmp / "t12.onnx", "--layers", "12", "--hidden", "768")
        calls = str(1 + WARM)
        print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load {load()}; python {platform.python_version()}")
        first = run_json(sys.executable, OURS, model)[1]
        print(f"untimed first run of ours (fills numba's and the hash's disk caches): {first['seconds']:.3f} s")
        rows = []
        for i in range(a.repeat):
            o, p = run_json(sys.executable, OURS, model, calls)[1], run_json(peer, PEER, model, calls)[1]
            rows.append((o, p))
            ow, pw = warm(o), warm(p)
            print(f"run {i + 1}: cold: ours {o['seconds']:.3f} s | SparseML {p['seconds']:.3f} s | "
                  f"{p['seconds'] / o['seconds']:.2f}x;  warm: ours {ow:.3f} s | SparseML {pw:.3f} s | "
                  f"{pw / ow:.2f}x;  peak {o['peak_mb']:.0f} / {p['peak_mb']:.0f} MB "
                  f"({o['peak_mb'] / p['peak_mb']:.2f}); load {load()}", flush=True)
            if not (o["warm_same"] and p["warm_same"]):
                raise SystemExit("a second call gave other values than the first")
        worst, n = agreement(*rows[-1])

        def median(f):
            return sorted(f(o, p) for o, p in rows)[len(rows) // 2]
        print(f"median of {len(rows)}: cold (first profile in a fresh process, numba's import and cache load "
              f"included: {'yes' if rows[0][0]['numba'] else 'numba not used'}) "
              f"{median(lambda o, p: p['seconds'] / o['seconds']):.2f}x "
              f"(ours {median(lambda o, p: o['seconds']):.3f} s, SparseML {median(lambda o, p: p['seconds']):.3f} s); "
              f"warm (median of {WARM} later calls in the same process) {median(lambda o, p: warm(p) / warm(o)):.2f}x "
              f"(ours {median(lambda o, p: warm(o)):.3f} s, SparseML "
              f"{median(lambda o, p: warm(p)):.3f} s); peak memory "
              f"{median(lambda o, p: o['peak_mb'] / p['peak_mb']):.2f} of SparseML's; "
              f"{n} layers, max relative difference {worst:.2e}; load {load()}")


def warm(r: dict) -> float:
    """The median of a side's warm calls (the calls after its first, in the same process)."""
    w = sorted(r["warm_seconds"])
    return w[len(w) // 2]


def cpu_model() -> str:
    """lscpu's model name, with the family / model numbers and widest AVX (a VM's name may be just "AMD
    EPYC": family 25 model 1 is Milan) from /proc/cpuinfo where there is one."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    try:
        info = dict(l.split(":", 1) for l in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines() if ":" in l)
        info = {k.strip(): v.strip() for k, v in info.items()}
        avx = "AVX-512" if "avx512f" in info.get("flags", "").split() else "AVX2" if "avx2" in info.get("flags", "").split() else "no AVX2"
        return f"{name} (family {info.get('cpu family')} model {info.get('model')}, {avx})"
    except OSError:
        return name


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())

if __name__ == "__main__":
    main()
