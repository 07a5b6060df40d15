"""A loss profile as one self-contained HTML page: cards, SVG charts, a sortable layer table and the plan.

Rules, and why:
- A leaf: takes plain data (`LossProfile.to_dict()`, optionally with a "plan" entry) and imports nothing of
  losswidget, so profile.py can call it (profile -> report runs downward) and a profile file written by any
  version can be rendered.
- Offline: no external asset, font or script; the charts are SVG written here, the table sorts with a few
  lines of inline JavaScript. The file opens from a mail attachment or an air-gapped machine the same.
- Every string from the profile is escaped (layer names come from arbitrary ONNX files).
- The plan section is drawn only when the data has a "plan": `Plan.to_dict()` ({"target", "achieved",
  "est_params_reduction", "est_recovery", "recovery_kind", "weight_energy_kept", "warnings", "notes",
  "layers": [{"index", "name", "sparsity", "excluded", ...}]}); its layers are matched to the profile's by
  index, then id, then name; a layer the plan does not list shows as "-".
"""
from __future__ import annotations

import html
import math

WIDTH, LEFT, RIGHT, TOP = 960, 64, 16, 24          # SVG geometry (viewBox units; the SVG scales to the page)
CUT_RATIO, CUT_QUANTILE = 4.0, 0.9                 # bars above 4x the 90th percentile are cut, marked, listed
NAMES_UP_TO = 40                                   # layer names under the bars up to this many layers


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def count(n) -> str:
    """A count as people read it: 25.5 M, 8.2 k, 512."""
    if not _finite(n):
        return "n/a"
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f}"


def num(x, fmt: str = ".4g") -> str:
    return format(x, fmt) if _finite(x) else "n/a"


def nice_ticks(lo: float, hi: float, count_: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 2.5, 5 x a power of ten)."""
    if not (_finite(lo) and _finite(hi)) or hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count_
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks, t = [], start
    while t < hi + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    return ticks


def quantile(values: list[float], q: float) -> float:
    """The q-quantile taking the value below (no interpolation): with 10 layers, the 0.9 quantile must not
    lean on the largest one, the very outlier it is there to find."""
    s = sorted(values)
    return s[math.floor((len(s) - 1) * q)]


def axis_top(values: list[float]) -> tuple[float, bool]:
    """The top of a bar chart's y axis, and whether outliers are cut: one huge bar must not flatten the rest."""
    finite = [v for v in values if _finite(v)]
    if not finite:
        return 1.0, False
    top = max(finite)
    if len(finite) >= 8:
        q = quantile([abs(v) for v in finite], CUT_QUANTILE)
        if q > 0 and top > CUT_RATIO * q:
            return nice_ticks(0, 1.5 * q)[-1], True
    return (top if top > 0 else 1.0), False


def _label(i: int, layer: dict, n: int) -> str:
    if n <= NAMES_UP_TO:
        name = str(layer.get("name", i))
        return name if len(name) <= 22 else name[:21] + "…"
    return str(layer.get("index", i))


