"""Speed in the browser: a 500-layer model's widget in JupyterLab, driven by Playwright in Debian's Chromium.

Measures (in the page's clock) the time from running the cell to all bars drawn, with the profiles cached
in profiles_dir (goal < 2 s), and from picking another profile to its bars drawn (goal < 300 ms).

  python benchmarks/browser_speed.py
"""
from __future__ import annotations

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
                cells.nth(1).locator(".jp-InputArea-editor").click(force=True)
                t0 = page.evaluate("() => performance.now()")
                page.keyboard.press("Shift+Enter")
                page.wait_for_function(f"n => [...document.querySelectorAll('{BARS}')]"
                                       ".filter(e => +e.getAttribute('height') > 0).length >= n", arg=layers,
                                       timeout=60_000, polling="raf")
                drawn = page.evaluate("() => performance.now()") - t0
                before = page.eval_on_selector_all(BARS, "els => els.map(e => e.getAttribute('height')).join()")
                t1 = page.evaluate("() => performance.now()")
                page.locator(".lw-profile-select select").select_option("Baseline")
                page.wait_for_function(f"b => [...document.querySelectorAll('{BARS}')]"
                                       ".map(e => e.getAttribute('height')).join() !== b", arg=before,
                                       timeout=30_000, polling="raf")
                switched = page.evaluate("() => performance.now()") - t1
                browser.close()
        finally:
            proc.terminate()
            proc.wait(20)
    print(f"{layers} layers: cell run to bars drawn {drawn / 1000:.2f} s (goal < 2 s); "
          f"switching profile {switched:.0f} ms (goal < 300 ms)")


if __name__ == "__main__":
    main()
