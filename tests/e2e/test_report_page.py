"""The HTML report in Chromium, opened from a file with no network: bars drawn, the table sorts, a row finds its
bar (any request off the machine fails the test: conftest)."""
import losswidget

from helpers import layered_net

BARS = "svg.chart-sensitivity rect.bar"


def test_report_renders_offline_and_sorts(page, tmp_path):
    profile = losswidget.analyze(layered_net(tmp_path), "magnitude")
    n = len(profile.layers)
    path = tmp_path / "report.html"
    profile.to_html(path)
    page.goto(path.as_uri())
    assert page.locator(BARS).count() == n and page.locator("svg.chart-plan rect.bar").count() == n
    heights = page.eval_on_selector_all(BARS, "els => els.map(e => e.getBoundingClientRect().height)")
    assert all(h > 0 for h in heights) and max(heights) > 50

    def names():
        return page.eval_on_selector_all("table.layers tbody tr", "rows => rows.map(r => r.cells[1].textContent)")
    order = sorted(profile.layers, key=lambda l: l.sensitivity)
    page.locator("th:has-text('sensitivity') button").click()
    assert names() == [l.name for l in order]
    assert page.locator("th:has-text('sensitivity')").get_attribute("aria-sort") == "ascending"
    page.locator("th:has-text('sensitivity') button").click()
    assert names() == [l.name for l in reversed(order)]
    page.locator("th:has-text('layer') button").click()
    assert names() == sorted(l.name.lower() for l in profile.layers)
    row = page.locator("table.layers tbody tr", has_text="block3")
    row.hover()
    assert "hl" in page.locator(f"{BARS}[data-i='3']").get_attribute("class")
    assert not [m for m in page.console_messages if m.startswith(("error", "pageerror"))], page.console_messages
