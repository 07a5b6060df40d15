// Download buttons, one per entry of the `buttons` trait ({kind, label, format}): ask the kernel for that
// kind (the selected profile or the compared ones as JSON or CSV; the plan as JSON or a recipe), then save
// the answer from the browser. The kernel's answer reaches every view of this widget (inline and in the
// sidebar), so each click carries a request id and only the view that asked saves the file: one click, one
// download. render returns a cleanup that unregisters the listeners of a removed view.
let counter = 0;

function requestId() {
  counter += 1;
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}-${counter}`;
}

function save(msg) {
  const blob = new Blob([msg.text], { type: msg.mime });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = msg.filename;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 0);
}

function render({ model, el }) {
  el.classList.add("lw-export");
  const pending = new Set();
  const buttons = {};
  const status = document.createElement("span");
  status.className = "lw-export-status";
  status.setAttribute("role", "status");
  function build() {
    for (const button of Object.values(buttons)) button.remove();
    for (const key of Object.keys(buttons)) delete buttons[key];
    for (const { kind, label } of model.get("buttons") || []) {
      const button = document.createElement("button");
      button.className = `lw-export-${kind} jupyter-button`;
      button.textContent = label;
      button.addEventListener("click", () => {
        const id = requestId();
        pending.add(id);
        status.textContent = "";
        model.send({ kind, id });
      });
      buttons[kind] = button;
      el.insertBefore(button, status);
    }
    describe();
  }
  el.appendChild(status);

  function describe() {
    const what = model.get("what");
    const formats = Object.fromEntries((model.get("buttons") || []).map((b) => [b.kind, b.format || b.kind]));
    for (const [kind, button] of Object.entries(buttons)) {
      const label = what ? `Download ${what} as ${formats[kind]}` : "Nothing to download yet";
      button.title = label;
      button.setAttribute("aria-label", label);
    }
  }

  function onMessage(msg) {
    if (!msg || !pending.has(msg.id)) return;          // another view's request, or not an answer
    pending.delete(msg.id);
    if (msg.error) {
      status.textContent = msg.error;
      return;
    }
    save(msg);
  }

  build();
  model.on("change:what", describe);
  model.on("change:buttons", build);
  model.on("msg:custom", onMessage);
  return () => {
    model.off("change:what", describe);
    model.off("change:buttons", build);
    model.off("msg:custom", onMessage);
  };
}

export default { render };
