"""`losswidget` on the command line. Imports lazily so `losswidget --help` starts fast."""
from __future__ import annotations

import argparse
import sys


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
        except (OSError, ValueError, TypeError) as exc:   # unreachable, or not an address (ValueError)
            from .errors import first_line
            raise SettingsError(f"Cannot reach the Dask scheduler at {args.scheduler!r}: {first_line(exc)}") from None
    return None


def human(n: float) -> str:
    from .profile import human as fmt
    return fmt(n, 2)


def _setting_type(setting):
    """argparse type for a declared setting: its own parser, errors as argparse's one-line usage errors."""
    from .errors import SettingsError

    def parse(text: str):
        try:
            return setting.parse(text)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = setting.kind
    return parse


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2 (argparse prints the whole usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog.split()[0]}: error: {message} (see {self.prog} --help)\n")


def _parser(settings: bool = True) -> argparse.ArgumentParser:
    """The CLI; `settings=False` leaves out the methods' setting flags (they need the analysis modules, whose
    imports only `profile` pays for)."""
    ap = _Parser(prog="losswidget", description="Pruning loss profiles of ONNX models, and plans of what to prune.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("profile", help="profile a model and print its summary, plan and most sensitive layers")
    p.add_argument("model", help="path of an .onnx file")
    p.add_argument("--name", help="profile name (default: the method's label)")
    if settings:
        _add_settings(p)
    p.add_argument("--top", type=int, default=10, help="how many of the most sensitive layers to list")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive, help="share the layers out to this many local processes")
    where.add_argument("--scheduler", metavar="ADDRESS", help="a Dask scheduler to share the layers out on")
    p.add_argument("--json", metavar="OUT", help="write the profile as JSON")
    p.add_argument("--csv", metavar="OUT", help="write the per-layer table as CSV")
    pl = sub.add_parser("plan", help="per-layer sparsities at a target from a profile; export JSON, CSV, recipe")
    pl.add_argument("profile", help="a profile JSON (from `losswidget profile --json`, the widget or the API)")
    pl.add_argument("--target", type=float, help="target sparsity of prunable params (default: the profile's)")
    pl.add_argument("--exclude", type=_names, default=(), metavar="A,B", help="layers kept dense (names or indices)")
    pl.add_argument("--cap", type=float, default=0.95, help="no layer past this sparsity (default 0.95)")
    pl.add_argument("--json", metavar="OUT", help="write the plan as JSON (what `losswidget prune --plan` reads)")
    pl.add_argument("--csv", metavar="OUT", help="write the plan as CSV")
    pl.add_argument("--recipe", metavar="OUT", help="write a SparseML-style YAML recipe")

    pr = sub.add_parser("prune", help="write the model pruned by a plan (or a profile's plan at a target)")
    pr.add_argument("model", help="path of the .onnx file to prune")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--plan", help="a plan JSON")
    src.add_argument("--profile", help="a profile JSON; its plan at --target is applied")
    pr.add_argument("--target", type=float, help="with --profile: target sparsity (default: the profile's)")
    pr.add_argument("--exclude", type=_names, default=(), metavar="A,B", help="with --profile: layers kept dense")
    pr.add_argument("--out", required=True, help="where to write the pruned .onnx")

    sub.add_parser("methods", help="list the analysis methods and their settings")
    app = sub.add_parser("app", help="serve the widget as a standalone page on localhost (Voilà)")
    app.add_argument("model", nargs="?", help="an .onnx file (default: the bundled demo model and its data)")
    app.add_argument("--data", help="an .npz file for one-shot profiles (names like the model's inputs)")
    app.add_argument("--profiles-dir", default="losswidget-profiles", help="where profiles are kept")
    app.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866)")
    app.add_argument("--no-browser", action="store_true", help="do not open a browser")
    app.add_argument("--kernel-timeout", type=int, default=120, metavar="SECONDS",
                     help="shut a page's kernel down this long after its tab is closed (default 120)")
    d = sub.add_parser("demo", help="profile a bundled demo model (trained on digits) three ways, offline")
    d.add_argument("--model", default="resnet",
                   help="resnet (default): a residual CNN with 18 layers; mlp: a 4-layer MLP, fast")
    d.add_argument("--out", default="losswidget-demo", help="folder for the three profiles (JSON)")
    r = sub.add_parser("report", help="write a self-contained HTML report of a profile (or of a model, profiled "
                                      "first): cards, charts, layer table, plan; opens offline")
    r.add_argument("source", metavar="MODEL_OR_PROFILE",
                   help="a profile .json (from `profile --json`, the widget or SparseML), or an .onnx model")
    r.add_argument("--html", metavar="OUT", required=True, help="where to write the report (.html)")
    r.add_argument("--method", default="magnitude", choices=["approximated", "magnitude"],
                   help="for a model: the data-free method to profile it with (default: magnitude); for a "
                        "data method, run `profile --json P.json` first and report P.json")
    r.add_argument("--name", help="the profile to report from a file that holds several (a comparison export)")
    r.add_argument("--target", type=float, help="target sparsity of the plan shown (default: the profile's)")
    return ap


