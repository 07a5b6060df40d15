// Layer table: one row per layer from the `rows` trait; sortable by any column, searchable by name or op,
// grouped by name prefix with group totals. Hover and click write `hovered` / `selected` (graph-order
// indices), which the charts follow; the "In plan" box writes `excluded` (layer ids kept dense); the charts' hover and click come back the same way. Sorting, search
// and grouping are traits too, so every view of the widget (inline, sidebar) shows the same table.
// Only the rows in view are in the page (every row is ROW px tall; spacer rows stand in for the rest), so a
// profile switch or a scroll touches a few dozen rows whether the model has 50 layers or 5,000.
// No bundler, no imports.

const ROW = 22; // px, layer and group rows alike (table.css holds them to it)
const SPARE = 8; // rows drawn beyond each edge of the view
const NARROW = 380; // px: below this (the sidebar) op and params are left out; the readout shows them

// `narrow`: the header in the sidebar, where the full word would leave no room for the sort arrow
const COLUMNS = [
  { key: "index", label: "#", num: true, title: "Graph order" },
  { key: "name", label: "Layer", num: false, title: "Layer name" },
  { key: "op", label: "Op", num: false, title: "Operator type" },
  { key: "params", label: "Params", num: true, title: "Weights in the layer" },
  { key: "sensitivity", label: "Sensitivity", narrow: "Sens.", num: true, title: "L(0.95) − L(0) of the selected profile" },
  { key: "planned", label: "Planned", narrow: "Plan", num: true, title: "Planned sparsity at the target" },
  { key: "inplan", label: "In plan", narrow: "✓", num: false, title: "Untick to keep the layer dense (out of the plan)" },
];

function human(n) {
  const units = [["B", 1e9], ["M", 1e6], ["k", 1e3]];
  // as profile.human in Python: one decimal, none when it is 0 (2 k, not 2.0 k)
  for (const [unit, size] of units) if (Math.abs(n) >= size) return `${Number((n / size).toFixed(1))} ${unit}`;
  return `${Math.round(n)}`;
}

// as rules.short in Python: 3 significant digits; below 0.001 and from 10000 up a short exponent (7.54e-5),
// so a value takes 8 characters at most and fits the narrow column
function short(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "—";
  if (x === 0) return "0";
  const size = Math.abs(x);
  if (size >= 1000 && size < 10000) return x.toFixed(0);
  if (size < 1e-3 || size >= 1e4) {
    const [mantissa, exponent] = x.toExponential(2).split("e");
    return `${Number(mantissa)}e${Number(exponent)}`;
  }
  return Number(x.toPrecision(3)).toString();
}

function percent(x) {
  return x === null || x === undefined || !Number.isFinite(x) ? "—" : `${(100 * x).toFixed(0)}%`;
}