def bar_chart(layers: list[dict], values: list, *, title: str, kind: str, fmt, unit: str = "",
              top: float | None = None, height: int = 200) -> str:
    """One bar per layer in graph order; the same x positions in every chart, so bars line up."""
    n = len(layers)
    longest = max((len(_label(i, l, n)) for i, l in enumerate(layers)), default=1)
    bottom = int(16 + 4.6 * longest) if n <= NAMES_UP_TO else 34           # rotated names: ~6.5 px a letter
    height += bottom
    plot_w, plot_h = WIDTH - LEFT - RIGHT, height - TOP - bottom
    finite = [v for v in values if _finite(v)]
    low = min([0.0] + finite)
    cut = False
    if top is None:
        top, cut = axis_top(values)
    ticks = nice_ticks(low, top)
    y0, y1 = ticks[0], max(ticks[-1], top)
    ys = lambda v: TOP + plot_h * (1 - (v - y0) / (y1 - y0))               # noqa: E731
    slot = plot_w / max(n, 1)
    gap = min(slot * 0.15, 3.0) if slot > 3 else 0.0
    out = [f'<svg class="chart chart-{kind}" viewBox="0 0 {WIDTH} {height}" role="img" '
           f'aria-label="{_e(title)}" preserveAspectRatio="xMinYMin meet">']
    for t in ticks:
        y = ys(t)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(fmt(t))}{unit}</text>')
    zero = ys(0.0)
    cuts = []
    for i, (layer, v) in enumerate(zip(layers, values)):
        x = LEFT + i * slot + gap / 2
        w = max(slot - gap, 0.6)
        shown = f"{fmt(v)}{unit}" if _finite(v) else "n/a"
        tip = f"#{layer.get('index', i)} {layer.get('name', '')} ({layer.get('op_type', '')}): {shown}"
        if not _finite(v):
            out.append(f'<rect class="bar missing" data-i="{i}" x="{x:.2f}" y="{zero - 2:.1f}" width="{w:.2f}" '
                       f'height="2"><title>{_e(tip)} (not measured)</title></rect>')
            continue
        over = v > y1
        y_top = ys(min(v, y1))
        y, h = (y_top, zero - y_top) if v >= 0 else (zero, ys(v) - zero)
        out.append(f'<rect class="bar{" over" if over else ""}" data-i="{i}" x="{x:.2f}" y="{y:.2f}" '
                   f'width="{w:.2f}" height="{max(h, 0.0):.2f}"><title>{_e(tip)}</title></rect>')
        if over:
            cuts.append((i, v))
            cx = x + w / 2
            out.append(f'<rect class="break" x="{x - 1:.2f}" y="{TOP + 6}" width="{w + 2:.2f}" height="3"/>'
                       f'<text class="cut-label" x="{cx:.1f}" y="{TOP - 5}" text-anchor="middle">'
                       f'▲ {_e(fmt(v))}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{zero:.1f}" y2="{zero:.1f}"/>')
    step = 1 if n <= NAMES_UP_TO else max(1, math.ceil(n / 24))
    for i in range(0, n, step):
        x = LEFT + (i + 0.5) * slot
        label = _e(_label(i, layers[i], n))
        if n <= NAMES_UP_TO:
            out.append(f'<text class="xlabel" transform="translate({x:.1f},{TOP + plot_h + 8}) rotate(-45)" '
                       f'text-anchor="end">{label}</text>')
        else:
            out.append(f'<text class="xlabel" x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{label}</text>')
    out.append("</svg>")
    caption = ""
    if cuts or cut:
        caption = (f'<p class="caption">{len(cuts)} bar(s) above {_e(fmt(y1))}{unit} are cut at the top (▲, value '
                   "above the mark): "
                   + ", ".join(f"#{layers[i].get('index', i)} {_e(layers[i].get('name', ''))} = {_e(fmt(v))}"
                               for i, v in cuts[:8]) + (" …" if len(cuts) > 8 else "") + ".</p>")
    return f'<figure class="figure"><figcaption>{_e(title)}</figcaption>{"".join(out)}{caption}</figure>'


