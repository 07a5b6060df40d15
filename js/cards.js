// Model Summary cards. State lives in the `cards` trait (a list of {key, label, value, detail, tooltip});
// this view only draws it. No bundler, no imports.
function render({ model, el }) {
  el.classList.add("lw-cards");
  el.setAttribute("role", "group");
  el.setAttribute("aria-label", "Model summary");

  function draw() {
    el.replaceChildren();
    const title = model.get("title");
    if (title) {
      const h = document.createElement("div");
      h.className = "lw-cards-title";
      h.textContent = title;
      el.appendChild(h);
    }
    const row = document.createElement("div");
    row.className = "lw-cards-row";
    for (const card of model.get("cards")) {
      const box = document.createElement("div");
      box.className = `lw-card lw-card-${card.key}`;
      box.setAttribute("role", "group");
      box.setAttribute("aria-label", `${card.label}: ${card.value}`);
      if (card.tooltip) box.title = card.tooltip;
      const label = document.createElement("div");
      label.className = "lw-card-label";
      label.textContent = card.label;
      const value = document.createElement("div");
      value.className = "lw-card-value";
      value.textContent = card.value;
      box.append(label, value);
      if (card.detail) {
        const detail = document.createElement("div");
        detail.className = "lw-card-detail";
        detail.textContent = card.detail;
        box.appendChild(detail);
      }
      row.appendChild(box);
    }
    el.appendChild(row);
  }

  draw();
  model.on("change:cards", draw);
  model.on("change:title", draw);
}

export default { render };
