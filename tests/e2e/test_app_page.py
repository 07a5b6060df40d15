"""`losswidget app` as a user starts it: the Voilà page draws the demo's bars without any request off this
machine, is titled after the model, lets a closed page's kernel go, and leaves nothing in the temp folder."""
import subprocess
import sys

from labtools import children, free_port, kernel_env, wait_for_port, wait_until, widget_errors

BARS = ".lw-sensitivity-chart .bargroup rect"


def test_app_page_serves_the_demo_offline_and_culls_closed_pages(page, tmp_path):
    port = free_port()
    tmp, cache = tmp_path / "tmp", tmp_path / "cache"
    tmp.mkdir()
    env = dict(kernel_env(), TMPDIR=str(tmp), XDG_CACHE_HOME=str(cache))
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "losswidget", "app", "--no-browser", f"--port={port}",
                             f"--profiles-dir={tmp_path / 'profiles'}", "--kernel-timeout=10"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(port, proc)
        page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
        page.wait_for_selector(".lw-card-value", timeout=120_000)
        wait_until(lambda: page.locator(BARS).count() == 18, timeout=120, what="the default demo's 18 bars")
        heights = page.eval_on_selector_all(BARS, "els => els.map(e => e.getBoundingClientRect().height)")
        assert all(h > 0 for h in heights)
        assert page.title() == "Demo - loss profiles"
        assert "not analysed" in page.locator(".lw-cards").inner_text()
        assert page.locator(".lw-note").count() == 0 and not widget_errors(page), widget_errors(page)
        assert list(cache.glob("losswidget/app/*/Demo - loss profiles.ipynb"))      # not in the temp folder
        wait_until(lambda: len(children(proc.pid)) == 1, timeout=30, what="the page's kernel")
        page.goto("about:blank")                                                   # the tab is closed
        wait_until(lambda: not children(proc.pid), timeout=60, what="the closed page's kernel culled")
    finally:
        proc.terminate()
        proc.wait(30)
    # Voilà's connection files went with it; onnxruntime (1.32) keeps one `.ses` telemetry session file in
    # TMPDIR once a kernel makes a session (the demo's activation profile), whatever the caller asks
    left = [p.name for p in tmp.iterdir() if p.name != ".ses"]
    assert not left, left
    assert "Culling 'idle' kernel" in (tmp_path / "app.log").read_text()
