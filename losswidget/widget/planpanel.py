"""What to do with the plan the widget shows (ProfileStore.plan: the selected profile at the target, the
user's exclusions kept dense): see and clear the exclusions, download the plan (JSON, SparseML recipe) and
save the pruned model.

Saving runs `losswidget.prune` on a worker thread of its own (not the analyses' queue: a save must not wait
behind an hour-long profile), so the kernel stays free; the plan is taken when the button is pressed, and
the written path, or what went wrong, is shown when it ends. The default path is beside the model, named for
the model, the profile and the target, so saves of different plans do not overwrite each other.
"""
from __future__ import annotations

import html
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import ipywidgets as w
from traitlets import Unicode

from ..errors import LossWidgetError, SettingsError
from ..plan import Plan
from ..prune import prune
from .downloads import Downloads, slug
from .folder import first_line
from .store import on_kernel_thread


def model_stem(store, profile=None) -> str:
    """The model's file name without .onnx, as a file name part ("model" for an in-memory model)."""
    path = (profile.model.path if profile is not None else None) or store.model_path or (
        store.model if isinstance(store.model, str) else None)
    return slug(Path(path).stem) if path else "model"


def plan_stem(store, plan: Plan) -> str:
    """`<model>-<profile>-plan<NN>`: what a plan's files are named (NN: the target in percent)."""
    return f"{model_stem(store)}-{slug(plan.profile)}-plan{round(100 * plan.target)}"


PACKAGE = Path(__file__).resolve().parents[1]


def default_output(store, plan: Plan | None) -> str:
    """Beside the model: `<model>-<profile>-pruned<NN>.onnx`; when the model is the bundled demo (never
    written into the installed package) or its folder is not writable, in the widget's profiles folder when
    it exists (the app's `losswidget-profiles`: its kernel runs in a cache folder nobody looks in), else the
    working folder; "" for an in-memory model (no folder to use)."""
    if plan is None or not store.model_path:
        return ""
    folder = Path(store.model_path).resolve().parent
    if folder.is_relative_to(PACKAGE) or not os.access(folder, os.W_OK):
        profiles = store.folder.path if store.folder is not None else None
        folder = profiles if profiles is not None and profiles.is_dir() and os.access(profiles, os.W_OK) else Path.cwd()
    return str(folder / f"{model_stem(store)}-{slug(plan.profile)}-pruned{round(100 * plan.target)}.onnx")


class PlanExporter(Downloads):
    """Export plan: the shown plan as JSON (losswidget.load_plan reads it) or a SparseML-style recipe."""
    empty = Unicode("No plan yet: wait for a profile to finish.")

    def __init__(self, store):
        super().__init__(buttons=[{"kind": "plan", "label": "Export plan JSON", "format": "plan JSON"},
                                  {"kind": "recipe", "label": "Export plan recipe",
                                   "format": "SparseML recipe (YAML)"}])
        self.store = store
        store.observe(self._describe, names=["profiles", "selected", "target", "excluded"])
        self._describe(None)

    def payload(self, kind: str) -> dict | None:
        plan = self.store.plan()
        if plan is None:
            return None
        if kind == "recipe":
            return {"filename": plan_stem(self.store, plan) + ".yaml", "mime": "text/yaml", "text": plan.to_recipe()}
        return {"filename": plan_stem(self.store, plan) + ".json", "mime": "application/json", "text": plan.to_json()}

    def _describe(self, _change) -> None:
        profile = self.store.selected if self.store.selected in self.store.profiles else ""
        self.what = f"the plan of {profile!r} at {self.store.target:.0%}" if profile else ""


