// Download buttons: ask the kernel for the selected profile as JSON or CSV, then save it from the browser.
function render({ model, el }) {
  el.classList.add("lw-export");
  for (const kind of ["json", "csv"]) {
    const button = document.createElement("button");
    button.className = `lw-export-${kind} jupyter-button`;
    button.textContent = `Download ${kind.toUpperCase()}`;
    button.setAttribute("aria-label", `Download the selected profile as ${kind.toUpperCase()}`);
    button.addEventListener("click", () => model.send({ kind }));
    el.appendChild(button);
  }
  model.on("msg:custom", (msg) => {
    if (!msg || !msg.filename) return;
    const blob = new Blob([msg.text], { type: msg.mime });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = msg.filename;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 0);
  });
}

export default { render };
