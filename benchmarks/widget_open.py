"""How long the widget keeps the kernel busy before it appears, on a large model, and what of that is the hash.

Builds the 85.7M-parameter transformer (343 MB; or takes --model) and times, each in a fresh process:
opening the model and reading its graph, the content hash (BLAKE3 of the file) with the file's pages evicted
from the page cache first ("cold", as after a reboot or for a model just copied) and then again in a new
process with the pages cached ("warm"), and `LossProfileWidget(model, autostart=False)` cold and warm.

  python benchmarks/widget_open.py [--model big.onnx]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from common import make_model

STEP = r"""
import json, os, sys, time
path, what = sys.argv[1], sys.argv[2]
if sys.argv[3] == "cold":
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)          # drop the file's clean pages from the cache
    os.close(fd)
t0 = time.perf_counter()
if what == "open":
    from losswidget.graph import read_graph
    from losswidget.onnxfile import open_model
    t0 = time.perf_counter()
    with open_model(path) as mf:
        n = len(read_graph(mf).layers)
elif what == "hash":
    from losswidget.onnxfile import open_model
    mf = open_model(path)
    t0 = time.perf_counter()
    mf.content_hash()
    n = 0
else:
    from losswidget.widget.app import LossProfileWidget
    t0 = time.perf_counter()
    w = LossProfileWidget(path, autostart=False)
    n = 0
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "layers": n}))
"""


def step(model: str, what: str, cache: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEP, model, what, cache], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="an .onnx file (default: build the 343 MB transformer)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model or make_model("transformer", Path(tmp) / "t12.onnx", "--layers", "12", "--hidden", "768",
                                      local_ok=True)
        size = os.path.getsize(model) / 1e6
        print(f"{Path(model).name}: {size:.0f} MB; {platform.processor() or platform.machine()}, "
              f"load {os.getloadavg()[0]:.2f}")
        for what, label in (("open", "open + read graph"), ("hash", "content hash"),
                            ("widget", "LossProfileWidget(autostart=False)")):
            cold, warm = step(model, what, "cold"), step(model, what, "warm")
            print(f"  {label:<36} cold {cold:6.3f} s   warm {warm:6.3f} s")


if __name__ == "__main__":
    main()
