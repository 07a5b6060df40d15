import subprocess
import sys

import onnxruntime as ort

import losswidget


def test_bundled_demo_is_a_trained_model_with_its_data():
    path, data = losswidget.demo()
    logits = ort.InferenceSession(path).run(None, {"image": data["image"]})[0]
    assert data["image"].shape == (450, 64) and data["y"].shape == (450,)
    from losswidget.demo import ACCURACY
    assert abs((logits.argmax(1) == data["y"]).mean() - ACCURACY) < 1e-3 and ACCURACY > 0.95


def test_demo_command_runs_offline_and_writes_profiles(tmp_path):
    out = subprocess.run([sys.executable, "-m", "losswidget", "demo", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    approx, mag, shot = (losswidget.load_profile(tmp_path / f"{m}.json") for m in ("approximated", "magnitude",
                                                                                    "one-shot"))
    assert [l.name for l in mag.layers] == ["fc1", "fc2", "fc3", "classifier"]
    assert approx.model.hash == mag.model.hash == shot.model.hash
    assert shot.settings["metric"] == "loss" and shot.settings["samples"] == 450
    assert shot.recovery.kind == "accuracy ratio" and all(0 < v <= 1 for _, v in shot.recovery.points)
    assert mag.recovery is None and mag.summary.weight_energy_kept is not None


def test_app_notebook_runs_the_widget_for_a_given_model(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    from losswidget.serve import app_notebook
    path, data = losswidget.demo()
    np_path = tmp_path / "d.npz"
    import numpy as np
    np.savez(np_path, image=data["image"][:20])
    nb = nbformat.from_dict(app_notebook(path, str(np_path), str(tmp_path / "profiles")))
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
