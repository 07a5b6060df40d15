"""The static HTML report (report.py, `LossProfile.to_html`, `losswidget report`): what it holds, read back with
the standard HTML parser; the small numeric helpers by hand. tests/e2e/test_report.py opens it in Chromium."""
import math
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

import losswidget
from losswidget import report

from helpers import layered_net


class Page(HTMLParser):
    """Elements by tag with their attributes, the text, and which <svg> each element sits in."""

    def __init__(self, text):
        super().__init__()
        self.elements, self.text, self.svg = [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "svg":
            self.svg = attrs.get("class", "")
        self.elements.append((tag, attrs, self.svg))

    def handle_endtag(self, tag):
        if tag == "svg":
            self.svg = None

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag, cls=None, svg=None):
        return [a for t, a, s in self.elements if t == tag and (cls is None or cls in a.get("class", "").split())
                and (svg is None or (s and svg in s))]


def test_report_has_cards_one_bar_per_layer_a_scatter_the_plan_and_the_table(tmp_path):
    profile = losswidget.analyze(layered_net(tmp_path), "magnitude")
    n = len(profile.layers)
    (tmp_path / "out").mkdir()                          # output folders are not made (issue 14)
    text = profile.to_html(tmp_path / "out" / "report.html")
    assert (tmp_path / "out" / "report.html").read_text() == text
    assert "http" not in text                                      # no external asset or link of any kind
    page = Page(text)
    for chart in ("chart-sensitivity", "chart-params", "chart-plan"):
        assert len(page.find("rect", "bar", svg=chart)) == n, chart
    assert len(page.find("circle", "point")) == int(np.sum(profile.sensitivities > 0))
    rows = page.find("tr")[1:]
    assert len(rows) == n and [r["data-i"] for r in rows] == [str(i) for i in range(n)]
    words = " ".join(page.text)
    s, plan = profile.summary, profile.plan()
    assert f"{s.est_params_reduction:.2f}×" in words and "Weight energy kept" in words
    assert f"{profile.name} — net.onnx" in words and profile.model.hash in words
    assert f"Plan at {plan.target:.0%} target sparsity" in words
    cells = [c for c in page.find("td") if "data-v" in c]      # per row: #, params, sensitivity, planned
    planned = [float(cells[4 * i + 3]["data-v"]) for i in range(n)]
    assert planned == pytest.approx([l.sparsity for l in plan.layers])
    sens = [float(cells[4 * i + 2]["data-v"]) for i in range(n)]
    assert sens == pytest.approx(list(profile.sensitivities))
    # another target: the plan and the cards move with it
    other = Page(profile.to_html(target=0.5))
    assert "Plan at 50% target sparsity" in " ".join(other.text)


def test_plain_data_in_escaped_out_and_plan_matched_by_index_id_or_name():
    layers = [{"index": i, "id": f"id{i}", "name": name, "op_type": "MatMul", "shape": [4, 4], "params": 16 * (i + 1),
               "sensitivity": s, "measurements": {"0.0": 0.0, "0.5": s}, "flags": []}
              for i, (name, s) in enumerate([("<img src=x onerror=alert(1)>", 0.5), ("b", None), ("c", 0.2)])]
    d = {"name": "p <b>", "method": "magnitude", "model": {"path": "/m/x.onnx", "hash": "blake3:ab"},
         "summary": {"total_params": 100, "prunable_params": 96}, "layers": layers,
         "plan": {"target": 0.5, "layers": [{"index": 0, "sparsity": 0.25}, {"name": "c", "sparsity": 0.75}]}}
    text = report.render_html(d)
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text and "p &lt;b&gt;" in text
    assert report.planned_sparsity(layers, d["plan"]) == [0.25, None, 0.75]
    assert report.planned_sparsity(layers, {"layers": [{"id": "id1", "sparsity": 0.5}]}) == [None, 0.5, None]
    page = Page(text)
    assert len(page.find("rect", "missing")) == 2                   # layer b: no sensitivity, not in the plan
    assert "n/a" in page.text and "-" in page.text
    without = report.render_html({**d, "plan": None})
    assert 'id="plan"' not in without and "planned sparsity" not in without and 'id="plan"' in text
    assert "No prunable layers" in report.render_html({**d, "layers": []})


def test_an_outlier_is_cut_and_marked_not_flattening_the_rest():
    values = [1.0, 1.2, 0.9, 1.1, 1.0, 1.3, 0.8, 1.1, 1.0, 65.0]      # one fixed-weight layer far above the rest
    top, cut = report.axis_top(values)
    assert cut and 1.3 <= top < 5
    assert report.axis_top(values[:-1]) == (1.3, False) and report.axis_top([]) == (1.0, False)
    assert report.axis_top([1, 2, 3]) == (3, False)                  # too few layers to call one an outlier
    layers = [{"index": i, "name": f"l{i}"} for i in range(10)]
    svg = report.bar_chart(layers, values, title="t", kind="sensitivity", fmt=lambda v: f"{v:g}")
    page = Page(svg)
    assert len(page.find("rect", "over")) == 1 and "▲ 65" in svg and "#9 l9 = 65" in svg
    heights = [float(r["height"]) for r in page.find("rect", "bar")]
    assert min(heights[:-1]) > 0.25 * max(heights)                   # the others keep a readable height


def test_nice_ticks_and_quantile_by_hand():
    assert report.nice_ticks(0, 0.37) == [0, 0.1, 0.2, 0.3, 0.4]
    assert report.nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert report.nice_ticks(-0.02, 0.11) == [-0.05, 0.0, 0.05, 0.1, 0.15]          # step 0.05 >= 0.13 / 5
    assert report.quantile([4, 1, 3, 2], 0.5) == 2 and report.quantile([5], 0.9) == 5
    assert report.quantile(list(range(9)) + [1000], 0.9) == 8
    assert report.count(25_500_000) == "25.5 M" and report.count(math.nan) == "n/a"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "losswidget", *args], capture_output=True, text=True, timeout=300)


def test_cli_report_from_a_model_a_profile_and_a_comparison_export(tmp_path):
    model_path = layered_net(tmp_path, layers=4)
    out = run_cli("report", model_path, "--html", str(tmp_path / "a.html"), "--method", "approximated")
    assert out.returncode == 0, out.stderr
    assert "Modelled from the architecture only" in (tmp_path / "a.html").read_text()
    first = losswidget.analyze(model_path, "magnitude")
    first.to_json(tmp_path / "p.json")
    out = run_cli("report", str(tmp_path / "p.json"), "--html", str(tmp_path / "p.html"), "--target", "0.6")
    assert out.returncode == 0 and "Plan at 60% target sparsity" in (tmp_path / "p.html").read_text()
    from losswidget.profile import profiles_to_json
    profiles_to_json([first, first.with_name("again")], tmp_path / "both.json")
    out = run_cli("report", str(tmp_path / "both.json"), "--html", str(tmp_path / "b.html"))
    assert out.returncode == 2 and "holds 2 profiles ('Baseline (weight magnitude)', 'again'); pick one with --name" \
        in out.stderr
    out = run_cli("report", str(tmp_path / "both.json"), "--html", str(tmp_path / "b.html"), "--name", "again")
    assert out.returncode == 0 and "again — net.onnx" in (tmp_path / "b.html").read_text()
    for args, message in ((["nope.onnx"], "Not found"), ([str(tmp_path / "p.json"), "--target", "2"], "target"),
                          ([str(tmp_path / "a.html")], "is not an ONNX model")):
        out = run_cli("report", *args, "--html", str(tmp_path / "x.html"))
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
