"""The one source of truth for a widget: profiles, selection, comparison, target and running jobs.

Views observe these traits and redraw; nothing here draws. `add` runs `losswidget.analyze` on a worker
thread (one at a time, queued), reports progress into `jobs`, honours cancel, and on success adds the
profile (and saves it when the store has a folder). The kernel is never blocked.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path

from traitlets import Dict, Float, HasTraits, List, Unicode, observe

from ..analysis import analyze, get_method, model_hash
from ..analysis.base import TARGET
from ..errors import AnalysisCancelled, LossWidgetError, SettingsError
from ..profile import LossProfile, load_profile

log = logging.getLogger(__name__)


def on_kernel_thread(fn) -> None:
    """Run fn on the kernel's main thread when there is a kernel (widget state changes from one thread
    only), else now: worker threads finish jobs, views redraw from the kernel's loop."""
    try:
        from IPython import get_ipython
        kernel = getattr(get_ipython(), "kernel", None)
    except ImportError:
        kernel = None
    loop = getattr(kernel, "io_loop", None)
    if loop is None or threading.current_thread() is threading.main_thread():
        fn()
    else:
        loop.add_callback(fn)


class Job:
    """A queued or running analysis: a future-like handle (`result()`, `done()`, `cancel()`)."""

    def __init__(self, store: ProfileStore, name: str, method: str):
        self.store, self.name, self.method = store, name, method
        self.cancel_event = threading.Event()
        self.future: Future | None = None
        self.started = None

    @property
    def status(self) -> str:
        return self.store.jobs.get(self.name, {}).get("status", "unknown")

    def cancel(self) -> bool:
        self.cancel_event.set()
        if self.future is not None and self.future.cancel():
            self.store._update(self.name, status="cancelled", message="cancelled before it started")
        return True

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def result(self, timeout: float | None = None) -> LossProfile:
        """The profile; raises the analysis' error (AnalysisCancelled when cancelled)."""
        try:
            return self.future.result(timeout)
        except CancelledError:
            raise AnalysisCancelled(f"{self.name!r} was cancelled before it started.") from None

    def __repr__(self) -> str:
        return f"Job({self.name!r}, {self.method}, {self.status})"


