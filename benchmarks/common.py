"""What the benchmark scripts share: the shared model generator, the SparseML peer, timed subprocess runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# ../shared/bench beside the checkout (a git worktree may sit one folder deeper: the nearest one up wins)
SHARED = next((p / "shared" / "bench" for p in Path(__file__).resolve().parents[2:]
               if (p / "shared" / "bench").is_dir()), Path(__file__).resolve().parents[2] / "shared" / "bench")


def make_model(kind: str, out: Path, *args: str, local_ok: bool = False) -> str:
    """A synthetic model from ../shared/bench/make_models.py (transformer or convnet).

    From a clone without ../shared: with `local_ok` (benchmarks that only need the layer count and sizes,
    not SparseML's peer) a transformer is built here instead, saying so; otherwise a clear exit."""
    if (SHARED / "make_models.py").is_file():
        subprocess.run([sys.executable, str(SHARED / "make_models.py"), kind, str(out), *args], check=True,
                       capture_output=True)
        return str(out)
    if not (local_ok and kind == "transformer"):
        raise SystemExit(f"This benchmark needs the shared model generator at {SHARED / 'make_models.py'} "
                         "(the project workspace's shared/ folder beside this checkout); it is not there.")
    opts = dict(zip(args[::2], args[1::2]))
    local_transformer(out, int(opts.get("--layers", 12)), int(opts.get("--hidden", 768)),
                      int(opts.get("--vocab", 1000)))
    print(f"(no {SHARED}: built {out.name} locally, the same layers and weight shapes as the shared transformer "
          "without its attention and normalisation nodes)", flush=True)
    return str(out)


def local_transformer(out: Path, layers: int, hidden: int, vocab: int, seed: int = 0) -> None:
    """Per block the shared transformer's six weights (q, k, v, o: hidden x hidden; fc1 / fc2: x4), applied as
    a residual MatMul chain, then a head: the same layers and params for the widget benchmarks."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"

    def matmul(name: str, inp: str, shape: tuple[int, int]) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32),
                                             f"{name}.weight"))
        nodes.append(helper.make_node("MatMul", [inp, f"{name}.weight"], [f"{name}_out"], name=name))
        return f"{name}_out"
    for i in range(layers):
        p = f"l{i}"
        h = x
        for proj in ("q", "k", "v", "o"):
            h = matmul(f"{p}.attn.{proj}", h, (hidden, hidden))
        nodes.append(helper.make_node("Add", [x, h], [f"{p}_r1"]))
        h = matmul(f"{p}.mlp.fc1", f"{p}_r1", (hidden, 4 * hidden))
        nodes.append(helper.make_node("Relu", [h], [f"{p}_hr"]))
        h = matmul(f"{p}.mlp.fc2", f"{p}_hr", (4 * hidden, hidden))
        nodes.append(helper.make_node("Add", [f"{p}_r1", h], [f"{p}_out"]))
        x = f"{p}_out"
    head = matmul("head", x, (hidden, vocab))
    graph = helper.make_graph(nodes, "transformer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64, hidden])],
                              [helper.make_tensor_value_info(head, TensorProto.FLOAT, ["batch", 64, vocab])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(out))


def peer_python() -> str:
    """The python of the SparseML 1.8 venv (made on first use by sparseml_peer.sh)."""
    if not (SHARED / "sparseml_peer.sh").is_file():
        raise SystemExit(f"This benchmark compares with SparseML through {SHARED / 'sparseml_peer.sh'} (the "
                         "project workspace's shared/ folder beside this checkout); it is not there.")
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
