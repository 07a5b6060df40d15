"""The chart, table, layout and theme views in a real JupyterLab and Chromium, on a model with an outlier layer
(a 16-weight fixed conv among 63 ordinary ones), in light and dark themes, at 1000 px and in the sidebar."""
import re
import time
from pathlib import Path

import pytest

from labtools import drawing_errors, notebook, open_notebook, run_cell, set_theme, shot, wait_until, widget_errors

TESTS = Path(__file__).resolve().parent.parent
OUTLIER = ("import sys\n"
           f"sys.path.insert(0, {str(TESTS)!r})\n"
           "from helpers import outlier_cnn, save\n"
           "from losswidget import LossProfileWidget\n"
           "w = LossProfileWidget(save(outlier_cnn(), 'outlier.onnx'))\n"
           "w.wait()\n"
           "w.selected = 'Approximated'\n"
           "w")
# shown at once, its profiles computed after (the usual first render: bqplot measured the bar charts with no bars)
EARLY = ("import sys\n"
         f"sys.path.insert(0, {str(TESTS)!r})\n"
         "from helpers import outlier_cnn, save\n"
         "from losswidget import LossProfileWidget\n"
         "from losswidget.widget.app import AUTO_PROFILES\n"
         "w = LossProfileWidget(save(outlier_cnn(), 'outlier.onnx'), autostart=False)\n"
         "w")
SENS = ".jp-OutputArea-output .lw-sensitivity-chart"
RED = "rgb(214, 39, 40)"


def heights(page, chart=SENS) -> list[float]:
    return [float(h) for h in page.eval_on_selector_all(f"{chart} .bargroup rect",
                                                        "els => els.map(e => e.getAttribute('height'))")]


def texts(page, selector) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")


def box(page, selector, index=0) -> dict:
    return page.locator(selector).nth(index).bounding_box()


def overlap(a, b) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def start(page, lab, name, *cells):
    notebook(lab["root"] / name, OUTLIER, *cells)
    open_notebook(page, lab, name)
    run_cell(page, 0)
    wait_until(lambda: len(heights(page)) == 64, what="64 sensitivity bars")
    # the views under the bars are made once the bars have their profiles: wait for them too
    wait_until(lambda: page.locator(".jp-OutputArea-output .lw-layer-table tbody tr.lw-row").count() > 0
               and page.locator(".jp-OutputArea-output .lw-scatter-chart .dot").count() == 64,
               what="the table and the scatter")


def scale(page, label):
    page.locator(".jp-OutputArea-output .lw-scale-toggle button", has_text=label).click()


def test_log_scale_draws_and_the_chart_recovers(page, lab):
    start(page, lab, "log.ipynb")
    scale(page, "log")
    wait_until(lambda: "100" in texts(page, f"{SENS} .axis text"), what="log ticks")
    h = heights(page)
    assert all(v > 0 for v in h) and h[20] == max(h) and h[20] > 3 * sorted(h)[-2]   # 122 vs 0.84: 2 decades
    ticks = texts(page, f"{SENS} .axis text")
    assert {"0.5", "1", "10", "100"} <= set(ticks)
    scale(page, "linear")
    wait_until(lambda: heights(page) != h, what="linear bars")
    lin = heights(page)
    assert all(v > 0 for v in lin)
    page.locator(".jp-OutputArea-output .lw-profile-select select").select_option("Baseline")
    wait_until(lambda: heights(page) != lin, what="the Baseline bars")
    assert all(v > 0 for v in heights(page))
    scale(page, "log")
    wait_until(lambda: "0.2" in texts(page, f"{SENS} .axis text"), what="log ticks of Baseline")
    assert all(v > 0 for v in heights(page))
    assert not drawing_errors(page), drawing_errors(page)
    assert not widget_errors(page), widget_errors(page)