def _log_ticks(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if b == a:
        b += 1
    return [10.0 ** k for k in range(a, b + 1)]


def scatter(layers: list[dict], planned: list | None) -> str:
    """Params x sensitivity, both on log axes: the lower right holds many params that cost little to prune."""
    pts = [(i, l) for i, l in enumerate(layers)
           if _finite(l.get("params")) and l["params"] > 0 and _finite(l.get("sensitivity")) and l["sensitivity"] > 0]
    left_out = len(layers) - len(pts)
    title = "Params × sensitivity (log-log)"
    if len(pts) < 2:
        return (f'<figure class="figure"><figcaption>{_e(title)}</figcaption><p class="caption">Needs at least two '
                f"layers with params and a sensitivity above 0 ({len(pts)} here).</p></figure>")
    height, bottom = 320, 40
    plot_w, plot_h = WIDTH - LEFT - RIGHT, height - TOP - bottom
    xs_t = _log_ticks(min(l["params"] for _, l in pts), max(l["params"] for _, l in pts))
    ys_t = _log_ticks(min(l["sensitivity"] for _, l in pts), max(l["sensitivity"] for _, l in pts))
    (x0, x1), (y0, y1) = (math.log10(xs_t[0]), math.log10(xs_t[-1])), (math.log10(ys_t[0]), math.log10(ys_t[-1]))
    lx = lambda v: LEFT + plot_w * (math.log10(v) - x0) / (x1 - x0)                      # noqa: E731
    ly = lambda v: TOP + plot_h * (1 - (math.log10(v) - y0) / (y1 - y0))                 # noqa: E731
    out = [f'<svg class="chart chart-scatter" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{_e(title)}">']
    for k, t in enumerate(xs_t):
        anchor = "end" if k == len(xs_t) - 1 else "middle"          # the last label stays inside the picture
        out.append(f'<line class="grid" x1="{lx(t):.1f}" x2="{lx(t):.1f}" y1="{TOP}" y2="{TOP + plot_h}"/>'
                   f'<text class="tick" x="{lx(t):.1f}" y="{TOP + plot_h + 16}" text-anchor="{anchor}">'
                   f'{count(t)}</text>')
    for t in ys_t:
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{ly(t):.1f}" y2="{ly(t):.1f}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{ly(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<text class="corner" x="{WIDTH - RIGHT - 6}" y="{TOP + plot_h - 8}" text-anchor="end">'
               "prune first: many params, low sensitivity</text>")
    out.append(f'<text class="axis-title" x="{LEFT + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">params'
               f'</text><text class="axis-title" transform="translate(14,{TOP + plot_h / 2:.0f}) rotate(-90)" '
               'text-anchor="middle">sensitivity</text>')
    for i, l in pts:
        sp = planned[i] if planned is not None else None
        tip = (f"#{l.get('index', i)} {l.get('name', '')}: {count(l['params'])} params, sensitivity "
               f"{num(l['sensitivity'])}" + (f", planned {sp:.0%}" if _finite(sp) else ""))
        out.append(f'<circle class="point" data-i="{i}" cx="{lx(l["params"]):.1f}" cy="{ly(l["sensitivity"]):.1f}" '
                   f'r="4"><title>{_e(tip)}</title></circle>')
    out.append("</svg>")
    note = (f'<p class="caption">{left_out} layer(s) with no params or a sensitivity ≤ 0 cannot sit on log axes and '
            "are left out.</p>") if left_out else ""
    return f'<figure class="figure"><figcaption>{_e(title)}</figcaption>{"".join(out)}{note}</figure>'


def planned_sparsity(layers: list[dict], plan: dict | None) -> list | None:
    """Each layer's planned sparsity (None: not in the plan), matched by index, then id, then name."""
    if not plan:
        return None
    keys = ("index", "id", "name")
    found = {k: {} for k in keys}
    for entry in plan.get("layers") or []:
        if isinstance(entry, dict) and _finite(entry.get("sparsity")):
            for k in keys:
                if entry.get(k) is not None:
                    found[k][str(entry[k])] = float(entry["sparsity"])
    out = []
    for l in layers:
        value = None
        for k in keys:
            if l.get(k) is not None and str(l[k]) in found[k]:
                value = found[k][str(l[k])]
                break
        out.append(value)
    return out


def excluded(layers: list[dict], plan: dict | None) -> set[int]:
    """Positions of the layers the plan keeps dense on purpose (excluded by the user)."""
    entries = [e for e in (plan or {}).get("layers") or [] if isinstance(e, dict) and e.get("excluded")]
    names = {str(e.get("index")) for e in entries}
    return {i for i, l in enumerate(layers) if str(l.get("index")) in names}


def _card(label: str, value: str, detail: str = "", tip: str = "") -> str:
    title = f' title="{_e(tip)}"' if tip else ""
    return (f'<div class="card"{title}><div class="card-label">{_e(label)}</div><div class="card-value">{_e(value)}'
            f'</div><div class="card-detail">{_e(detail)}</div></div>')


def cards(d: dict, plan: dict | None) -> str:
    s = d.get("summary") or {}
    settings = d.get("settings") or {}
    layers = d.get("layers") or []
    total, prunable = s.get("total_params"), s.get("prunable_params")
    share = f"{prunable / total:.0%} of all params" if _finite(total) and total and _finite(prunable) else ""
    plan = plan or {}
    target = plan.get("target", s.get("target_sparsity", settings.get("target_sparsity")))
    achieved = plan.get("achieved", s.get("achieved_sparsity"))
    levels = sorted({float(k) for l in layers for k in (l.get("measurements") or {})}) or settings.get(
        "sparsity_levels") or []
    lv = (f"{len(levels)} levels, {levels[0]:g}–{levels[-1]:g}" if len(levels) > 6
          else ", ".join(f"{x:g}" for x in levels)) if levels else "n/a"
    method = str(d.get("method", "")) + (f" ({settings['metric']})" if settings.get("metric") else "")
    reduction = plan.get("est_params_reduction", s.get("est_params_reduction"))
    recovery = plan.get("est_recovery", s.get("est_recovery"))
    kind = plan.get("recovery_kind", s.get("recovery_kind"))
    energy = plan.get("weight_energy_kept", s.get("weight_energy_kept"))
    at = f"plan at {target:.0%}" if _finite(target) else ""
    if _finite(achieved):
        at += f": {achieved:.1%} of prunable params pruned"
    if _finite(recovery):
        points = sorted(float(k) for k in ((d.get("recovery") or {}).get("points") or {}))
        quality = _card("Est. recovery", f"{recovery:.1%}", f"{kind or 'measured'}, measured on data",
                        f"{kind or 'Recovery'} of the pruned model with the dense one, measured at "
                        + (", ".join(f"{t:.0%}" for t in points) or "the profile's targets")
                        + " and interpolated between them.")
    else:
        quality = _card("Weight energy kept", f"{energy:.1%}" if _finite(energy) else "n/a",
                        "data-free; not a recovery estimate",
                        "Share of the layers' sum of w² the plan keeps. A data-free profile cannot say how much "
                        "accuracy a plan keeps: run a one-shot profile on data for that.")
    return '<div class="cards">' + "".join([
        _card("Total params", count(total), f"{count(prunable)} prunable in {len(layers)} layers" + (
            f", {share}" if share else ""), "Logical weights of stored floating-point and quantized tensors, each "
                                            "counted once."),
        _card("Est. params reduction", f"{reduction:.2f}×" if _finite(reduction) else "n/a", at,
              "Total params / params left under the plan."),
        _card("Avg sensitivity", num(s.get("avg_sensitivity")), "L(0.95) − L(0) per layer",
              "Mean over layers of the loss change at 95% sparsity."),
        quality,
        _card("Pruning settings", method, f"levels {lv}" + (f"; {settings['samples']} samples"
                                                            if settings.get("samples") else "")),
    ]) + "</div>"


def layer_table(layers: list[dict], planned: list | None, kept: set[int] = frozenset()) -> str:
    heads = [("#", "num"), ("layer", "text"), ("op", "text"), ("shape", "text"), ("params", "num"),
             ("sensitivity", "num")] + ([("planned sparsity", "num")] if planned is not None else []) + [
        ("flags", "text")]
    out = ['<table class="layers sortable"><thead><tr>']
    for name, kind in heads:
        out.append(f'<th data-kind="{kind}"><button type="button">{_e(name)}</button></th>')
    out.append("</tr></thead><tbody>")
    for i, l in enumerate(layers):
        sens = l.get("sensitivity")
        cells = [(l.get("index", i), str(l.get("index", i))), (None, l.get("name", "")), (None, l.get("op_type", "")),
                 (None, "×".join(str(x) for x in l.get("shape") or [])), (l.get("params"), count(l.get("params"))),
                 (sens if _finite(sens) else "", num(sens))]
        if planned is not None:
            sp = planned[i]
            text = f"{sp:.0%}" if _finite(sp) else "-"
            cells.append((sp if _finite(sp) else "", text + (" (kept dense)" if i in kept else "")))
        flags = ", ".join(l.get("flags") or []) + (f" ({l['error']})" if l.get("error") else "")
        cells.append((None, flags))
        out.append(f'<tr data-i="{i}">' + "".join(
            f'<td data-v="{_e(v)}">{_e(text)}</td>' if v is not None else f"<td>{_e(text)}</td>"
            for v, text in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --bg: #fff; --panel: #f6f7f9; --line: #d9dce1; --bar: #4a76a8;
        --over: #c0392b; --plan: #2e8b57; --hl: #f2b134; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e8eaed; --muted: #a0a4aa; --bg: #1e1f22; --panel: #2a2c30; --line: #3c4043; --bar: #6f9fd8;
          --over: #e57368; --plan: #5cc08a; --hl: #f2b134; } }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0 auto; max-width: 1040px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: var(--muted); margin: 0 0 16px; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 10px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.card-label { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.card-value { font-size: 20px; font-weight: 600; } .card-detail { font-size: 12px; color: var(--muted); }
.notes li, .caption { color: var(--muted); font-size: 13px; }
.figure { margin: 16px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg.chart { width: 100%; height: auto; display: block; }
svg text { fill: var(--muted); font-size: 11px; } svg .axis-title, svg .corner { font-size: 12px; }
svg .grid { stroke: var(--line); stroke-width: 1; } svg .axis { stroke: var(--muted); stroke-width: 1; }
svg .bar { fill: var(--bar); } svg .bar.over { fill: var(--over); } svg .bar.missing { fill: var(--line); }
svg .break { fill: var(--bg); } svg .cut-label { fill: var(--over); font-weight: 600; }
svg.chart-plan .bar { fill: var(--plan); }
svg .point { fill: var(--bar); fill-opacity: .75; stroke: var(--bg); }
svg .hl { fill: var(--hl) !important; }
table.layers { border-collapse: collapse; width: 100%; font-size: 13px; }
table.layers th, table.layers td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; }
table.layers td[data-v], table.layers th[data-kind=num] { text-align: right; font-variant-numeric: tabular-nums; }
table.layers th button { all: unset; cursor: pointer; font-weight: 600; }
table.layers th[aria-sort=ascending] button::after { content: " ▲"; }
table.layers th[aria-sort=descending] button::after { content: " ▼"; }
table.layers tr.hl td { background: color-mix(in srgb, var(--hl) 30%, transparent); }
.plan { border-left: 3px solid var(--plan); padding-left: 12px; }
.warning { color: var(--over); }
"""

# Sorting by a header (numbers by data-v, blanks last) and linking table rows with bars and points.
JS = """
document.querySelectorAll("table.sortable th button").forEach((button, col) => {
  button.addEventListener("click", () => {
    const th = button.parentElement, table = th.closest("table"), body = table.tBodies[0];
    const asc = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    const numeric = th.dataset.kind === "num";
    const key = (row) => { const c = row.cells[col]; return numeric ? (c.dataset.v === "" ? NaN : +c.dataset.v)
                                                                    : c.textContent.toLowerCase(); };
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = key(a), y = key(b);
      if (numeric && (Number.isNaN(x) || Number.isNaN(y))) return Number.isNaN(x) - Number.isNaN(y);
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    body.append(...rows);
  });
});
const mark = (i, on) => document.querySelectorAll(`[data-i="${i}"]`).forEach((e) => e.classList.toggle("hl", on));
document.querySelectorAll("[data-i]").forEach((e) => {
  e.addEventListener("mouseenter", () => mark(e.dataset.i, true));
  e.addEventListener("mouseleave", () => mark(e.dataset.i, false));
});
"""


def render_html(d: dict) -> str:
    """The report for one profile as plain data (`LossProfile.to_dict()`, plus an optional "plan")."""
    layers = list(d.get("layers") or [])
    model = d.get("model") or {}
    plan = d.get("plan") if isinstance(d.get("plan"), dict) else None
    planned = planned_sparsity(layers, plan)
    path = model.get("path") or "(in memory)"
    model_name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    title = f"{d.get('name', 'profile')} — {model_name}"
    meta = (f"Model {_e(path)} · {_e(model.get('hash', ''))} · method {_e(d.get('method', ''))} · "
            f"created {_e(d.get('created', ''))}" + (" · <strong>partial</strong> (cancelled before every layer was "
                                                     "measured)" if d.get("partial") else ""))
    parts = [f"<h1>{_e(title)}</h1>", f'<p class="meta">{meta}</p>', cards(d, plan)]
    notes = list(d.get("notes") or [])
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    if not layers:
        parts.append("<p>No prunable layers: nothing to chart.</p>")
    else:
        sens = [l.get("sensitivity") for l in layers]
        params = [l.get("params") for l in layers]
        parts.append("<h2>Layers</h2>")
        parts.append(bar_chart(layers, sens, title="Layer sensitivity: L(0.95) − L(0)", kind="sensitivity",
                               fmt=lambda v: f"{v:.3g}", height=230))
        parts.append(bar_chart(layers, params, title="Layer params", kind="params", fmt=count,
                               top=max([p for p in params if _finite(p)] or [1]), height=170))
        parts.append(scatter(layers, planned))
        if plan is not None:
            parts.append(plan_section(layers, plan, planned))
        parts.append("<h2>Layer table</h2>")
        parts.append('<p class="caption">Click a column title to sort; hover a row to find its bar.</p>')
        parts.append(layer_table(layers, planned, excluded(layers, plan)))
    body = "\n".join(parts)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
            f"<script>{JS}</script>\n</body></html>\n")


def plan_section(layers: list[dict], plan: dict, planned: list) -> str:
    """The plan: each layer's sparsity at the target, its warnings and notes (drawn only when there is one)."""
    target, achieved = plan.get("target"), plan.get("achieved")
    values = [p * 100 if p is not None and _finite(p) else math.nan for p in planned]
    head = f"Plan at {target:.0%} target sparsity" if _finite(target) else "Plan"
    if _finite(achieved):
        head += f" ({achieved:.1%} of prunable params pruned)"
    kept = excluded(layers, plan)
    explain = ("Per-layer sparsities taken by the least cost per pruned parameter on this profile's curves, no "
               f"layer past {float(plan.get('cap', 0.95)):.0%}"
               + (f"; {len(kept)} layer(s) kept dense on request" if kept else "") + ".")
    return (f'<section class="plan" id="plan"><h2>{_e(head)}</h2><p class="caption">{_e(explain)}</p>'
            + "".join(f'<p class="warning">{_e(w)}</p>' for w in plan.get("warnings") or [])
            + "".join(f'<p class="caption">{_e(n)}</p>' for n in plan.get("notes") or [])
            + bar_chart(layers, values, title="Planned sparsity per layer", kind="plan", fmt=lambda v: f"{v:.0f}",
                        unit="%", top=100.0, height=170)
            + "</section>")
