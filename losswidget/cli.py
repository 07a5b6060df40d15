"""`losswidget` on the command line. Imports lazily so `losswidget --help` starts fast."""
from __future__ import annotations

import argparse
import sys


def _levels(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated numbers, e.g. 0,0.5,0.9 (got {text!r})")


def _dims(text: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"dims must look like batch=4,seq=64 (got {text!r})")


def _executor(args):
    """A concurrent.futures executor for --workers / --scheduler, or None to run in this process."""
    if args.workers:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
    if args.scheduler:
        from .errors import SettingsError
        try:
            from distributed import Client
        except ImportError:
            raise SettingsError("--scheduler needs Dask: pip install 'losswidget[dask]'") from None
        try:
            return Client(args.scheduler, timeout="10s").get_executor()
        except OSError as exc:
            raise SettingsError(f"Cannot reach the Dask scheduler at {args.scheduler}: {exc}") from None
    return None


def human(n: float) -> str:
    from .profile import human as fmt
    return fmt(n, 2)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="losswidget", description="Pruning loss profiles of ONNX models.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="profile a model and print its summary and most sensitive layers")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("--method", default="magnitude", help="approximated | magnitude | one-shot (default: magnitude)")
    p.add_argument("--name", help="profile name (default: the method's label)")
    p.add_argument("--levels", type=_levels, help="sparsity levels, e.g. 0,0.5,0.9 (default: the method's)")
    p.add_argument("--target", type=float, default=0.85, help="target sparsity for the estimates (default 0.85)")
    p.add_argument("--top", type=int, default=10, help="how many of the most sensitive layers to list")
    o = p.add_argument_group("one-shot (data-driven) options")
    o.add_argument("--data", help="an .npz file whose arrays are named like the model's inputs, or 'random'")
    o.add_argument("--labels", metavar="KEY", help="the array in --data that holds the labels")
    o.add_argument("--metric", default="kl", help="kl | mse | loss (default: kl; loss needs --labels)")
    o.add_argument("--output", help="compare this model output only (default: all float outputs)")
    o.add_argument("--samples", type=int, help="use at most this many samples")
    o.add_argument("--batch-size", type=int, help="samples per onnxruntime run")
    o.add_argument("--random-dims", type=_dims, help="sizes of symbolic dims for --data random, e.g. batch=4,seq=64")
    where = o.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="measure layers in this many local processes")
    where.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler to share the layers out on")
    p.add_argument("--json", metavar="OUT", help="write the profile as JSON")
    p.add_argument("--csv", metavar="OUT", help="write the per-layer table as CSV")
    sub.add_parser("methods", help="list the analysis methods and their settings")
    app = sub.add_parser("app", help="serve the widget as a standalone page on localhost (Voilà)")
    app.add_argument("model", nargs="?", help="an .onnx file (default: the bundled demo model and its data)")
    app.add_argument("--data", help="an .npz file for one-shot profiles (names like the model's inputs)")
    app.add_argument("--profiles-dir", default="losswidget-profiles", help="where profiles are kept")
    app.add_argument("--port", type=int, default=8866)
    app.add_argument("--no-browser", action="store_true", help="do not open a browser")
    d = sub.add_parser("demo", help="profile the bundled demo model (trained on digits) three ways, offline")
    d.add_argument("--out", default="losswidget-demo", help="folder for the model and profiles")
    return ap


class _Bar:
    """A one-line progress bar on stderr, only when it is a terminal."""

    def __init__(self):
        self.on = sys.stderr.isatty()

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.on:
            width = 30
            fill = int(width * done / max(total, 1))
            sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} {message[:40]:<40}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\r" + " " * 80 + "\r")


def print_profile(profile, top: int) -> None:
    s = profile.summary
    m = profile.model
    print(f"Model:        {m.path or '(in memory)'}  {m.hash[:19]}")
    levels = profile.settings.get("sparsity_levels", [])
    print(f"Profile:      {profile.name!r}, method {profile.method}, {len(levels)} levels, "
          f"target {s.target_sparsity:g}")
    share = f" ({s.prunable_params / s.total_params:.1%})" if s.total_params else ""
    print(f"Params:       {human(s.total_params)} total, {human(s.prunable_params)} prunable{share}, "
          f"{len(profile.layers)} layers")
    print(f"Sensitivity:  {s.avg_sensitivity:.4g} on average (L(0.95) - L(0) per layer)")
    print(f"Estimates:    params reduction {s.est_params_reduction:.2f}x at target {s.target_sparsity:g}, "
          f"recovery {'n/a' if s.est_recovery is None else f'{s.est_recovery:.3f}'} ({profile.recovery_note})")
    for note in profile.notes:
        print(f"Note:         {note}")
    if profile.layers and top > 0:
        rows = profile.most_sensitive(top)
        width = min(max(len(l.name) for l in rows), 48)
        print(f"\nMost sensitive layers:\n  {'#':>4}  {'layer':<{width}}  {'op':<12} {'params':>10}  sensitivity")
        for l in rows:
            flags = f"  [{', '.join(l.flags)}]" if l.flags else ""
            print(f"  {l.index:>4}  {l.name[:width]:<{width}}  {l.op_type:<12} {human(l.params):>10}  "
                  f"{l.sensitivity:.4g}{flags}")


def _demo(out: str) -> int:
    """Profile the bundled digits model three ways (offline) and write the profiles as JSON."""
    from pathlib import Path

    from .analysis import analyze
    from .demo import ACCURACY, demo
    path, data = demo()
    print(f"Demo: an MLP trained on scikit-learn's digits ({ACCURACY:.1%} held-out accuracy), "
          f"{len(data['y'])} held-out digits with labels\n")
    folder = Path(out)
    for method, extra in (("approximated", {}), ("magnitude", {}),
                          ("one-shot", {"data": data, "labels": "y", "metric": "loss"})):
        profile = analyze(path, method, **extra)
        print_profile(profile, 5)
        profile.to_json(folder / f"{method}.json")
        print(f"\nWrote {folder / f'{method}.json'}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .errors import LossWidgetError

    try:
        if args.command == "methods":
            from .analysis import methods
            for m in methods():
                print(f"{m['name']:<14} {m['description']}")
                for key, spec in m["settings"].items():
                    default = spec["default"]
                    shown = f"{len(default)} levels" if isinstance(default, list) else default
                    print(f"{'':<16}{key} ({spec['type']}, default {shown})")
            return 0
        from .analysis import analyze
        if args.command == "demo":
            return _demo(args.out)
        if args.command == "app":
            from .serve import serve
            return serve(args.model, data=args.data, profiles_dir=args.profiles_dir, port=args.port,
                         open_browser=not args.no_browser)
        bar = _Bar()
        extra = {}
        if args.method == "one-shot":
            extra = dict(data=args.data, labels=args.labels, metric=args.metric, output=args.output,
                         samples=args.samples, batch_size=args.batch_size, random_dims=args.random_dims,
                         executor=_executor(args))
        try:
            profile = analyze(args.model, args.method, name=args.name, sparsity_levels=args.levels,
                              target_sparsity=args.target, progress=bar, **extra)
        finally:
            bar.close()
            if extra.get("executor") is not None and hasattr(extra["executor"], "shutdown"):
                extra["executor"].shutdown()
        print_profile(profile, args.top)
        if args.json:
            profile.to_json(args.json)
            print(f"\nWrote {args.json}")
        if args.csv:
            profile.to_csv(args.csv)
            print(f"Wrote {args.csv}")
        return 0
    except LossWidgetError as exc:
        print(f"losswidget: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"losswidget: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("losswidget: interrupted", file=sys.stderr)
        return 130