def test_outlier_red_cut_table_and_sync(page, lab):
    start(page, lab, "outlier.ipynb",
           "w.target.value = 0.5")
    fills = page.eval_on_selector_all(f"{SENS} .bargroup rect", "els => els.map(e => getComputedStyle(e).fill)")
    assert fills.count(RED) == 1 and fills[20] == RED
    assert "▲ 122" in texts(page, f"{SENS} text")
    h = heights(page)
    assert max(h[:20] + h[21:]) > 0.7 * h[20]                     # the rest is not flattened by the outlier
    table = page.locator(".jp-OutputArea-output .lw-layer-table")
    assert "64 layers" in table.inner_text()
    drawn = table.locator("tbody tr.lw-row").count()
    assert 10 <= drawn < 64                                        # only the rows in view are in the page
    table.locator(".lw-table-scroll").evaluate("e => { e.scrollTop = e.scrollHeight; }")
    wait_until(lambda: table.locator("tbody tr.lw-row").last.locator("td").nth(1).inner_text() == "features.63.conv",
               what="the last rows drawn on scrolling")
    assert table.locator("tbody tr.lw-row").nth(0).locator("td").nth(5).inner_text() == "85%"    # the plan at 85%
    table.locator(".lw-sort", has_text="Sensitivity").click()
    wait_until(lambda: table.locator("tbody tr.lw-row").nth(0).locator("td").nth(1).inner_text().startswith("blur"),
               what="sorted by sensitivity")
    first = table.locator("tbody tr.lw-row").nth(0).inner_text()
    assert "outlier" in first and "tiny" in first
    table.locator(".lw-table-search").fill("blur")
    wait_until(lambda: table.locator(".lw-table-count").inner_text() == "1 of 64 layers", what="search")
    table.locator(".lw-table-search").fill("")
    wait_until(lambda: table.locator(".lw-table-count").inner_text() == "64 layers", what="search cleared")
    table.locator(".lw-table-group").select_option("1")
    wait_until(lambda: table.locator("tbody tr.lw-group").count() == 2, what="groups: features, blur")
    assert "Σ" in table.locator("tbody tr.lw-group").nth(0).inner_text()
    table.locator(".lw-table-group").select_option("0")
    run_cell(page, 1)                                              # the target moves: the plan follows
    wait_until(lambda: table.locator("tbody tr.lw-row").nth(1).locator("td").nth(5).inner_text() == "58%",
               what="planned column at 50%")
    # hover a row: the bar is pointed at and described; click it: the bar is marked, the curve drawn
    table.locator(".lw-table-search").fill("features.33")
    wait_until(lambda: table.locator(".lw-table-count").inner_text() == "1 of 64 layers", what="search")
    row = table.locator("tbody tr.lw-row", has_text="features.33.conv")
    row.hover()
    wait_until(lambda: "features.33.conv" in page.locator(".jp-OutputArea-output .lw-readout").first.inner_text(),
               what="readout of the hovered row")
    wait_until(lambda: "▽" in texts(page, f"{SENS} text"), what="the pointer over the hovered bar")
    row.click()
    wait_until(lambda: page.locator(".jp-OutputArea-output .lw-layer-curve").count() == 1, what="the curve")
    assert "#33 features.33.conv" in page.locator(".jp-OutputArea-output .lw-chart-title", has_text="#33").inner_text()
    page.mouse.move(0, 0)
    # and the other way: click a bar, its row is selected and scrolled into view
    table.locator(".lw-table-search").fill("")
    wait_until(lambda: table.locator(".lw-table-count").inner_text() == "64 layers", what="search cleared")
    page.locator(f"{SENS} .bargroup").nth(57).click(force=True)
    wait_until(lambda: table.locator("tr.lw-selected").count() == 1
               and table.locator("tr.lw-selected td").nth(1).inner_text() == "features.57.conv", what="row selected")
    assert not drawing_errors(page), drawing_errors(page)
    assert not widget_errors(page), widget_errors(page)


