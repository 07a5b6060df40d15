"""Model Summary cards: an anywidget view (js/cards.js) fed by values the engine computed."""
from __future__ import annotations

from importlib.resources import files

import anywidget
from traitlets import Dict, List, Unicode

from ..profile import LossProfile, human

_JS = files("losswidget.js")


def _levels_text(levels) -> str:
    levels = list(levels)
    if len(levels) > 6:
        return f"{len(levels)} levels, {levels[0]:g}–{levels[-1]:g}"
    return ", ".join(f"{l:g}" for l in levels)


def card_values(profile: LossProfile | None, target: float) -> list[dict]:
    """The cards for a profile at a target, as plain dicts (what the view draws and the tests read)."""
    if profile is None:
        return [{"key": "empty", "label": "No profile yet", "value": "…", "detail": "computing", "tooltip": ""}]
    s = profile.summary_at(target)
    share = f"{s.prunable_params / s.total_params:.0%} prunable" if s.total_params else ""
    settings = profile.settings
    method = profile.method + (f" ({settings['metric']})" if settings.get("metric") else "")
    return [
        {"key": "params", "label": "Total params", "value": human(s.total_params),
         "detail": f"{human(s.prunable_params)} in {len(profile.layers)} layers, {share}",
         "tooltip": "Elements of stored floating-point and quantized tensors, each counted once."},
        {"key": "reduction", "label": "Est. params reduction", "value": f"{s.est_params_reduction:.2f}×",
         "detail": f"at {target:.0%} target sparsity",
         "tooltip": "Total params / params left after allocating sparsity per layer, cheapest sensitivity first, "
                    "no layer past 95%."},
        {"key": "sensitivity", "label": "Avg sensitivity", "value": f"{s.avg_sensitivity:.4g}",
         "detail": "L(0.95) − L(0) per layer", "tooltip": "Mean over layers of the loss change at 95% sparsity."},
        {"key": "recovery", "label": "Est. recovery",
         "value": "n/a" if s.est_recovery is None else f"{s.est_recovery:.1%}",
         "detail": "measured" if profile.measured_recovery is not None and s.recovery_note == profile.recovery_note
         else "estimated", "tooltip": s.recovery_note},
        {"key": "settings", "label": "Pruning settings", "value": method,
         "detail": f"levels {_levels_text(profile.levels)}; target {target:g}",
         "tooltip": "How this profile was computed."},
        {"key": "quantization", "label": "Quantization", "value": "not analysed", "detail": "",
         "tooltip": "Quantization sensitivity is future work."},
    ]


class SummaryCards(anywidget.AnyWidget):
    _esm = _JS / "cards.js"
    _css = _JS / "cards.css"
    title = Unicode("").tag(sync=True)
    cards = List(Dict()).tag(sync=True)
