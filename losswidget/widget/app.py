"""LossProfileWidget: the cards, charts and add-profile panel over one ProfileStore; inline or in the sidebar."""
from __future__ import annotations

import html
import os
from concurrent.futures import Future

import anywidget
import ipywidgets as w
from traitlets import Unicode

from ..plan import Plan
from ..profile import LossProfile, profiles_to_csv, profiles_to_json
from .cards import JS_DIR, SummaryCards, card_values
from .charts import Charts
from .controls import CompareChooser, Header
from .downloads import Downloads, slug
from .focus import after_ready
from .planpanel import model_stem
from .panel import AddProfilePanel
from .store import Job, ProfileStore

AUTO_PROFILES = (("Approximated", "approximated"), ("Baseline", "magnitude"))
# with data: one dense pass measures every layer on it (one-shot's pass per layer and level is asked for)
DATA_AUTO_PROFILES = (("Activation-aware", "activation"),)


def job_line(jobs: dict) -> str:
    """The status beside the profile selector (HTML): the running analysis and its progress, how many wait;
    "" when none is queued or running. The panel below says more; this is what is seen beside the charts."""
    running = [(n, j) for n, j in jobs.items() if j.get("status") == "running"]
    queued = [n for n, j in jobs.items() if j.get("status") == "queued"]
    if not running and not queued:
        return ""
    parts = []
    for name, job in running:
        total = job.get("total") or 0
        share = f" {job.get('done', 0) / total:.0%}" if total else ""
        live = ", bars fill in" if job.get("partial") else ""
        parts.append(f"<b>{html.escape(name)}</b>: computing…{share}{live}")
    if queued:
        parts.append(f"<b>{html.escape(queued[0])}</b> queued" if len(queued) == 1 and not running
                     else f"{len(queued)} more queued")
    return "<span class='lw-job-line'>" + " · ".join(parts) + "</span>"


class Exporter(Downloads):
    """Download JSON / CSV of the selected profile, or of all compared ones when comparing."""
    empty = Unicode("No profile to download yet: wait for one to finish.")

    def __init__(self, store: ProfileStore):
        super().__init__(buttons=[{"kind": "json", "label": "Download JSON", "format": "JSON"},
                                  {"kind": "csv", "label": "Download CSV", "format": "CSV"}])
        self.store = store
        store.observe(self._describe, names=["profiles", "selected", "compare"])
        self._describe(None)

    def chosen(self) -> list[LossProfile]:
        """The compared profiles (in their order) when several are compared, else the selected one."""
        names = [n for n in self.store.compare if n in self.store.profiles]
        if len(names) < 2:
            names = [self.store.selected] if self.store.selected in self.store.profiles else []
        return [self.store.profiles[n] for n in names]

    def filename(self, profiles: list[LossProfile], ext: str) -> str:
        """`<model>-<profile>.<ext>`; when comparing, the profiles' names joined by '+' (or their count)."""
        names = "+".join(slug(p.name) for p in profiles)
        if len(names) > 80:
            names = f"{len(profiles)}-profiles"
        return f"{model_stem(self.store, profiles[0])}-{names}.{ext}"

    def payload(self, kind: str) -> dict | None:
        profiles = self.chosen()
        if not profiles:
            return None
        if kind == "csv":
            text = profiles[0].to_csv() if len(profiles) == 1 else profiles_to_csv(profiles)
            return {"filename": self.filename(profiles, "csv"), "mime": "text/csv", "text": text}
        text = profiles[0].to_json() if len(profiles) == 1 else profiles_to_json(profiles)
        return {"filename": self.filename(profiles, "json"), "mime": "application/json", "text": text}

    def _describe(self, _change) -> None:
        profiles = self.chosen()
        self.what = (f"the {len(profiles)} compared profiles ({', '.join(p.name for p in profiles)})"
                     if len(profiles) > 1 else f"profile {profiles[0].name!r}" if profiles else "")


class HostProbe(anywidget.AnyWidget):
    """Tells the kernel which page the widget is shown in (js/host.js reads it from the page): the kernel
    cannot tell JupyterLab from Notebook 7, and only JupyterLab has the sidebar sidecar opens in."""
    _esm = JS_DIR / "host.js"
    host = Unicode("").tag(sync=True)         # jupyterlab | notebook7 | voila | vscode | other ("": not shown yet)


def frontend() -> str:
    """Where this kernel's output is shown, as far as the kernel can tell."""
    if os.environ.get("LOSSWIDGET_FRONTEND"):
        return os.environ["LOSSWIDGET_FRONTEND"]
    if any(k.startswith("VSCODE_") for k in os.environ):
        return "vscode"
    if any(k.startswith("VOILA_") for k in os.environ):
        return "voila"
    return "jupyterlab"


