"""The add-profile panel: a form built from the methods' declared settings, checked as it is filled in; Run /
Cancel, progress, the queue and the store's notices; rename / rerun / remove for the selected profile.

One input per declared setting (by kind), shown for the methods that declare it; nothing here names a
method. Each value is checked where it is typed (the setting's own `check`; an .npz file's arrays against
the model's inputs; labels against the data's keys) and its message sits beside the field. Run stays
disabled while anything is invalid, so what is queued parses; what only the run can tell (shapes, dtypes)
still comes back as the job's error. It only calls the store and shows `store.jobs` / `store.notices`.
"""
from __future__ import annotations

import html
import os
import threading
from pathlib import Path

import ipywidgets as w
import numpy as np

from ..analysis import registry
from ..errors import LossWidgetError
from .store import ACTIVE, ProfileStore

LEVEL_PRESETS = {
    "coarse (0, .5, .9)": [0.0, 0.5, 0.9],
    "one-shot (0, .2 … .99)": [0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99],
    "fine (0.01 steps)": [i / 100 for i in range(100)],
}
DEFAULT, CUSTOM = "method default", "custom"
WIDGET_DATA, NPZ, RANDOM = "widget data", ".npz file", "random (smoke test)"
BAD = "color: var(--jp-error-color1, #c62828)"
NOTE = "color: var(--jp-ui-font-color2, #616161)"
WARN = "color: var(--jp-warn-color1, #b26a00)"


