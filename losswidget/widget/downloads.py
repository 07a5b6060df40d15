"""Download buttons (js/export.js) answered by the kernel: the profile exports and the plan exports.

The file is made in the kernel only when a button is pressed. A click sends a request id and the answer
carries it back: the kernel's answer reaches every view of the widget (inline and in the sidebar), and only
the view that asked saves it, so one click is one download. Subclasses say which buttons (`buttons`) and
what each one downloads (`payload`).
"""
from __future__ import annotations

import re

import anywidget
from traitlets import Dict, List, Unicode

from ..errors import LossWidgetError
from .cards import JS_DIR


def slug(text: str) -> str:
    """Text as a file name part: runs of anything but letters, digits, . _ - become one _."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "profile"


class Downloads(anywidget.AnyWidget):
    _esm = JS_DIR / "export.js"
    what = Unicode("").tag(sync=True)                 # what the buttons download, for their tooltips
    buttons = List(Dict()).tag(sync=True)             # [{"kind", "label", "format"}]: one button each
    empty = Unicode("Nothing to download yet.")        # the answer when payload() has nothing

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.on_msg(self._handle)

    def payload(self, kind: str) -> dict | None:
        """{"filename", "mime", "text"} for a button's kind, or None when there is nothing to download."""
        raise NotImplementedError

    def _handle(self, _widget, content, _buffers) -> None:
        request = content.get("id") if isinstance(content, dict) else None
        kind = content.get("kind", "") if isinstance(content, dict) else ""
        try:
            payload = self.payload(kind) if kind in {b["kind"] for b in self.buttons} else {
                "error": f"Unknown download {kind!r}."}
        except LossWidgetError as exc:
            payload = {"error": str(exc)}
        self.send({**(payload or {"error": self.empty}), "id": request})
