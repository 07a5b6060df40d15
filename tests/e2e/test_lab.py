"""The widget in a real JupyterLab and Chromium: it draws, adds and cancels profiles, and opens in the sidebar."""
import re

from labtools import notebook, open_notebook, run_cell, shot, wait_until, widget_errors

SETUP = ("from losswidget import LossProfileWidget, demo\n"
         "path, data = demo('mlp')\n"                  # the 4-layer demo: these tests check mechanics, not scale
         "w = LossProfileWidget(path, data=data)\n"
         "w")


def bars(page, chart=".lw-sensitivity-chart"):
    return page.locator(f"{chart} .bargroup rect")


def options(page) -> list[str]:
    return [t.replace("\xa0", " ") for t in page.locator(".lw-profile-select select option").all_inner_texts()]


def test_widget_draws_cards_bars_and_tooltip(page, lab):
    notebook(lab["root"] / "draw.ipynb", SETUP)
    open_notebook(page, lab, "draw.ipynb")
    run_cell(page, 0)
    page.wait_for_selector(".lw-card-value", timeout=60_000)
    wait_until(lambda: "…" not in " ".join(page.locator(".lw-card-value").all_inner_texts()), what="card values")
    values = page.locator(".lw-card-value").all_inner_texts()
    assert values[0] == "19 k" and values[1].endswith("×") and values[-1] == "not analysed"
    assert page.locator(".lw-card-reduction").get_attribute("aria-label").startswith("Est. params reduction: ")
    wait_until(lambda: bars(page).count() == 4, what="4 sensitivity bars")          # the demo has 4 layers
    assert bars(page, ".lw-params-chart").count() == 4
    heights = [float(h) for h in page.eval_on_selector_all(".lw-sensitivity-chart .bargroup rect",
                                                           "els => els.map(e => e.getAttribute('height'))")]
    assert all(h > 0 for h in heights)
    bars(page).nth(3).hover(force=True)
    wait_until(lambda: "classifier" in page.locator(".lw-readout").first.inner_text(), what="the hovered layer")
    # the views under the bars are made after the bars have their profiles; they appear by themselves, in
    # their places, and work
    wait_until(lambda: page.locator(".lw-scatter-chart .dot").count() == 4
               and page.locator(".lw-layer-table tr.lw-row").count() == 4
               and page.locator(".lw-plan-curve .plotarea_background").count() == 1 and page.locator(".lw-panel .lw-run").count() == 1,
               what="the scatter, table, plan curve and form")
    order = page.eval_on_selector_all(".lw-sensitivity-chart, .lw-params-chart, .lw-scatter-chart, .lw-plan-curve,"
                                      " .lw-layer-table, .lw-export, .lw-panel", "els => els.map(e => e.className)")
    assert [next(c for c in ("sensitivity", "params", "scatter", "plan-curve", "layer-table", "export", "panel")
                 if f"lw-{c}" in o) for o in order] == ["sensitivity", "params", "scatter", "plan-curve", "export",
                                                         "layer-table", "export", "panel"], order    # plan, profile
    page.locator(".lw-layer-table tr.lw-row").nth(2).click()                 # a row opens the layer's curve
    wait_until(lambda: page.locator(".lw-layer-curve .plotarea_background").count() == 1, what="the layer curve")
    assert page.locator(".lw-exclude-layer").count() == 1
    assert not widget_errors(page), widget_errors(page)


def test_form_checks_fields_then_runs_and_shows_the_profile(page, lab):
    notebook(lab["root"] / "panel.ipynb", SETUP)
    open_notebook(page, lab, "panel.ipynb")
    run_cell(page, 0)
    page.wait_for_selector(".lw-name input", timeout=60_000)
    run = page.locator("button.lw-run")
    assert run.is_disabled()                                          # no name yet
    page.locator(".lw-name input").fill("coarse baseline")
    page.locator(".lw-setting-sparsity-levels select").select_option(label="custom")
    page.locator(".lw-setting-sparsity-levels input").fill("0.5, 1.5")
    message = page.locator(".lw-setting-sparsity-levels .lw-invalid")
    wait_until(lambda: message.count() == 1 and "must lie in [0, 1)" in message.inner_text(), what="the message")
    assert run.is_disabled()
    shot(page, "form-invalid")
    page.locator(".lw-setting-sparsity-levels input").fill("0.5, 0.9")
    wait_until(lambda: message.count() == 0 and run.is_enabled(), what="a valid form")
    shot(page, "form-valid")
    run.click()
    wait_until(lambda: "coarse baseline" in options(page), what="the new profile in the selector")
    wait_until(lambda: page.locator(".lw-cards-title").inner_text() == "coarse baseline", what="it is shown")
    wait_until(lambda: "coarse baseline is done and shown" in page.locator(".lw-status").inner_text(),
               what="the panel says so")
    assert page.locator(".lw-name input").input_value() == "coarse baseline"        # the typed name stays
    assert "Queued as" in page.locator(".lw-name-message").inner_text() and run.is_disabled()
    wait_until(lambda: bars(page).count() == 4, what="its bars")
    assert not widget_errors(page), widget_errors(page)


