"""Real-browser tests: JupyterLab (and the Voilà app) on 127.0.0.1, driven by Playwright in Debian's Chromium.

Screenshots of failed tests are kept in tests/e2e/artifacts/.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labtools import CHROMIUM, TOKEN, free_port, kernel_env, local_url, wait_for_port

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium (CI installs it)")
    root = tmp_path_factory.mktemp("lab-root")
    port = free_port()
    log = open(root.parent / "lab.log", "w")
    settings = root.parent / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)             # no news prompt over the page's bottom right
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", "--allow-root",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
         f"--LabApp.workspaces_dir={root.parent / 'workspaces'}", "--LabApp.news_url=None",
         f"--LabApp.user_settings_dir={root.parent / 'lab-settings'}", "--LabApp.expose_app_in_browser=True"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(kernel_env(), LOSSWIDGET_FRONTEND="jupyterlab"))
    try:
        wait_for_port(port, proc)
        yield {"url": f"http://127.0.0.1:{port}", "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def notebook7(tmp_path_factory):
    """A Jupyter Notebook 7 server (the `notebook` package), its own root folder."""
    root = tmp_path_factory.mktemp("nb7-root")
    port = free_port()
    log = open(root.parent / "nb7.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "notebook", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--allow-root", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(kernel_env(), LOSSWIDGET_FRONTEND="jupyterlab"))
    try:
        wait_for_port(port, proc)
        yield {"url": f"http://127.0.0.1:{port}", "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    pg = context.new_page()
    pg.console_messages = []
    pg.on("console", lambda m: pg.console_messages.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: pg.console_messages.append(f"pageerror: {e}"))
    pg.off_machine = []                          # requests to any host but this machine: none allowed (offline)
    context.on("request", lambda r: pg.off_machine.append(r.url) if not local_url(r.url) else None)
    yield pg
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        (ARTIFACTS / f"{request.node.name}.console.txt").write_text("\n".join(pg.console_messages))
    context.close()
    if pg.off_machine:
        pytest.fail(f"the page requested hosts off this machine: {pg.off_machine}")


