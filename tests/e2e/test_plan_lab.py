"""The plan views in a real JupyterLab and Chromium: planned marks beside the bars following the target slider,
layers excluded by clicking (the table's In plan box, the drill-down's box), the plan downloaded (JSON, recipe)
and the pruned model saved beside the model and loaded in onnxruntime."""
import re

import onnxruntime as ort
from losswidget import load_plan

from labtools import drawing_errors, notebook, open_notebook, run_cell, wait_until, widget_errors
from test_views_lab import OUTLIER, SENS, heights, texts

SETUP = OUTLIER.replace("w.selected = 'Approximated'", "w.selected = 'Baseline'")
OUT = ".jp-OutputArea-output"
SEGMENT = re.compile(r"M\s*([-\d.e]+)[ ,]([-\d.e]+)\s*L\s*([-\d.e]+)[ ,]([-\d.e]+)")


def planned(page) -> list[tuple[float, float]]:
    """(x centre, y) of each planned level line on the sensitivity chart, in pixels."""
    paths = page.eval_on_selector_all(f"{SENS} path.line", "els => els.map(e => e.getAttribute('d') || '')")
    best = max(paths, key=lambda d: d.count("M"), default="")
    return [((float(a) + float(c)) / 2, float(b)) for a, b, c, _ in SEGMENT.findall(best)]


def start(page, lab, name):
    notebook(lab["root"] / name, SETUP)
    open_notebook(page, lab, name)
    run_cell(page, 0)
    wait_until(lambda: len(heights(page)) == 64 and len(planned(page)) == 64, what="64 bars and planned marks")
    # the views under the bars are made once the bars have their profiles: wait for the table too
    wait_until(lambda: page.locator(f"{OUT} .lw-layer-table tbody tr.lw-row").count() > 0, what="the table")


def cell(table, index, column):
    return table.locator(f"tbody tr.lw-row[data-index='{index}'] td").nth(column)


def test_planned_marks_follow_the_slider_and_exclusions_follow_clicks(page, lab):
    start(page, lab, "plan-marks.ipynb")
    table = page.locator(f"{OUT} .lw-layer-table")
    centres = page.eval_on_selector_all(f"{SENS} .bargroup rect",
                                        "els => els.map(e => { const r = e.getBoundingClientRect(); "
                                        "return r.left + r.width / 2; })")
    marks = planned(page)
    # the marks line up with the bars: one plot area, so bar centre minus mark centre is one constant
    shift = [c - x for (x, _), c in zip(marks, centres)]
    assert max(shift) - min(shift) < 1, shift
    assert {"0%", "50%", "100%"} <= set(texts(page, f"{SENS} .axis text"))
    assert "planned sparsity at 85%" in page.locator(f"{OUT} .lw-key").first.inner_text()
    wait_until(lambda: cell(table, 0, 5).inner_text().endswith("%"), what="the Planned column filled")
    before = [y for _, y in marks]
    column = table.locator("tbody tr.lw-row td:nth-child(6)")
    planned_before = column.all_inner_texts()
    # the slider: Home takes it to 5%
    page.locator(f"{OUT} .lw-target-slider .noUi-handle").focus()
    page.keyboard.press("Home")
    wait_until(lambda: "planned sparsity at 5%" in page.locator(f"{OUT} .lw-key").first.inner_text(), what="5%")
    wait_until(lambda: [y for _, y in planned(page)] != before, what="the marks moved")
    assert sum(y for _, y in planned(page)) > sum(before)           # lower sparsity: lines nearer the axis foot
    wait_until(lambda: column.all_inner_texts() != planned_before, what="the Planned column followed")
    assert cell(table, 2, 5).inner_text() == "5%"
    assert "plan at 5%" in page.locator(f"{OUT} .lw-cards").inner_text()
    planned_low = column.all_inner_texts()
    page.keyboard.press("End")
    wait_until(lambda: "planned sparsity at 95%" in page.locator(f"{OUT} .lw-key").first.inner_text(), what="95%")
    # the table redraws a moment after the bars (its new rows would take a click meant for the old ones)
    wait_until(lambda: column.all_inner_texts() != planned_low, what="the Planned column at 95%")
    # exclude a layer by its box in the table: the row, the bar, the cards and the plan panel say so
    wait_until(lambda: cell(table, 3, 5).inner_text().endswith("%"), what="the row of layer 3")
    table.locator("tbody tr.lw-row[data-index='3'] input.lw-inplan-box").uncheck()
    wait_until(lambda: "✕" in texts(page, f"{SENS} text"), what="the ✕ under the excluded bar")
    wait_until(lambda: cell(table, 3, 5).inner_text() == "excl.", what="excl. in the Planned column")
    assert "lw-excluded" in table.locator("tbody tr.lw-row[data-index='3']").get_attribute("class")
    assert table.locator("tr.lw-selected").count() == 0                  # a tick is not a drill-down
    assert "1 layer excluded" in page.locator(f"{OUT} .lw-cards").inner_text()
    assert "features.3.conv" in page.locator(f"{OUT} .lw-plan-summary").inner_text()
    low = [y for _, y in planned(page)]
    assert low[3] == max(low)                                         # at 0%: the foot of the axis
    # and by a bar: its drill-down's box
    page.locator(f"{SENS} .bargroup").nth(10).click(force=True)
    exclude = page.locator(f"{OUT} .lw-exclude-layer input[type=checkbox]")
    wait_until(lambda: exclude.count() == 1, what="the drill-down's exclude box")
    exclude.check()
    wait_until(lambda: texts(page, f"{SENS} text").count("✕") == 2, what="two excluded")
    wait_until(lambda: cell(table, 10, 5).inner_text() == "excl.", what="the table follows the drill-down")
    clear = page.locator(f"{OUT} .lw-clear-exclusions")
    assert "(2)" in clear.inner_text()
    clear.click()
    wait_until(lambda: "✕" not in texts(page, f"{SENS} text"), what="exclusions cleared")
    wait_until(lambda: not exclude.is_checked() and table.locator("tr.lw-excluded").count() == 0, what="boxes reset")
    assert not drawing_errors(page), drawing_errors(page)
    assert not widget_errors(page), widget_errors(page)


