"""One-shot profiles side by side with SparseML 1.8's pruning_loss_sens_one_shot: whole-process time and
the agreement of the per-layer sensitivity rankings (Spearman).

Both sides get the same model, the same 10 levels (SparseML's defaults) and the same samples, and each runs
as a fresh process, timed from start to exit (imports included), from bytecode as pip installs it.
SparseML comes from ../shared/bench/sparseml_peer.sh. The machines are noisy (shared hosts: the same run
varies by 1.5x within minutes; each run of ours shows the steal time the host took meanwhile), so --repeat N
alternates the two N times and reports each pair's ratio, their median, and the best time against the best.
On t12 SparseML takes about 25 minutes: --peer-json keeps its result.

  python benchmarks/one_shot_vs_sparseml.py --repeat 5               # t4: 25 layers, hidden 256
  python benchmarks/one_shot_vs_sparseml.py --layers 12 --hidden 768 --peer-json /tmp/peer_t12.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import compile_ours, make_model, peer_python, run_json, steal_seconds
LEVELS = [0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99]

OURS = r"""
import json, sys
import losswidget
p = losswidget.analyze(sys.argv[1], "one-shot", data=sys.argv[2], sparsity_levels=json.loads(sys.argv[3]))
print(json.dumps({l.weight: list(l.values) for l in p.layers}))
"""

PEER = r"""
import json, logging, sys
import numpy as np
logging.disable(logging.CRITICAL)
from sparseml.onnx.optim.sensitivity_pruning import pruning_loss_sens_one_shot
from sparseml.onnx.utils import DataLoader
x = np.load(sys.argv[2])["x"]
loader = DataLoader([{"x": s} for s in x], None, batch_size=len(x), iter_steps=0)
a = pruning_loss_sens_one_shot(sys.argv[1], loader, len(x), 1, json.loads(sys.argv[3]), show_progress=False)
print(json.dumps({r.name: [float(v[0]) for v in r.sparse_measurements.values()] for r in a.results}))
"""


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    n = len(a)
    return float(1 - 6 * np.sum((ra - rb) ** 2) / (n * (n * n - 1)))


def sensitivity(values: list[float]) -> float:
    return float(np.interp(0.95, LEVELS, values) - values[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="alternate ours and SparseML this many times")
    ap.add_argument("--peer-json", help="reuse (or write) SparseML's result and time here")
    a = ap.parse_args()
    peer_py = peer_python()
    compile_ours()
    with tempfile.TemporaryDirectory() as tmp:
        model, data = Path(tmp) / "t.onnx", Path(tmp) / "x.npz"
        make_model("transformer", model, "--layers", str(a.layers), "--hidden", str(a.hidden))
        rng = np.random.default_rng(1)
        np.savez(data, x=rng.standard_normal((a.samples, 64, a.hidden)).astype(np.float32))
        pairs = []
        for _ in range(a.repeat):
            stolen = steal_seconds()
            ours_s, ours = run_json(sys.executable, OURS, str(model), str(data), json.dumps(LEVELS))
            stolen = steal_seconds() - stolen
            if a.peer_json and Path(a.peer_json).exists():
                saved = json.loads(Path(a.peer_json).read_text())
                peer_s, peer = saved["seconds"], saved["layers"]
            else:
                peer_s, peer = run_json(peer_py, PEER, str(model), str(data), json.dumps(LEVELS))
                if a.peer_json:
                    Path(a.peer_json).write_text(json.dumps({"seconds": peer_s, "layers": peer}))
            pairs.append((ours_s, peer_s))
            print(f"ours {ours_s:.2f} s (steal {stolen:.2f} s) | SparseML {peer_s:.2f} s | {peer_s / ours_s:.1f}x",
                  flush=True)
    names = list(peer)
    rho = spearman([sensitivity(ours[n]) for n in names], [sensitivity(peer[n]) for n in names])
    print(f"t{a.layers} hidden {a.hidden}, {len(names)} layers, {len(LEVELS)} levels, {a.samples} samples")
    ratios = sorted(p / o for o, p in pairs)
    best = min(p for _, p in pairs) / min(o for o, _ in pairs)
    print(f"median speed-up {float(np.median(ratios)):.1f}x (range {ratios[0]:.1f}-{ratios[-1]:.1f}x over "
          f"{len(pairs)} pairs), best against best {best:.1f}x | Spearman of sensitivity rankings {rho:.3f}")


if __name__ == "__main__":
    main()