class ProfileStore(HasTraits):
    profiles = Dict()             # name -> LossProfile
    selected = Unicode("")        # the profile the cards and single-profile charts show
    compare = List()              # names of profiles drawn side by side (the selected one included)
    jobs = Dict()                 # name -> {"status", "method", "done", "total", "message", "eta_s", "error"}
    target = Float(0.85)          # target sparsity the summary estimates are made at

    def __init__(self, model, *, data=None, profiles_dir=None, target_sparsity: float = 0.85):
        super().__init__()
        self.model = str(model) if not hasattr(model, "SerializeToString") else model
        self.data = data
        self.target = TARGET.check(target_sparsity, "the widget")
        self.model_hash = model_hash(model)
        self.folder = Path(profiles_dir) if profiles_dir is not None else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="losswidget-job")
        self._handles: dict[str, Job] = {}
        self._lock = threading.Lock()
        if self.folder is not None:
            self._load_saved()

    # -- profiles --------------------------------------------------------------------------------------
    def _load_saved(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        found = {}
        for f in sorted(self.folder.glob("*.json")):
            try:
                p = load_profile(f)
            except LossWidgetError as exc:
                log.warning("skipping %s: %s", f, exc)
                continue
            if p.model.hash == self.model_hash:
                found[p.name] = p
        if found:
            with self.hold_trait_notifications():
                self.profiles = {**self.profiles, **found}
                if not self.selected:
                    self.selected = "Approximated" if "Approximated" in found else next(iter(found))

    def _path_for(self, name: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "profile"
        return self.folder / f"{self.model_hash.split(':')[-1][:12]}-{slug}.json"

    def put(self, profile: LossProfile, save: bool = True) -> None:
        """Add (or replace) a finished profile; saved when the store has a folder."""
        if save and self.folder is not None:
            profile.to_json(self._path_for(profile.name))
        with self.hold_trait_notifications():
            self.profiles = {**self.profiles, profile.name: profile}
            if not self.selected:
                self.selected = profile.name

    def remove(self, name: str) -> None:
        if name not in self.profiles:
            raise SettingsError(f"No profile named {name!r}.")
        if self.folder is not None:
            self._path_for(name).unlink(missing_ok=True)
        rest = {k: v for k, v in self.profiles.items() if k != name}
        with self.hold_trait_notifications():
            self.compare = [c for c in self.compare if c != name]
            if self.selected == name:
                self.selected = next(iter(rest), "")
            self.profiles = rest

    @observe("selected")
    def _selected_in_compare(self, change) -> None:
        if change["new"] and change["new"] not in self.compare:
            self.compare = [change["new"]] + [c for c in self.compare if c != change["old"]]

    # -- jobs ------------------------------------------------------------------------------------------
    def check_name(self, name: str) -> str | None:
        """Why `name` cannot be used for a new profile, or None."""
        name = name.strip()
        if not name:
            return "Give the profile a name."
        if name in self.profiles:
            return f"A profile named {name!r} exists; pick another name or remove it first."
        if self.jobs.get(name, {}).get("status") in ("queued", "running"):
            return f"A profile named {name!r} is being computed."
        return None

    def add(self, name: str, method: str = "magnitude", **settings) -> Job:
        """Queue an analysis; returns its Job. Settings are analyze()'s keyword arguments."""
        name = name.strip()
        problem = self.check_name(name)
        if problem:
            raise SettingsError(problem)
        spec = get_method(method)
        if spec.setting("target_sparsity") is not None:
            settings.setdefault("target_sparsity", self.target)
        if spec.needs_data and settings.get("data") is None:
            if self.data is None:
                raise SettingsError(f"{spec.label} profiles need data: pass data= to the widget or give an .npz path.")
            settings["data"] = self.data
        spec.check(settings)                  # bad settings are refused here, not after queueing
        job = Job(self, name, method)
        self._handles[name] = job
        self._update(name, status="queued", method=method, done=0, total=0, message="waiting", eta_s=None,
                     error=None)
        job.future = self._pool.submit(self._run, job, settings)
        return job

    def _update(self, name: str, **fields) -> None:
        def apply():
            with self._lock:
                self.jobs = {**self.jobs, name: {**self.jobs.get(name, {}), **fields}}
        on_kernel_thread(apply)

    def _run(self, job: Job, settings: dict) -> LossProfile:
        if job.cancel_event.is_set():
            self._update(job.name, status="cancelled", message="cancelled")
            raise AnalysisCancelled("cancelled before it started")
        job.started = time.monotonic()
        self._update(job.name, status="running", message="reading the model")
        last = [0.0]

        def progress(done: int, total: int, message: str) -> None:
            now = time.monotonic()
            if now - last[0] < 0.1 and done < total:      # at most ~10 updates a second reach the browser
                return
            last[0] = now
            elapsed = now - job.started
            eta = elapsed / done * (total - done) if done else None
            self._update(job.name, done=done, total=total, message=message, eta_s=eta)
        try:
            profile = analyze(self.model, job.method, name=job.name, progress=progress, cancel=job.cancel_event,
                              **settings)
        except AnalysisCancelled:
            self._update(job.name, status="cancelled", message="cancelled")
            raise
        except LossWidgetError as exc:
            self._update(job.name, status="failed", message="failed", error=str(exc))
            raise
        except Exception as exc:  # an unexpected failure still ends as a message, not a dead widget
            log.exception("analysis %s failed", job.name)
            self._update(job.name, status="failed", message="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        if self.folder is not None:
            profile.to_json(self._path_for(profile.name))    # saved before anyone is told it exists
        on_kernel_thread(lambda: self.put(profile, save=False))
        self._update(job.name, status="done", message="done", done=1, total=1, eta_s=0)
        return profile

    def cancel(self, name: str) -> None:
        job = self._handles.get(name)
        if job is not None:
            job.cancel()

    def close(self) -> None:
        for job in self._handles.values():
            job.cancel_event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