def _add_settings(p: argparse.ArgumentParser) -> None:
    """--method, and one flag per declared setting; analyze() refuses settings the chosen method does not take."""
    from .analysis import all_settings, registry

    methods = registry()
    p.add_argument("--method", default="magnitude", choices=list(methods),
                   help="analysis method (default: magnitude); `losswidget methods` describes them")
    for s in all_settings().values():
        help_ = s.help
        users = [m.name for m in methods.values() if m.setting(s.name) is not None]
        if len(users) < len(methods):
            help_ += f" [{', '.join(users)}]"
        if s.choices:
            help_ += f" ({' | '.join(s.choices)}; default {s.default})"
        p.add_argument(s.cli_flag, dest=s.name, type=_setting_type(s), default=None, help=help_,
                       metavar="L1,L2,..." if s.kind == "levels" else s.name.upper())


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {text!r})")
    return value


def _names(text: str) -> tuple:
    return tuple(int(x) if x.strip().isdigit() else x.strip() for x in text.split(",") if x.strip())


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


def estimate_text(est_recovery, kind, energy, measured_at=()) -> str:
    """What a plan keeps, named as what it is: measured recovery, or (data-free) weight energy."""
    if est_recovery is not None:
        where = f", measured at {min(measured_at):g}-{max(measured_at):g}" if measured_at else ""
        return f"est. recovery {est_recovery:.3f} ({kind}{where})"
    if energy is not None:
        return f"weight energy kept {energy:.3f} (data-free: not a recovery estimate)"
    return "no recovery estimate"


def print_profile(profile, top: int) -> None:
    s = profile.summary
    m = profile.model
    print(f"Model:        {m.path or '(in memory)'}  {m.hash[:19]}")
    levels = profile.levels
    extra = f", scoring {', '.join(f'{k}: {v}' for k, v in profile.settings['scoring'].items())}" \
        if profile.settings.get("scoring") else ""
    print(f"Profile:      {profile.name!r}, method {profile.method}, {len(levels)} levels{extra}")
    share = f" ({s.prunable_params / s.total_params:.1%})" if s.total_params else ""
    print(f"Params:       {human(s.total_params)} total, {human(s.prunable_params)} prunable{share}, "
          f"{len(profile.layers)} layers")
    print(f"Sensitivity:  {s.avg_sensitivity:.4g} on average (L(0.95) - L(0) per layer)")
    targets = profile.recovery.targets if profile.recovery is not None else ()
    print(f"Plan:         target {s.target_sparsity:.0%} -> {s.achieved_sparsity:.1%} of prunable params, "
          f"params reduction {s.est_params_reduction:.2f}x, "
          f"{estimate_text(s.est_recovery, s.recovery_kind, s.weight_energy_kept, targets)}")
    for note in (*profile.notes, *profile.plan().warnings):
        print(f"Note:         {note}")
    if profile.layers and top > 0:
        rows = profile.most_sensitive(top)
        planned = profile.plan().sparsity
        width = min(max(len(l.name) for l in rows), 48)
        print(f"\nMost sensitive layers:\n  {'#':>4}  {'layer':<{width}}  {'op':<12} {'params':>10}  "
              f"{'sensitivity':>11}  planned")
        for l in rows:
            flags = f"  [{', '.join(l.flags)}]" if l.flags else ""
            print(f"  {l.index:>4}  {l.name[:width]:<{width}}  {l.op_type:<12} {human(l.params):>10}  "
                  f"{l.sensitivity:>11.4g}  {planned[l.name]:>7.1%}{flags}")


def print_plan(plan) -> None:
    print(f"Plan:         profile {plan.profile!r} ({plan.method}), target {plan.target:.0%} -> "
          f"{plan.achieved:.2%} of prunable params, params reduction {plan.est_params_reduction:.2f}x")
    measured = plan.est_recovery is not None
    print(f"Expected:     {estimate_text(plan.est_recovery, plan.recovery_kind, plan.weight_energy_kept)}"
          + ("" if measured else ""))
    for note in (*plan.warnings, *plan.notes):
        print(f"Note:         {note}")
    width = min(max((len(l.name) for l in plan.layers), default=5), 48)
    print(f"\n  {'#':>4}  {'layer':<{width}}  {'params':>10}  sparsity")
    for l in plan.layers:
        mark = "  (excluded)" if l.excluded else ""
        print(f"  {l.index:>4}  {l.name[:width]:<{width}}  {human(l.params):>10}  {l.sparsity:>7.1%}{mark}")


def _demo(model: str, out: str) -> int:
    """Profile a bundled digits model three ways (offline) and write the profiles as JSON."""
    from pathlib import Path

    from .analysis import analyze
    from .demo import ACCURACY, DESCRIPTION, demo
    path, data = demo(model)
    print(f"Demo: {DESCRIPTION[model]} trained on scikit-learn's digits ({ACCURACY[model]:.1%} held-out "
          f"accuracy), {len(data['y'])} held-out digits with labels\n")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)              # the demo's own output folder, made on request
    for method, extra in (("approximated", {}), ("magnitude", {}),
                          ("one-shot", {"data": data, "labels": "y", "metric": "loss"})):
        profile = analyze(path, method, **extra)
        print_profile(profile, 5)
        profile.to_json(folder / f"{method}.json")
        print(f"\nWrote {folder / f'{method}.json'}\n")
    return 0


