"""`losswidget app` before Voilà starts: what the [app] extra installs, the checks that end in one line, and
the Voilà command and notebook it would run (os.execve captured; tests/e2e/test_app.py serves the page)."""
import json
import os
import socket
import subprocess
import sys
from importlib.metadata import requires

import numpy as np
import pytest

from losswidget import serve
from losswidget.errors import LossWidgetError

from helpers import arr, mlp, save


def test_the_app_extra_brings_a_kernel():
    app = [r.split(";")[0].strip() for r in requires("losswidget") if 'extra == "app"' in r]
    assert any(r.startswith("voila") for r in app) and any(r.startswith("ipykernel") for r in app), app


def run_app(*args, **env):
    return subprocess.run([sys.executable, "-m", "losswidget", "app", "--no-browser", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **env))


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["{garbage}"], "is not a readable ONNX model"),
    (["missing.onnx"], "Model file not found"),
    (["{model}", "--data", "missing.npz"], "Data file not found"),
    (["{model}", "--data", "{wrong}"], "unknown input name(s) ['image']"),
    (["--data", "{wrong}"], "--data goes with a model"),
    (["{model}", "--kernel-timeout", "3"], "at least 10 seconds"),
    (["{model}", "--port", "{port}"], "is in use"),
])
def test_bad_input_ends_in_one_line_before_voila_starts(tmp_path, busy_port, args, message):
    garbage = tmp_path / "corrupt.onnx"
    garbage.write_bytes(b"\x07" * 100)
    model = save(mlp()[0], tmp_path / "mlp.onnx")
    np.savez(tmp_path / "wrong.npz", image=arr(5, 4))
    args = [a.format(garbage=garbage, model=model, wrong=tmp_path / "wrong.npz", port=busy_port) for a in args]
    out = run_app(*args, f"--profiles-dir={tmp_path / 'profiles'}", XDG_CACHE_HOME=str(tmp_path / "cache"))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("losswidget: error:") and message in lines[0]
    assert not (tmp_path / "cache").exists()                      # nothing written, nothing started


def test_voila_command_template_culling_and_notebook_in_the_cache(tmp_path, monkeypatch):
    model = save(mlp()[0], tmp_path / "my model.onnx")
    np.savez(tmp_path / "val.npz", x=arr(6, 4), y=np.arange(6))   # labels beside the inputs are fine
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ran = {}
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: ran.update(exe=exe, argv=argv, env=env))
    serve.serve(model, data=str(tmp_path / "val.npz"), profiles_dir=str(tmp_path / "profiles"), port=8899,
                open_browser=False, kernel_timeout=60)
    argv = ran["argv"]
    assert argv[:3] == [sys.executable, "-m", "voila"] and ran["exe"] == sys.executable
    notebook = argv[3]
    assert notebook.startswith(str(tmp_path / "cache" / "losswidget" / "app"))
    assert notebook.endswith("my model - loss profiles.ipynb")               # the page's title
    assert not list((tmp_path / "tmp").iterdir())                            # nothing left in the temp folder
    for flag in ("--port=8899", "--Voila.ip=127.0.0.1", "--Voila.port_retries=0", "--template=losswidget",
                 "--MappingKernelManager.cull_idle_timeout=60", "--MappingKernelManager.cull_interval=30",
                 "--no-browser"):
        assert flag in argv
    template = os.path.join(ran["env"]["JUPYTER_PATH"].split(os.pathsep)[0], "voila", "templates", "losswidget")
    assert json.load(open(os.path.join(template, "conf.json"))) == {"base_template": "lab"}
    assert "http" not in open(os.path.join(template, "index.html.j2")).read()      # (the page: tests/e2e)
    code = "".join(json.load(open(notebook))["cells"][0]["source"])
    assert repr(str(tmp_path / "val.npz")) in code and repr(str(tmp_path / "profiles")) in code
    assert (tmp_path / "profiles").is_dir() and ran["env"]["LOSSWIDGET_FRONTEND"] == "voila"
    # the same arguments reuse the same notebook; other ones get their own
    ran.clear()
    serve.serve(model, data=str(tmp_path / "val.npz"), profiles_dir=str(tmp_path / "profiles"), port=8899)
    assert ran["argv"][3] == notebook and "--no-browser" not in ran["argv"]
    serve.serve(None, profiles_dir=str(tmp_path / "profiles"), port=8899)
    assert ran["argv"][3] != notebook and ran["argv"][3].endswith("Demo - loss profiles.ipynb")


def test_app_needs_voila_and_a_kernel(monkeypatch):
    real = serve.importlib.util.find_spec
    monkeypatch.setattr(serve.importlib.util, "find_spec", lambda name: None if name == "ipykernel" else real(name))
    with pytest.raises(LossWidgetError, match=r"needs ipykernel: pip install 'losswidget\[app\]'"):
        serve.serve(None)

