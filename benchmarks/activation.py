"""Activation-aware profiles against our one-shot profiles: speed, ranking agreement and plan quality.

timing: the transformers of ../shared/bench/make_models.py (t4: --layers 4 --hidden 256, 25 layers; t12:
--layers 12 --hidden 768, 85.7M params), the data of benchmarks/one_shot_vs_sparseml.py (4 samples of
[64, hidden] standard normal, seed 1), each method with its default levels and settings, each profile a
fresh process timed from start to exit (imports included, byte-compiled as pip installs it). --repeat N
alternates the two N times; the median of the pair ratios and the best against the best are reported,
with the steal time the host took during each run and the Spearman correlation of the two sensitivity
rankings (random weights and data: agreement there says little about real models).

quality: the bundled demo (`losswidget.demo()`: a digits classifier and its 450 held-out digits) and a
generated two-output model (the demo with its classifier, plus a second output of a very different scale:
the digit's ink, sum of pixels x 100, read from the trunk's first activation through a ReLU layer of its
own and a ridge-regression readout fitted on the profiling digits). Each
method profiles the first 150 held-out digits with its defaults; plans at 50 / 70 / 85% are pruned into
the model with losswidget.prune and judged on the other 300 digits in onnxruntime (accuracy of the
classifier; R^2 of the ink output). Beside the plans, every layer at the target sparsity ("uniform") in
activation order (|w| ||x_j||) and in magnitude order: the ranking within layers on its own. Spearman:
between the activation and one-shot sensitivity rankings.

  flock /work/locks/bench.lock python benchmarks/activation.py timing --model t4 --repeat 3
  flock /work/locks/bench.lock python benchmarks/activation.py timing --model t12
  python benchmarks/activation.py quality [--demo mlp]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import compile_ours, make_model, run_json, steal_seconds

MODELS = {"t4": ("--layers", "4", "--hidden", "256"), "t12": ("--layers", "12", "--hidden", "768")}

PROFILE = r"""
import json, sys
import losswidget
p = losswidget.analyze(sys.argv[1], sys.argv[2], data=sys.argv[3])
print(json.dumps({"sens": [l.sensitivity for l in p.layers], "recovery": p.recovery.points if p.recovery else None}))
"""


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    n = len(a)
    return float(1 - 6 * np.sum((ra - rb) ** 2) / (n * (n * n - 1))) if n > 1 else float("nan")


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "unknown")


def timing(args) -> None:
    compile_ours()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        model, data = Path(tmp) / f"{args.model}.onnx", Path(tmp) / "x.npz"
        make_model("transformer", model, *MODELS[args.model])
        hidden = int(MODELS[args.model][3])
        rng = np.random.default_rng(1)
        np.savez(data, x=rng.standard_normal((args.samples, 64, hidden)).astype(np.float32))
        pairs, last = [], {}
        for _ in range(args.repeat):
            row = {}
            for method in ("activation", "one-shot"):
                stolen = steal_seconds()
                seconds, out = run_json(sys.executable, PROFILE, str(model), method, str(data))
                row[method] = seconds
                last[method] = out
                print(f"{method:>10}: {seconds:7.2f} s (steal {steal_seconds() - stolen:.2f} s, load "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
            pairs.append((row["activation"], row["one-shot"]))
    ratios = sorted(o / a for a, o in pairs)
    best = min(o for _, o in pairs) / min(a for a, _ in pairs)
    rho = spearman(last["activation"]["sens"], last["one-shot"]["sens"])
    print(f"{args.model}: {len(last['activation']['sens'])} layers, {args.samples} samples | one-shot / activation: "
          f"median {float(np.median(ratios)):.1f}x (range {ratios[0]:.1f}-{ratios[-1]:.1f}x over {len(pairs)} pairs), "
          f"best against best {best:.1f}x | Spearman of the sensitivity rankings {rho:.3f}")
    print(f"load average after: {os.getloadavg()}")


# -- quality on held-out digits ----------------------------------------------------------------------------
def uniform(plan, s: float):
    """The plan with every layer at sparsity s (its criterion and norms kept)."""
    return dataclasses.replace(plan, layers=tuple(dataclasses.replace(l, sparsity=s) for l in plan.layers))


def two_output_model(demo_path: str, fit_x: np.ndarray):
    """The demo classifier plus an ink output (sum of pixels x 100: values ~2e3 beside logits ~10), read
    from the trunk's first activation (pooled over space when it has any) through a ReLU layer of its own
    and a ridge-regression readout fitted on `fit_x`."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    m = onnx.load(demo_path)
    g = m.graph
    first = next(n for n in g.node if n.op_type == "Relu").output[0]       # the trunk's first activation
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.output.append(helper.make_tensor_value_info(first, onnx.TensorProto.FLOAT, None))
    h = ort.InferenceSession(probe.SerializeToString()).run([first], {g.input[0].name: fit_x})[0]
    nodes, feats = [], first
    if h.ndim > 2:                                                          # [N, C, H, W]: pool over space
        nodes = [helper.make_node("GlobalAveragePool", [first], ["ink_pool"]),
                 helper.make_node("Flatten", ["ink_pool"], ["ink_x"])]
        feats, h = "ink_x", h.mean(axis=tuple(range(2, h.ndim)))
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((h.shape[1], 64)) / np.sqrt(h.shape[1])).astype(np.float32)
    hidden = np.maximum(h @ w1, 0)
    target = fit_x.reshape(len(fit_x), -1).sum(axis=1) * 100
    design = np.hstack([hidden, np.ones((len(hidden), 1))])
    gram = design.T @ design                     # ridge: some pooled channels are all but constant
    coef = np.linalg.solve(gram + 1e-4 * np.trace(gram) / len(gram) * np.eye(len(gram)), design.T @ target)
    g.initializer.extend([numpy_helper.from_array(w1, "ink.fc.weight"),
                          numpy_helper.from_array(coef[:-1, None].astype(np.float32), "ink.head.weight"),
                          numpy_helper.from_array(np.array([coef[-1]], np.float32), "ink.head.bias")])
    g.node.extend(nodes + [helper.make_node("MatMul", [feats, "ink.fc.weight"], ["ink_h"], name="ink.fc"),
                           helper.make_node("Relu", ["ink_h"], ["ink_r"]),
                           helper.make_node("MatMul", ["ink_r", "ink.head.weight"], ["ink_m"], name="ink.head"),
                           helper.make_node("Add", ["ink_m", "ink.head.bias"], ["ink"])])
    g.output.append(helper.make_tensor_value_info("ink", onnx.TensorProto.FLOAT, ["batch", 1]))
    return m