def _profile(args) -> int:
    from .analysis import all_settings, analyze, get_method
    from .errors import SettingsError

    method = get_method(args.method)
    given = {name: getattr(args, name) for name in all_settings() if getattr(args, name, None) is not None}
    stray = [all_settings()[n].cli_flag for n in given if method.setting(n) is None]
    if stray:
        own = ", ".join(s.cli_flag for s in method.settings)
        raise SettingsError(f"{', '.join(stray)} does not apply to method {method.name} (its options: {own}).")
    if (args.workers or args.scheduler) and not method.executor:
        raise SettingsError(f"--workers / --scheduler do not apply to method {method.name}: it runs in this process.")
    executor = _executor(args)
    bar = _Bar()
    try:
        profile = analyze(args.model, method.name, name=args.name, progress=bar, executor=executor, **given)
    finally:
        bar.close()
        if executor is not None and hasattr(executor, "shutdown"):
            executor.shutdown()
    print_profile(profile, args.top)
    if args.json:
        profile.to_json(args.json)
        print(f"\nWrote {args.json}")
    if args.csv:
        profile.to_csv(args.csv)
        print(f"Wrote {args.csv}")
    return 0


def _plan(args) -> int:
    from .profile import load_profile

    plan = load_profile(args.profile).plan(args.target, exclude=args.exclude, cap=args.cap)
    print_plan(plan)
    for flag, write in (("json", plan.to_json), ("csv", plan.to_csv), ("recipe", plan.to_recipe)):
        path = getattr(args, flag)
        if path:
            write(path)
            print(f"Wrote {path}")
    return 0


def _prune(args) -> int:
    from .plan import load_plan
    from .profile import load_profile
    from .prune import prune

    if args.plan and (args.target is not None or args.exclude):
        from .errors import SettingsError
        raise SettingsError("--target and --exclude go with --profile; a plan file already fixes them.")
    plan = load_plan(args.plan) if args.plan else load_profile(args.profile).plan(args.target, exclude=args.exclude)
    out = prune(args.model, plan, args.out)
    print(f"Pruned {plan.pruned_params:,} of {plan.prunable_params:,} prunable params ({plan.achieved:.2%}); "
          f"wrote {out}")
    return 0


def _report(args) -> int:
    """`losswidget report`: a profile file as it is, or a model profiled here first (data-free methods)."""
    from pathlib import Path

    from .errors import ProfileError, SettingsError
    from .profile import load_profiles

    source = Path(args.source)
    if not source.is_file():
        raise SettingsError(f"Not found: {source} (give a profile .json or an .onnx model).")
    with open(source, "rb") as f:
        is_json = f.read(1) == b"{" or source.suffix.lower() == ".json"
    if is_json:
        profiles = load_profiles(source)
        names = ", ".join(repr(p.name) for p in profiles)
        if args.name is not None:
            chosen = [p for p in profiles if p.name == args.name]
            if not chosen:
                raise ProfileError(f"{source} has no profile named {args.name!r}; it has {names}.")
            profile = chosen[0]
        elif len(profiles) > 1:
            raise ProfileError(f"{source} holds {len(profiles)} profiles ({names}); pick one with --name.")
        else:
            profile = profiles[0]
    else:
        from .analysis import analyze
        bar = _Bar()
        try:
            profile = analyze(source, args.method, progress=bar)
        finally:
            bar.close()
    profile.to_html(args.html, target=args.target)
    print(f"Wrote {args.html}: {profile.name!r}, {len(profile.layers)} layers")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser(settings="profile" in argv).parse_args(argv)
    from .errors import LossWidgetError

    try:
        if args.command == "methods":
            from .analysis import methods
            for m in methods():
                print(f"{m['name']:<14} {m['description']}")
                for key, spec in m["settings"].items():
                    default = spec["default"]
                    shown = f"{len(default)} levels" if isinstance(default, list) else default
                    limits = f", {spec['range']}" if "range" in spec else ""
                    limits += f", one of {' | '.join(spec['choices'])}" if "choices" in spec else ""
                    print(f"{'':<16}{key} ({spec['type']}, default {shown}{limits}): {spec['help']}")
            return 0
        if args.command == "demo":
            return _demo(args.model, args.out)
        if args.command == "app":
            from .serve import serve
            return serve(args.model, data=args.data, profiles_dir=args.profiles_dir, port=args.port,
                         open_browser=not args.no_browser, kernel_timeout=args.kernel_timeout)
        return {"profile": _profile, "plan": _plan, "prune": _prune, "report": _report}[args.command](args)
    except LossWidgetError as exc:
        print(f"losswidget: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"losswidget: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("losswidget: interrupted", file=sys.stderr)
        return 130
