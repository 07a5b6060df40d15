"""`losswidget app`: the widget as a standalone page on localhost, served by Voilà (as Sparsify was an app)."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from .errors import LossWidgetError


def app_notebook(model: str | None, data: str | None, profiles_dir: str) -> dict:
    """A one-cell notebook that shows the widget (the bundled demo when no model is given)."""
    if model is None:
        code = ("from losswidget import LossProfileWidget, demo\n"
                "path, data = demo()\n"
                f"w = LossProfileWidget(path, data=data, profiles_dir={profiles_dir!r})\n"
                "w")
    else:
        code = ("from losswidget import LossProfileWidget\n"
                f"w = LossProfileWidget({model!r}, data={data!r}, profiles_dir={profiles_dir!r})\n"
                "w")
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": "app", "metadata": {}, "outputs": [],
                       "source": code}],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def serve(model: str | None, *, data: str | None = None, profiles_dir: str = "losswidget-profiles",
          port: int = 8866, open_browser: bool = True) -> int:
    try:
        import voila  # noqa: F401
    except ImportError:
        raise LossWidgetError("losswidget app needs Voilà: pip install 'losswidget[app]'") from None
    if model is not None:
        if not Path(model).is_file():
            raise LossWidgetError(f"Model file not found: {model}")
        model = str(Path(model).resolve())
    if data is not None:
        if not Path(data).is_file():
            raise LossWidgetError(f"Data file not found: {data}")
        data = str(Path(data).resolve())
    profiles = str(Path(profiles_dir).resolve())
    folder = Path(tempfile.mkdtemp(prefix="losswidget-app-"))
    nb = folder / "Loss profiles.ipynb"
    nb.write_text(json.dumps(app_notebook(model, data, profiles)))
    print(f"Serving the loss-profile app on http://127.0.0.1:{port}/ (Ctrl+C stops it)", flush=True)
    env = dict(os.environ, LOSSWIDGET_FRONTEND="voila")
    cmd = [sys.executable, "-m", "voila", str(nb), f"--port={port}", "--Voila.ip=127.0.0.1",
           "--theme=light", "--show_tracebacks=False"] + ([] if open_browser else ["--no-browser"])
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)     # become Voilà: a signal to this process reaches the server itself