def test_plan_downloads_and_pruned_model(page, lab):
    start(page, lab, "plan-files.ipynb")
    table = page.locator(f"{OUT} .lw-layer-table")
    wait_until(lambda: cell(table, 5, 5).inner_text().endswith("%"), what="the Planned column")
    table.locator("tbody tr.lw-row[data-index='5'] input.lw-inplan-box").uncheck()
    wait_until(lambda: "✕" in texts(page, f"{SENS} text"), what="layer 5 excluded")
    with page.expect_download(timeout=30_000) as got:
        page.locator(f"{OUT} .lw-export-plan").click()
    assert got.value.suggested_filename == "outlier-Baseline-plan85.json"
    plan = load_plan(got.value.path())
    assert plan.profile == "Baseline" and plan.target == 0.85 and abs(plan.achieved - 0.85) < 0.005
    assert [l.name for l in plan.layers if l.excluded] == ["features.5.conv"]
    with page.expect_download(timeout=30_000) as got:
        page.locator(f"{OUT} .lw-export-recipe").click()
    assert got.value.suggested_filename == "outlier-Baseline-plan85.yaml"
    recipe = open(got.value.path()).read()
    assert "!GMPruningModifier" in recipe and "version: 1.1.0" in recipe and "features.5.conv" not in recipe
    # save beside the model
    page.locator(f"{OUT} .lw-save-pruned").click()
    status = page.locator(f"{OUT} .lw-prune-status")
    wait_until(lambda: "Saved" in status.inner_text(), timeout=60, what="the saved path")
    out = lab["root"] / "outlier-Baseline-pruned85.onnx"
    assert str(out) in status.inner_text() and out.is_file()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    # a folder that is not there: said beside the button
    page.locator(f"{OUT} .lw-prune-path input").fill(str(lab["root"] / "nowhere" / "p.onnx"))
    page.locator(f"{OUT} .lw-save-pruned").click()
    wait_until(lambda: "does not exist" in status.inner_text(), what="the error")
    assert not widget_errors(page), widget_errors(page)
