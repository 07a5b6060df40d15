"""What the benchmark scripts share: the shared model generator, the SparseML peer, timed subprocess runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "bench"


def make_model(kind: str, out: Path, *args: str) -> str:
    """A synthetic model from ../shared/bench/make_models.py (transformer or convnet)."""
    subprocess.run([sys.executable, str(SHARED / "make_models.py"), kind, str(out), *args], check=True,
                   capture_output=True)
    return str(out)


def peer_python() -> str:
    """The python of the SparseML 1.8 venv (made on first use by sparseml_peer.sh)."""
    out = subprocess.run(["bash", str(SHARED / "sparseml_peer.sh")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def compile_ours() -> None:
    """Byte-compile losswidget as `pip install` does (SparseML's venv has its bytecode from pip): an
    editable checkout run with PYTHONDONTWRITEBYTECODE=1 would otherwise compile it in every process."""
    import compileall

    import losswidget
    compileall.compile_dir(str(Path(losswidget.__file__).parent), quiet=1)


def steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests, all cores together (Linux /proc/stat; 0 elsewhere):
    what makes the same run vary on shared hosts."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_json(python: str, code: str, *args: str) -> tuple[float, dict]:
    """Run `code` in a fresh process; (whole-process seconds, the JSON it printed last)."""
    t0 = time.perf_counter()
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True,
                         env=dict(os.environ, NM_DISABLE_ANALYTICS="1"))
    seconds = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{python} failed:\n{out.stderr[-3000:]}")
    return seconds, json.loads(out.stdout.strip().splitlines()[-1])
