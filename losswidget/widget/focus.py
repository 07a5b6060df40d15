"""What every view points at: the shown profiles, the hovered and the clicked layer, and how a layer is
described. The charts and the layer table share one Focus, so hovering or clicking anywhere shows everywhere.

Layers are named by their graph-order `index` (the same in every profile of a model), never by their
position in one profile's list: a partial profile may lack some layers.
"""
from __future__ import annotations

import html

import numpy as np
from traitlets import HasTraits, Int

from ..profile import LossProfile, human
from .rules import short


class Focus(HasTraits):
    layer = Int(-1)       # the clicked layer (its curve is drawn); -1: none
    hovered = Int(-1)     # the layer under the pointer in any view; -1: none


FOLLOW_S = 0.06      # the views below the bars redraw this long after a change, once per burst of changes


class Later:
    """Redraw a secondary view (scatter, table, curve) a moment after a change, on the kernel's loop: the
    sensitivity bars, the chart a profile switch is about, reach the browser and paint first, and the
    changes of one switch (`selected`, then `compare`) make one redraw. Without a kernel (scripts, tests)
    the redraw runs at once.

    The timer is set through `add_callback`, the loop's only thread-safe entry: JupyterLab 4.6 sends widget
    messages to an ipykernel 7 subshell, so a change made in the page arrives on another thread, and a timer
    set from there never wakes the kernel's loop (the views stayed stale until the next cell ran)."""

    def __init__(self, redraw):
        self.redraw, self.pending = redraw, False

    def __call__(self, _change=None) -> None:
        loop = kernel_loop()
        if loop is None:
            self.redraw()
        elif not self.pending:
            self.pending = True
            loop.add_callback(loop.call_later, FOLLOW_S, self._run)

    def _run(self) -> None:
        self.pending = False
        self.redraw()


def kernel_loop():
    """The running kernel's event loop; None without a kernel (scripts, tests)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return getattr(getattr(get_ipython(), "kernel", None), "io_loop", None)


def after_ready(store, build, probe=None) -> None:
    """Call `build` once, a moment after the store's saved profiles are read and drawn (`ready`) and a page
    has drawn the widget (`probe.host`, set by js/host.js when it renders), on the kernel's loop. The views
    below the bars are made then: the first display carries only the widget models the bars need (each
    model is a message the page must handle before it draws), and the bars' data leaves before the rest.
    Waiting for a page: models made while it is still connecting could reach it before its widget manager
    listens for them (Voilà then said "widget model not found", once in a few runs). Without a kernel
    (scripts, tests) `build` runs at once."""
    loop = kernel_loop()
    if loop is None:
        build()
        return
    done = []

    def soon(_change=None) -> None:
        if done or not store.ready or (probe is not None and not probe.host):
            return
        done.append(True)                  # build_below is idempotent, should two threads get here at once
        store.unobserve(soon, "ready")
        if probe is not None:
            probe.unobserve(soon, "host")
        loop.add_callback(loop.call_later, FOLLOW_S, build)
    store.observe(soon, "ready")
    if probe is not None:
        probe.observe(soon, "host")
    soon()


def shown(store) -> list[LossProfile]:
    """The profiles drawn: the compared ones that exist, the selected one first."""
    names = [n for n in store.compare if n in store.profiles]
    if store.selected in store.profiles:
        names = [store.selected] + [n for n in names if n != store.selected]
    return [store.profiles[n] for n in names]


def event_layer(event: dict, index) -> int:
    """The layer index behind a bqplot hover / click event on a mark drawn over `index` (-1: none)."""
    position = int(event.get("data", {}).get("index", -1))
    return int(index[position]) if 0 <= position < len(index) else -1


def layer_of(profile: LossProfile, index: int):
    """The profile's layer with this graph-order index, or None."""
    layers = profile.layers
    if 0 <= index < len(layers) and layers[index].index == index:
        return layers[index]
    return next((l for l in layers if l.index == index), None)


def by_index(profile: LossProfile, index, values) -> np.ndarray:
    """A per-layer array of the profile (`values`, in its layer order) at these graph-order indices; NaN where
    it lacks the layer. Fast when the layers are the same (profiles of one model)."""
    index = np.asarray(index, dtype=int)
    own = np.fromiter((l.index for l in profile.layers), dtype=int, count=len(profile.layers))
    values = np.asarray(values, dtype=float)
    if np.array_equal(own, index):
        return values
    out = np.full(index.shape, np.nan)
    where = {int(i): k for k, i in enumerate(own)}
    for j, i in enumerate(index):
        k = where.get(int(i))
        if k is not None:
            out[j] = values[k]
    return out


def describe(profiles: list[LossProfile], index: int, *, normalised: bool = False, notes: tuple[str, ...] = ()) -> str:
    """The readout for one layer: identity, params and each shown profile's sensitivity (HTML)."""
    first = layer_of(profiles[0], index) if profiles else None
    if first is None:
        return ""
    values = []
    for p in profiles:
        l = layer_of(p, index)
        value = "not measured" if l is None else short(l.sensitivity)
        values.append(f"{html.escape(p.name)} <b>{value}</b>" if len(profiles) > 1 else f"<b>{value}</b>")
    extra = "".join(f" · <span class='lw-note'>{html.escape(n)}</span>" for n in notes)
    scale = " (bars normalised per profile; values here are raw)" if normalised else ""
    return (f"<b>#{first.index} {html.escape(first.name)}</b> · {html.escape(first.op_type)} · "
            f"<code>{html.escape(first.weight)}</code> {list(first.shape)} · {human(first.params)} params"
            f"<br>sensitivity L(0.95) − L(0): {', '.join(values)}{scale}{extra}")