def test_live_bars_then_cancel_keeps_the_partial_profile(page, lab):
    notebook(lab["root"] / "live.ipynb", SETUP,
             "import numpy as np\nw.store.data = {'image': np.tile(data['image'], (20, 1)), 'y': np.tile(data['y'], 20)}")
    open_notebook(page, lab, "live.ipynb")
    run_cell(page, 0)
    page.wait_for_selector(".lw-name input", timeout=60_000)
    run_cell(page, 1)
    # a slow one-shot run (1% levels on 9,000 samples as the widget's data), cancelled from the panel
    page.locator(".lw-name input").fill("slow one-shot")
    page.locator(".lw-method select").select_option(label="One-shot")
    page.locator(".lw-setting-sparsity-levels select").select_option(label="fine (0.01 steps)")
    page.locator(".lw-setting-data select").select_option(label="widget data")
    wait_until(lambda: page.locator(".lw-setting-labels input").input_value() == "y", what="labels from the data")
    page.locator("button.lw-run").click()
    wait_until(lambda: "fill in" in page.locator(".lw-status").inner_text(), timeout=120, what="live bars")
    line = page.locator(".lw-job-status")                      # beside the selector, not only in the panel
    wait_until(lambda: re.search(r"slow one-shot: computing… \d+%", line.inner_text()), what="the status line")
    assert line.bounding_box()["y"] < page.locator(".lw-sensitivity-chart").bounding_box()["y"]
    wait_until(lambda: page.locator(".lw-cards-title").inner_text() == "slow one-shot (partial)", what="shown")
    heights = [float(h) for h in page.eval_on_selector_all(".lw-sensitivity-chart .bargroup rect",
                                                           "els => els.map(e => e.getAttribute('height'))")]
    assert len(heights) == 4 and any(h > 0 for h in heights)         # measured layers drawn, the rest empty
    assert "left" in page.locator(".lw-status").inner_text()         # the time-left estimate
    shot(page, "running-live")
    shot(page, "running-live-chart", ".lw-sensitivity-chart")
    page.locator("button.lw-cancel").click()
    queue = page.locator(".lw-queue")
    wait_until(lambda: "kept as a partial profile" in queue.inner_text(), what="cancelled, partial kept")
    assert "slow one-shot" in options(page) and page.locator(".lw-cards-title").inner_text() == "slow one-shot (partial)"
    assert "(partial)" in page.locator(".lw-chosen").inner_text()
    shot(page, "cancelled-partial")
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


def test_activation_profile_from_the_panel(page, lab):
    notebook(lab["root"] / "activation.ipynb", SETUP)
    open_notebook(page, lab, "activation.ipynb")
    run_cell(page, 0)
    page.wait_for_selector(".lw-name input", timeout=60_000)
    page.locator(".lw-name input").fill("activation-aware")
    page.locator(".lw-method select").select_option(label="Activation-aware")
    page.locator(".lw-setting-data select").select_option(label="widget data")
    page.locator(".lw-setting-labels input").fill("y")                  # the demo data holds its labels
    assert page.locator(".lw-setting-metric select").is_visible()
    page.locator("button.lw-run").click()
    wait_until(lambda: "activation-aware" in options(page), what="the new profile in the selector")
    page.locator(".lw-profile-select select").select_option("activation-aware")
    wait_until(lambda: "activation-aware" in page.locator(".lw-cards-title").first.inner_text(), what="its cards")
    labels = [label.lower() for label in page.locator(".lw-card-label").all_inner_texts()]   # shown in capitals
    assert "est. recovery" in labels and bars(page).count() == 4
    assert "activation (auto)" in page.locator(".lw-cards").inner_text()
    shot(page, "activation-cards", ".lw-cards")
    shot(page, "activation-bars", ".lw-sensitivity-chart")
    assert not widget_errors(page), widget_errors(page)