function prefix(name, depth) {
  const parts = name.split(/[./:]+/).filter((s) => s.length > 0);
  if (parts.length > depth) return parts.slice(0, depth).join(".");
  return parts.length > 1 ? parts.slice(0, -1).join(".") : name;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function missing(x) {
  return x === null || x === undefined || (typeof x === "number" && !Number.isFinite(x));
}

function compare(key, descending) {
  const sign = descending ? -1 : 1;
  return (a, b) => {
    const x = a[key], y = b[key];
    if (missing(x) || missing(y)) return missing(x) === missing(y) ? a.index - b.index : missing(x) ? 1 : -1;
    if (typeof x === "string") return sign * x.localeCompare(y) || a.index - b.index;
    return sign * (x - y) || a.index - b.index;
  };
}

function render({ model, el: root }) {
  root.classList.add("lw-table");
  const collapsed = new Set(); // view-local: which groups are folded
  let typing = null; // the search box's pending update
  let items = []; // what the table shows, in order: {layer: row} or {group: key, members, ...totals}
  let frame = null; // a pending repaint
  const byIndex = new Map(); // layer index -> its <tr>, for the rows in the page
  let narrow = false;
  const columns = () => (narrow ? COLUMNS.filter((c) => c.key !== "op" && c.key !== "params") : COLUMNS);

  const bar = el("div", "lw-table-bar");
  const search = el("input", "lw-table-search");
  search.type = "search";
  search.placeholder = "Search layers by name or op";
  search.setAttribute("aria-label", "Search layers by name or op");
  const group = el("select", "lw-table-group");
  group.setAttribute("aria-label", "Group layers by name prefix");
  for (const [value, text] of [[0, "No groups"], [1, "Group: 1 name part"], [2, "Group: 2 name parts"],
                               [3, "Group: 3 name parts"], [4, "Group: 4 name parts"]]) {
    const option = el("option", "", text);
    option.value = String(value);
    group.appendChild(option);
  }
  const count = el("span", "lw-table-count");
  bar.append(search, group, count);

  const scroller = el("div", "lw-table-scroll");
  const table = el("table", "lw-table-grid");
  table.setAttribute("role", "grid");
  const thead = el("thead");
  const tbody = el("tbody");
  const padTop = el("tr", "lw-pad");
  const padBottom = el("tr", "lw-pad");
  padTop.appendChild(el("td"));
  padBottom.appendChild(el("td"));
  table.append(thead, tbody);
  scroller.appendChild(table);
  root.append(bar, scroller);

  function header() {
    thead.replaceChildren();
    const tr = el("tr");
    for (const col of columns()) {
      const th = el("th", `lw-col-${col.key}${col.num ? " lw-num" : ""}`);
      const button = el("button", "lw-sort");
      const active = model.get("sort") === col.key;
      // the label may shorten with an ellipsis, the arrow never does
      button.append(el("span", "lw-sort-label", narrow && col.narrow ? col.narrow : col.label));
      if (active) button.append(el("span", "lw-sort-arrow", model.get("descending") ? "▼" : "▲"));
      const label = col.key === "sensitivity" ? model.get("sens_label") || col.label : col.label;
      button.title = `Sort by ${label.toLowerCase()} (${col.title})`;
      th.setAttribute("aria-sort", active ? (model.get("descending") ? "descending" : "ascending") : "none");
      button.addEventListener("click", () => {
        if (model.get("sort") === col.key) model.set("descending", !model.get("descending"));
        else {
          model.set("sort", col.key);
          model.set("descending", col.num && col.key !== "index");
        }
        model.save_changes();
      });
      th.appendChild(button);
      tr.appendChild(th);
    }
    thead.appendChild(tr);
  }

  function layerRow(r) {
    const tr = el("tr", "lw-row");
    tr.dataset.index = String(r.index);
    tr.tabIndex = -1;
    tr.classList.toggle("lw-selected", r.index === model.get("selected"));
    tr.classList.toggle("lw-hovered", r.index === model.get("hovered"));
    tr.classList.toggle("lw-excluded", r.inplan === 0);
    const name = el("td", "lw-name");
    // narrow: the end of a long name tells layers apart ("…0.conv2"), its start rarely does: the cell
    // runs right to left there (table.css), so its ellipsis cuts the start; the marks (LRM) keep the name's
    // own order at both ends
    const text = narrow ? "\u200E" + r.name + "\u200E" : r.name;
    name.appendChild(el("span", "lw-name-text", text));
    for (const flag of r.flags || []) name.appendChild(el("span", `lw-flag lw-flag-${flag}`, flag));
    name.title = r.name + ((r.flags || []).length ? ` (${r.flags.join(", ")})` : "");
    const cells = { index: el("td", "lw-num", String(r.index)), name, op: el("td", "", r.op),
                    params: el("td", "lw-num", human(r.params)), sensitivity: el("td", "lw-num", short(r.sensitivity)),
                    planned: el("td", "lw-num", r.inplan === 0 ? "excl." : percent(r.planned)), inplan: boxCell(r) };
    tr.append(...columns().map((c) => cells[c.key]));
    byIndex.set(r.index, tr);
    return tr;
  }

  function boxCell(r) {
    const td = el("td", "lw-inplan");
    const box = el("input", "lw-inplan-box");
    box.type = "checkbox";
    box.checked = r.inplan !== 0;
    const label = `${r.inplan === 0 ? "Put" : "Keep"} ${r.name} ${r.inplan === 0 ? "back into" : "out of"} the plan`;
    box.title = label;
    box.setAttribute("aria-label", label);
    box.addEventListener("click", (event) => event.stopPropagation()); // a tick is not a drill-down
    box.addEventListener("change", () => {
      const now = new Set(model.get("excluded") || []);
      if (box.checked) now.delete(r.id);
      else now.add(r.id);
      model.set("excluded", [...now]);
      model.save_changes();
    });
    td.appendChild(box);
    return td;
  }

  function groupRow(g) {
    const tr = el("tr", "lw-group");
    const folded = collapsed.has(g.key);
    const cell = el("td", "lw-group-name");
    const toggle = el("button", "lw-group-toggle", `${folded ? "▸" : "▾"} ${g.key}`);
    toggle.setAttribute("aria-expanded", String(!folded));
    toggle.addEventListener("click", () => {
      if (collapsed.has(g.key)) collapsed.delete(g.key);
      else collapsed.add(g.key);
      draw();
    });
    cell.append(toggle, el("span", "lw-group-count", ` ${g.members.length} layer${g.members.length > 1 ? "s" : ""}`));
    cell.title = g.key;
    const cells = { index: el("td"), name: cell, op: el("td"), params: el("td", "lw-num", human(g.params)),
                    sensitivity: el("td", "lw-num", "Σ " + short(g.sensitivity)), planned: el("td", "lw-num", percent(g.planned)),
                    inplan: el("td") };
    tr.append(...columns().map((c) => cells[c.key]));
    tr.title = "Group totals: params and sensitivity summed, planned sparsity weighted by params";
    return tr;
  }

  // the rows in view (and a few more), between two spacer rows that keep the scroll height
  function paint() {
    frame = null;
    const view = scroller.clientHeight || 340;
    const head = thead.offsetHeight || ROW;
    const first = Math.max(0, Math.floor((scroller.scrollTop - head) / ROW) - SPARE);
    const last = Math.min(items.length, Math.ceil((scroller.scrollTop + view) / ROW) + SPARE);
    byIndex.clear();
    const rows = [];
    for (let k = first; k < last; k++) rows.push(items[k].layer ? layerRow(items[k].layer) : groupRow(items[k]));
    padTop.firstChild.colSpan = padBottom.firstChild.colSpan = columns().length;
    padTop.firstChild.style.height = `${first * ROW}px`;
    padBottom.firstChild.style.height = `${(items.length - last) * ROW}px`;
    tbody.replaceChildren(padTop, ...rows, padBottom);
    const focusable = byIndex.get(model.get("selected")) || tbody.querySelector("tr.lw-row");
    if (focusable) focusable.tabIndex = 0; // one tab stop; arrow keys move within the table
  }

  function repaint() {
    if (frame === null) frame = requestAnimationFrame(paint);
  }

  function draw() {
    header();
    if (typing === null) search.value = model.get("query"); // not while the user's typing is on its way
    group.value = String(model.get("group"));
    const planned = model.get("planned") || {};
    const excluded = new Set(model.get("excluded") || []);
    const all = (model.get("rows") || []).map((r) => ({ ...r, planned: planned[r.id] ?? null,
                                                         inplan: excluded.has(r.id) ? 0 : 1 }));
    const query = model.get("query").trim().toLowerCase();
    const shown = query ? all.filter((r) => r.name.toLowerCase().includes(query) || r.op.toLowerCase().includes(query)) : all;
    const key = model.get("sort"), descending = model.get("descending");
    shown.sort(compare(key, descending));
    const depth = model.get("group");
    if (depth > 0) {
      const groups = new Map();
      for (const r of shown) {
        const g = prefix(r.name, depth);
        if (!groups.has(g)) groups.set(g, []);
        groups.get(g).push(r);
      }
      const totals = [...groups].map(([g, members]) => {
        const params = members.reduce((s, r) => s + r.params, 0);
        return {
          group: true, key: g, members, name: g, op: "", params, index: Math.min(...members.map((r) => r.index)),
          sensitivity: members.reduce((s, r) => s + (Number.isFinite(r.sensitivity) ? r.sensitivity : 0), 0),
          planned: members.every((r) => Number.isFinite(r.planned))
            ? members.reduce((s, r) => s + r.planned * r.params, 0) / Math.max(params, 1) : null,
        };
      });
      totals.sort(compare(key, descending));
      items = [];
      for (const t of totals) {
        items.push(t);
        if (!collapsed.has(t.key)) for (const r of t.members) items.push({ layer: r });
      }
    } else {
      items = shown.map((r) => ({ layer: r }));
    }
    count.textContent = query ? `${shown.length} of ${all.length} layers` : `${all.length} layers`;
    paint();
  }

  function position(index) {
    return items.findIndex((it) => it.layer && it.layer.index === index);
  }

  function reveal(index) {
    const k = position(index);
    if (k < 0) return;
    const head = thead.offsetHeight || ROW;
    const top = head + k * ROW;
    if (top - head < scroller.scrollTop || top + ROW > scroller.scrollTop + scroller.clientHeight) {
      // a third down the view, on a row boundary (no row half under the sticky header)
      scroller.scrollTop = Math.max(0, Math.round((k - scroller.clientHeight / 3 / ROW) | 0) * ROW);
    }
    paint();
  }

  function mark(cls, trait) {
    return () => {
      for (const tr of tbody.querySelectorAll(`.${cls}`)) tr.classList.remove(cls);
      const tr = byIndex.get(model.get(trait));
      if (tr) tr.classList.add(cls);
    };
  }
  const markHovered = mark("lw-hovered", "hovered");
  const markSelected = () => {
    mark("lw-selected", "selected")();
    if (!clicked) reveal(model.get("selected")); // a click elsewhere (a bar): bring its row into view
    clicked = false;
  };
  let clicked = false;

  function rowIndex(event) {
    const tr = event.target.closest("tr.lw-row");
    return tr ? Number(tr.dataset.index) : -1;
  }
  tbody.addEventListener("mouseover", (event) => {
    const index = rowIndex(event);
    if (index >= 0 && index !== model.get("hovered")) {
      model.set("hovered", index);
      model.save_changes();
    }
  });
  tbody.addEventListener("mouseleave", () => {
    model.set("hovered", -1);
    model.save_changes();
  });
  tbody.addEventListener("click", (event) => {
    const index = rowIndex(event);
    if (index >= 0) {
      clicked = true;
      model.set("selected", index);
      model.save_changes();
    }
  });
  tbody.addEventListener("keydown", (event) => {
    const tr = event.target.closest("tr.lw-row");
    if (!tr || event.target.tagName === "INPUT") return; // the box's own keys toggle it
    const index = Number(tr.dataset.index);
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      clicked = true;
      model.set("selected", index);
      model.save_changes();
      return;
    }
    const step = event.key === "ArrowDown" ? 1 : event.key === "ArrowUp" ? -1 : 0;
    if (!step) return;
    event.preventDefault();
    let k = position(index) + step;
    while (k >= 0 && k < items.length && !items[k].layer) k += step;
    if (k < 0 || k >= items.length) return;
    const next = items[k].layer.index;
    model.set("hovered", next);
    model.save_changes();
    reveal(next);
    const row = byIndex.get(next);
    if (row) row.focus();
  });
  scroller.addEventListener("scroll", repaint, { passive: true });
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      typing = null;
      model.set("query", search.value);
      model.save_changes();
    }, 120);
  });
  group.addEventListener("change", () => {
    model.set("group", Number(group.value));
    model.save_changes();
  });

  const top = () => { scroller.scrollTop = 0; draw(); }; // a new order or filter: show its beginning
  const events = ["change:rows", "change:planned", "change:excluded", "change:sens_label"];
  const reorders = ["change:sort", "change:descending", "change:query", "change:group"];
  // one draw for all the changes of one message: a new profile's rows, plan and label arrive together, and
  // each change event drew (sorted and painted) the whole table again
  let queued = false;
  const drawOnce = () => {
    if (queued) return;
    queued = true;
    queueMicrotask(() => { queued = false; draw(); });
  };
  for (const e of events) model.on(e, drawOnce);
  for (const e of reorders) model.on(e, top);
  model.on("change:hovered", markHovered);
  model.on("change:selected", markSelected);
  const resize = new ResizeObserver(() => {
    const now = root.clientWidth > 0 && root.clientWidth < NARROW;
    if (now !== narrow) {
      narrow = now;
      draw();
    }
  });
  resize.observe(root);
  draw();
  if (model.get("selected") >= 0) reveal(model.get("selected"));
  // the first paint measured a table not yet in the page: paint again once it is
  const late = requestAnimationFrame(paint);
  return () => {
    clearTimeout(typing);
    cancelAnimationFrame(late);
    resize.disconnect();
    if (frame !== null) cancelAnimationFrame(frame);
    for (const e of events) model.off(e, drawOnce);
    for (const e of reorders) model.off(e, top);
    model.off("change:hovered", markHovered);
    model.off("change:selected", markSelected);
  };
}

export default { render };
