"""The add-profile panel: a form built from the methods' declared settings, Run / Cancel, progress, errors.

One input per declared setting (by kind), shown for the methods that declare it; nothing here names a
method. It only calls `store.add(...)` / `store.cancel(...)` and shows `store.jobs`; analyses run in the
store.
"""
from __future__ import annotations

import html

import ipywidgets as w

from ..analysis import registry
from ..errors import LossWidgetError, SettingsError
from .store import ProfileStore

LEVEL_PRESETS = {
    "coarse (0, .5, .9)": [0.0, 0.5, 0.9],
    "one-shot (0, .2 … .99)": [0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99],
    "fine (0.01 steps)": [i / 100 for i in range(100)],
}
DEFAULT, CUSTOM = "method default", "custom"
WIDGET_DATA, NPZ, RANDOM = "widget data", ".npz file", "random (smoke test)"


def _eta(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f", about {seconds // 60} min {seconds % 60} s left" if seconds >= 60 else f", about {seconds} s left"


class _Field:
    """The input for one declared setting: its widgets and how to read a value from them (None: default)."""

    def __init__(self, setting, store: ProfileStore):
        self.setting, self.store = setting, store
        label = setting.name.replace("_", " ").capitalize() + ":"
        kind = setting.kind
        self.extra = None
        if kind == "levels":
            self.input = w.Dropdown(options=[DEFAULT, *LEVEL_PRESETS, CUSTOM], value=DEFAULT, description="Levels:")
            self.extra = w.Text(placeholder="e.g. 0, 0.5, 0.8, 0.9, 0.95", description="Custom:",
                                layout=w.Layout(display="none"))
            self.input.observe(lambda c: setattr(self.extra.layout, "display", "" if c["new"] == CUSTOM else "none"),
                               "value")
        elif kind == "choice":
            self.input = w.Dropdown(options=list(setting.choices), value=setting.default, description=label)
        elif kind == "data":
            self.input = w.Dropdown(options=[WIDGET_DATA, NPZ, RANDOM], value=WIDGET_DATA, description="Data:")
            self.extra = w.Text(placeholder="path/to/data.npz", description="File:", layout=w.Layout(display="none"))
            self.input.observe(lambda c: setattr(self.extra.layout, "display", "" if c["new"] == NPZ else "none"),
                               "value")
        elif kind == "labels":
            keys = sorted(store.data) if isinstance(store.data, dict) else []
            self.input = w.Combobox(options=keys, placeholder="key of the labels in the data", description=label,
                                    ensure_option=False)
        else:                                     # int, float, axis, dims, text: typed as text, parsed here
            self.input = w.Text(placeholder=f"default{'' if setting.default is None else ': ' + str(setting.default)}",
                                description=label)
        self.input.description_tooltip = setting.help
        self.input.add_class(f"lw-setting-{setting.name.replace('_', '-')}")
        self.box = w.VBox([self.input] + ([self.extra] if self.extra is not None else []))

    def value(self):
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


class AddProfilePanel(w.VBox):
    def __init__(self, store: ProfileStore):
        self.store = store
        self.methods = registry()
        self.name = w.Text(placeholder="profile name", description="Name:")
        self.name_message = w.HTML()
        # preselect the most informative method that needs no data
        free = [m for m in self.methods.values() if not m.needs_data] or list(self.methods.values())
        self.method = w.Dropdown(options=[(m.label, n) for n, m in self.methods.items()],
                                 value=max(free, key=lambda m: m.rank).name, description="Method:")
        self.fields: dict[str, _Field] = {}
        for m in self.methods.values():
            for s in m.settings:
                if s.form and s.name not in self.fields:
                    self.fields[s.name] = _Field(s, store)
        self.run = w.Button(description="Run", button_style="primary", icon="play", tooltip="Start the analysis")
        self.cancel = w.Button(description="Cancel", icon="stop", disabled=True, tooltip="Cancel the running analysis")
        self.progress = w.FloatProgress(min=0.0, max=1.0, value=0.0, layout=w.Layout(width="100%"))
        self.status = w.HTML()
        self.error = w.HTML()
        self.queue = w.HTML()
        for widget, cls in [(self.name, "lw-name"), (self.name_message, "lw-name-message"),
                            (self.method, "lw-method"), (self.run, "lw-run"), (self.cancel, "lw-cancel"),
                            (self.progress, "lw-progress"), (self.status, "lw-status"),
                            (self.error, "lw-panel-error"), (self.queue, "lw-queue")]:
            widget.add_class(cls)
        self.progress.layout.visibility = "hidden"
        super().__init__([w.HTML("<b>Add profile</b>"), self.name, self.name_message, self.method,
                          *[f.box for f in self.fields.values()], w.HBox([self.run, self.cancel]), self.progress,
                          self.status, self.error, self.queue])
        self.add_class("lw-panel")
        self.name.observe(lambda _: self.validate_name(), "value")
        self.method.observe(lambda _: self._show_fields(), "value")
        self.run.on_click(lambda _: self.submit())
        self.cancel.on_click(lambda _: self.cancel_active())
        store.observe(lambda _: self.show_jobs(), "jobs")
        store.observe(lambda _: self.validate_name(), "profiles")
        self._show_fields()

    def _show_fields(self) -> None:
        spec = self.methods[self.method.value]
        for name, field in self.fields.items():
            field.box.layout.display = "" if spec.setting(name) is not None else "none"

    def validate_name(self) -> bool:
        problem = self.store.check_name(self.name.value) if self.name.value else None
        self.name_message.value = f"<span class='lw-invalid'>{html.escape(problem)}</span>" if problem else ""
        return problem is None

    def settings(self) -> dict:
        """analyze() keyword arguments from the form (raises SettingsError on a value that does not parse)."""
        spec = self.methods[self.method.value]
        out = {}
        for s in spec.settings:
            field = self.fields.get(s.name)
            if field is None:
                continue
            value = field.value()
            if value is not None:
                out[s.name] = value
        return out

    def submit(self):
        """Run: validate, queue the analysis in the store; errors appear in the panel."""
        self.error.value = ""
        if not self.name.value.strip():
            self.name_message.value = "<span class='lw-invalid'>Give the profile a name.</span>"
            return None
        if not self.validate_name():
            return None
        try:
            job = self.store.add(self.name.value, self.method.value, **self.settings())
        except (LossWidgetError, SettingsError) as exc:
            self.error.value = f"<span class='lw-error'>{html.escape(str(exc))}</span>"
            return None
        self.name.value = ""
        return job

    def active(self) -> str | None:
        running = [n for n, j in self.store.jobs.items() if j.get("status") == "running"]
        queued = [n for n, j in self.store.jobs.items() if j.get("status") == "queued"]
        return (running or queued or [None])[0]

    def cancel_active(self) -> None:
        name = self.active()
        if name is not None:
            self.store.cancel(name)

    def show_jobs(self) -> None:
        jobs = self.store.jobs
        name = self.active()
        with self.hold_sync():
            if name is None:
                self.progress.layout.visibility = "hidden"
                self.cancel.disabled = True
                self.status.value = ""
            else:
                job = jobs[name]
                total = job.get("total") or 0
                self.progress.value = (job.get("done", 0) / total) if total else 0.0
                self.progress.layout.visibility = "visible"
                self.cancel.disabled = False
                self.status.value = (f"<b>{html.escape(name)}</b>: {html.escape(job.get('message', ''))}"
                                     f"{' (' + str(job.get('done')) + '/' + str(total) + ')' if total else ''}"
                                     f"{_eta(job.get('eta_s'))}")
            failed = [(n, j) for n, j in jobs.items() if j.get("status") == "failed"]
            if failed:
                n, j = failed[-1]
                self.error.value = (f"<span class='lw-error'>{html.escape(n)} failed: "
                                    f"{html.escape(j.get('error') or '')}</span>")
            rows = [f"<li>{html.escape(n)} — {html.escape(j.get('status', ''))}</li>" for n, j in jobs.items()
                    if j.get("status") in ("queued", "running", "cancelled", "failed")]
            self.queue.value = f"<ul class='lw-jobs'>{''.join(rows)}</ul>" if rows else ""
