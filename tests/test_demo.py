import subprocess
import sys

import losswidget


def test_demo_command_runs_offline_and_writes_profiles(tmp_path):
    out = subprocess.run([sys.executable, "-m", "losswidget", "demo", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    approx, mag = (losswidget.load_profile(tmp_path / f"{m}.json") for m in ("approximated", "magnitude"))
    assert [l.name for l in mag.layers] == ["features.conv0", "features.conv1", "features.conv2",
                                            "classifier.fc1", "classifier.fc2"]
    assert approx.model.hash == mag.model.hash and mag.model.total_params == 155_536
