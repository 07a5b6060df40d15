"""What an analysis method is: a declaration of its settings, whether it needs data, and a `run`.

Every method is one module exposing `METHOD = Method(...)`. The declaration is the single source for:
validation of `analyze(...)` keyword arguments (unknown, irrelevant or out-of-range settings are a
SettingsError), the CLI's flags, the widget's add-profile form and `losswidget.methods()`. Nothing outside
a method's module names it: `analyze`, the CLI, the store and the panel read these declarations.

`run(ctx) -> Result` gets the opened model, its layers, the checked settings and (for data methods) the
checked data; it reports progress and finished layers through `ctx`, checks `ctx.cancel` between steps and,
when cancelled, raises AnalysisCancelled carrying the partial Result as `.result`.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import AnalysisCancelled, SettingsError

Progress = Callable[[int, int, str], None]


# -- settings ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One setting of a method. `kind` decides parsing, checking and the form widget:
    levels | float | int | choice | text | axis | dims | data | labels."""
    name: str
    kind: str
    default: Any = None
    help: str = ""
    min: float | None = None          # float / int: inclusive bounds, unless exclusive_min
    max: float | None = None
    exclusive_min: bool = False
    choices: tuple[str, ...] = ()
    flag: str | None = None           # CLI flag; default: --name-with-dashes
    form: bool = True                 # shown in the widget's add-profile form

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value, method: str) -> Any:
        """The value normalised (levels sorted, numbers typed); SettingsError when it does not fit."""
        where = f"{self.name} of method '{method}'"
        if value is None:
            return None
        if self.kind == "levels":
            return normalize_levels(value).tolist()
        if self.kind in ("float", "int", "axis"):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating, str)):
                raise SettingsError(f"{where} must be a number, got {value!r}.")
            try:
                number = float(value) if self.kind == "float" else _integer(value)
            except (TypeError, ValueError):
                raise SettingsError(f"{where} must be {'a number' if self.kind == 'float' else 'an integer'}, "
                                    f"got {value!r}.") from None
            if self.kind == "float" and not math.isfinite(number):
                raise SettingsError(f"{where} must be a finite number, got {value!r}.")
            low_ok = self.min is None or (number > self.min if self.exclusive_min else number >= self.min)
            if not low_ok or (self.max is not None and number > self.max):
                raise SettingsError(f"{where} must lie in {self.range_text()}, got {value!r}.")
            return number
        if self.kind == "choice":
            if value not in self.choices:
                raise SettingsError(f"{where} must be one of {', '.join(self.choices)}; got {value!r}.")
            return value
        if self.kind == "text":
            if not isinstance(value, str):
                raise SettingsError(f"{where} must be a string, got {type(value).__name__}.")
            return value
        if self.kind == "dims":
            dims = parse_dims(value) if isinstance(value, str) else value
            if not isinstance(dims, dict) or not all(isinstance(k, str) and isinstance(v, (int, np.integer))
                                                     and not isinstance(v, bool) and v > 0 for k, v in dims.items()):
                raise SettingsError(f"{where} must map symbolic dim names to positive sizes, e.g. "
                                    f"{{'batch': 4}}; got {value!r}.")
            return {k: int(v) for k, v in dims.items()}
        return value                      # data / labels: checked against the model by data.load_data

    def parse(self, text: str) -> Any:
        """A value from command-line text (then checked by `check`)."""
        if self.kind == "levels":
            try:
                return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
            except ValueError:
                raise SettingsError(f"levels must be comma-separated numbers, e.g. 0,0.5,0.9 (got {text!r})") from None
        if self.kind == "float":
            try:
                return float(text)
            except ValueError:
                raise SettingsError(f"{self.cli_flag} must be a number (got {text!r})") from None
        if self.kind in ("int", "axis"):
            try:
                return int(text)
            except ValueError:
                raise SettingsError(f"{self.cli_flag} must be an integer (got {text!r})") from None
        if self.kind == "dims":
            return parse_dims(text)
        return text

    def range_text(self) -> str:
        lo = "(" if self.exclusive_min else "["
        return f"{lo}{_g(self.min) if self.min is not None else '-inf'}, {_g(self.max) if self.max is not None else 'inf'}]"

    def describe(self) -> dict:
        """Plain description (methods(), the CLI help, the form)."""
        out = {"name": self.name, "type": self.kind, "default": self.default, "help": self.help}
        if self.min is not None or self.max is not None:
            out["range"] = self.range_text()
        if self.choices:
            out["choices"] = list(self.choices)
        return out


def _integer(value) -> int:
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, float):
        if not number.is_integer():
            raise ValueError(value)
        number = int(number)
    return int(number)


def _g(x: float) -> str:
    return f"{x:g}"


def parse_dims(text: str) -> dict[str, int]:
    try:
        return {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}
    except ValueError:
        raise SettingsError(f"dims must look like batch=4,seq=64 (got {text!r})") from None


