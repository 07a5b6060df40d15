"""Speed in the browser: a 500-layer model's widget in JupyterLab, driven by Playwright in Debian's Chromium.

Measures (in the page's clock) the time from running the cell to all bars drawn, with the profiles cached
in profiles_dir (goal < 2 s), and from picking another profile to its bars drawn (goal < 300 ms); and, for
each, the time until every view is drawn too (the scatter's points, the layer table's rows), which follow
the bars. The cell runs DISPLAYS times and the profile is switched SWITCHES times (alternating); medians,
with the range, since one run on a shared machine varies by 2x.

  python benchmarks/browser_speed.py
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "e2e"))

from common import make_model  # noqa: E402
from labtools import CHROMIUM, TOKEN, free_port, kernel_env, notebook, open_notebook, wait_for_port  # noqa: E402

BARS = ".lw-sensitivity-chart .bargroup rect"
DISPLAYS, SWITCHES = 3, 9
# a bar is drawn once it has a finite height (a layer whose sensitivity is 0 is drawn with height 0)
DRAWN = (f"n => [...document.querySelectorAll('{BARS}')].filter(e => !e.dataset.old && e.hasAttribute('height')"
         " && isFinite(parseFloat(e.getAttribute('height')))).length >= n")
ALL_DRAWN = ("n => document.querySelectorAll('.lw-scatter-chart .dot:not([data-old])').length >= n"
             " && document.querySelectorAll('.lw-layer-table tbody tr.lw-row:not([data-old])').length >= 10")
STATE = ("() => [[...document.querySelectorAll('" + BARS + "')].map(e => e.getAttribute('height')).join(),"
         " [...document.querySelectorAll('.lw-scatter-chart .dot')].map(e => e.getAttribute('transform')).join(),"
         " [...document.querySelectorAll('.lw-layer-table tbody tr.lw-row td:nth-child(5)')].map(e => e.textContent)"
         ".join()]")


def spread(values: list[float], unit: str, scale: float = 1.0) -> str:
    v = sorted(x * scale for x in values)
    fmt = (lambda x: f"{x:.2f}") if unit == "s" else (lambda x: f"{x:.0f}")
    return f"{fmt(statistics.median(v))} {unit} (range {fmt(v[0])}-{fmt(v[-1])}, n={len(v)})"


def cpu_model() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main() -> None:
    from playwright.sync_api import sync_playwright

    from losswidget.widget.app import LossProfileWidget

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "t83.onnx"
        make_model("transformer", model, "--layers", "83", "--hidden", "64", "--vocab", "100", local_ok=True)
        warm = LossProfileWidget(model, profiles_dir=root / "profiles")
        layers = len(warm.wait()["Baseline"].layers)
        warm.close()
        notebook(root / "speed.ipynb", "from losswidget import LossProfileWidget",
                 f"w = LossProfileWidget({str(model)!r}, profiles_dir={str(root / 'profiles')!r})\nw")
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                                 "--ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={TOKEN}",
                                 f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={root / 'ws'}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=kernel_env())
        try:
            wait_for_port(port, proc)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                            "--disable-background-networking"])
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                open_notebook(page, {"url": f"http://127.0.0.1:{port}"}, "speed.ipynb")
                cells = page.locator(".jp-Notebook .jp-Cell")
                cells.nth(0).locator(".jp-InputArea-editor").click(force=True)
                page.keyboard.press("Shift+Enter")                   # imports first: not part of the measure
                page.wait_for_function("() => document.querySelector('.jp-Cell .jp-InputPrompt')"
                                       ".innerText.includes('1')", timeout=60_000)
                time.sleep(1)
                drawn, drawn_all = [], []
                for _ in range(DISPLAYS):                            # each run replaces the last output
                    page.evaluate("() => document.querySelectorAll('.lw-sensitivity-chart rect, .lw-scatter-chart"
                                  " .dot, .lw-layer-table tr').forEach(e => { e.dataset.old = '1'; })")
                    cells.nth(1).locator(".jp-InputArea-editor").click(force=True)
                    t0 = page.evaluate("() => performance.now()")
                    page.keyboard.press("Shift+Enter")
                    page.wait_for_function(DRAWN, arg=layers, timeout=60_000, polling="raf")
                    drawn.append(page.evaluate("() => performance.now()") - t0)
                    page.wait_for_function(ALL_DRAWN, arg=layers, timeout=60_000, polling="raf")
                    drawn_all.append(page.evaluate("() => performance.now()") - t0)
                    time.sleep(2)
                switched, switched_all = [], []
                for k in range(SWITCHES):
                    bars, dots, rows = page.evaluate(STATE)
                    t1 = page.evaluate("() => performance.now()")
                    select = page.locator(".lw-profile-select select")
                    select.select_option("Approximated" if select.input_value() == "Baseline" else "Baseline")
                    page.wait_for_function(f"b => [...document.querySelectorAll('{BARS}')]"
                                           ".map(e => e.getAttribute('height')).join() !== b", arg=bars,
                                           timeout=30_000, polling="raf")
                    switched.append(page.evaluate("() => performance.now()") - t1)
                    page.wait_for_function(f"([d, r]) => ({STATE})()[1] !== d && ({STATE})()[2] !== r",
                                           arg=[dots, rows], timeout=30_000, polling="raf")
                    switched_all.append(page.evaluate("() => performance.now()") - t1)
                    time.sleep(1.5)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(20)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{layers} layers on {cpu_model()} ({os.cpu_count()} cores), load average {load}:\n"
          f"  cell run to bars drawn {spread(drawn, 's', 1e-3)} (goal < 2 s); every view {spread(drawn_all, 's', 1e-3)}\n"
          f"  switching profile to bars drawn {spread(switched, 'ms')} (goal < 300 ms); every view "
          f"{spread(switched_all, 'ms')}")


if __name__ == "__main__":
    main()