def test_readout_drill_down_and_compare(page, lab):
    start(page, lab, "drill.ipynb",
           "w.add_profile('coarse', 'magnitude', sparsity_levels=[0.0, 0.5, 0.9]).result(60)")
    assert page.locator(".jp-OutputArea-output .lw-layer-curve").count() == 0          # hidden until a click
    bar = page.locator(f"{SENS} .bargroup rect").nth(12)
    bar.hover(force=True)
    readout = page.locator(".jp-OutputArea-output .lw-readout").first
    wait_until(lambda: "#12 features.12.conv" in readout.inner_text(), what="readout")
    before = readout.inner_text()
    assert not overlap(readout.bounding_box(), bar.bounding_box())               # never covers the bar
    background = readout.locator(".widget-html-content").evaluate("e => getComputedStyle(e).backgroundColor")
    assert background.startswith("rgb(") or background.endswith(", 1)")      # opaque
    page.locator(".jp-OutputArea-output .lw-profile-select select").select_option("Baseline")
    wait_until(lambda: readout.inner_text() != before and "#12" in readout.inner_text(), what="readout refreshed")
    bar.click(force=True)
    curve = page.locator(".jp-OutputArea-output .lw-layer-curve")
    wait_until(lambda: curve.count() == 1 and curve.locator("path.line").count() >= 1, what="the curve")
    assert {"0.95", "target 85%"} <= set(texts(page, ".jp-OutputArea-output .lw-layer-curve text"))
    wait_until(lambda: "▼" in texts(page, f"{SENS} text"), what="the pointer over the clicked bar")
    top = max(float(t) for t in texts(page, ".jp-OutputArea-output .lw-layer-curve .axis text")
              if re.fullmatch(r"[0-9.]+", t) and "%" not in t)
    page.locator(f"{SENS} .bargroup").nth(20).click(force=True)                 # the tiny layer: far larger
    wait_until(lambda: "#20 blur" in page.locator(".jp-OutputArea-output .lw-chart-title", has_text="#20").inner_text(),
               what="the other curve")
    wait_until(lambda: max(float(t) for t in texts(page, ".jp-OutputArea-output .lw-layer-curve .axis text")
                           if re.fullmatch(r"[0-9.]+", t)) != top, what="y range reset for the new curve")
    # compare: check boxes, the readout says the bars are normalised; the order and choice survive a new profile
    boxes = page.locator(".jp-OutputArea-output .lw-compare input[type=checkbox]")
    wait_until(lambda: boxes.count() == 2, what="two compare boxes")
    assert boxes.nth(1).is_disabled() and boxes.nth(1).is_checked()            # Baseline is selected
    boxes.nth(0).check()
    wait_until(lambda: len(heights(page)) == 128, what="two profiles side by side")
    assert page.locator(f"{SENS} .legend").count() == 0 and "Approximated" in page.locator(
        ".jp-OutputArea-output .lw-key").first.inner_text()                    # the legend is off the bars
    page.locator(f"{SENS} .bargroup rect").nth(5).hover(force=True)
    wait_until(lambda: "normalised" in readout.inner_text(), what="normalised in the readout")
    curves = lambda: page.locator(".jp-OutputArea-output .lw-layer-curve").evaluate(      # noqa: E731
        "e => [...e.querySelectorAll('g.curve')].filter(g => g.querySelector('.dot')).length")  # not the rules
    wait_until(lambda: curves() == 2, what="the curve of both profiles")
    page.mouse.move(0, 0)
    boxes.nth(0).uncheck()               # and nothing else: the curve follows without another message
    wait_until(lambda: curves() == 1, timeout=5, what="the unticked profile's curve gone")
    boxes.nth(0).check()
    wait_until(lambda: curves() == 2, timeout=5, what="its curve back")
    run_cell(page, 1)                      # a profile the user asks for is shown: it takes Baseline's place
    wait_until(lambda: boxes.count() == 3 and boxes.nth(2).is_disabled(), what="a third profile, shown")
    labels = page.locator(".jp-OutputArea-output .lw-compare label").all_inner_texts()
    assert [l.strip() for l in labels] == ["Approximated", "Baseline", "coarse"]      # the order kept
    assert boxes.nth(0).is_checked() and not boxes.nth(1).is_checked() and boxes.nth(2).is_checked()
    wait_until(lambda: len(heights(page)) == 128, what="coarse and Approximated side by side")
    assert not drawing_errors(page), drawing_errors(page)
    assert not widget_errors(page), widget_errors(page)


