"""The widget in Notebook 7: it draws, and show_sidebar() says honestly that it stays inline (Notebook 7 has no
sidebar a widget can open in; sidecar's view fails there)."""
from labtools import notebook, open_notebook7, run_cell_surely, wait_until, widget_errors

SETUP = ("from losswidget import LossProfileWidget, demo\n"
         "path, data = demo('mlp')\n"
         "w = LossProfileWidget(path, data=data)\n"
         "w")
BARS = ".lw-sensitivity-chart .bargroup rect"


def test_notebook7_draws_and_show_sidebar_says_it_stays_inline(page, notebook7):
    notebook(notebook7["root"] / "side.ipynb", SETUP, "w.show_sidebar()")
    open_notebook7(page, notebook7, "side.ipynb")
    run_cell_surely(page, 0)
    wait_until(lambda: page.locator(BARS).count() == 4, what="the demo's 4 bars")
    run_cell_surely(page, 1)
    wait_until(lambda: "Notebook 7 has no sidebar" in " ".join(page.locator(".lw-note").all_inner_texts()),
               what="the note")
    assert "stays here" in page.locator(".lw-note").inner_text()
    assert page.locator(".losswidget").count() == 1 and page.locator(".jupyterlab-sidecar").count() == 0
    assert not widget_errors(page), widget_errors(page)


def test_notebook7_show_sidebar_before_the_page_reported_closes_the_sidecar(page, notebook7):
    # one cell: show_sidebar() runs before the view has told the kernel where it is, so the kernel guesses
    # JupyterLab and opens a sidecar; when the page reports Notebook 7, the sidecar is closed and the note says so
    one_cell = ("from losswidget import LossProfileWidget, demo\n"
                "path, data = demo('mlp')\n"
                "w = LossProfileWidget(path, data=data)\n"
                "display(w)\n"
                "w.show_sidebar()")
    notebook(notebook7["root"] / "race.ipynb", one_cell, "w.sidecar is None, w.host.host")
    open_notebook7(page, notebook7, "race.ipynb")
    run_cell_surely(page, 0)
    wait_until(lambda: "Notebook 7 has no sidebar" in " ".join(page.locator(".lw-note").all_inner_texts()),
               what="the note")
    run_cell_surely(page, 1)
    wait_until(lambda: "(True, 'notebook7')" in page.locator(".jp-Cell").nth(1).inner_text(), what="the state")
    # sidecar's own view cannot be made in Notebook 7 (it reaches into JupyterLab's shell): that one error only
    others = [m for m in widget_errors(page) if "Could not create a view" not in m]
    assert not others, others
