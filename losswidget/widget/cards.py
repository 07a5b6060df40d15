"""Model Summary cards: an anywidget view (js/cards.js) fed by values the engine computed."""
from __future__ import annotations

from importlib.resources import files

import anywidget
from traitlets import Dict, List, Unicode

from ..plan import Plan
from ..profile import LossProfile, human
from .rules import short

JS_DIR = files("losswidget.js")


def _levels_text(levels) -> str:
    levels = list(levels)
    if len(levels) > 6:
        return f"{len(levels)} levels, {levels[0]:g}–{levels[-1]:g}"
    return "levels " + ", ".join(f"{l:g}" for l in levels)


def card_values(profile: LossProfile | None, target: float, plan: Plan | None = None) -> list[dict]:
    """The cards for a profile at a target, as plain dicts (what the view draws and the tests read); `plan`:
    the plan the widget shows (with the user's exclusions), else the profile's plan at the target."""
    if profile is None:
        return [{"key": "empty", "label": "No profile yet", "value": "…", "detail": "computing", "tooltip": ""}]
    s = profile.summary_at(target, plan)
    kept = sum(l.excluded for l in plan.layers) if plan is not None else 0
    excluded = f"; {kept} layer{'s' if kept > 1 else ''} excluded" if kept else ""
    share = f"{s.prunable_params / s.total_params:.0%} prunable" if s.total_params else ""
    settings = profile.settings
    method = profile.method + (f" ({settings['metric']})" if settings.get("metric") else "")
    if s.est_recovery is not None:
        targets = profile.recovery.targets
        measured = not kept and any(abs(t - s.achieved_sparsity) < 1e-3 for t in targets)
        quality = {"key": "recovery", "label": "Est. recovery", "value": f"{s.est_recovery:.1%}",
                   "detail": f"{s.recovery_kind}, {'measured' if measured else 'interpolated'}"
                             + (" from plans without exclusions" if kept else ""),
                   "tooltip": f"{s.recovery_kind} of the pruned model (this plan) with the dense one, measured on "
                              f"the profile's data at {', '.join(f'{t:.0%}' for t in targets)} and interpolated "
                              "between them."}
    else:
        quality = {"key": "recovery", "label": "Weight energy kept",
                   "value": "n/a" if s.weight_energy_kept is None else f"{s.weight_energy_kept:.1%}",
                   "detail": "data-free; not a recovery estimate",
                   "tooltip": "Share of the layers' sum of w² the plan keeps. A data-free profile cannot say how much "
                              "accuracy a plan keeps: run a one-shot profile on data for that."}
    return [
        {"key": "params", "label": "Total params", "value": human(s.total_params),
         "detail": f"{human(s.prunable_params)} in {len(profile.layers)} layers, {share}",
         "tooltip": "Logical weights of stored floating-point and quantized tensors, each counted once."},
        {"key": "reduction", "label": "Est. params reduction", "value": f"{s.est_params_reduction:.2f}×",
         "detail": f"plan at {target:.0%}: {s.achieved_sparsity:.1%} of prunable params pruned{excluded}",
         "tooltip": "Total params / params left under the plan: per-layer sparsity chosen by the least cost per "
                    "pruned parameter on this profile's curves, no layer past 95%."},
        {"key": "sensitivity", "label": "Avg sensitivity", "value": short(s.avg_sensitivity),
         "detail": "L(0.95) − L(0) per layer", "tooltip": "Mean over layers of the loss change at 95% sparsity."},
        quality,
        {"key": "settings", "label": "Pruning settings", "value": method,
         "detail": f"{_levels_text(profile.levels)}; target {target:.0%}",
         "tooltip": "How this profile was computed."},
        {"key": "quantization", "label": "Quantization", "value": "not analysed", "detail": "",
         "tooltip": "Quantization sensitivity is future work."},
    ]


class SummaryCards(anywidget.AnyWidget):
    _esm = JS_DIR / "cards.js"
    _css = JS_DIR / "cards.css"
    title = Unicode("").tag(sync=True)
    cards = List(Dict()).tag(sync=True)