def quality(args) -> None:
    import onnx
    import onnxruntime as ort

    import losswidget

    targets = [float(t) for t in args.targets.split(",")]
    path, data = losswidget.demo(args.demo)
    name = next(k for k in data if k != "y")
    x, y = data[name], data["y"]
    fit, held = slice(0, 150), slice(150, None)
    print(f"CPU: {cpu_model()}; losswidget {losswidget.__version__}, onnxruntime {ort.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        two = str(Path(tmp) / "two_outputs.onnx")
        onnx.save(two_output_model(path, x[fit]), two)
        for label, model in (("demo", path), ("two outputs", two)):
            sess = ort.InferenceSession(model)
            outs = [o.name for o in sess.get_outputs()]
            dense = dict(zip(outs, sess.run(None, {name: x[held]})))
            ink_true = x[held].reshape(len(x[held]), -1).sum(axis=1) * 100

            def judge(p: str) -> str:
                got = dict(zip(outs, ort.InferenceSession(p).run(None, {name: x[held]})))
                acc = float((got[outs[0]].argmax(-1) == y[held]).mean())
                if "ink" not in got:
                    return f"{acc:.3f}"
                r2 = 1 - float(((got["ink"][:, 0] - ink_true) ** 2).mean() / ink_true.var())
                return f"{acc:.3f} / {r2:.3f}"
            profiles = {m: losswidget.analyze(model, m, data={name: x[fit]}) for m in ("activation", "one-shot")}
            profiles["magnitude"] = losswidget.analyze(model, "magnitude")
            rho = spearman(profiles["activation"].sensitivities, profiles["one-shot"].sensitivities)
            what = "accuracy" if "ink" not in dense else "accuracy / ink R^2"
            base = judge(model)
            print(f"\n{label}: {len(profiles['activation'].layers)} layers; dense {what} {base} on {len(y[held])} "
                  f"held-out digits (profiles on the first {fit.stop}); Spearman(activation, one-shot) = {rho:.3f}")
            heads = ["activation plan", "one-shot plan", "magnitude plan", "uniform, activation order",
                     "uniform, magnitude order"]
            print(f"\n| target | {' | '.join(heads)} |\n|---|{'---|' * len(heads)}")
            for t in targets:
                act = profiles["activation"].plan(t)
                plans = [act, profiles["one-shot"].plan(t), profiles["magnitude"].plan(t), uniform(act, t),
                         dataclasses.replace(uniform(act, t), criterion="magnitude")]
                cells = [judge(losswidget.prune(model, p, Path(tmp) / "pruned.onnx")) for p in plans]
                print(f"| {t:.0%} | {' | '.join(cells)} |")
            for k, p in profiles.items():
                print(f"  {k}: sensitivities {', '.join(f'{l.name} {l.sensitivity:.3g}' for l in p.layers)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--model", choices=list(MODELS), default="t4")
    t.add_argument("--samples", type=int, default=4)
    t.add_argument("--repeat", type=int, default=1)
    q = sub.add_parser("quality")
    q.add_argument("--targets", default="0.5,0.7,0.85")
    q.add_argument("--demo", default="resnet", help="which bundled demo model (resnet, mlp)")
    args = ap.parse_args()
    timing(args) if args.part == "timing" else quality(args)


if __name__ == "__main__":
    main()
