"""Small anywidget controls: the model header line and the compare checkboxes.

The header carries the widget's stylesheet (js/losswidget.css: layout that wraps down to a 250 px
sidebar, and bqplot's colours tied to JupyterLab's theme variables), so it loads with the widget wherever
it is shown.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import anywidget
from traitlets import List, Unicode

from ..profile import human


class Header(anywidget.AnyWidget):
    """One line naming the model: file name, short content hash, params and layers."""
    _esm = files("losswidget.js") / "header.js"
    _css = files("losswidget.js") / "losswidget.css"
    model_name = Unicode("").tag(sync=True)
    model_hash = Unicode("").tag(sync=True)        # "blake3:1a2b3c4d" (short) or "" while unknown
    details = Unicode("").tag(sync=True)           # "85.7 M params · 73 layers"

    def show(self, store) -> None:
        """Fill from the store: the model's path (or graph name) and hash, the params of any profile."""
        model = store.model
        name = Path(model).name if isinstance(model, str) else (getattr(getattr(model, "graph", None), "name", "")
                                                                or "in-memory model")
        digest = getattr(store, "model_hash", "") or ""
        algo, _, hexes = digest.partition(":")
        profile = next(iter(store.profiles.values()), None)
        details = (f"{human(profile.model.total_params)} params · {len(profile.layers)} layers"
                   if profile is not None else "")
        with self.hold_sync():
            self.model_name = name
            self.model_hash = f"{algo}:{hexes[:8]}" if hexes else digest
            self.details = details


class CompareChooser(anywidget.AnyWidget):
    """Checkboxes, one per profile in the store's order; `value` holds the checked names in that order. The
    selected profile is always compared (its box is checked and disabled)."""
    _esm = files("losswidget.js") / "compare.js"
    options = List(Unicode()).tag(sync=True)
    value = List(Unicode()).tag(sync=True)
    selected = Unicode("").tag(sync=True)
