import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import losswidget
from losswidget.demo import ACCURACY, DESCRIPTION


def _accuracy(path, data):
    logits = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": data["image"]})[0]
    return (logits.argmax(1) == data["y"]).mean()


def test_default_demo_is_the_residual_cnn_with_its_stated_accuracy_and_layers():
    path, data = losswidget.demo()
    assert path.endswith("digits_resnet.onnx")
    assert data["image"].shape == (450, 1, 8, 8) and data["image"].dtype == np.float32
    assert data["y"].shape == (450,) and data["y"].dtype == np.int64
    assert abs(_accuracy(path, data) - ACCURACY["resnet"]) < 1e-3 and ACCURACY["resnet"] >= 0.97
    profile = losswidget.analyze(path, "magnitude")
    ops = [l.op_type for l in profile.layers]
    assert len(ops) == 18 and "18 layers" in DESCRIPTION["resnet"]
    assert ops.count("Conv") == 17 and ops[-1] == "Gemm"
    names = [l.name for l in profile.layers]
    assert names[:2] == ["conv1", "layer1.0.conv1"] and names[-1] == "fc"
    assert {"layer2.0.downsample", "layer3.0.downsample"} <= set(names)          # the 1x1 projections
    model = onnx.load(path)
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert depthwise and model.opset_import[0].version == 17
    assert not [n for n in model.graph.node if n.op_type in ("BatchNormalization", "Dropout")]
    sizes = sorted(l.params for l in profile.layers)
    assert sizes[-1] / sizes[0] > 100                                   # layers of very different sizes


def test_mlp_demo_shares_the_held_out_digits():
    path, data = losswidget.demo("mlp")
    _, cnn_data = losswidget.demo()
    assert path.endswith("digits_mlp.onnx") and data["image"].shape == (450, 64)
    np.testing.assert_array_equal(data["image"], cnn_data["image"].reshape(450, 64))
    np.testing.assert_array_equal(data["y"], cnn_data["y"])
    assert abs(_accuracy(path, data) - ACCURACY["mlp"]) < 1e-3 and ACCURACY["mlp"] > 0.95
    assert [l.name for l in losswidget.analyze(path, "magnitude").layers] == ["fc1", "fc2", "fc3", "classifier"]


def test_unknown_demo_name_is_a_clear_error():
    with pytest.raises(losswidget.SettingsError, match="'resnet', 'mlp'"):
        losswidget.demo("vgg")


def test_demo_command_runs_offline_and_writes_profiles(tmp_path):
    out = subprocess.run([sys.executable, "-m", "losswidget", "demo", "--model", "mlp", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "a 4-layer MLP" in out.stdout and f"{ACCURACY['mlp']:.1%}" in out.stdout
    approx, mag, shot = (losswidget.load_profile(tmp_path / f"{m}.json") for m in ("approximated", "magnitude",
                                                                                    "one-shot"))
    assert [l.name for l in mag.layers] == ["fc1", "fc2", "fc3", "classifier"]
    assert approx.model.hash == mag.model.hash == shot.model.hash
    assert shot.settings["metric"] == "loss" and shot.settings["samples"] == 450
    assert shot.recovery.kind == "accuracy ratio" and all(0 < v <= 1 for _, v in shot.recovery.points)
    assert mag.recovery is None and mag.summary.weight_energy_kept is not None


def test_demo_command_names_the_models_on_a_wrong_one(tmp_path):
    out = subprocess.run([sys.executable, "-m", "losswidget", "demo", "--model", "vgg", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "'resnet', 'mlp'" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())


def test_app_notebook_runs_the_widget_for_a_given_model(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    from losswidget.serve import app_notebook, check_data
    path, data = losswidget.demo()
    np_path = tmp_path / "d.npz"
    np.savez(np_path, image=data["image"][:20], y=data["y"][:20])           # labels beside the input
    checked, labels = check_data(str(np_path), path)
    assert checked == np_path.resolve() and labels == "y"
    nb = nbformat.from_dict(app_notebook(path, str(checked), str(tmp_path / "profiles"), labels))
    nb.cells.append(nbformat.v4.new_code_cell("w.wait(120)\nprint(sorted(w.profiles), w.selected)"))
    NotebookClient(nb, timeout=180, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs + nb.cells[1].outputs
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # the data (labels set aside) gives an activation-aware profile, shown first
    assert "['Activation-aware', 'Approximated', 'Baseline'] Activation-aware" in printed, printed
