// Compare: one checkbox per profile (`options`, in the store's order); `value` holds the checked names in
// that order. The selected profile is always compared, so its box is checked and disabled.
function render({ model, el }) {
  el.classList.add("lw-compare");
  el.setAttribute("role", "group");
  el.setAttribute("aria-label", "Profiles to compare");
  function draw() {
    el.replaceChildren();
    const label = document.createElement("span");
    label.className = "lw-compare-label";
    label.textContent = "Compare:";
    el.appendChild(label);
    const chosen = new Set(model.get("value"));
    const selected = model.get("selected");
    for (const name of model.get("options")) {
      const item = document.createElement("label");
      item.className = "lw-compare-item";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = name;
      box.checked = chosen.has(name) || name === selected;
      box.disabled = name === selected;
      if (box.disabled) {
        item.title = "The selected profile is always shown";
        item.classList.add("lw-compare-fixed");
      }
      box.addEventListener("change", () => {
        const now = new Set(model.get("value"));
        if (box.checked) now.add(name);
        else now.delete(name);
        model.set("value", model.get("options").filter((n) => now.has(n) || n === model.get("selected")));
        model.save_changes();
      });
      item.append(box, document.createTextNode(" " + name));
      el.appendChild(item);
    }
  }
  draw();
  const events = ["change:options", "change:value", "change:selected"];
  for (const e of events) model.on(e, draw);
  return () => { for (const e of events) model.off(e, draw); };
}

export default { render };