def test_every_view_follows_each_profile_switch(page, lab):
    # JupyterLab 4.6 sends widget messages to a kernel subshell (another thread) once one is started: the views
    # that redraw a moment after a switch (scatter, table) must follow the second and later switches too
    start(page, lab, "switch.ipynb")
    select = page.locator(".jp-OutputArea-output .lw-profile-select select")
    caption = page.locator(".jp-OutputArea-output .lw-chart-block:has(.lw-scatter-chart) .lw-key")
    rows = page.locator(".jp-OutputArea-output .lw-layer-table tbody tr.lw-row")
    table = {"Approximated": " | ".join(rows.all_inner_texts()[:6])}
    assert caption.inner_text().startswith("Approximated")
    for name in ["Baseline", "Approximated", "Baseline", "Approximated"]:
        select.select_option(name)
        wait_until(lambda: caption.inner_text().startswith(name), timeout=15, what=f"the scatter showing {name}")
        if name not in table:
            wait_until(lambda: " | ".join(rows.all_inner_texts()[:6]) != table["Approximated"], timeout=15,
                       what="the table showing Baseline")
            table[name] = " | ".join(rows.all_inner_texts()[:6])
        wait_until(lambda: " | ".join(rows.all_inner_texts()[:6]) == table[name], timeout=15,
                   what=f"the table showing {name}")
    assert not widget_errors(page), widget_errors(page)