class PlanPanel:
    """Exclusions, plan exports and "Save pruned model", under the plan curve."""

    def __init__(self, store):
        self.store = store
        self.summary = w.HTML(_dom_classes=["lw-plan-summary"])
        self.clear = w.Button(description="Clear exclusions", layout=w.Layout(width="auto"),
                              tooltip="Put every excluded layer back into the plan",
                              _dom_classes=["lw-clear-exclusions"])
        self.exporter = PlanExporter(store)
        self.path = w.Text(description="Save to:", style={"description_width": "initial"},
                           layout=w.Layout(flex="1 1 200px", min_width="0"), _dom_classes=["lw-prune-path"])
        self.save_button = w.Button(description="Save pruned model", layout=w.Layout(width="auto"),
                                    tooltip="Write the model with this plan applied (losswidget.prune)",
                                    _dom_classes=["lw-save-pruned"])
        self.status = w.HTML(_dom_classes=["lw-prune-status"])
        self._pool: ThreadPoolExecutor | None = None
        self.saving: Future | None = None
        save_row = w.HBox([self.path, self.save_button], layout=w.Layout(flex_flow="row wrap", align_items="center"),
                          _dom_classes=["lw-prune-row"])
        actions = w.HBox([self.clear, self.exporter], layout=w.Layout(flex_flow="row wrap", align_items="center"),
                         _dom_classes=["lw-plan-actions"])
        self.box = w.VBox([self.summary, actions, save_row, self.status],
                          _dom_classes=["lw-plan-panel", "lw-chart-block"])
        self.clear.on_click(lambda _: store.clear_excluded())
        self.save_button.on_click(lambda _: self._clicked())
        store.observe(lambda _: self.redraw(), names=["profiles", "selected", "target", "excluded"])
        self.redraw()

    def redraw(self) -> None:
        plan = self.store.plan()
        names = self.store.exclusions()
        self.clear.disabled = not names
        self.clear.description = f"Clear exclusions ({len(names)})" if names else "Clear exclusions"
        self.path.placeholder = default_output(self.store, plan) or "path/to/pruned.onnx"
        self.save_button.disabled = plan is None or (self.saving is not None and not self.saving.done())
        if plan is None:
            self.summary.value = "<span class='lw-hint'>No plan yet: it appears with the first profile.</span>"
            return
        parts = [f"Plan of <b>{html.escape(plan.profile)}</b> at {plan.target:.0%}: {plan.achieved:.1%} of "
                 f"prunable params pruned, {plan.est_params_reduction:.2f}× fewer params."]
        if names:
            shown = ", ".join(html.escape(n) for n in names[:6]) + (" …" if len(names) > 6 else "")
            parts.append(f"<span class='lw-plan-excluded'>✕ {len(names)} excluded (kept dense): {shown}</span>")
        else:
            parts.append("<span class='lw-hint'>Exclude a layer with its box in the table (<i>In plan</i>) or "
                         "under its curve.</span>")
        parts += [f"<span class='lw-plan-warning'>⚠ {html.escape(t)}</span>" for t in plan.warnings]
        self.summary.value = "<br>".join(parts)

    # -- saving ------------------------------------------------------------------------------------------
    def output(self, path=None) -> Path:
        """Where a save goes: `path`, else the typed path, else the default beside the model."""
        text = str(path) if path is not None else self.path.value.strip() or default_output(self.store,
                                                                                             self.store.plan())
        if not text:
            raise SettingsError("The model is not a file, so there is no folder to save beside it: type a path "
                                "ending in .onnx under Save to.")
        out = Path(text).expanduser().absolute()
        if out.suffix != ".onnx":
            raise SettingsError(f"The pruned model's path should end in .onnx, got {out}.")
        if not out.parent.is_dir():
            raise SettingsError(f"The folder {out.parent} does not exist; create it or choose another path.")
        return out

    def save(self, path=None) -> Future:
        """Write the model pruned by the shown plan (to `path`, the typed path or the default) on a worker
        thread; the Future's result is the written path. The status line follows."""
        plan = self.store.plan()
        if plan is None:
            raise SettingsError("No plan yet: wait for a profile to finish.")
        if self.saving is not None and not self.saving.done():
            raise SettingsError("A pruned model is being saved; wait for it to finish.")
        out = self.output(path)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="losswidget-prune")
        self.status.value = f"<span class='lw-hint'>Saving {html.escape(str(out))} …</span>"
        self.save_button.disabled = True
        future = self.saving = self._pool.submit(prune, self.store.model, plan, out)
        future.add_done_callback(lambda f: on_kernel_thread(lambda: self._saved(f, out, plan)))
        return future

    def _clicked(self) -> None:
        try:
            self.save()
        except LossWidgetError as exc:
            self._error(str(exc))

    def _saved(self, future: Future, out: Path, plan: Plan) -> None:
        self.save_button.disabled = self.store.plan() is None
        exc = future.exception()
        if exc is None:
            excluded = sum(l.excluded for l in plan.layers)
            self.status.value = (f"<span class='lw-prune-done'>Saved <code>{html.escape(future.result())}</code></span>"
                                 f" <span class='lw-hint'>(plan of {html.escape(plan.profile)} at {plan.target:.0%}: "
                                 f"{plan.achieved:.1%} pruned" + (f", {excluded} excluded" if excluded else "")
                                 + ")</span>")
        elif isinstance(exc, OSError):
            self._error(f"Could not write {out}: {exc.strerror or exc}. Choose a folder you can write to.")
        elif isinstance(exc, LossWidgetError):
            self._error(str(exc))
        else:
            self._error(f"Could not save the pruned model: {type(exc).__name__}: {first_line(exc)}")

    def _error(self, text: str) -> None:
        self.status.value = f"<span class='lw-prune-error'>{html.escape(text)}</span>"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