class LossProfileWidget(w.VBox):
    """Loss profiles of one ONNX model: summary cards, sensitivity and params charts, compare, drill-down and an
    add-profile panel. Computes the "Approximated" and "Baseline" (magnitude) profiles in the background, and
    with `data` an "Activation-aware" one (`labels`: the key of the labels in the data, or an array, when
    the data holds more than the model's inputs)."""

    def __init__(self, model, *, data=None, labels=None, profiles_dir=None, target_sparsity: float = 0.85,
                 autostart: bool = True):
        self.store = ProfileStore(model, data=data, labels=labels, profiles_dir=profiles_dir,
                                  target_sparsity=target_sparsity)
        # CSS classes are given at construction (`_dom_classes`, the trait add_class sets) in every view: each
        # add_class afterwards is one more message the page handles before it draws
        self.cards = SummaryCards(_dom_classes=["lw-summary"])
        self.charts = Charts(self.store)
        self._panel: AddProfilePanel | None = None           # made with the views under the bars (_complete)
        self._closed = False
        self.exporter = Exporter(self.store)
        self.header = Header()
        self.select = w.Dropdown(description="Profile:", options=[], style={"description_width": "initial"},
                                 layout=w.Layout(width="auto", max_width="100%"), _dom_classes=["lw-profile-select"])
        self.compare = CompareChooser(_dom_classes=["lw-compare-select"])
        self.target = w.FloatSlider(value=self.store.target, min=0.05, max=0.95, step=0.01, description="Target:",
                                    readout_format=".0%", continuous_update=True,
                                    style={"description_width": "initial"}, layout=w.Layout(width="auto"),
                                    _dom_classes=["lw-target-slider"])
        self.sidecar = None
        self._syncing = False
        self.message = w.HTML(_dom_classes=["lw-message"])
        self.host = HostProbe()
        self.host.observe(self._host_known, "host")
        # the status line beside the selector: "Baseline: computing… 40%"
        self.job_status = w.HTML(layout=w.Layout(display="none"), _dom_classes=["lw-job-status"])
        controls = w.HBox([self.select, self.target, self.job_status], layout=w.Layout(flex_flow="row wrap"),
                          _dom_classes=["lw-controls"])
        super().__init__([self.header, controls, self.compare, self.cards, self.charts.box, self.exporter,
                          self.message, self.host], _dom_classes=["losswidget"])
        self.select.observe(self._select_changed, "value")
        self.compare.observe(self._compare_changed, "value")
        self.store.observe(lambda _: self.header.show(self.store), names=["profiles"])
        if self.store.has_trait("model_hash"):                 # a store that hashes in the background
            self.store.observe(lambda _: self.header.show(self.store), names=["model_hash"])
        self.header.show(self.store)
        # rounded: the browser's slider sends its steps as 0.8499999999999999, which a plan file would keep
        self.target.observe(lambda c: setattr(self.store, "target", round(c["new"], 6)), "value")
        self.store.observe(self._sync_controls, names=["profiles", "selected", "compare"])
        self.store.observe(lambda _: self._draw_cards(), names=["profiles", "selected", "target", "excluded"])
        self.store.observe(lambda _: self._show_jobs(), names=["jobs"])
        self._sync_controls(None)
        self._draw_cards()
        self._show_jobs()
        if autostart:
            # once the hash is known, unless saved ones are found
            self.store.autostart(AUTO_PROFILES + (DATA_AUTO_PROFILES if data is not None else ()))
        # the views under the bars, once the bars have profiles and a page has drawn the widget
        after_ready(self.store, self._complete, self.host)

    def _complete(self) -> None:
        """Make the views under the bars: the scatter, drill-down, plan row and table, and the add-profile
        panel (at once without a kernel; on the kernel's loop once the saved profiles are drawn and a page has
        drawn the widget otherwise; each is also made when first used)."""
        if not self._closed:
            self.charts.build_below()
            _ = self.panel

    @property
    def panel(self) -> AddProfilePanel:
        """The add-profile panel (made on first use, or with the views under the bars)."""
        if self._panel is None:
            self._panel = AddProfilePanel(self.store)
            children = list(self.children)
            children.insert(children.index(self.message), self._panel)
            self.children = children
        return self._panel

    # -- public surface --------------------------------------------------------------------------------
    @property
    def profiles(self) -> dict[str, LossProfile]:
        return dict(self.store.profiles)

    @property
    def selected(self) -> str:
        return self.store.selected

    @selected.setter
    def selected(self, name: str) -> None:
        if name not in self.store.profiles:
            raise KeyError(f"No profile named {name!r}; have {sorted(self.store.profiles)}")
        self.store.selected = name

    @property
    def jobs(self) -> dict:
        return dict(self.store.jobs)

    def add_profile(self, name: str, method: str = "magnitude", **settings) -> Job:
        """Queue an analysis (settings as for losswidget.analyze); returns a future-like Job."""
        return self.store.add(name, method, **settings)

    def remove_profile(self, name: str) -> None:
        """Remove a profile and its saved file (a queued or running one is cancelled and dropped)."""
        self.store.remove(name)

    def rename_profile(self, old: str, new: str) -> None:
        self.store.rename(old, new)

    def rerun_profile(self, name: str) -> Job:
        """Compute a profile again with its settings; the new one replaces it when done."""
        return self.store.rerun(name)

    def compare_profiles(self, *names: str) -> None:
        """Draw these profiles side by side (the first becomes the selected one)."""
        missing = [n for n in names if n not in self.store.profiles]
        if missing:
            raise KeyError(f"No profile named {missing[0]!r}; have {sorted(self.store.profiles)}")
        with self.store.hold_trait_notifications():
            self.store.selected = names[0]
            self.store.compare = list(names)

    @property
    def plan(self) -> Plan | None:
        """The plan the widget shows: the selected profile's at the target, the excluded layers kept dense."""
        return self.store.plan()

    def exclude(self, *layers: str, excluded: bool = True) -> None:
        """Keep these layers (names) out of the selected profile's plan (excluded=False: put them back)."""
        self.store.set_excluded(layers, excluded)

    def save_pruned(self, path=None) -> Future:
        """Write the model pruned by `plan` to `path` (default: beside the model, named for the model, profile and
        target) in the background; the Future's result is the written path."""
        return self.charts.plan_panel.save(path)

    def wait(self, timeout: float | None = None) -> dict[str, LossProfile]:
        """Block until the queued analyses end; returns the profiles. For scripts and notebooks run top to
        bottom (in a live notebook the widget fills in by itself)."""
        return self.store.wait(timeout)

    def show_sidebar(self, anchor: str = "right") -> None:
        """Open this widget in JupyterLab's sidebar (via sidecar; `anchor` as sidecar takes it); elsewhere
        (Notebook 7, Voilà, VS Code) say so and stay inline. Both views show the same widget, so they stay in
        sync. Where the widget is shown is what its page reported (HostProbe), else what the environment says."""
        where = self.host.host or frontend()
        if where != "jupyterlab":
            self._stay_inline(where)
            return
        from IPython.display import display
        from sidecar import Sidecar
        if self.sidecar is not None:
            self.sidecar.close()
        self.sidecar = Sidecar(title="Loss profiles", anchor=anchor)
        with self.sidecar:
            display(self)
        self.message.value = ("<span class='lw-note'>Also open in JupyterLab's "
                              f"{'right sidebar' if anchor == 'right' else 'main area (' + anchor + ')'}.</span>")

    def _stay_inline(self, where: str) -> None:
        if where == "notebook7":
            text = ("Notebook 7 has no sidebar for widgets, so the widget stays here. For the sidebar, open this "
                    "notebook in JupyterLab (the JupyterLab button in the toolbar) and call show_sidebar() there.")
        else:
            text = f"No JupyterLab sidebar in {where}; the widget stays inline."
        self.message.value = f"<span class='lw-note'>{text}</span>"

    def _host_known(self, change) -> None:
        # show_sidebar ran before the page said where it is (a notebook run top to bottom) and guessed
        # JupyterLab: a sidecar there cannot draw, so close it and say why
        if self.sidecar is not None and change["new"] not in ("", "jupyterlab"):
            self.sidecar.close()
            self.sidecar = None
            self._stay_inline(change["new"])

    def close(self) -> None:
        self._closed = True
        store = getattr(self, "store", None)          # None when the constructor failed (then __del__ closes)
        if store is not None:
            store.close()
        charts = getattr(self, "charts", None)
        if charts is not None and charts.built:
            charts.plan_panel.close()
        super().close()

    # -- store -> controls -----------------------------------------------------------------------------
    def _select_changed(self, change) -> None:
        if not self._syncing and change["new"] and change["new"] != self.store.selected:
            self.store.selected = change["new"]

    def _compare_changed(self, change) -> None:
        if self._syncing:
            return                            # the store's own compare, echoed back: not the user's choice
        chosen = [n for n in change["new"] if n in self.store.profiles and n != self.store.selected]
        if self.store.selected:
            chosen = [self.store.selected] + chosen              # the selected profile is always compared
        if set(chosen) != set(self.store.compare):
            self.store.compare = chosen

    def _sync_controls(self, _change) -> None:
        names = list(self.store.profiles)
        self._syncing = True                  # new options move the controls' values: not the user's choice
        try:
            if list(self.select.options) != names:
                self.select.options = names
            if self.store.selected in names and self.select.value != self.store.selected:
                self.select.value = self.store.selected
            with self.compare.hold_sync():
                if self.compare.options != names:
                    self.compare.options = names             # the store's order: a new profile comes last
                self.compare.selected = self.store.selected
                value = [n for n in names if n in self.store.compare]
                if self.compare.value != value:
                    self.compare.value = value
        finally:
            self._syncing = False

    def _show_jobs(self) -> None:
        line = job_line(self.store.jobs)
        with self.job_status.hold_sync():
            self.job_status.value = line
            self.job_status.layout.display = "" if line else "none"

    def _draw_cards(self) -> None:
        profile = self.store.profiles.get(self.store.selected)
        with self.cards.hold_sync():
            self.cards.title = (profile.name + (" (partial)" if profile.partial else "")) if profile else "Model Summary"
            self.cards.cards = card_values(profile, self.store.target, self.store.plan())