def _eta(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f", about {seconds // 60} min {seconds % 60} s left" if seconds >= 60 else f", about {seconds} s left"


def _span(text: str, style: str, cls: str) -> str:
    return f"<span class='{cls}' style='{style}'>{html.escape(text, quote=False)}</span>" if text else ""


def npz_keys(path: str) -> list[str]:
    """The array names in an .npz file (its zip directory only; no array is read). Raises OSError/ValueError."""
    with np.load(path, allow_pickle=False) as npz:
        return list(npz.files)


class _Field:
    """The input for one declared setting: its widgets, a message beside it, and how to read its value
    (None: the method's default)."""

    def __init__(self, setting, store: ProfileStore):
        self.setting, self.store = setting, store
        label = setting.name.replace("_", " ").capitalize() + ":"
        kind = setting.kind
        self.extra = None
        # the class and tooltip given at construction: each one set afterwards is one more message to the page
        tag = dict(tooltip=setting.help, _dom_classes=[f"lw-setting-{setting.name.replace('_', '-')}"])
        if kind == "levels":
            self.input = w.Dropdown(options=[DEFAULT, *LEVEL_PRESETS, CUSTOM], value=DEFAULT, description="Levels:",
                                    **tag)
            self.extra = w.Text(placeholder="e.g. 0, 0.5, 0.8, 0.9, 0.95", description="Custom:")
        elif kind == "choice":
            self.input = w.Dropdown(options=list(setting.choices), value=setting.default, description=label, **tag)
        elif kind == "data":
            self.input = w.Dropdown(options=[WIDGET_DATA, NPZ, RANDOM], value=WIDGET_DATA, description="Data:", **tag)
            self.extra = w.Text(placeholder="path/to/data.npz", description="File:")
        elif kind == "labels":
            self.input = w.Combobox(options=[], placeholder="key of the labels in the data", description=label,
                                    ensure_option=False, **tag)
        else:                                     # int, float, axis, dims, text: typed as text, parsed here
            self.input = w.Text(placeholder=f"default{'' if setting.default is None else ': ' + str(setting.default)}",
                                description=label, **tag)
        self.message = w.HTML(_dom_classes=["lw-field-message"])
        self.box = w.HBox([self.input, self.message], layout=w.Layout(flex_flow="row wrap", align_items="center"),
                          _dom_classes=tag["_dom_classes"])
        if self.extra is not None:
            self.extra.layout.display = "none"
            self.box.children = (self.input, self.extra, self.message)

    @property
    def widgets(self):
        return [self.input] + ([self.extra] if self.extra is not None else [])

    def show_extra(self) -> None:
        if self.extra is not None:
            want = CUSTOM if self.setting.kind == "levels" else NPZ
            self.extra.layout.display = "" if self.input.value == want else "none"

    def value(self):
        """The typed value, parsed (SettingsError when it does not parse)."""
        s, v = self.setting, self.input.value
        if s.kind == "levels":
            if v == CUSTOM:
                return s.parse(self.extra.value)
            return None if v == DEFAULT else LEVEL_PRESETS[v]
        if s.kind == "data":
            if v == NPZ:
                return self.extra.value.strip() or None
            return "random" if v == RANDOM else None
        if s.kind == "choice":
            return v
        text = v.strip() if isinstance(v, str) else v
        return s.parse(text) if text else None

    def say(self, problem: str | None) -> None:
        self.message.value = _span(problem or "", BAD, "lw-invalid")


class AddProfilePanel(w.VBox):
    def __init__(self, store: ProfileStore):
        self.store = store
        self.methods = registry()
        self._npz_cache: dict[tuple, list[str] | str] = {}
        self._statuses: dict[str, str] = {}   # job statuses at the last update (to see which just ended)
        self._running_shown = False
        self._queued_name = ""
        self._suggested = ""                  # the labels key filled in for the user (replaced when data changes)
        self._confirm_remove = False
        # one check at a time: without a kernel a worker's job update checks the form too, and a check that
        # read the state before it must not write its stale result after it (Run left disabled)
        self._validating = threading.RLock()
        self.name = w.Text(placeholder="profile name", description="Name:", _dom_classes=["lw-name"])
        self.name_message = w.HTML(_dom_classes=["lw-name-message"])
        # preselect the most informative method that needs no data
        free = [m for m in self.methods.values() if not m.needs_data] or list(self.methods.values())
        self.method = w.Dropdown(options=[(m.label, n) for n, m in self.methods.items()],
                                 value=max(free, key=lambda m: m.rank).name, description="Method:",
                                 _dom_classes=["lw-method"])
        self.method_help = w.HTML()
        self.fields: dict[str, _Field] = {}
        for m in self.methods.values():
            for s in m.settings:
                if s.form and s.name not in self.fields:
                    self.fields[s.name] = _Field(s, store)
        self.run = w.Button(description="Run", button_style="primary", icon="play", tooltip="Start the analysis",
                            _dom_classes=["lw-run"])
        self.job_choice = w.Dropdown(options=[], description="Job:", layout=w.Layout(display="none"),
                                     _dom_classes=["lw-job-choice"])
        self.cancel = w.Button(description="Cancel", icon="stop", disabled=True, tooltip="Cancel the chosen analysis",
                               _dom_classes=["lw-cancel"])
        self.progress = w.FloatProgress(min=0.0, max=1.0, value=0.0, layout=w.Layout(width="auto", visibility="hidden"),
                                       _dom_classes=["lw-progress"])
        self.status = w.HTML(_dom_classes=["lw-status"])
        self.error = w.HTML(_dom_classes=["lw-panel-error"])
        self.queue = w.HTML(_dom_classes=["lw-queue"])
        self.notices = w.HTML(_dom_classes=["lw-notices"])
        self.dismiss = w.Button(description="Dismiss", icon="times", layout=w.Layout(display="none"),
                                tooltip="Hide these messages", _dom_classes=["lw-dismiss"])
        # the selected profile: rename / rerun / remove
        self.chosen = w.HTML(_dom_classes=["lw-chosen"])
        self.new_name = w.Text(placeholder="new name", description="Rename to:", _dom_classes=["lw-new-name"])
        self.rename = w.Button(description="Rename", icon="pencil", tooltip="Give the selected profile this name",
                               _dom_classes=["lw-rename"])
        self.rerun = w.Button(description="Rerun", icon="refresh", tooltip="Compute the selected profile again with "
                              "its settings; the new one replaces it when done", _dom_classes=["lw-rerun"])
        self.remove = w.Button(description="Remove", icon="trash", tooltip="Remove the selected profile and its file",
                               _dom_classes=["lw-remove"])
        self.manage_message = w.HTML(_dom_classes=["lw-manage-message"])
        wrap = w.Layout(flex_flow="row wrap", align_items="center")
        super().__init__([
            w.HTML("<b>Add profile</b>"), w.HBox([self.name, self.name_message], layout=wrap),
            w.HBox([self.method, self.method_help], layout=wrap), *[f.box for f in self.fields.values()],
            w.HBox([self.run, self.job_choice, self.cancel], layout=wrap), self.progress, self.status, self.error,
            self.queue, w.HBox([self.notices, self.dismiss], layout=wrap),
            w.HTML("<b>Selected profile</b>"), self.chosen,
            w.HBox([self.new_name, self.rename, self.rerun, self.remove], layout=wrap), self.manage_message],
            _dom_classes=["lw-panel"])
        self.name.observe(lambda _: self.validate(), "value")
        self.method.observe(lambda _: self._method_changed(), "value")
        for field in self.fields.values():
            for widget in field.widgets:
                widget.observe(lambda _, f=field: self._field_changed(f), "value")
        self.run.on_click(lambda _: self.submit())
        self.cancel.on_click(lambda _: self.cancel_chosen())
        self.dismiss.on_click(lambda _: store.dismiss_notices())
        self.rename.on_click(lambda _: self.rename_selected())
        self.rerun.on_click(lambda _: self.rerun_selected())
        self.remove.on_click(lambda _: self.remove_selected())
        store.observe(lambda _: self.show_jobs(), "jobs")
        store.observe(lambda _: self.validate(), names=["profiles", "jobs"])
        store.observe(lambda _: self.show_notices(), "notices")
        store.observe(lambda _: self.show_selected(), names=["selected", "profiles", "jobs"])
        self._method_changed()
        self.show_jobs()
        self.show_notices()
        self.show_selected()

    # -- the form --------------------------------------------------------------------------------------
    def _method_changed(self) -> None:
        spec = self.methods[self.method.value]
        self.method_help.value = _span(spec.description, NOTE, "lw-method-help")
        self._show_fields()
        self._suggest_labels()
        self.validate()

    def _field_changed(self, field: _Field) -> None:
        field.show_extra()
        if field.setting.kind == "data":
            self._show_fields()
            self._suggest_labels()
        self.validate()

    def _data_field(self) -> _Field | None:
        spec = self.methods[self.method.value]
        return next((self.fields[s.name] for s in spec.settings if s.kind == "data" and s.name in self.fields), None)

    def _show_fields(self) -> None:
        spec = self.methods[self.method.value]
        data = self._data_field()
        randomised = data is not None and data.input.value == RANDOM
        for name, field in self.fields.items():
            shown = spec.setting(name) is not None and (field.setting.kind != "dims" or randomised)
            field.box.layout.display = "" if shown else "none"
            field.show_extra()

    def shown(self) -> list[_Field]:
        return [f for f in self.fields.values() if f.box.layout.display != "none"]

    def data_keys(self) -> tuple[list[str] | None, str | None]:
        """The array names of the chosen data (None: not known, e.g. random or batches) and why it cannot be
        used (or None)."""
        field = self._data_field()
        if field is None:
            return None, None
        choice = field.input.value
        if choice == RANDOM:
            return None, None
        if choice == NPZ:
            path = field.extra.value.strip()
            if not path:
                return None, "Give the path of an .npz file."
            return self._npz(path)
        data = self.store.data
        if data is None:
            return None, "The widget has no data: pass data= to LossProfileWidget, or choose an .npz file."
        if isinstance(data, dict):
            return [str(k) for k in data], None
        if isinstance(data, (str, os.PathLike)) and data != "random":
            return self._npz(str(data))
        return None, None

    def _npz(self, path: str) -> tuple[list[str] | None, str | None]:
        p = Path(path).expanduser()
        try:
            stamp = (str(p), p.stat().st_mtime_ns, p.stat().st_size)
        except OSError:
            return None, f"No file at {path}."
        if not p.is_file():
            return None, f"{path} is not a file."
        if stamp not in self._npz_cache:
            try:
                self._npz_cache = {stamp: npz_keys(str(p))}
            except Exception as exc:  # a damaged or non-npz file, whatever numpy raises for it
                self._npz_cache = {stamp: f"{path} is not a readable .npz file ({type(exc).__name__})."}
        found = self._npz_cache[stamp]
        return (None, found) if isinstance(found, str) else (found, None)

    def _suggest_labels(self) -> None:
        """Offer the data's arrays that are not model inputs as labels; fill in the only one if none is set."""
        labels = next((f for f in self.fields.values() if f.setting.kind == "labels"), None)
        if labels is None:
            return
        keys, _ = self.data_keys()
        extra = [k for k in keys or () if k not in self.store.inputs]
        labels.input.options = extra or list(keys or ())
        complete = keys is not None and all(i in keys for i in self.store.inputs)
        typed = labels.input.value.strip()
        if not typed or typed == self._suggested:          # never overwrite what the user typed
            self._suggested = extra[0] if complete and len(extra) == 1 else ""
            labels.input.value = self._suggested

    def problems(self) -> dict[str, str]:
        """Field name ("name" for the profile name) -> what is wrong with it, for the fields shown."""
        out = {}
        name = self.store.check_name(self.name.value)
        if name:
            out["name"] = name
        spec = self.methods[self.method.value]
        keys, data_problem = self.data_keys()
        for field in self.shown():
            s = field.setting
            try:
                value = field.value()
                s.check(value, spec.name)
            except LossWidgetError as exc:
                out[s.name] = str(exc)
                continue
            if s.kind == "data":
                if data_problem:
                    out[s.name] = data_problem
                elif keys is not None:
                    missing = [i for i in self.store.inputs if i not in keys]
                    if missing:
                        out[s.name] = (f"The data has no array for the model's input(s) {', '.join(missing)}; "
                                       f"it has {', '.join(keys) or 'none'}.")
            elif s.kind == "labels" and keys is not None:
                extra = [k for k in keys if k not in self.store.inputs]
                if value and value not in keys:
                    out[s.name] = f"No array {value!r} in the data; it has {', '.join(keys)}."
                elif not value and extra:
                    out[s.name] = (f"The data also holds {', '.join(map(repr, extra))}, not a model input: "
                                   "choose the labels here (or leave them out of the data).")
        return out

    def validate(self) -> bool:
        """Show each problem beside its field; Run is enabled only when there is none."""
        with self._validating:
            return self._validate()

    def _validate(self) -> bool:
        found = self.problems()
        typed = self.name.value.strip()
        if "name" in found and typed and typed == self._queued_name:
            self.name_message.value = _span(f"Queued as {typed!r}; type another name for the next profile.",
                                            NOTE, "lw-name-note")
        elif "name" in found and not typed:
            self.name_message.value = _span("Give the profile a name.", NOTE, "lw-name-note")
        else:
            self.name_message.value = _span(found.get("name", ""), BAD, "lw-invalid")
        for field in self.fields.values():
            field.say(found.get(field.setting.name))
        self.run.disabled = bool(found)
        return not found

    def validate_name(self) -> bool:
        return self.store.check_name(self.name.value) is None

    def settings(self) -> dict:
        """analyze() keyword arguments from the form (raises SettingsError on a value that does not parse)."""
        spec = self.methods[self.method.value]
        out = {}
        for s in spec.settings:
            field = self.fields.get(s.name)
            if field is None or field.box.layout.display == "none":
                continue
            value = field.value()
            if value is not None:
                out[s.name] = value
        return out

    def submit(self):
        """Run: queue the analysis when the form is valid (the typed name stays); errors appear in the panel."""
        self.error.value = ""
        if not self.validate():
            return None
        name = self.name.value.strip()
        try:
            job = self.store.add(name, self.method.value, **self.settings())
        except LossWidgetError as exc:
            self.error.value = _span(str(exc), BAD, "lw-error")
            return None
        self._queued_name = name
        self.validate()
        return job

    # -- jobs ------------------------------------------------------------------------------------------
    def active(self) -> str | None:
        """The running job, else the first queued one."""
        jobs = self.store.jobs
        running = [n for n, j in jobs.items() if j.get("status") == "running"]
        queued = [n for n, j in jobs.items() if j.get("status") == "queued"]
        return (running or queued or [None])[0]

    def cancel_chosen(self) -> None:
        name = self.job_choice.value or self.active()
        if name is not None:
            self.store.cancel(name)

    cancel_active = cancel_chosen

    def show_jobs(self) -> None:
        jobs = self.store.jobs
        name = self.active()
        active = [n for n, j in jobs.items() if j.get("status") == "running"] + \
                 [n for n, j in jobs.items() if j.get("status") == "queued"]
        ended = [n for n, j in jobs.items() if j.get("status") not in ACTIVE and self._statuses.get(n) in ACTIVE]
        self._statuses = {n: j.get("status", "") for n, j in jobs.items()}
        with self.hold_sync():
            options = [(f"{n} — {jobs[n]['status']}", n) for n in active]
            if list(self.job_choice.options) != options:
                keep = self.job_choice.value if self.job_choice.value in active else None
                self.job_choice.options = options
                self.job_choice.value = keep if keep is not None else (active[0] if active else None)
            self.job_choice.layout.display = "" if len(active) > 1 else "none"
            self.cancel.disabled = not active
            if name is None:
                self.progress.layout.visibility = "hidden"
                if ended or self._running_shown:
                    self.status.value = self._ended_note(ended[-1]) if ended else ""
                self._running_shown = False
            else:
                self._running_shown = True
                job = jobs[name]
                total = job.get("total") or 0
                self.progress.value = (job.get("done", 0) / total) if total else 0.0
                self.progress.layout.visibility = "visible"
                live = "; its bars fill in as layers finish" if job.get("partial") else ""
                self.status.value = (f"<b>{html.escape(name)}</b>: {html.escape(job.get('message', ''))}"
                                     f"{' (' + str(job.get('done')) + '/' + str(total) + ')' if total else ''}"
                                     f"{_eta(job.get('eta_s'))}{live}")
            failed = [(n, j) for n, j in jobs.items() if j.get("status") == "failed"]
            if failed:
                n, j = failed[-1]
                self.error.value = _span(f"{n} failed: {j.get('error') or ''}", BAD, "lw-error")
            rows = [f"<li>{html.escape(n)} — "
                    f"{html.escape(j['message'] if j.get('status') == 'cancelled' and j.get('message') else j.get('status', ''))}"
                    f"{' (not saved: ' + html.escape(j['warning']) + ')' if j.get('warning') else ''}</li>"
                    for n, j in jobs.items() if j.get("status") in ("queued", "running", "cancelled", "failed")
                    or j.get("warning")]
            self.queue.value = f"<ul class='lw-jobs'>{''.join(rows)}</ul>" if rows else ""

    def _ended_note(self, name: str) -> str:
        """What the status line says once a job ends: where a finished profile is, how a cancel ended."""
        state = self.store.jobs.get(name, {})
        if state.get("status") == "cancelled":
            return _span(f"{name}: {state.get('message', 'cancelled')}.", NOTE, "lw-done")
        job = self.store.job(name)
        if state.get("status") != "done" or job is None or not job.asked:
            return ""
        if self.store.selected == name:
            text = f"{name} is done and shown above."
        else:
            text = f"{name} is done; choose it under Profile to see it."
        return _span(text, NOTE, "lw-done")

    def show_notices(self) -> None:
        notes = self.store.notices
        self.notices.value = ("<ul class='lw-notice-list'>" + "".join(f"<li>{_span(n, WARN, 'lw-notice')}</li>"
                                                                     for n in notes) + "</ul>") if notes else ""
        self.dismiss.layout.display = "" if notes else "none"

    # -- the selected profile --------------------------------------------------------------------------
    def show_selected(self) -> None:
        name = self.store.selected
        profile = self.store.profiles.get(name)
        running = self.store.jobs.get(name, {}).get("status") in ACTIVE
        if self._confirm_remove != name:
            self._confirm_remove = False
            self.remove.description, self.remove.button_style = "Remove", ""
        if profile is None:
            self.chosen.value = _span("No profile selected.", NOTE, "lw-chosen-note")
        else:
            state = " (running: partial)" if running else (" (partial)" if profile.partial else "")
            self.chosen.value = (f"<b>{html.escape(name)}</b>{html.escape(state)}: "
                                 f"{html.escape(profile.method)}, {len(profile.layers)} layers")
        self.rename.disabled = profile is None or running
        self.new_name.disabled = profile is None or running
        self.rerun.disabled = profile is None or running or profile.method not in self.methods
        self.rerun.tooltip = ("This version has no method " + repr(profile.method)
                              if profile is not None and profile.method not in self.methods
                              else "Compute the selected profile again with its settings; the new one replaces it "
                                   "when done")
        self.remove.disabled = profile is None

    def _manage(self, action) -> None:
        try:
            text = action()
        except LossWidgetError as exc:
            self.manage_message.value = _span(str(exc), BAD, "lw-error")
            return
        self.manage_message.value = _span(text, NOTE, "lw-manage-note")

    def rename_selected(self) -> None:
        old, new = self.store.selected, self.new_name.value.strip()

        def act():
            self.store.rename(old, new)
            self.new_name.value = ""
            return f"Renamed {old!r} to {new!r}."
        self._manage(act)

    def rerun_selected(self) -> None:
        name = self.store.selected

        def act():
            self.store.rerun(name)
            return f"Computing {name!r} again; it is replaced when the new one is done."
        self._manage(act)

    def remove_selected(self) -> None:
        name = self.store.selected
        if self._confirm_remove != name:             # the first click asks
            self._confirm_remove = name
            self.remove.description, self.remove.button_style = f"Remove {name}?", "danger"
            self.manage_message.value = _span("Click again to remove it and its saved file.", NOTE, "lw-manage-note")
            return
        self._confirm_remove = False

        def act():
            self.store.remove(name)
            return f"Removed {name!r}."
        self._manage(act)
        self.show_selected()
