// The model header: file name, short content hash, params and layers. State: model_name, model_hash, details.
function render({ model, el }) {
  el.classList.add("lw-header");
  const name = document.createElement("span");
  name.className = "lw-header-model";
  const hash = document.createElement("code");
  hash.className = "lw-header-hash";
  const details = document.createElement("span");
  details.className = "lw-header-details";
  el.append(name, hash, details);
  function draw() {
    name.textContent = model.get("model_name") || "model";
    hash.textContent = model.get("model_hash");
    hash.title = model.get("model_hash") ? "Content hash of the model file (profiles are matched by it)" : "";
    details.textContent = model.get("details");
  }
  draw();
  const events = ["change:model_name", "change:model_hash", "change:details"];
  for (const e of events) model.on(e, draw);
  return () => { for (const e of events) model.off(e, draw); };
}

export default { render };
