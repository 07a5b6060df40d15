// Layer table: one row per layer from the `rows` trait; sortable by any column, searchable by name or op,
// grouped by name prefix with group totals. Hover and click write `hovered` / `selected` (graph-order
// indices), which the charts follow; the charts' hover and click come back the same way. Sorting, search
// and grouping are traits too, so every view of the widget (inline, sidebar) shows the same table.
// No bundler, no imports.

const COLUMNS = [
  { key: "index", label: "#", num: true, title: "Graph order" },
  { key: "name", label: "Layer", num: false, title: "Layer name" },
  { key: "op", label: "Op", num: false, title: "Operator type" },
  { key: "params", label: "Params", num: true, title: "Weights in the layer" },
  { key: "sensitivity", label: "Sensitivity", num: true, title: "L(0.95) − L(0) of the selected profile" },
  { key: "planned", label: "Planned", num: true, title: "Planned sparsity at the target" },
];

function human(n) {
  const units = [["B", 1e9], ["M", 1e6], ["k", 1e3]];
  for (const [unit, size] of units) if (Math.abs(n) >= size) return `${(n / size).toFixed(1)} ${unit}`;
  return `${Math.round(n)}`;
}

function short(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "—";
  if (x === 0) return "0";
  if (Math.abs(x) >= 1000 && Math.abs(x) < 10000) return x.toFixed(0);
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

function render({ model, el: root }) {
  root.classList.add("lw-table");
  const collapsed = new Set(); // view-local: which groups are folded
  let typing = null; // the search box's pending update
  const byIndex = new Map(); // layer index -> <tr>

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
  const thead = el("thead");
  const tbody = el("tbody");
  table.append(thead, tbody);
  scroller.appendChild(table);
  root.append(bar, scroller);

  function header() {
    thead.replaceChildren();
    const tr = el("tr");
    for (const col of COLUMNS) {
      const th = el("th", col.num ? "lw-num" : "");
      const button = el("button", "lw-sort");
      const label = col.key === "sensitivity" ? model.get("sens_label") || col.label : col.label;
      const active = model.get("sort") === col.key;
      button.textContent = label + (active ? (model.get("descending") ? " ▼" : " ▲") : "");
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

  function rowsWithPlan() {
    const planned = model.get("planned") || {};
    return (model.get("rows") || []).map((r) => ({ ...r, planned: planned[r.id] ?? null }));
  }

  function compare(key, descending) {
    const sign = descending ? -1 : 1;
    return (a, b) => {
      const x = a[key], y = b[key];
      const missingX = x === null || x === undefined || (typeof x === "number" && !Number.isFinite(x));
      const missingY = y === null || y === undefined || (typeof y === "number" && !Number.isFinite(y));
      if (missingX || missingY) return missingX === missingY ? a.index - b.index : missingX ? 1 : -1;
      if (typeof x === "string") return sign * x.localeCompare(y) || a.index - b.index;
      return sign * (x - y) || a.index - b.index;
    };
  }

  function layerRow(r) {
    const tr = el("tr", "lw-row");
    tr.dataset.index = String(r.index);
    tr.tabIndex = -1;
    if (r.index === model.get("selected")) tr.classList.add("lw-selected");
    if (r.index === model.get("hovered")) tr.classList.add("lw-hovered");
    tr.appendChild(el("td", "lw-num", String(r.index)));
    const name = el("td", "lw-name");
    name.appendChild(el("span", "lw-name-text", r.name));
    name.title = r.name;
    for (const flag of r.flags || []) name.appendChild(el("span", `lw-flag lw-flag-${flag}`, flag));
    tr.appendChild(name);
    tr.appendChild(el("td", "", r.op));
    tr.appendChild(el("td", "lw-num", human(r.params)));
    tr.appendChild(el("td", "lw-num", short(r.sensitivity)));
    tr.appendChild(el("td", "lw-num", percent(r.planned)));
    byIndex.set(r.index, tr);
    return tr;
  }

  function groupRow(key, members) {
    const params = members.reduce((s, r) => s + r.params, 0);
    const sens = members.reduce((s, r) => s + (Number.isFinite(r.sensitivity) ? r.sensitivity : 0), 0);
    const planned = members.every((r) => Number.isFinite(r.planned))
      ? members.reduce((s, r) => s + r.planned * r.params, 0) / Math.max(params, 1) : null;
    const tr = el("tr", "lw-group");
    const folded = collapsed.has(key);
    const cell = el("td", "lw-group-name");
    const toggle = el("button", "lw-group-toggle", `${folded ? "▸" : "▾"} ${key}`);
    toggle.setAttribute("aria-expanded", String(!folded));
    toggle.addEventListener("click", () => {
      if (collapsed.has(key)) collapsed.delete(key);
      else collapsed.add(key);
      draw();
    });
    cell.append(toggle, el("span", "lw-group-count", ` ${members.length} layer${members.length > 1 ? "s" : ""}`));
    tr.append(el("td"), cell, el("td"));
    tr.appendChild(el("td", "lw-num", human(params)));
    tr.appendChild(el("td", "lw-num", "Σ " + short(sens)));
    tr.appendChild(el("td", "lw-num", percent(planned)));
    tr.title = "Group totals: params and sensitivity summed, planned sparsity weighted by params";
    return tr;
  }

  function draw() {
    header();
    if (typing === null) search.value = model.get("query"); // not while the user's typing is on its way
    group.value = String(model.get("group"));
    const all = rowsWithPlan();
    const query = model.get("query").trim().toLowerCase();
    const shown = query ? all.filter((r) => r.name.toLowerCase().includes(query) || r.op.toLowerCase().includes(query)) : all;
    const key = model.get("sort"), descending = model.get("descending");
    shown.sort(compare(key, descending));
    byIndex.clear();
    const frag = document.createDocumentFragment();
    const depth = model.get("group");
    if (depth > 0) {
      const groups = new Map();
      for (const r of shown) {
        const g = prefix(r.name, depth);
        if (!groups.has(g)) groups.set(g, []);
        groups.get(g).push(r);
      }
      const totals = [...groups].map(([g, members]) => ({
        key: g, members, index: Math.min(...members.map((r) => r.index)), name: g, op: "",
        params: members.reduce((s, r) => s + r.params, 0),
        sensitivity: members.reduce((s, r) => s + (Number.isFinite(r.sensitivity) ? r.sensitivity : 0), 0),
        planned: null,
      }));
      totals.sort(compare(key === "planned" ? "index" : key, descending));
      for (const t of totals) {
        frag.appendChild(groupRow(t.key, t.members));
        if (!collapsed.has(t.key)) for (const r of t.members) frag.appendChild(layerRow(r));
      }
    } else {
      for (const r of shown) frag.appendChild(layerRow(r));
    }
    tbody.replaceChildren(frag);
    const first = byIndex.get(model.get("selected")) || tbody.querySelector("tr.lw-row");
    if (first) first.tabIndex = 0; // one tab stop; arrow keys move within the table
    count.textContent = query ? `${shown.length} of ${all.length} layers` : `${all.length} layers`;
  }

  function mark(cls, trait, scroll) {
    return () => {
      for (const tr of tbody.querySelectorAll(`.${cls}`)) tr.classList.remove(cls);
      const tr = byIndex.get(model.get(trait));
      if (!tr) return;
      tr.classList.add(cls);
      if (scroll) {
        const top = tr.offsetTop, bottom = top + tr.offsetHeight;
        const head = thead.offsetHeight;
        if (top - head < scroller.scrollTop || bottom > scroller.scrollTop + scroller.clientHeight) {
          scroller.scrollTop = Math.max(0, top - head - scroller.clientHeight / 3);
        }
      }
    };
  }
  const markHovered = mark("lw-hovered", "hovered", false);
  const markSelected = mark("lw-selected", "selected", true);

  function rowIndex(event) {
    const tr = event.target.closest("tr.lw-row");
    return tr ? Number(tr.dataset.index) : -1;
  }
  tbody.addEventListener("mouseover", (event) => {
    const index = rowIndex(event);
    if (index !== model.get("hovered")) {
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
      model.set("selected", index);
      model.save_changes();
    }
  });
  tbody.addEventListener("keydown", (event) => {
    const tr = event.target.closest("tr.lw-row");
    if (!tr) return;
    const next = event.key === "ArrowDown" ? tr.nextElementSibling : event.key === "ArrowUp" ? tr.previousElementSibling : null;
    if (event.key === "Enter") {
      model.set("selected", Number(tr.dataset.index));
      model.save_changes();
    } else if (next && next.classList.contains("lw-row")) {
      event.preventDefault();
      next.focus();
      model.set("hovered", Number(next.dataset.index));
      model.save_changes();
    }
  });
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

  const redraw = () => draw();
  const events = ["change:rows", "change:planned", "change:sort", "change:descending", "change:query",
                  "change:group", "change:sens_label"];
  for (const e of events) model.on(e, redraw);
  model.on("change:hovered", markHovered);
  model.on("change:selected", markSelected);
  draw();
  markSelected();
  return () => {
    clearTimeout(typing);
    for (const e of events) model.off(e, redraw);
    model.off("change:hovered", markHovered);
    model.off("change:selected", markSelected);
  };
}

export default { render };
