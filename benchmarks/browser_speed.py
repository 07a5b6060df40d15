"""Speed in the browser: a 500-layer model's widget in JupyterLab, driven by Playwright in Debian's Chromium.

Measures, in the page's clock, the time from the Enter that runs the cell to the first animation frame with
all bars in the page, with the profiles cached in profiles_dir (goal < 2 s), and from the profile select's
change event to the frame with the new bars (goal < 300 ms); and, for each, the time until every view is
drawn too (the scatter's points moved, the layer table's sensitivity column rewritten), which follow the
bars. The cell runs DISPLAYS times and the profile is switched SWITCHES times (alternating); medians,
with the range, since one run on a shared machine varies by 2x.

  python benchmarks/browser_speed.py [--screens DIR]

A wait that times out prints what the page shows (bars and their heights, whether the scatter and the
table changed, console errors) and saves a screenshot in --screens (default: the temp dir), then stops.
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
# bqplot's Scatter places each point's group (.object_grp); its .dot path carries no transform
STATE = ("() => [[...document.querySelectorAll('" + BARS + "')].map(e => e.getAttribute('height')).join(),"
         " [...document.querySelectorAll('.lw-scatter-chart .object_grp')].map(e => e.getAttribute('transform')).join(),"
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


DIAGNOSIS = """() => {
  const bars = [...document.querySelectorAll('%s')];
  const heights = bars.filter(e => !e.dataset.old).map(e => e.getAttribute('height'));
  const finite = heights.filter(h => h !== null && isFinite(parseFloat(h)));
  return {bars: bars.length, old_bars: bars.length - heights.length, finite: finite.length,
          missing: heights.filter(h => h === null).length, nan: heights.filter(h => h !== null && !isFinite(parseFloat(h))).length,
          distinct_heights: new Set(finite).size, first_heights: heights.slice(0, 8),
          bar_marks: document.querySelectorAll('.lw-sensitivity-chart .bargroup').length,
          dots: document.querySelectorAll('.lw-scatter-chart .dot:not([data-old])').length,
          rows: document.querySelectorAll('.lw-layer-table tbody tr.lw-row:not([data-old])').length,
          outputs: document.querySelectorAll('.lw-sensitivity-chart').length,
          selected: (document.querySelector('.lw-profile-select select') || {}).value};
}""" % BARS


KERNEL_STATE = ("print('selected', w.store.selected, 'compare', w.store.compare)\n"
                "print('bars', w.charts.bars.y[:6])\nprint('scatter', w.charts.scatter.points.y[:6])\n"
                "print('table', [r['sensitivity'] for r in w.charts.table.rows[:6]], w.charts.table.sens_label)")


class Timing:
    """The page's waits; on a timeout, what the page shows, a screenshot, and the console's errors."""

    def __init__(self, page, screens: Path):
        self.page, self.screens, self.console = page, screens, []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def wait(self, what: str, expression: str, arg=None, timeout: float = 30_000, before=None) -> float:
        """The page's clock (ms) at the first animation frame where `expression` holds."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        try:
            return self.page.wait_for_function(f"a => ({expression})(a) && performance.now()", arg=arg,
                                               timeout=timeout, polling="raf").json_value()
        except PlaywrightTimeout:
            self.screens.mkdir(parents=True, exist_ok=True)
            shot = self.screens / f"browser_speed-{what.replace(' ', '-')}.png"
            self.page.screenshot(path=str(shot), full_page=True)
            print(f"timed out waiting for {what} after {timeout / 1000:.0f} s; the page shows:", flush=True)
            print(f"  {self.page.evaluate(DIAGNOSIS)}")
            if before is not None:
                now = self.page.evaluate(STATE)
                print("  changed since the switch: " + ", ".join(
                    f"{name} {'yes' if a != b else 'no'}" for name, a, b in zip(("bars", "scatter", "table"), before, now)))
                print(f"  table sensitivity column before: {before[2][:200]!r}\n  now: {now[2][:200]!r}")
            errors = [m for m in self.console if m.startswith(("error", "pageerror", "warning"))]
            print(f"  console errors / warnings ({len(errors)}): " + "\n    ".join([""] + errors[-20:]))
            print(f"  screenshot: {shot}", flush=True)
            cell = self.page.locator(".jp-Notebook .jp-Cell").nth(2)       # what the kernel holds
            cell.locator(".jp-InputArea-editor").click(force=True)
            self.page.keyboard.press("Shift+Enter")
            self.page.wait_for_timeout(3000)
            print("  kernel side: " + cell.locator(".jp-OutputArea").inner_text().replace("\n", "\n    "))
            raise


def main() -> None:
    import argparse

    from playwright.sync_api import sync_playwright

    from losswidget.widget.app import LossProfileWidget

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--screens", type=Path, default=Path(tempfile.gettempdir()),
                        help="where a timed-out wait saves its screenshot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "t83.onnx"
        make_model("transformer", model, "--layers", "83", "--hidden", "64", "--vocab", "100", local_ok=True)
        warm = LossProfileWidget(model, profiles_dir=root / "profiles")
        layers = len(warm.wait()["Baseline"].layers)
        warm.close()
        notebook(root / "speed.ipynb", "from losswidget import LossProfileWidget",
                 f"w = LossProfileWidget({str(model)!r}, profiles_dir={str(root / 'profiles')!r})\nw", KERNEL_STATE)
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
                timing = Timing(page, args.screens)
                open_notebook(page, {"url": f"http://127.0.0.1:{port}"}, "speed.ipynb")
                # the start of each measure, in the page's clock: the Enter that runs the cell, the select's change
                page.evaluate("() => { document.addEventListener('keydown', e => { if (e.key === 'Enter') "
                              "window.lwStart = performance.now(); }, true); document.addEventListener('change', "
                              "e => { if (e.target.closest('.lw-profile-select')) window.lwStart = performance.now(); }, true); }")
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
                    page.keyboard.press("Shift+Enter")
                    t_bars = timing.wait("bars drawn", DRAWN, layers, 60_000)
                    t_all = timing.wait("every view drawn", ALL_DRAWN, layers, 60_000)
                    t0 = page.evaluate("() => window.lwStart")
                    drawn.append(t_bars - t0)
                    drawn_all.append(t_all - t0)
                    time.sleep(2)
                switched, switched_all = [], []
                for k in range(SWITCHES):
                    bars, dots, rows = page.evaluate(STATE)
                    select = page.locator(".lw-profile-select select")
                    select.select_option("Approximated" if select.input_value() == "Baseline" else "Baseline")
                    t_bars = timing.wait(f"bars switched {k}", f"b => [...document.querySelectorAll('{BARS}')]"
                                ".map(e => e.getAttribute('height')).join() !== b", bars, 30_000,
                                before=(bars, dots, rows))
                    t_all = timing.wait(f"every view switched {k}", f"([d, r]) => ({STATE})()[1] !== d && ({STATE})()[2] !== r",
                                [dots, rows], 30_000, before=(bars, dots, rows))
                    t1 = page.evaluate("() => window.lwStart")
                    switched.append(t_bars - t1)
                    switched_all.append(t_all - t1)
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
