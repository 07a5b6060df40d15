"""Do the plans hold on held-out data? Profiles made on one split, plans applied with losswidget.prune, judged
on another split in onnxruntime, beside uniform and global magnitude pruning.

  python benchmarks/plan_quality.py                 # the bundled demo and the two-head model
  python benchmarks/plan_quality.py --targets 0.5,0.7 --only demo --demo mlp

demo: `losswidget.demo()` (the residual CNN, or with `--demo mlp` the MLP, and the 450 held-out digits): every
method profiles the first 150 (data methods with the labels; one-shot both with the task loss and with the
default metric), plans at each target are pruned into the model and judged on the other 300 by accuracy. "est" is what the
plan says it keeps (measured recovery, or for data-free profiles the weight energy, marked "energy") beside
the measured accuracy ratio (pruned / dense accuracy on the judged split).
two-head: a generated net whose one output mixes a head of values ~1e3 and one of ~1e-3 (as a detector
mixes box coordinates and class scores); judged by each head's error relative to its own variance.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import losswidget  # noqa: E402
from losswidget.analysis import registry  # noqa: E402


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def uniform(plan, s: float):
    return dataclasses.replace(plan, layers=tuple(dataclasses.replace(l, sparsity=s) for l in plan.layers),
                               est_recovery=None, recovery_kind=None, weight_energy_kept=None, profile="uniform")


def global_magnitude(plan, model: str, target: float):
    """One |w| threshold over every layer (dequantized magnitudes), as global magnitude pruning does."""
    from losswidget.graph import read_graph
    from losswidget.onnxfile import open_model
    from losswidget.weights import magnitudes
    with open_model(model) as mf:
        mags = {l.weight: magnitudes(mf, l.ref).copy() for l in read_graph(mf).layers}
    allm = np.sort(np.concatenate(list(mags.values())))
    cut = allm[int(round(target * allm.size)) - 1]
    layers = tuple(dataclasses.replace(l, sparsity=float((mags[l.weight] <= cut).mean())) for l in plan.layers)
    return dataclasses.replace(plan, layers=layers, est_recovery=None, recovery_kind=None, weight_energy_kept=None,
                               profile="global magnitude")


def run(model: str, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(model).run(None, feeds)[0]


def judged(model: str, plan, judge) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        return judge(losswidget.prune(model, plan, Path(tmp) / "pruned.onnx"))


def demo_rows(targets, which="resnet"):
    path, data = losswidget.demo(which)
    name = next(k for k in data if k != "y")
    x, y = data[name], data["y"]
    fit, held = slice(0, 150), slice(150, None)
    dense = (run(path, {name: x[held]}).argmax(-1) == y[held]).mean()
    judge = lambda p: (run(p, {name: x[held]}).argmax(-1) == y[held]).mean()  # noqa: E731
    profiles = {}
    for m in registry().values():
        if m.needs_data:
            profiles[f"{m.name} (loss)"] = losswidget.analyze(path, m.name, data={name: x[fit], "y": y[fit]},
                                                             labels="y", metric="loss") \
                if m.setting("metric") else None
            profiles[f"{m.name} (default)"] = losswidget.analyze(path, m.name, data={name: x[fit]})
        else:
            profiles[m.name] = losswidget.analyze(path, m.name)
    profiles = {k: v for k, v in profiles.items() if v is not None}
    print(f"demo: {path}, dense accuracy {dense:.3f} on {len(y[held])} held-out digits (profiles on {fit.stop})")
    print(f"\n| target | plan | achieved | accuracy | acc. ratio | est (kind) | est − ratio |")
    print("|---|---|---|---|---|---|---|")
    base = next(iter(profiles.values()))
    for t in targets:
        rows = [("uniform", uniform(base.plan(t), t)), ("global magnitude", global_magnitude(base.plan(t), path, t))]
        rows += [(k, p.plan(t)) for k, p in profiles.items()]
        for label, plan in rows:
            acc = judged(path, plan, judge)
            achieved = sum(l.pruned for l in plan.layers) / plan.prunable_params
            if plan.est_recovery is not None:
                est, kind = plan.est_recovery, plan.recovery_kind
            elif plan.weight_energy_kept is not None:
                est, kind = plan.weight_energy_kept, "energy"
            else:
                est, kind = None, ""
            gap = f"{est - acc / dense:+.3f}" if est is not None else ""
            shown = f"{est:.3f} ({kind})" if est is not None else "—"
            print(f"| {t:.0%} | {label} | {achieved:.3f} | {acc:.3f} | {acc / dense:.3f} | {shown} | {gap} |")


def two_head_rows(targets):
    from test_one_shot import two_head_model  # the model the tests use, built with onnx.helper
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "heads.onnx")
        import onnx
        onnx.save(two_head_model(), path)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((600, 16)).astype(np.float32)
        fit, held = x[:200], x[200:]
        dense = run(path, {"x": held})
        var = dense.var(axis=0)

        def judge(p):
            err = ((run(p, {"x": held}) - dense) ** 2 / var).mean(axis=0)
            return f"{err[:4].mean():.3f} / {err[4:].mean():.3f}"
        auto = losswidget.analyze(path, "one-shot", data={"x": fit})
        kl = losswidget.analyze(path, "one-shot", data={"x": fit}, metric="kl")   # a softmax over mixed scales
        mag = losswidget.analyze(path, "magnitude")
        print(f"\ntwo-head model: relative error of the big (~1e3) / small (~1e-3) head on {len(held)} held-out "
              f"inputs (0 = unchanged, 1 = as far off as the head's own spread); one-shot scored "
              f"{auto.settings['scoring']}")
        print("\n| target | plan | big / small head error | planned sparsity (trunk, big, small) |")
        print("|---|---|---|---|")
        for t in targets:
            for label, plan in (("uniform", uniform(auto.plan(t), t)), ("magnitude", mag.plan(t)),
                                ("one-shot (kl)", kl.plan(t)), ("one-shot (default)", auto.plan(t))):
                s = ", ".join(f"{v:.2f}" for v in plan.sparsity.values())
                print(f"| {t:.0%} | {label} | {judged(path, plan, judge)} | {s} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="0.5,0.7,0.85,0.9")
    ap.add_argument("--only", choices=["demo", "two-head"])
    ap.add_argument("--demo", choices=["resnet", "mlp"], default="resnet", help="which bundled demo model")
    args = ap.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    print(f"CPU: {cpu()}; losswidget {losswidget.__version__}, onnxruntime {ort.__version__}")
    if args.only in (None, "demo"):
        demo_rows(targets, args.demo)
    if args.only in (None, "two-head"):
        two_head_rows(targets)


if __name__ == "__main__":
    main()
