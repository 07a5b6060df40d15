"""What every view points at: the shown profiles, the hovered and the clicked layer, and how a layer is
described. The charts and the layer table share one Focus, so hovering or clicking anywhere shows everywhere.

Layers are named by their graph-order `index` (the same in every profile of a model), never by their
position in one profile's list: a partial profile may lack some layers.
"""
from __future__ import annotations

import html

from traitlets import HasTraits, Int

from ..profile import LossProfile, human
from .rules import short


class Focus(HasTraits):
    layer = Int(-1)       # the clicked layer (its curve is drawn); -1: none
    hovered = Int(-1)     # the layer under the pointer in any view; -1: none


def shown(store) -> list[LossProfile]:
    """The profiles drawn: the compared ones that exist, the selected one first."""
    names = [n for n in store.compare if n in store.profiles]
    if store.selected in store.profiles:
        names = [store.selected] + [n for n in names if n != store.selected]
    return [store.profiles[n] for n in names]


def layer_of(profile: LossProfile, index: int):
    """The profile's layer with this graph-order index, or None."""
    layers = profile.layers
    if 0 <= index < len(layers) and layers[index].index == index:
        return layers[index]
    return next((l for l in layers if l.index == index), None)


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
