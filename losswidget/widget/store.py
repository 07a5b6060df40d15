"""The one source of truth for a widget: profiles, selection, comparison, target, jobs and notices.

Views observe these traits and redraw; nothing here draws or names a method: what a method is (its
settings, whether it needs data, how informative its profiles are: `rank`) comes from the registry.

Threads. The kernel must never wait. The constructor only reads the model's header (so a bad model fails
at once, with its ModelError); the content hash (seconds on multi-GB models), reading saved profiles and the
analyses run on one worker thread, in that order, so saved profiles are matched to the model before
anything is recomputed. Workers never set traits: they record job states and profile changes under a lock
and `_flush` applies them on the kernel's thread (at once when there is no kernel). `wait()` flushes by
itself, since a kernel blocked in `wait` runs no callbacks.

Selection. Until the user picks a profile, the most informative one is shown: complete before partial, then
its method's declared `rank` (methods not in the registry lowest), then the newest. A profile the user
asked for (`add`, the form, `rerun`) is shown as soon as it has bars, unless the user picked another one
after asking.

Exclusions. `excluded` holds, per profile, the names of the layers the user keeps out of that profile's plan
(dense); `plan()` is the selected profile's plan at `target` with them, made once per (profile, target,
exclusions) and shared by every view, so the bars' planned marks, the table, the cards and the plan curve
show one plan. Names, not indices, so they survive a rerun of the profile; names a profile lacks (a partial
profile) are ignored for it.

Nothing is lost: a profile that cannot be saved stays in memory with a notice; a cancelled analysis keeps
the partial profile the API hands back (AnalysisCancelled.partial); files in the folder that cannot be used
are skipped with one notice naming them; a model file changed on disk is reported, never silently mixed.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path

from traitlets import Bool, Dict, Float, HasTraits, List, Unicode, observe

from ..analysis import analyze, get_method, model_hash, registry
from ..analysis.base import TARGET
from ..data import label_candidates, model_inputs
from ..errors import AnalysisCancelled, LossWidgetError, SettingsError, first_line
from ..graph import read_graph
from ..onnxfile import open_model
from ..plan import Plan
from ..profile import LossProfile, ModelInfo
from .folder import ProfileFolder
from .progress import Eta, LayerId, LiveProfile

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")


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


def method_rank(method: str) -> int:
    """How informative a method's profiles are (its declared rank); below every known method otherwise."""
    spec = registry().get(method)
    return spec.rank if spec is not None else -1


def preferred(profiles: dict[str, LossProfile]) -> str:
    """The name of the profile to show first: complete before partial, then by rank, then the newest."""
    if not profiles:
        return ""
    return max(profiles, key=lambda n: (not profiles[n].partial, method_rank(profiles[n].method), profiles[n].created))


