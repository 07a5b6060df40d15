"""The widget in a real JupyterLab and Chromium: it draws, adds and cancels profiles, and opens in the sidebar."""
import time

from labtools import notebook, open_notebook, run_cell, widget_errors

SETUP = ("from losswidget import LossProfileWidget, demo\n"
         "path, data = demo('mlp')\n"                  # the 4-layer demo: these tests check mechanics, not scale
         "w = LossProfileWidget(path, data=data)\n"
         "w")


def bars(page, chart=".lw-sensitivity-chart"):
    return page.locator(f"{chart} .bargroup rect")


def options(page) -> list[str]:
    return [t.replace("\xa0", " ") for t in page.locator(".lw-profile-select select option").all_inner_texts()]


def wait_until(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def test_widget_draws_cards_bars_and_tooltip(page, lab):
    notebook(lab["root"] / "draw.ipynb", SETUP)
    open_notebook(page, lab, "draw.ipynb")
    run_cell(page, 0)
    page.wait_for_selector(".lw-card-value", timeout=60_000)
    wait_until(lambda: "…" not in " ".join(page.locator(".lw-card-value").all_inner_texts()), what="card values")
    values = page.locator(".lw-card-value").all_inner_texts()
    assert values[0] == "19.0 k" and values[1].endswith("×") and values[-1] == "not analysed"
    assert page.locator(".lw-card-reduction").get_attribute("aria-label").startswith("Est. params reduction: ")
    wait_until(lambda: bars(page).count() == 4, what="4 sensitivity bars")          # the demo has 4 layers
    assert bars(page, ".lw-params-chart").count() == 4
    heights = [float(h) for h in page.eval_on_selector_all(".lw-sensitivity-chart .bargroup rect",
                                                           "els => els.map(e => e.getAttribute('height'))")]
    assert all(h > 0 for h in heights)
    bars(page).nth(3).hover(force=True)
    page.wait_for_selector(".lw-tip", timeout=10_000)
    assert "classifier" in page.locator(".lw-tip").first.inner_text()
    assert not widget_errors(page), widget_errors(page)


def test_add_profile_from_the_panel_and_cancel(page, lab):
    notebook(lab["root"] / "panel.ipynb", SETUP,
             "import numpy as np\nw.store.data = {'image': np.tile(data['image'], (200, 1))}")
    open_notebook(page, lab, "panel.ipynb")
    run_cell(page, 0)
    page.wait_for_selector(".lw-name input", timeout=60_000)
    page.locator(".lw-name input").fill("coarse baseline")
    page.locator(".lw-setting-sparsity-levels select").select_option(label="coarse (0, .5, .9)")
    page.locator("button.lw-run").click()
    wait_until(lambda: "coarse baseline" in options(page), what="the new profile in the selector")
    page.locator(".lw-profile-select select").select_option("coarse baseline")
    wait_until(lambda: "coarse baseline" in page.locator(".lw-sensitivity-chart").inner_text(), what="chart title")
    assert bars(page).count() == 4
    # a slow one-shot run (1% levels on 90,000 samples as the widget's data), cancelled from the panel
    run_cell(page, 1)
    page.locator(".lw-name input").fill("slow one-shot")
    page.locator(".lw-method select").select_option(label="One-shot")
    page.locator(".lw-setting-sparsity-levels select").select_option(label="fine (0.01 steps)")
    page.locator(".lw-setting-data select").select_option(label="widget data")
    page.locator("button.lw-run").click()
    wait_until(lambda: "slow one-shot" in page.locator(".lw-status").inner_text(), what="progress")
    page.locator("button.lw-cancel").click()
    wait_until(lambda: "slow one-shot — cancelled" in page.locator(".lw-queue").inner_text(), what="cancelled")
    assert "slow one-shot" not in options(page)
    assert not widget_errors(page), widget_errors(page)


def test_sidebar_opens_through_sidecar(page, lab):
    notebook(lab["root"] / "side.ipynb", SETUP, "w.show_sidebar()")
    open_notebook(page, lab, "side.ipynb")
    run_cell(page, 0)
    page.wait_for_selector(".lw-card-value", timeout=60_000)
    run_cell(page, 1)
    sidebar_view = page.locator("#jp-right-stack .losswidget")
    wait_until(lambda: sidebar_view.count() == 1, what="the widget in the right sidebar")
    assert page.locator(".losswidget").count() == 2                           # inline and in the sidebar
    page.locator(".lw-profile-select select").first.select_option(index=1)       # inline change ...
    wait_until(lambda: len(set(page.locator(".lw-cards-title").all_inner_texts())) == 1
               and page.locator(".lw-cards-title").count() == 2, what="both views in sync")
    assert not widget_errors(page), widget_errors(page)