LAYOUT_JS = """root => {
  const r = e => e.getBoundingClientRect();
  const within = [...root.querySelectorAll('.lw-controls > *, .lw-toolbar > *, .lw-compare > *, .lw-card,'
                                         + ' .lw-table-bar > *, .bqplot, .lw-plan-actions button, .lw-prune-row > *, .lw-exclude-layer,'
                                         + ' .lw-panel .widget-inline-hbox, .lw-panel input, .lw-panel select, .lw-panel button')]
    .filter(e => r(e).width > 0).map(e => [e.className.baseVal ?? e.className, r(e).right - r(root).right]);
  const clipped = [...root.querySelectorAll('.lw-scale-toggle button, .lw-compare-item, .lw-sort-label, td.lw-num,'
                                          + ' .lw-exclude-layer .widget-label-basic, .lw-exclude-layer span')]
    .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent);
  const arrow = root.querySelector('.lw-sort-arrow');          // the sorted column's arrow, inside its header
  const arrowShown = !!arrow && r(arrow).width > 0 && r(arrow).right <= r(arrow.closest('th')).right + 0.5;
  const charts = [...root.querySelectorAll('.lw-sensitivity-chart, .lw-params-chart, .lw-scatter-chart,'
                                         + ' .lw-layer-curve, .lw-plan-curve')];
  const overlaps = [];
  for (const c of charts) {
    const label = [...c.querySelectorAll('text.axislabel')].map(r);
    const ticks = [...c.querySelectorAll('.axis .tick text')].map(r);
    for (const a of label) for (const b of ticks)
      if (a.width && b.width && !(a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top))
        overlaps.push(c.className);
  }
  // the curve's rule names sit above its plot area, off the curves
  const curve = root.querySelector('.lw-layer-curve');
  const notes = curve ? [...curve.querySelectorAll('text')].filter(t => t.textContent === '0.95'
                                                                   || t.textContent.startsWith('target ')) : [];
  const notesAbove = notes.map(t => [t.textContent, r(t).bottom - r(curve.querySelector('.plotarea_background')).top]);
  const rows = {};
  for (const c of root.querySelectorAll('.lw-card')) rows[Math.round(r(c).top)] = (rows[Math.round(r(c).top)] || 0) + 1;
  const centers = sel => [...root.querySelectorAll(sel + ' .bargroup rect')].map(e => (r(e).left + r(e).right) / 2);
  // how far the first and last bars stay inside the plot area (negative: cut)
  const ends = sel => { const bars = [...root.querySelectorAll(sel + ' .bargroup rect')].map(r);
    const area = r(root.querySelector(sel + ' .plotarea_background'));
    return bars.length ? [bars[0].left - area.left, area.right - bars[bars.length - 1].right] : []; };
  const slider = root.querySelector('.lw-target-slider .slider-container');
  return {within, clipped, arrowShown, overlaps, notesAbove, cardRows: Object.values(rows),
          sens: centers('.lw-sensitivity-chart'), params: centers('.lw-params-chart'),
          ends: [...ends('.lw-sensitivity-chart'), ...ends('.lw-params-chart')],
          slider: slider ? r(slider).width : 0, width: r(root).width,
          ticks: [...root.querySelectorAll('.lw-sensitivity-chart .tick text, .lw-params-chart .tick text,'
                                           + ' .lw-scatter-chart .tick text')].map(e => e.textContent),
          exclude: root.querySelector('.lw-exclude-layer') ? root.querySelector('.lw-exclude-layer').textContent : '',
          axisFill: getComputedStyle(root.querySelector('.lw-sensitivity-chart text.axislabel')).fill,
          titleColor: getComputedStyle(root.querySelector('.lw-chart-title .lw-h')).color,
          textColor: getComputedStyle(root.querySelector('.lw-cards')).color,
          header: root.querySelector('.lw-header').textContent};
}"""


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
@pytest.mark.parametrize("where", ["inline", "sidebar"])
def test_layout_and_theme(page, lab, dark, where):
    page.set_viewport_size({"width": 1000, "height": 1400})
    # inline: shown before its profiles (as a notebook usually does), so the bars arrive in drawn charts;
    # the sidebar's view is made after them
    notebook(lab["root"] / f"layout-{where}-{dark}.ipynb", EARLY,
             "w.store.autostart(AUTO_PROFILES)\nw.wait()\nw.selected = 'Approximated'", "w.show_sidebar()")
    open_notebook(page, lab, f"layout-{where}-{dark}.ipynb")
    run_cell(page, 0)
    page.wait_for_selector(".jp-OutputArea-output .lw-params-chart .plotarea_background", timeout=60_000)
    time.sleep(0.5)
    run_cell(page, 1)
    wait_until(lambda: len(heights(page)) == 64, what="64 sensitivity bars")
    root = ".jp-OutputArea-output .losswidget"
    if where == "sidebar":
        run_cell(page, 2)
        root = "#jp-right-stack .losswidget"
        wait_until(lambda: page.locator(f"{root} .lw-sensitivity-chart .bargroup rect").count() == 64,
                   what="bars in the sidebar")
    try:
        page.locator(f"{root} .lw-sort", has_text="Sens").first.click()     # sorted: an arrow in the header
        wait_until(lambda: page.locator(f"{root} .lw-sort-arrow").count() == 1, what="the sort arrow")
        page.locator(f"{root} .lw-sensitivity-chart .bargroup").nth(12).click(force=True)   # the curve
        wait_until(lambda: page.locator(f"{root} .lw-layer-curve .plotarea_background").count() == 1,
                   what="the layer curve")
        set_theme(page, dark)
        time.sleep(1)                                                      # let the charts lay out
        got = page.locator(root).first.evaluate(LAYOUT_JS)
        if where == "sidebar":
            assert 230 <= got["width"] <= 320                               # the sidebar's width
        assert not [w for w in got["within"] if w[1] > 1], got["within"]      # nothing sticks out on the right
        assert not got["clipped"], got["clipped"]         # no "% of to…", "Sensi…", "0.000…" in the table,
        assert "keep this layer dense" in got["exclude"]  # nor "Exclude from the plan (keep this …"
        name = f"layout-{where}-{'dark' if dark else 'light'}"
        shot(page, name, root)
        for part, block in (("drilldown", ".lw-exclude-layer"), ("scatter", ".lw-scatter-chart"),
                            ("plan", ".lw-plan-curve"), ("table", ".lw-layer-table")):
            shot(page, f"{name}-{part}", f"{root} .lw-chart-block:has({block})")
        assert got["arrowShown"]                                            # not "Sensitivit…"
        assert not got["overlaps"], got["overlaps"]                         # axis titles clear of tick labels
        assert len(got["notesAbove"]) == 2 and all(d <= 1 for _, d in got["notesAbove"]), got["notesAbove"]   # off the curve
        assert len(set(got["cardRows"])) == 1, got["cardRows"]              # no card alone on a row
        assert got["slider"] >= 60                                          # a usable slider, not a knob
        assert got["sens"] and all(abs(a - b) < 1 for a, b in zip(got["sens"], got["params"]))   # bars line up
        assert len(got["ends"]) == 4 and all(e > -1 for e in got["ends"]), got["ends"]   # end bars whole
        bad = [t for t in got["ticks"] if re.search(r"\.\d*0(?!\d)|\.0[kMG]?$", t)]
        assert not bad, bad                                                 # no 0.0500, 0.00 or 20.0k
        assert got["axisFill"] == got["textColor"] and "255, 165, 0" not in got["titleColor"] + got["axisFill"]
        assert "outlier.onnx" in got["header"] and "blake3:" in got["header"] and "64 layers" in got["header"]
        assert not drawing_errors(page), drawing_errors(page)
        assert not widget_errors(page), widget_errors(page)
    finally:
        if dark:
            set_theme(page, False)
