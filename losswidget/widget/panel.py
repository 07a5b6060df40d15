"""The add-profile panel: a form built from `losswidget.methods()`, Run / Cancel, progress and errors.

It only calls `store.add(...)` / `store.cancel(...)` and shows `store.jobs`; the analyses run in the store.
"""
from __future__ import annotations

import html

import ipywidgets as w

from ..analysis import methods
from ..errors import LossWidgetError
from .store import ProfileStore

PRESETS = {
    "method default": None,
    "coarse (0, .5, .9)": [0.0, 0.5, 0.9],
    "one-shot (0, .2 … .99)": [0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99],
    "fine (0.01 steps)": [i / 100 for i in range(100)],
    "custom": "custom",
}


def _eta(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f", about {seconds // 60} min {seconds % 60} s left" if seconds >= 60 else f", about {seconds} s left"


class AddProfilePanel(w.VBox):
    def __init__(self, store: ProfileStore):
        self.store = store
        self.specs = {m["name"]: m for m in methods()}
        self.name = w.Text(placeholder="profile name", description="Name:")
        self.name_message = w.HTML()
        self.method = w.Dropdown(options=[(m["label"], n) for n, m in self.specs.items()], value="magnitude",
                                 description="Method:")
        self.preset = w.Dropdown(options=list(PRESETS), value="method default", description="Levels:")
        self.custom = w.Text(placeholder="e.g. 0, 0.5, 0.8, 0.9, 0.95", description="Custom:",
                             layout=w.Layout(display="none"))
        self.data_source = w.Dropdown(options=["widget data", ".npz file"], description="Data:")
        self.data_path = w.Text(placeholder="path/to/data.npz", description="File:", layout=w.Layout(display="none"))
        self.metric = w.Dropdown(options=self.specs.get("one-shot", {}).get("settings", {}).get("metric", {})
                                 .get("choices", ["kl"]), description="Metric:")
        self.labels = w.Text(placeholder="key of the labels (for loss)", description="Labels:")
        self.data_box = w.VBox([self.data_source, self.data_path, self.metric, self.labels],
                               layout=w.Layout(display="none"))
        self.run = w.Button(description="Run", button_style="primary", icon="play", tooltip="Start the analysis")
        self.cancel = w.Button(description="Cancel", icon="stop", disabled=True, tooltip="Cancel the running analysis")
        self.progress = w.FloatProgress(min=0.0, max=1.0, value=0.0, layout=w.Layout(width="100%"))
        self.status = w.HTML()
        self.error = w.HTML()
        self.queue = w.HTML()
        for widget, cls in [(self.name, "lw-name"), (self.name_message, "lw-name-message"),
                            (self.method, "lw-method"), (self.preset, "lw-levels"), (self.custom, "lw-custom-levels"),
                            (self.data_source, "lw-data-source"), (self.data_path, "lw-data-path"),
                            (self.metric, "lw-metric"), (self.labels, "lw-labels"), (self.run, "lw-run"),
                            (self.cancel, "lw-cancel"), (self.progress, "lw-progress"), (self.status, "lw-status"),
                            (self.error, "lw-panel-error"), (self.queue, "lw-queue")]:
            widget.add_class(cls)
        self.progress.layout.visibility = "hidden"
        super().__init__([w.HTML("<b>Add profile</b>"), self.name, self.name_message, self.method, self.preset,
                          self.custom, self.data_box, w.HBox([self.run, self.cancel]), self.progress, self.status,
                          self.error, self.queue])
        self.add_class("lw-panel")
        self.name.observe(lambda _: self.validate_name(), "value")
        self.method.observe(self._method_changed, "value")
        self.preset.observe(lambda c: setattr(self.custom.layout, "display", "" if c["new"] == "custom" else "none"),
                            "value")
        self.data_source.observe(lambda c: setattr(self.data_path.layout, "display",
                                                   "" if c["new"] == ".npz file" else "none"), "value")
        self.run.on_click(lambda _: self.submit())
        self.cancel.on_click(lambda _: self.cancel_active())
        store.observe(lambda _: self.show_jobs(), "jobs")
        store.observe(lambda _: self.validate_name(), "profiles")

    def _method_changed(self, change) -> None:
        self.data_box.layout.display = "" if self.specs[change["new"]]["needs_data"] else "none"

    def validate_name(self) -> bool:
        problem = self.store.check_name(self.name.value) if self.name.value else None
        self.name_message.value = f"<span class='lw-invalid'>{html.escape(problem)}</span>" if problem else ""
        return problem is None

    def settings(self) -> dict:
        """analyze() keyword arguments from the form (raises LossWidgetError on bad levels)."""
        out = {}
        preset = PRESETS[self.preset.value]
        if preset == "custom":
            try:
                out["sparsity_levels"] = [float(x) for x in self.custom.value.replace(";", ",").split(",") if x.strip()]
            except ValueError:
                raise LossWidgetError(f"Custom levels must be numbers separated by commas, got {self.custom.value!r}.")
        elif preset is not None:
            out["sparsity_levels"] = preset
        if self.specs[self.method.value]["needs_data"]:
            if self.data_source.value == ".npz file":
                out["data"] = self.data_path.value.strip() or None
            out["metric"] = self.metric.value
            if self.labels.value.strip():
                out["labels"] = self.labels.value.strip()
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
        except LossWidgetError as exc:
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
