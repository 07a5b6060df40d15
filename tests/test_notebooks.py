"""The quickstart notebook runs top to bottom in a real kernel, headless."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_quickstart_runs(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    out = tmp_path / "quickstart-out"
    assert [p.name for p in tmp_path.iterdir()] == ["quickstart-out"]      # nothing beside it (git ignores it)
    assert all((out / f"one_shot.{ext}").exists() for ext in ("json", "csv", "html"))
    assert len(list((out / "profiles").glob("*.json"))) == 4      # approximated, baseline, activation, one-shot
    widget_views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widget_views) >= 2                      # the widget inline, and again in the sidecar
