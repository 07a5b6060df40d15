"""Helpers for the browser tests and the browser benchmark: a JupyterLab server and notebooks to open."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
from playwright.sync_api import Error as PlaywrightError

CHROMIUM = os.environ.get("LOSSWIDGET_CHROMIUM", "/usr/bin/chromium")
TOKEN = "losswidget-e2e"
WIDGET_ERRORS = ("Failed to load model class", "Error: ", "Could not create a view", "widget error")


def kernel_env() -> dict:
    """The environment with this interpreter's folder first on PATH: the python3 kernelspec runs `python`
    from PATH, which could otherwise be another installation's (and test its losswidget, not this one)."""
    return dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
def local_url(url: str) -> bool:
    """True for URLs that stay on this machine: loopback hosts, and data: / blob: / file: / about: ones."""
    parsed = urlsplit(url)
    if parsed.scheme in ("data", "blob", "file", "about", "chrome", "devtools"):
        return True
    return parsed.hostname in ("127.0.0.1", "localhost", "::1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


def notebook(path: Path, *cells: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def widget_errors(page) -> list[str]:
    return [m for m in page.console_messages if any(e in m for e in WIDGET_ERRORS)
            and ("widget" in m.lower() or "model" in m.lower() or "pageerror" in m)]


def open_notebook(page, lab, name: str) -> None:
    """Open a notebook and wait until its kernel is idle (accepting a kernel-selection dialog if shown)."""
    page.goto(f"{lab['url']}/lab/tree/{name}?reset&token={TOKEN}")     # reset: no tabs restored from before
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if page.locator(".jp-Dialog .jp-mod-accept").count():
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
        if any("Idle" in t for t in page.locator(".jp-StatusBar-TextItem").all_inner_texts()):
            return
        time.sleep(0.3)
    raise TimeoutError("the notebook's kernel never became idle")


def run_cell(page, index: int) -> None:
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    editor = cell.locator(".jp-InputArea-editor")
    for attempt in range(5):
        try:
            editor.click(force=True)
            break
        except PlaywrightError:
            # the page grew under the click (a widget's views below its bars arrive a moment after it draws):
            # scrolled into view, the editor had moved out of it again
            if attempt == 4:
                raise
            time.sleep(0.5)
    page.keyboard.press("Shift+Enter")


def set_theme(page, dark: bool) -> None:
    """Switch JupyterLab's theme (the lab runs with expose_app_in_browser) and wait until it applies."""
    name = "JupyterLab Dark" if dark else "JupyterLab Light"
    page.evaluate("name => window.jupyterapp.commands.execute('apputils:change-theme', {theme: name})", name)
    page.wait_for_function("name => document.body.dataset.jpThemeName === name", arg=name, timeout=30_000)


def drawing_errors(page) -> list[str]:
    """Console errors from drawing: SVG attributes that got NaN or negative sizes."""
    return [m for m in page.console_messages if "NaN" in m or "Error: <" in m]


def open_notebook7(page, server, name: str) -> None:
    """Open a notebook in Notebook 7 and wait until its kernel is idle."""
    page.goto(f"{server['url']}/notebooks/{name}?token={TOKEN}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", timeout=90_000)


def children(pid: int) -> list[int]:
    """Ids of the live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()             # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def wait_until(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def run_cell_surely(page, index: int, tries: int = 3) -> None:
    """Run a cell and see it start (its prompt leaves "[ ]"); press again only while it has not, since a
    page still settling (Notebook 7 on a busy machine) can drop the first key press."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(tries):
        run_cell(page, index)
        try:
            wait_until(lambda: prompt.inner_text().strip() not in ("[ ]:", "[ ]", ""), timeout=15, what="the run")
            return
        except TimeoutError:
            continue
    raise TimeoutError(f"cell {index} never started")


def shot(page, name: str, what: str = ".lw-panel") -> None:
    """Keep a screenshot (of the panel) for people to look at, when LOSSWIDGET_SCREENS names a folder."""
    folder = os.environ.get("LOSSWIDGET_SCREENS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.locator(what).first.screenshot(path=str(Path(folder) / f"{name}.png"))
