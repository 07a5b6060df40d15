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


def run_json(python: str, code: str, *args: str) -> tuple[float, dict]:
    """Run `code` in a fresh process; (whole-process seconds, the JSON it printed last)."""
    t0 = time.perf_counter()
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True,
                         env=dict(os.environ, NM_DISABLE_ANALYTICS="1"))
    seconds = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{python} failed:\n{out.stderr[-3000:]}")
    return seconds, json.loads(out.stdout.strip().splitlines()[-1])
