"""Kernel-side speed of the widget: a 500-layer model whose profiles are already cached, and a 343 MB one.

Measures, in one process, the time from LossProfileWidget(...) to all views ready (cards, both charts,
panel) with the Approximated and Baseline profiles loaded from profiles_dir, then the time to switch the
selected profile, and how many widget state messages a selection change sends. Then, on a 12-layer
transformer of hidden size 768 (85 M params, 343 MB), how long the constructor holds the kernel (it reads
the model's header; the content hash runs in the background) next to how long the hash takes.

  python benchmarks/widget_speed.py
"""
from __future__ import annotations

import subprocess
import sys
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
        layers = len(warm.wait(600)["Baseline"].layers)
        warm.close()

        sent = []
        original = ipywidgets.Widget.send_state

        def counting(self, key=None):
            sent.append((type(self).__name__, key))
            return original(self, key)
        ipywidgets.Widget.send_state = counting

        t0 = time.perf_counter()
        widget = LossProfileWidget(model, profiles_dir=folder)
        widget.wait()                            # the hash, the saved profiles read and drawn
        ready = time.perf_counter() - t0
        assert not widget.jobs, "profiles were recomputed instead of loaded"
        sent.clear()
        other = next(n for n in widget.profiles if n != widget.selected)
        t0 = time.perf_counter()
        widget.selected = other
        switch = time.perf_counter() - t0
        print(f"{layers} layers: widget ready in {ready:.3f} s (goal < 0.5 s) with profiles cached; "
              f"switching profile {switch * 1000:.1f} ms, {len(sent)} state messages: "
              f"{sorted(set(n for n, _ in sent))}")
        widget.close()

        big = Path(tmp) / "t12.onnx"
        make_model("transformer", big, "--layers", "12", "--hidden", "768")
        hashing = subprocess.run([sys.executable, "-c", HASH, str(big)], capture_output=True, text=True, check=True)
        t0 = time.perf_counter()
        widget = LossProfileWidget(big, profiles_dir=folder, autostart=False)
        shown = time.perf_counter() - t0
        widget.wait()
        identified = time.perf_counter() - t0
        print(f"{big.stat().st_size / 1e6:.0f} MB model: the constructor holds the kernel {shown:.3f} s; the "
              f"content hash ({float(hashing.stdout):.2f} s in a fresh process) and reading profiles_dir take "
              f"{identified:.2f} s in the background")
        widget.close()
        print(f"losswidget {losswidget.__version__}")


HASH = ("import sys, time\nfrom losswidget.analysis import model_hash\nt = time.perf_counter()\n"
        "model_hash(sys.argv[1])\nprint(time.perf_counter() - t)")


if __name__ == "__main__":
    main()
