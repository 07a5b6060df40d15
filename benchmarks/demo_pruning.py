"""Is the bundled demo interesting to prune? Sensitivity spread, per-layer and uniform pruning accuracy.

  python benchmarks/demo_pruning.py [resnet|mlp]

A demo sells loss profiles only if its layers differ: some lose most of their weights at no cost, some cannot.
This script measures, on the bundled held-out digits:
- the magnitude and one-shot (task loss, the first 150 held-out digits) sensitivities of each layer, and how
  they spread (max / median);
- held-out accuracy (all 450 digits) with each layer alone pruned to 90%;
- held-out accuracy with every layer pruned uniformly to 50/70/85/90% by magnitude, beside the one-shot
  profile's plan at the same target (`profile.plan(t)`), judged on the other 300 digits so that the plan never
  sees the digits it is judged on (benchmarks/plan_quality.py compares every method's plans).
Pruning a layer to s zeroes its round(s*n) smallest |w| (ties in index order), as one-shot and prune do.
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

import losswidget

PROFILE, JUDGE = slice(0, 150), slice(150, None)
TARGETS = (0.5, 0.7, 0.85, 0.9)


def prune(weight: np.ndarray, s: float) -> np.ndarray:
    k = int(round(s * weight.size))
    out = weight.copy().ravel()
    out[np.argsort(np.abs(out), kind="stable")[:k]] = 0
    return out.reshape(weight.shape)


class Pruner:
    """The model with some layers' weights replaced, run in onnxruntime on the held-out digits."""

    def __init__(self, path: str, data: dict, layers):
        self.model = onnx.load(path)
        self.inits = {i.name: i for i in self.model.graph.initializer}
        self.dense = {l.weight: numpy_helper.to_array(self.inits[l.weight]) for l in layers}
        self.data = data

    def accuracy(self, sparsity: dict[str, float], rows=slice(None)) -> float:
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        inits = {i.name: i for i in model.graph.initializer}
        for weight, s in sparsity.items():
            inits[weight].CopyFrom(numpy_helper.from_array(prune(self.dense[weight], s), weight))
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        logits = sess.run(None, {"image": self.data["image"][rows]})[0]
        return float((logits.argmax(1) == self.data["y"][rows]).mean())


def main(which: str) -> None:
    path, data = losswidget.demo(which)
    mag = losswidget.analyze(path, "magnitude")
    shot = losswidget.analyze(path, "one-shot", data={k: v[PROFILE] for k, v in data.items()}, labels="y",
                              metric="loss")
    pruner = Pruner(path, data, mag.layers)
    dense = pruner.accuracy({})
    total = sum(l.params for l in mag.layers)
    print(f"{which}: {path}\n{len(mag.layers)} layers, {total} prunable params, {mag.summary.total_params} in all; "
          f"held-out accuracy {dense:.4f} (450 digits), {pruner.accuracy({}, JUDGE):.4f} (last 300)\n")
    print(f"{'layer':<22} {'op':<5} {'params':>7}  {'magnitude':>9}  {'one-shot':>8}  {'acc, this layer at 90%':>22}")
    for m, o in zip(mag.layers, shot.layers):
        acc = pruner.accuracy({m.weight: 0.9})
        print(f"{m.name:<22} {m.op_type:<5} {m.params:>7}  {m.sensitivity:>9.4f}  {o.sensitivity:>8.4f}  {acc:>22.4f}")
    for name, prof in (("magnitude", mag), ("one-shot", shot)):
        s = np.array([l.sensitivity for l in prof.layers])
        print(f"\n{name} sensitivity: min {s.min():.4g}, median {np.median(s):.4g}, max {s.max():.4g}; "
              f"max/median {s.max() / np.median(s):.1f}; {(s < 0.05 * s.max()).sum()} of {len(s)} layers "
              f"below 5% of the max")
    print(f"\n{'target':>6}  {'uniform (450)':>13}  {'uniform (300)':>13}  {'one-shot plan (300)':>19}  achieved")
    for t in TARGETS:
        uni = {l.weight: t for l in mag.layers}
        plan = shot.plan(t)
        planned = {l.weight: l.sparsity for l in plan.layers}
        print(f"{t:>6.2f}  {pruner.accuracy(uni):>13.4f}  {pruner.accuracy(uni, JUDGE):>13.4f}  "
              f"{pruner.accuracy(planned, JUDGE):>19.4f}  {plan.achieved:.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "resnet")
