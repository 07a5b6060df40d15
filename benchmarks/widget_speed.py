"""Kernel-side speed of the widget on a 500-layer model whose profiles are already cached.

Measures, in one process, the time from LossProfileWidget(...) to all views ready (cards, both charts,
panel) with the Approximated and Baseline profiles loaded from profiles_dir, then the time to switch the
selected profile, and how many widget state messages a selection change sends.

  python benchmarks/widget_speed.py
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import make_model


def main() -> None:
    import ipywidgets

    import losswidget
    from losswidget.widget.app import LossProfileWidget

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "t83.onnx"
        make_model("transformer", model, "--layers", "83", "--hidden", "64", "--vocab", "100", local_ok=True)
        folder = Path(tmp) / "profiles"
        warm = LossProfileWidget(model, profiles_dir=folder)
        for job in warm.store._handles.values():
            job.result(600)
        layers = len(warm.profiles["Baseline"].layers)
        warm.close()

        sent = []
        original = ipywidgets.Widget.send_state

        def counting(self, key=None):
            sent.append((type(self).__name__, key))
            return original(self, key)
        ipywidgets.Widget.send_state = counting

        t0 = time.perf_counter()
        widget = LossProfileWidget(model, profiles_dir=folder)
        ready = time.perf_counter() - t0
        assert not widget.jobs, "profiles were recomputed instead of loaded"
        sent.clear()
        t0 = time.perf_counter()
        widget.selected = "Baseline"
        switch = time.perf_counter() - t0
        print(f"{layers} layers: widget ready in {ready:.3f} s (goal < 0.5 s) with profiles cached; "
              f"switching profile {switch * 1000:.1f} ms, {len(sent)} state messages: "
              f"{sorted(set(n for n, _ in sent))}")
        widget.close()
        print(f"losswidget {losswidget.__version__}")


if __name__ == "__main__":
    main()
