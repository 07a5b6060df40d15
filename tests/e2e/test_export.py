"""Download buttons in JupyterLab with the widget inline and in the sidebar: one click is one download (the
kernel's answer reaches both views), named after the model and profile; comparing exports every compared
profile."""
from losswidget import load_profiles

from labtools import notebook, open_notebook, run_cell, wait_until, widget_errors

SETUP = ("from losswidget import LossProfileWidget, demo\n"
         "path, data = demo('mlp')\n"
         "w = LossProfileWidget(path, data=data)\n"
         "w")


def test_one_click_one_download_named_for_model_and_profiles(page, lab):
    notebook(lab["root"] / "export.ipynb", SETUP, "w.wait()\nw.selected = 'Baseline'\nw.show_sidebar()",
             "w.compare_profiles('Baseline', 'Approximated')")
    open_notebook(page, lab, "export.ipynb")
    run_cell(page, 0)
    page.wait_for_selector(".lw-card-value", timeout=60_000)
    run_cell(page, 1)
    wait_until(lambda: page.locator("#jp-right-stack .losswidget").count() == 1, what="the sidebar view")
    assert page.locator(".lw-export-csv").count() == 2                          # two views of one exporter
    wait_until(lambda: "right sidebar" in " ".join(page.locator(".lw-note").all_inner_texts()), what="the note")
    downloads = []
    page.on("download", lambda d: downloads.append(d))

    with page.expect_download(timeout=30_000):                                 # Playwright's waits deliver
        page.locator(".jp-Notebook .lw-export-csv").first.click()              # its events, not time.sleep
    page.wait_for_timeout(2000)                                                 # a second one would come now
    assert len(downloads) == 1
    assert downloads[0].suggested_filename == "digits_mlp-Baseline.csv"
    assert open(downloads[0].path()).readline().startswith("index,id,name")
    assert "profile 'Baseline'" in page.locator(".jp-Notebook .lw-export-csv").first.get_attribute("title")

    run_cell(page, 2)
    button = page.locator("#jp-right-stack .lw-export-json")
    wait_until(lambda: "2 compared profiles" in (button.get_attribute("title") or ""), what="the compare tooltip")
    with page.expect_download(timeout=30_000):
        button.click()                                                         # from the sidebar this time
    page.wait_for_timeout(2000)
    assert len(downloads) == 2
    assert downloads[1].suggested_filename == "digits_mlp-Baseline+Approximated.json"
    assert [p.name for p in load_profiles(downloads[1].path())] == ["Baseline", "Approximated"]
    assert not widget_errors(page), widget_errors(page)
