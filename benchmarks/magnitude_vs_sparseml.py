"""Magnitude profiles side by side with SparseML 1.8: speed, peak memory and agreement.

Each side runs in its own fresh process; the clock starts after imports (as a notebook user meets it) and
peak memory is the process's ru_maxrss. SparseML comes from ../shared/bench/sparseml_peer.sh.

  python benchmarks/magnitude_vs_sparseml.py                       # t12: 85.7M-param transformer
  python benchmarks/magnitude_vs_sparseml.py --model some.onnx     # any model SparseML can read
  python benchmarks/magnitude_vs_sparseml.py --suite               # agreement on several generated models
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import make_model, peer_python, run_json

OURS = r"""
import json, resource, sys, time
import losswidget
t0 = time.perf_counter()
p = losswidget.analyze(sys.argv[1], method="magnitude")
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "layers": {l.weight: list(l.values) for l in p.layers}, "levels": list(p.levels)}))
"""

PEER = r"""
import json, logging, resource, sys, time
logging.disable(logging.CRITICAL)
from sparseml.onnx.optim.sensitivity_pruning import pruning_loss_sens_magnitude
t0 = time.perf_counter()
a = pruning_loss_sens_magnitude(sys.argv[1], show_progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "layers": {r.name: [v[0] for v in r.sparse_measurements.values()] for r in a.results},
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
        rows = []
        for i in range(a.repeat):
            o, p = run_json(sys.executable, OURS, model)[1], run_json(peer, PEER, model)[1]
            rows.append((o, p))
            print(f"run {i + 1}: ours {o['seconds']:.3f} s {o['peak_mb']:.0f} MB | SparseML {p['seconds']:.3f} s "
                  f"{p['peak_mb']:.0f} MB | speed-up {p['seconds'] / o['seconds']:.2f}x, "
                  f"memory {o['peak_mb'] / p['peak_mb']:.2f} of SparseML's")
        worst, n = agreement(*rows[-1])
        speed = sorted(p["seconds"] / o["seconds"] for o, p in rows)[len(rows) // 2]
        mem = sorted(o["peak_mb"] / p["peak_mb"] for o, p in rows)[len(rows) // 2]
        print(f"median speed-up {speed:.2f}x, median peak memory {mem:.2f} of SparseML's; "
              f"{n} layers, max relative difference {worst:.2e}")


if __name__ == "__main__":
    main()