class Job:
    """A queued or running analysis: a future-like handle (`result()`, `done()`, `cancel()`)."""

    def __init__(self, store: ProfileStore, name: str, method: str, settings: dict, *, asked: bool,
                 replaces: LossProfile | None = None):
        self.store, self.name, self.method, self.settings = store, name, method, settings
        self.asked = asked                    # the user asked for it (shown when it has bars)
        self.replaces = replaces              # rerun: the profile it replaces (kept if the run fails)
        self.queued_at = time.monotonic()
        self.cancel_event = threading.Event()
        self.future: Future | None = None
        self.started = None
        self.removed = False                  # removed while queued or running: its results are dropped
        self.levels: tuple[float, ...] = ()   # the checked levels and plain settings (for live profiles)
        self.record: dict = {}

    @property
    def status(self) -> str:
        return self.store.job_state(self.name).get("status", "unknown")

    def cancel(self) -> bool:
        self.cancel_event.set()
        if self.future is not None and self.future.cancel():
            self.store._update(self, status="cancelled", message="cancelled before it started")
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
    profiles = Dict()             # name -> LossProfile (a running analysis shows as a partial one)
    selected = Unicode("")        # the profile the cards and single-profile charts show
    compare = List()              # names of profiles drawn side by side (the selected one included)
    jobs = Dict()                 # name -> {"status", "method", "done", "total", "message", "eta_s", "error", ...}
    target = Float(0.85)          # target sparsity the summary estimates are made at
    model_hash = Unicode("")      # "blake3:<hex>" once known ("" while it is computed)
    ready = Bool(False)           # the hash is known and saved profiles are loaded
    notices = List(Unicode())     # things the user must know: unsaved profiles, skipped files, a changed model
    excluded = Dict(key_trait=Unicode(), value_trait=List(Unicode()))   # profile name -> layer names kept dense

    def __init__(self, model, *, data=None, labels=None, profiles_dir=None, target_sparsity: float = 0.85):
        super().__init__()
        self.model = str(model) if not hasattr(model, "SerializeToString") else model
        self.data = data
        self.labels = labels                  # what data methods on the widget's data take as labels
        self.target = TARGET.check(target_sparsity, "the widget")
        try:
            folder = Path(profiles_dir).expanduser() if profiles_dir is not None else None
        except TypeError:
            raise SettingsError(f"profiles_dir must be a folder path, got {type(profiles_dir).__name__}.") from None
        self.folder = ProfileFolder(folder, self._notice) if folder is not None else None
        with open_model(model) as mf:         # the header only: a bad model fails here, hashing waits
            graph = read_graph(mf)
            specs = model_inputs(mf.model)
            self.inputs = [s.name for s in specs]
            if labels is None and isinstance(data, dict) and all(n in data for n in self.inputs):
                # the one array beside the inputs that could be labels (as the panel suggests): data methods
                # set it aside; only metric="loss" uses labels, and the panel asks for that explicitly
                found = label_candidates(data, specs)
                self.labels = found[0] if len(found) == 1 and len(data) == len(specs) + 1 else None
            self.model_path = str(mf.path) if mf.path else None
        self.layers = [LayerId(l.index, l.id, l.name, l.op_type, l.weight, tuple(l.shape), l.params)
                       for l in graph.layers]
        self.total_params, self.prunable_params = graph.total_params, graph.prunable_params
        self._digest = ""
        self._lock = threading.Lock()          # guards the state below (workers and the kernel)
        self._flush_lock = threading.RLock()
        self._job_state: dict[str, dict] = {}
        self._incoming: list[tuple] = []       # (kind, name, profile, job) changes for _flush, in order
        self._notices: list[str] = []
        self._handles: dict[str, Job] = {}
        self._auto: list[tuple[str, str]] = []     # profiles to compute unless saved ones are found
        self._loaded: set[str] | None = None        # names found in the folder, once it was read
        self._store_selects = False
        self._user_chose_at: float | None = None
        self._pinned = False                   # a profile the user asked for is shown: ranks no longer decide
        self._redraw = 0.0                     # seconds the views took to draw the last live profile
        self._plans: dict[tuple, tuple] = {}   # (profile id, target, exclusions) -> (profile, plan); the last few
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="losswidget-job")
        self._identified = self._pool.submit(self._identify)

    # -- identity and saved profiles (worker thread) ---------------------------------------------------
    def _hash(self) -> str:
        """The model's content hash; the one place the store asks for it."""
        return model_hash(self.model)

    def _identify(self) -> None:
        try:
            digest = self._hash()
        except Exception as exc:  # the analyses will report it too; the widget keeps working
            self._notice(f"Could not hash the model ({first_line(exc)}); saved profiles are not loaded.")
            digest = ""
        self._digest = digest
        loaded = self.folder.read(digest, self.model_path) if digest and self.folder is not None else {}
        with self._lock:
            self._incoming.append(("loaded", "", loaded, None))
            self._loaded = set(loaded)
            auto = list(self._auto)
        for name, method in auto:
            self._queue_auto(name, method, self._loaded)
        on_kernel_thread(self._flush)

    def _notice(self, text: str) -> None:
        log.warning("%s", text)
        with self._lock:
            if text not in self._notices:
                self._notices.append(text)
        on_kernel_thread(self._flush)

    def dismiss_notices(self) -> None:
        with self._lock:
            self._notices.clear()
        self._flush()

    # -- applying changes (kernel thread) --------------------------------------------------------------
    def _flush(self) -> None:
        """Apply what workers recorded: job states, new, live, finished and dropped profiles, notices."""
        with self._flush_lock:
            with self._lock:
                jobs = {k: dict(v) for k, v in self._job_state.items()}
                changes, self._incoming = self._incoming, []
                notices = list(self._notices)
            profiles = dict(self.profiles)
            show = None
            for kind, name, profile, job in changes:
                if kind == "loaded":
                    profiles = {**profile, **profiles}
                    continue
                if job is not None and job.removed:
                    continue
                if kind == "put":
                    profiles[name] = profile
                    if job is not None and job.asked and (self._user_chose_at is None
                                                          or self._user_chose_at < job.queued_at):
                        show = name
                elif kind == "drop":
                    if job is not None and job.replaces is not None:
                        profiles[name] = job.replaces
                    else:
                        profiles.pop(name, None)
            selected = self.selected if self.selected in profiles else ""
            if show is not None:
                selected = show
            elif not self._pinned and self._user_chose_at is None:
                selected = preferred(profiles)
            elif not selected:
                selected = preferred(profiles)
            start = time.perf_counter()
            self._store_selects = True
            try:
                with self.hold_trait_notifications():
                    if any(kind == "loaded" for kind, *_ in changes):
                        self.model_hash = self._digest
                        self.ready = True
                    if not _same(profiles, self.profiles):
                        self.compare = [c for c in self.compare if c in profiles]
                        self.profiles = profiles
                    if selected != self.selected:
                        self.selected = selected
                    if jobs != self.jobs:
                        self.jobs = jobs
                    if notices != self.notices:
                        self.notices = notices
            finally:
                self._store_selects = False
            if any(kind == "put" and p.partial for kind, _, p, _ in changes):
                self._redraw = time.perf_counter() - start       # views redraw in the observers above
            if show is not None:
                self._pinned = True

    @observe("selected")
    def _selected_changed(self, change) -> None:
        if not self._store_selects and change["new"]:
            self._user_chose_at = time.monotonic()
        if change["new"] and change["new"] not in self.compare:
            self.compare = [change["new"]] + [c for c in self.compare if c != change["old"]]

    # -- profiles --------------------------------------------------------------------------------------
    def _save(self, profile: LossProfile) -> str | None:
        """Save to the folder (if any); why it could not be, or None. The profile is kept either way."""
        return self.folder.save(profile) if self.folder is not None else None

    def put(self, profile: LossProfile, save: bool = True) -> None:
        """Add (or replace) a finished profile; saved when the store has a folder (a profile that cannot be
        saved is kept in memory with a notice)."""
        if save:
            self._save(profile)
        with self._lock:
            self._incoming.append(("put", profile.name, profile, None))
        self._flush()

    def remove(self, name: str) -> None:
        """Remove a profile (and its file); a queued or running analysis of that name is cancelled first and
        its results dropped."""
        job = self._handles.get(name)
        active = job is not None and self.job_state(name).get("status") in ACTIVE
        if name not in self.profiles and not active:
            raise SettingsError(f"No profile named {name!r}.")
        if active:
            with self._lock:
                job.removed = True
                self._job_state.pop(name, None)
            job.cancel()
        self._flush()
        if self.folder is not None:
            self.folder.delete(name, self._digest)
        rest = {k: v for k, v in self.profiles.items() if k != name}
        self._store_selects = True
        try:
            with self.hold_trait_notifications():
                self.compare = [c for c in self.compare if c != name]
                if self.selected == name:
                    self.selected = preferred(rest)
                self.profiles = rest
                if name in self.excluded:
                    self.excluded = {k: v for k, v in self.excluded.items() if k != name}
                self.jobs = {k: v for k, v in self.jobs.items() if k != name or not active}
        finally:
            self._store_selects = False

    def rename(self, old: str, new: str) -> None:
        """Give a profile another name (its file follows)."""
        new = new.strip() if isinstance(new, str) else new
        if old not in self.profiles:
            raise SettingsError(f"No profile named {old!r}.")
        if self.job_state(old).get("status") in ACTIVE:
            raise SettingsError(f"{old!r} is being computed; rename it when it has finished (or cancel it).")
        if new == old:
            return
        problem = self.check_name(new)
        if problem:
            raise SettingsError(problem)
        profile = self.profiles[old].with_name(new)
        self._flush()
        if self.folder is not None and self._save(profile) is None:
            self.folder.delete(old, self._digest)           # only once the new file is written
        profiles = {(new if k == old else k): (profile if k == old else v) for k, v in self.profiles.items()}
        self._store_selects = True
        try:
            with self.hold_trait_notifications():
                self.profiles = profiles
                self.compare = [new if c == old else c for c in self.compare]
                if self.selected == old:
                    self.selected = new
                if old in self.excluded:
                    self.excluded = {(new if k == old else k): v for k, v in self.excluded.items()}
        finally:
            self._store_selects = False

    # -- plans -----------------------------------------------------------------------------------------
    def exclusions(self, name: str | None = None) -> tuple[str, ...]:
        """The excluded layer names of a profile (default: the selected one) that it has, in layer order."""
        name = self.selected if name is None else name
        profile = self.profiles.get(name)
        chosen = set(self.excluded.get(name, ()))
        return tuple(dict.fromkeys(l.name for l in profile.layers if l.name in chosen)) if profile else ()

    def set_excluded(self, layers, excluded: bool = True, profile: str | None = None) -> None:
        """Keep these layers (names) out of a profile's plan (default: the selected one's), or put them back."""
        name = self.selected if profile is None else profile
        if name not in self.profiles:
            raise SettingsError(f"No profile named {name!r}.")
        layers = [layers] if isinstance(layers, str) else list(layers)
        known = {l.name for l in self.profiles[name].layers}
        unknown = [l for l in layers if l not in known]
        if unknown:
            raise SettingsError(f"Profile {name!r} has no layer named {unknown[0]!r}.")
        now = list(self.excluded.get(name, ()))
        new = now + [l for l in layers if l not in now] if excluded else [l for l in now if l not in layers]
        if new != now:
            rest = {k: v for k, v in self.excluded.items() if k != name}
            self.excluded = {**rest, name: new} if new else rest

    def clear_excluded(self, profile: str | None = None) -> None:
        """Put every layer of a profile (default: the selected one) back into its plan."""
        name = self.selected if profile is None else profile
        if name in self.excluded:
            self.excluded = {k: v for k, v in self.excluded.items() if k != name}

    def plan(self, name: str | None = None) -> Plan | None:
        """The plan of a profile (default: the selected one) at the target, its excluded layers kept dense;
        None when there is no such profile. Excluded layers go by index: names may repeat in a graph."""
        name = self.selected if name is None else name
        profile = self.profiles.get(name)
        if profile is None or not profile.layers:
            return None
        chosen = set(self.exclusions(name))
        keep = tuple(l.index for l in profile.layers if l.name in chosen)
        key = (id(profile), float(self.target), keep)
        made, plan = self._plans.get(key, (None, None))
        if made is not profile:                          # the profile is held with its plan: its id stays its own
            plan = profile.plan(min(float(self.target), 0.95), exclude=keep)
            if len(self._plans) >= 16:                   # a slider drag makes a plan per step: keep the last few
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = (profile, plan)
        return plan

    # -- jobs ------------------------------------------------------------------------------------------
    def job(self, name: str) -> Job | None:
        """The latest job of that name (queued, running or ended), or None."""
        return self._handles.get(name)

    def job_state(self, name: str) -> dict:
        with self._lock:
            return dict(self._job_state.get(name, {}))

    def check_name(self, name: str) -> str | None:
        """Why `name` cannot be used for a new profile, or None."""
        if not isinstance(name, str) or not name.strip():
            return "Give the profile a name."
        name = name.strip()
        if self.job_state(name).get("status") in ACTIVE:
            return f"A profile named {name!r} is being computed."
        if name in self.profiles:
            return f"A profile named {name!r} exists; pick another name or remove it first."
        return None

    def add(self, name: str, method: str = "magnitude", **settings) -> Job:
        """Queue an analysis; returns its Job. Settings are analyze()'s keyword arguments. The profile is
        shown when it has bars (unless another one is picked meanwhile)."""
        name = name.strip() if isinstance(name, str) else name
        problem = self.check_name(name)
        if problem:
            raise SettingsError(problem)
        return self._queue(name, method, settings, asked=True)

    def rerun(self, name: str) -> Job:
        """Compute a profile again with the settings it was made with (its data: what it was given in this
        session, else its recorded .npz path, else the widget's data); it replaces the old one when done."""
        if name not in self.profiles:
            raise SettingsError(f"No profile named {name!r}.")
        if self.job_state(name).get("status") in ACTIVE:
            raise SettingsError(f"{name!r} is being computed already.")
        profile = self.profiles[name]
        job = self._handles.get(name)
        settings = dict(job.settings) if job is not None else self.recorded_settings(profile)
        return self._queue(name, profile.method, settings, asked=True, replaces=profile)

    def recorded_settings(self, profile: LossProfile) -> dict:
        """The declared settings a saved profile was made with, as analyze() takes them."""
        spec = get_method(profile.method)     # SettingsError for a method this version does not have
        out = {}
        for s in spec.settings:
            value = profile.settings.get(s.name)
            if s.kind == "data":
                value = value if value == "random" or (isinstance(value, str) and Path(value).is_file()) else None
            elif s.kind == "labels" and value == "array":
                value = None
            if value is not None:
                out[s.name] = value
        return out

    def autostart(self, pairs) -> None:
        """Compute these (name, method) profiles unless saved ones of those names are found (once the
        model's hash is known)."""
        pairs = list(pairs)
        with self._lock:
            self._auto.extend(pairs)
            have = None if self._loaded is None else self._loaded | set(self.profiles)
        for name, method in pairs if have is not None else ():
            self._queue_auto(name, method, have)

    def _queue_auto(self, name: str, method: str, have) -> None:
        if name not in have and self.job_state(name).get("status") not in ACTIVE:
            try:
                self._queue(name, method, {}, asked=False)
            except LossWidgetError as exc:
                self._notice(f"Could not start {name!r}: {first_line(exc)}")

    def _queue(self, name: str, method: str, settings: dict, *, asked: bool, replaces=None) -> Job:
        spec = get_method(method)
        settings = dict(settings)
        if spec.setting("target_sparsity") is not None:
            settings.setdefault("target_sparsity", self.target)
        if spec.needs_data and settings.get("data") is None:
            if self.data is None:
                raise SettingsError(f"{spec.label} profiles need data: pass data= to the widget or give an .npz path.")
            settings["data"] = self.data
            if spec.setting("labels") is not None and self.labels is not None:
                settings.setdefault("labels", self.labels)
        checked = spec.check(settings)        # bad settings are refused here, not after queueing
        job = Job(self, name, spec.name, settings, asked=asked, replaces=replaces)
        job.levels = tuple(float(x) for x in checked["sparsity_levels"])
        job.record = {s.name: v for s, v in zip(spec.settings, checked.values())
                      if s.kind not in ("data", "labels") and (v is None or isinstance(v, (str, int, float, list)))}
        self._handles[name] = job
        self._update(job, status="queued", method=spec.name, done=0, total=0, message="waiting", eta_s=None,
                     error=None, warning=None, partial=False)
        job.future = self._pool.submit(self._run, job, settings)
        return job

    def _update(self, job: Job, **fields) -> None:
        with self._lock:
            if job.removed or self._handles.get(job.name) is not job:
                return
            self._job_state[job.name] = {**self._job_state.get(job.name, {}), **fields}
        on_kernel_thread(self._flush)

    def _change(self, kind: str, job: Job, profile: LossProfile | None) -> None:
        with self._lock:
            if job.removed:
                return
            self._incoming.append((kind, job.name, profile, job))
        on_kernel_thread(self._flush)

    def _run(self, job: Job, settings: dict) -> LossProfile:
        if job.cancel_event.is_set():
            self._update(job, status="cancelled", message="cancelled before it started")
            raise AnalysisCancelled(f"{job.name!r} was cancelled before it started.")
        job.started = time.monotonic()
        self._update(job, status="running", message="reading the model")
        spec = get_method(job.method)
        eta = Eta()
        last = [0.0]
        live = LiveProfile(job.name, spec, job.levels, job.record, self.layers,
                           ModelInfo(self.model_path, self._digest, self.total_params, self.prunable_params))

        def layer_done(index: int, measured) -> None:
            if live.add(index, measured, time.monotonic(), self._redraw):
                self._change("put", job, live.profile())
                self._update(job, partial=True)

        def progress(done: int, total: int, message: str) -> None:
            now = time.monotonic()
            left = eta.update(done, total, now)
            if now - last[0] < 0.1 and done < total:      # at most ~10 updates a second reach the browser
                return
            last[0] = now
            self._update(job, done=done, total=total, message=message, eta_s=left)

        try:
            profile = analyze(self.model, job.method, name=job.name, progress=progress, cancel=job.cancel_event,
                              on_layer=layer_done, **settings)
        except AnalysisCancelled as exc:
            partial = getattr(exc, "partial", None)
            if partial is not None and job.replaces is None:
                why = self._save(partial) if not job.removed else None
                self._change("put", job, partial)
                self._update(job, status="cancelled", partial=True, warning=why,
                             message=f"cancelled; the {len(partial.layers)} layer(s) measured are kept as a partial "
                                     "profile")
            else:
                self._change("drop", job, None)
                self._update(job, status="cancelled", partial=False,
                             message="cancelled" + ("; the previous profile is kept" if job.replaces else ""))
            raise
        except Exception as exc:  # an expected failure (LossWidgetError) or not: a message, never a dead widget
            if not isinstance(exc, LossWidgetError):
                log.exception("analysis %s failed", job.name)
            self._change("drop", job, None)
            text = str(exc) if isinstance(exc, LossWidgetError) else f"{type(exc).__name__}: {exc}"
            self._update(job, status="failed", message="failed", error=text, partial=False)
            raise
        if self._digest and profile.model.hash != self._digest:
            self._notice(f"The model file changed on disk since the widget opened: {job.name!r} was computed on the "
                         "new content, the other profiles on the old. Open a new widget to profile the new model "
                         "alone.")
        why = self._save(profile) if not job.removed else None        # saved before anyone is told it exists
        self._change("put", job, profile)
        self._update(job, status="done", message="done", done=1, total=1, eta_s=0, partial=False, warning=why)
        return profile

    def cancel(self, name: str) -> None:
        job = self._handles.get(name)
        if job is not None:
            job.cancel()

    def wait(self, timeout: float | None = None) -> dict[str, LossProfile]:
        """Block until the hash, saved profiles and every queued analysis are through; returns the profiles."""
        deadline = None if timeout is None else time.monotonic() + timeout
        left = lambda: None if deadline is None else max(0.0, deadline - time.monotonic())  # noqa: E731
        self._identified.result(left())
        for job in list(self._handles.values()):
            try:
                job.result(left())
            except TimeoutError:
                raise
            except Exception:  # a failed or cancelled job: its error is in `jobs` and the panel
                continue
        self._flush()
        return dict(self.profiles)

    def close(self) -> None:
        for job in self._handles.values():
            job.cancel_event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _same(a: dict, b: dict) -> bool:
    """The same names in the same order holding the same objects (profiles compare by identity: cheap)."""
    return list(a) == list(b) and all(a[k] is b[k] for k in a)
