"""Bad input: one clear LossWidgetError naming the file or tensor, never a numpy/protobuf traceback."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import losswidget
from losswidget import ModelError, SettingsError

from helpers import model, save, vi


def external_model(tmp_path, location, length=None):
    t = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    if length is not None:
        t.external_data.add(key="length", value=str(length))
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 4])], [vi("y", None)], [t])
    (tmp_path / "m").mkdir(exist_ok=True)
    return save(m, tmp_path / "m" / "model.onnx")


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found: .*nope.onnx"):
        losswidget.analyze(tmp_path / "nope.onnx")


@pytest.mark.parametrize("content", [b'{"not": "onnx"}', b"\x00\x01garbage" * 50, b"\xff" * 4096])
def test_not_onnx(tmp_path, content):
    f = tmp_path / "x.onnx"
    f.write_bytes(content)
    with pytest.raises(ModelError, match="x.onnx is not (an|a readable) ONNX model"):
        losswidget.analyze(f)


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_file(tmp_path, mlp_path, keep):
    path, _ = mlp_path
    data = open(path, "rb").read()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        losswidget.analyze(cut)


def test_external_data_missing(tmp_path):
    path = external_model(tmp_path, "weights.bin")
    with pytest.raises(ModelError, match="External data file 'weights.bin' for tensor 'w' was not found"):
        losswidget.analyze(path)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_path_traversal_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    path = external_model(tmp_path, location)
    with pytest.raises(ModelError, match="Refusing external data location .* outside the model's folder"):
        losswidget.analyze(path, method="approximated")          # refused before anything is read


def test_declared_size_disagrees_with_data(tmp_path):
    t = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.ones(16, np.float32).tobytes(), raw=True)
    t.raw_data = t.raw_data[:40]                                  # 10 floats for a 4x4 tensor
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [1, 4])], [vi("y", None)], [t])
    with pytest.raises(ModelError, match=r"Tensor 'w' declares shape \[4, 4\] of float \(64 bytes\) but stores 40"):
        losswidget.analyze(save(m, tmp_path / "m.onnx"))
    path = external_model(tmp_path, "w.bin", length=32)
    (tmp_path / "m" / "w.bin").write_bytes(np.ones(8, np.float32).tobytes())
    with pytest.raises(ModelError, match="declares shape .* but stores 32 bytes"):
        losswidget.analyze(path)


def test_external_file_shorter_than_declared_length(tmp_path):
    path = external_model(tmp_path, "w.bin", length=64)
    (tmp_path / "m" / "w.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ModelError, match="has only 10 bytes"):
        losswidget.analyze(path)


@pytest.mark.parametrize("levels", [[0.5, 1.0], [-0.1], [float("nan")], ["a"]])
def test_levels_outside_range(mlp_path, levels):
    with pytest.raises(SettingsError, match="Sparsity levels must"):
        losswidget.analyze(mlp_path[0], sparsity_levels=levels)


def test_levels_are_normalised(mlp_path):
    p = losswidget.analyze(mlp_path[0], sparsity_levels=[0.9, 0.5, 0.5, 0.0])
    assert p.levels == (0.0, 0.5, 0.9) and p.settings["sparsity_levels"] == [0.0, 0.5, 0.9]


def test_bad_settings(mlp_path):
    with pytest.raises(SettingsError, match="Unknown method 'magic'; available: approximated, magnitude"):
        losswidget.analyze(mlp_path[0], method="magic")
    with pytest.raises(SettingsError, match=r"target_sparsity of method 'magnitude' must lie in \(0, 0.95\], got 1.5"):
        losswidget.analyze(mlp_path[0], target_sparsity=1.5)
    with pytest.raises(SettingsError, match=r"must lie in \(0, 0.95\], got 0.99"):      # past the per-layer cap
        losswidget.analyze(mlp_path[0], target_sparsity=0.99)
    with pytest.raises(SettingsError, match="'metric' is not a setting of method 'magnitude'; its settings are "
                                            "sparsity_levels, target_sparsity"):
        losswidget.analyze(mlp_path[0], metric="kl")
    with pytest.raises(SettingsError, match="'levels' is not a setting"):                 # a typo is not ignored
        losswidget.analyze(mlp_path[0], levels=[0.5])
    with pytest.raises(SettingsError, match="Sparsity levels must lie in"):
        losswidget.analyze(mlp_path[0], sparsity_levels=[0.5, 1.0])
    with pytest.raises(ModelError, match="Expected a path"):
        losswidget.analyze(42)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "losswidget", *args], capture_output=True, text=True)


def test_cli_profile_writes_files_and_prints_summary(tmp_path, mlp_path):
    out = run_cli("profile", mlp_path[0], "--levels", "0,0.5,0.9", "--json", str(tmp_path / "p.json"),
                  "--csv", str(tmp_path / "p.csv"), "--top", "1")
    assert out.returncode == 0, out.stderr
    assert "Params:       64 total, 56 prunable (87.5%), 2 layers" in out.stdout   # 32 + 8 (bias) + 24
    assert "Most sensitive layers" in out.stdout and "params reduction" in out.stdout
    p = losswidget.load_profile(tmp_path / "p.json")
    assert p.levels == (0.0, 0.5, 0.9) and (tmp_path / "p.csv").read_text().startswith("index,")


@pytest.mark.parametrize("args, message", [
    (["profile", "missing.onnx"], "Model file not found"),
    (["profile", "{model}", "--levels", "0,2"], "Sparsity levels must lie in [0, 1)"),
    (["profile", "{model}", "--method", "nope"], "invalid choice: 'nope' (choose from 'approximated'"),
    (["profile", "{model}", "--metric", "kl"], "--metric does not apply to method magnitude"),
    (["profile", "{model}", "--target", "abc"], "--target must be a number"),
    (["profile", "{model}", "--workers", "-1"], "must be a positive integer"),
    (["profile"], "the following arguments are required: model"),
    (["plan", "{garbage}"], "is not valid JSON"),
    (["profile", "{garbage}"], "is not a readable ONNX model"),
])
def test_cli_bad_input_is_one_line(tmp_path, mlp_path, args, message):
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\x07" * 100)
    args = [a.format(model=mlp_path[0], garbage=garbage) for a in args]
    out = run_cli(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("losswidget: error:") and message in lines[0]
    assert "Traceback" not in out.stderr


def test_content_hash_follows_the_file(tmp_path, mlp_path):
    import os
    from losswidget.onnxfile import open_model
    path, (w1, _) = mlp_path
    first = open_model(path).content_hash()
    assert open_model(path).content_hash() == first                       # unchanged file: same hash
    data = bytearray(open(path, "rb").read())
    data[data.find(w1.tobytes()) + 1] ^= 1                                   # one weight bit flipped
    open(path, "wb").write(data)
    os.utime(path, ns=(1, 1))
    assert open_model(path).content_hash() != first
