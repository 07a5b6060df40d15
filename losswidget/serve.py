"""`losswidget app`: the widget as a standalone page on localhost, served by Voilà (as Sparsify was an app).

Everything that can be wrong is checked here, before Voilà starts, so a bad model, data file, folder or busy
port ends as one line from the CLI instead of Voilà's generic error page. Then this process *becomes* Voilà
(exec), so Ctrl+C and signals reach the server itself. Because nothing runs after the exec, the one-cell
notebook Voilà serves lives in a fixed per-user cache folder (one per set of arguments, rewritten each
start) rather than a temporary folder nobody would remove. Voilà is started with:
- our template (`app_template/`: Voilà's "lab" template without its two font-awesome stylesheets from a CDN,
  so the page makes no request off this machine);
- idle-kernel culling: a page's kernel is shut down `kernel_timeout` seconds after its tab is closed (Voilà
  starts one kernel per page load and by default keeps all of them until the server stops);
- no port fallback: Voilà would silently move to another port than the one we print.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
import sys
from importlib.resources import files
from pathlib import Path

from .errors import DataError, LossWidgetError

TEMPLATE = "losswidget"
KERNEL_TIMEOUT = 120       # seconds a closed page's kernel is kept (a reload within it gets a new one anyway)
MIN_KERNEL_TIMEOUT = 10    # Voilà culls kernels that are still starting too, before any page connects


def app_notebook(model: str | None, data: str | None, profiles_dir: str, labels: str | None = None) -> dict:
    """A one-cell notebook that shows the widget (the bundled demo when no model is given); `labels`: the key
    of the labels in the data, if it holds them."""
    if model is None:
        code = ("from losswidget import LossProfileWidget, demo\n"
                "path, data = demo()\n"
                f"w = LossProfileWidget(path, data=data, labels=\"y\", profiles_dir={profiles_dir!r})\n"
                "w")
    else:
        code = ("from losswidget import LossProfileWidget\n"
                f"w = LossProfileWidget({model!r}, data={data!r}, labels={labels!r}, profiles_dir={profiles_dir!r})\n"
                "w")
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": "app", "metadata": {}, "outputs": [],
                       "source": code}],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def cache_dir() -> Path:
    """Where the app keeps its notebooks: $XDG_CACHE_HOME/losswidget/app (default ~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "losswidget" / "app"


def write_app_notebook(model: str | None, data: str | None, profiles_dir: str, labels: str | None = None) -> Path:
    """The app's notebook in the cache, one folder per set of arguments; its name is the page's title."""
    nb = app_notebook(model, data, profiles_dir, labels)
    key = hashlib.sha256(json.dumps([model, data, profiles_dir]).encode()).hexdigest()[:16]
    folder = cache_dir() / key
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{Path(model).stem if model else 'Demo'} - loss profiles"
    path = folder / f"{title}.ipynb"
    for old in folder.glob("*.ipynb"):          # a title from an older version; only our notebooks live here
        if old != path:
            old.unlink(missing_ok=True)
    tmp = folder / f".{os.getpid()}.tmp"
    tmp.write_text(json.dumps(nb), encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_model(model: str) -> Path:
    """Open the model with the engine (its graph, not its weights): a bad file fails here, in one line."""
    from .graph import read_graph
    from .onnxfile import open_model
    with open_model(model) as mf:
        read_graph(mf)
    return Path(model).expanduser().resolve()


def check_data(data: str, model: str | None) -> tuple[Path, str | None]:
    """Read the .npz and check it against the model's inputs (a labels array beside them is fine); its path
    and the key of that labels array (None when there is none)."""
    from .data import label_candidates, load_data, model_inputs
    from .onnxfile import open_model
    path = Path(data).expanduser()
    if not path.is_file():
        raise DataError(f"Data file not found: {path}")
    if model is not None:
        import numpy as np
        with open_model(model) as mf:
            specs = model_inputs(mf.model)
            try:
                with np.load(path, allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            except Exception as exc:
                raise DataError(f"{path} is not a readable .npz file ({type(exc).__name__}).") from None
            labels = label_candidates(arrays, specs)
            key = labels[0] if len(labels) == 1 else None
            load_data(arrays, mf.model, labels=key)
            return path.resolve(), key
    return path.resolve(), None


def check_port(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise LossWidgetError(f"Port {port} on 127.0.0.1 is in use (another losswidget app?); "
                                  "stop it or pick another with --port.") from None


def voila_command(notebook: Path, port: int, open_browser: bool, kernel_timeout: int) -> list[str]:
    return [sys.executable, "-m", "voila", str(notebook), f"--port={port}", "--Voila.ip=127.0.0.1",
            "--Voila.port_retries=0", f"--template={TEMPLATE}", "--theme=light", "--show_tracebacks=False",
            f"--MappingKernelManager.cull_idle_timeout={kernel_timeout}",
            f"--MappingKernelManager.cull_interval={max(1, min(30, kernel_timeout // 2))}",
            ] + ([] if open_browser else ["--no-browser"])


def voila_env() -> dict:
    """The environment for Voilà: our template's folder first on JUPYTER_PATH (Voilà finds templates there)."""
    root = str(files("losswidget") / "app_template")
    paths = [root] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    return dict(os.environ, LOSSWIDGET_FRONTEND="voila", JUPYTER_PATH=os.pathsep.join(paths))


def serve(model: str | None, *, data: str | None = None, profiles_dir: str = "losswidget-profiles",
          port: int = 8866, open_browser: bool = True, kernel_timeout: int = KERNEL_TIMEOUT) -> int:
    missing = [m for m in ("voila", "ipykernel") if importlib.util.find_spec(m) is None]
    if missing:
        raise LossWidgetError(f"losswidget app needs {' and '.join(missing)}: pip install 'losswidget[app]'")
    if kernel_timeout < MIN_KERNEL_TIMEOUT:
        raise LossWidgetError(f"--kernel-timeout must be at least {MIN_KERNEL_TIMEOUT} seconds, got {kernel_timeout}: "
                              "a kernel still starting (no page connected yet) would be shut down too.")
    if data is not None and model is None:
        raise LossWidgetError("--data goes with a model: losswidget app MODEL.onnx --data DATA.npz "
                              "(the demo brings its own data).")
    model = str(check_model(model)) if model is not None else None
    labels = None
    if data is not None:
        checked, labels = check_data(data, model)
        data = str(checked)
    profiles = Path(profiles_dir).expanduser().resolve()
    profiles.mkdir(parents=True, exist_ok=True)      # an unwritable folder fails here (OSError: the CLI's one line)
    check_port(port)
    notebook = write_app_notebook(model, data, str(profiles), labels)
    print(f"Serving the loss-profile app on http://127.0.0.1:{port}/ (Ctrl+C stops it)", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, voila_command(notebook, port, open_browser, kernel_timeout), voila_env())