def normalize_levels(levels) -> np.ndarray:
    """Sorted unique levels in [0, 1), always including 0.0 (the dense reference)."""
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise SettingsError(f"Sparsity levels must be a list of numbers in [0, 1), got {levels!r}.")
    try:
        arr = np.asarray([float(x) for x in levels], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise SettingsError(f"Sparsity levels must be numbers in [0, 1), got {levels!r}.") from None
    bad = arr[~np.isfinite(arr) | (arr < 0) | (arr >= 1)]
    if bad.size:
        raise SettingsError(
            f"Sparsity levels must lie in [0, 1) (0.9 means 90% of a layer's weights pruned); got {bad.tolist()}.")
    arr = np.array(sorted({0.0, *arr.tolist()}))   # (np.unique would import numpy.ma: 20-50 ms)
    if arr.size < 2:
        raise SettingsError("Give at least one sparsity level above 0, e.g. 0.5,0.9.")
    return arr


def levels_setting(default) -> Setting:
    return Setting("sparsity_levels", "levels", list(default), "sparsity levels to measure, in [0, 1); 0 is "
                   "always added", flag="--levels")


TARGET = Setting("target_sparsity", "float", 0.85, "target sparsity (fraction of prunable params) the summary "
                 "estimates and plan are made at", min=0.0, max=0.95, exclusive_min=True, flag="--target",
                 form=False)

# the settings every data method takes (data.load_data reads them)
DATA_SETTINGS = (
    Setting("data", "data", None, "a dict of arrays, batches, an .npz path whose arrays are named like the "
            "model's inputs, or 'random'"),
    Setting("labels", "labels", None, "the labels: an array, or the key of the array in the data"),
    Setting("samples", "int", None, "use at most this many samples", min=1),
    Setting("batch_size", "int", None, "samples per onnxruntime run (default: up to 32, or the model's fixed "
            "batch)", min=1),
    Setting("random_dims", "dims", None, "sizes of symbolic dims for data='random', e.g. batch=4,seq=64"),
)


# -- what a method declares and returns ----------------------------------------------------------------------
@dataclass(frozen=True)
class Measured:
    """One layer's result: a value per level, the fraction of weight energy kept per level, and flags;
    `input_norms` (plan.InputNorms) for criteria that rank weights by their inputs."""
    values: np.ndarray
    energy_kept: np.ndarray
    energy: float
    flags: tuple[str, ...] = ()
    input_norms: Any = None


@dataclass(frozen=True)
class Result:
    """What a method's run returns (and a cancelled run carries as `exc.result`).

    measured: per layer (None: failed or not reached); errors: per layer (None: fine);
    recovery: measured recovery as (kind, {target: value}) or None; record: what to add to the profile's
    recorded settings (e.g. the metric each output was scored with); notes: for the user.
    """
    measured: list
    errors: list = field(default_factory=list)
    recovery: tuple[str, dict[float, float]] | None = None
    record: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    description: str
    run: Callable[["Context"], Result]
    settings: tuple[Setting, ...]
    needs_data: bool = False
    executor: bool = False                # layers can be shared out to a concurrent.futures executor
    rank: int = 0                         # how informative its profiles are (the widget shows the highest first)
    plan_cost: str = "measured"           # what plans weigh layers by: measured | energy | modelled (plan.py)
    criterion: str = "magnitude"          # the order `prune` removes weights in
    recovery: str = ""                    # what its est_recovery is, in a sentence (methods(), tooltips)

    def setting(self, name: str) -> Setting | None:
        return next((s for s in self.settings if s.name == name), None)

    def check(self, given: dict) -> dict:
        """Every declared setting's value: given ones checked, the rest at their defaults."""
        names = [s.name for s in self.settings]
        unknown = [k for k in given if k not in names]
        if unknown:
            raise SettingsError(f"{', '.join(map(repr, unknown))} {'is not a setting' if len(unknown) == 1 else 'are not settings'} "
                                f"of method '{self.name}'; its settings are {', '.join(names)}.")
        out = {}
        for s in self.settings:
            value = given.get(s.name)
            out[s.name] = s.check(s.default if value is None else value, self.name)
        return out

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "description": self.description,
                "needs_data": self.needs_data, "rank": self.rank, "recovery": self.recovery,
                "settings": {s.name: s.describe() for s in self.settings}}


@dataclass
class Context:
    """Everything a run needs: the opened model and its layers, checked settings, data, and the caller's hooks."""
    mf: Any                               # onnxfile.ModelFile
    layers: list
    levels: np.ndarray
    target: float
    settings: dict
    dataset: Any = None                   # data.Dataset for data methods
    progress: Progress | None = None
    cancel: threading.Event | None = None
    executor: Any = None
    on_layer: Callable[[int, Measured], None] | None = None

    def check_cancel(self) -> None:
        check_cancel(self.cancel)

    def layer_done(self, index: int, measured: Measured) -> None:
        if self.on_layer is not None:
            self.on_layer(index, measured)


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise AnalysisCancelled("The analysis was cancelled.")


def run_layers(ctx: Context, fn: Callable, workers: int | None = None) -> list:
    """fn(layer) for every layer on a thread pool, largest first; progress per finished layer, in this thread.

    Cancel is checked before each layer starts; a cancelled run raises AnalysisCancelled carrying the
    finished layers as a partial Result; a failed layer stops the run.
    """
    layers = ctx.layers
    results: list = [None] * len(layers)
    try:
        check_cancel(ctx.cancel)
    except AnalysisCancelled as exc:
        exc.result = Result(results)
        raise
    if not layers:
        return results
    workers = workers or min(len(layers), os.cpu_count() or 1, 8)
    stop = threading.Event()

    def task(i: int):
        if stop.is_set() or (ctx.cancel is not None and ctx.cancel.is_set()):
            return i, None
        return i, fn(layers[i])

    order = sorted(range(len(layers)), key=lambda i: -layers[i].params)
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="losswidget") as pool:
        pending = {pool.submit(task, i) for i in order}
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i, result = fut.result()
                    if result is None:
                        continue
                    results[i] = result
                    done += 1
                    ctx.layer_done(i, result)
                    if ctx.progress is not None:
                        ctx.progress(done, len(layers), layers[i].name)
                    check_cancel(ctx.cancel)        # layers finishing together: none reported past a cancel
                check_cancel(ctx.cancel)
        except AnalysisCancelled as exc:
            exc.result = Result(results)
            raise
        finally:
            stop.set()
            for fut in pending:
                fut.cancel()
    return results
