"""Train and export the bundled demo models on scikit-learn's digits (bundled with scikit-learn, no download).

  pip install -e ".[train]" && python scripts/train_demo.py [resnet|mlp|all]

- `resnet` (the default demo): a small residual CNN in PyTorch with 18 prunable layers of very different sizes
  (a stem conv, 3x3 residual convs at three widths, two 1x1 projection convs, a depthwise conv, a linear head),
  so that its loss profile has layers that can lose most of their weights and layers that cannot. It is
  trained without BatchNorm (residual branches start at zero instead): the same net trained with BatchNorm
  (folded into its convs for export, 99.6% held-out) kept 19% accuracy under uniform 70% magnitude pruning, no
  baseline for a plan to beat. torch.onnx writes opset 17 with the weights as initializers named like the modules
  (`layer1.0.conv1.weight`).
- `mlp`: the original 4-layer MLP (scikit-learn), kept for fast tests.

Both use the same held-out split: 450 of the 1,797 digits, `train_test_split(test_size=0.25, random_state=0,
stratify=y)`, kept in that function's order in losswidget/demo/digits_test.npz ("image": float32 [450, 1, 8, 8]
scaled to [0, 1]; "y": int64 labels). The order is fixed because benchmarks profile on the first 150 digits and
judge on the other 300. The script prints each model's held-out accuracy in onnxruntime: the figure that
losswidget/demo/__init__.py states as ACCURACY.

Training is seeded. The ResNet trains on one thread, so a rerun with the same torch writes the same bytes; the
MLP's weights can differ in the last digits between machines (scikit-learn's BLAS), not its accuracy.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = Path(__file__).resolve().parent.parent / "losswidget" / "demo"
SEED = 0
WIDTHS, EPOCHS, LR, WEIGHT_DECAY = (16, 32, 64), 120, 0.05, 5e-4


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and held-out digits as [n, 1, 8, 8] float32 in [0, 1] and int64 labels; the held-out order is fixed."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return x_train, x_test, y_train, y_test


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    return float((logits.argmax(1) == y).mean())


# ---------------------------------------------------------------------------------------------------- the MLP
def train_mlp(x_train, x_test, y_train, y_test) -> Path:
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(128, 64, 32), alpha=1e-4, max_iter=600, random_state=0)
    clf.fit(x_train.reshape(len(x_train), -1), y_train)
    nodes, inits, x = [], [], "image"
    names = [f"fc{i + 1}" for i in range(len(clf.coefs_) - 1)] + ["classifier"]
    for name, w, b in zip(names, clf.coefs_, clf.intercepts_):
        inits += [numpy_helper.from_array(w.T.astype(np.float32), f"{name}.weight"),
                  numpy_helper.from_array(b.astype(np.float32), f"{name}.bias")]
        out = "logits" if name == "classifier" else f"{name}_out"
        nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [out], transB=1, name=name))
        if name != "classifier":
            nodes.append(helper.make_node("Relu", [out], [f"{name}_relu"], name=f"{name}_relu"))
            x = f"{name}_relu"
    graph = helper.make_graph(nodes, "digits_mlp",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="losswidget-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = OUT / "digits_mlp.onnx"
    onnx.save(model, str(path))
    print(f"mlp: scikit-learn {clf.score(x_test.reshape(len(x_test), -1), y_test):.4f}, "
          f"ONNX in onnxruntime {accuracy_flat(path, x_test, y_test):.4f} on {len(y_test)} held-out digits")
    return path


def accuracy_flat(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return accuracy(path, x.reshape(len(x), -1), y)


# ------------------------------------------------------------------------------------------------- the ResNet
def train_resnet(x_train, x_test, y_train, y_test) -> Path:
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(SEED)
    torch.set_num_threads(1)                      # thread count changes float summation order, hence the bytes
    torch.use_deterministic_algorithms(True)

    def conv(cin, cout, k, stride=1, groups=1):
        return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups)

    class Block(nn.Module):
        """torchvision's BasicBlock without BatchNorm: two 3x3 convs, a 1x1 projection when the shape changes."""

        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1, self.conv2 = conv(cin, cout, 3, stride), conv(cout, cout, 3)
            self.downsample = conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            skip = x if self.downsample is None else self.downsample(x)
            return F.relu(self.conv2(F.relu(self.conv1(x))) + skip)

    class SepBlock(nn.Module):
        """A depthwise-separable residual block: depthwise 3x3, pointwise 1x1."""

        def __init__(self, c):
            super().__init__()
            self.conv1, self.conv2 = conv(c, c, 3, groups=c), conv(c, c, 1)

        def forward(self, x):
            return F.relu(self.conv2(F.relu(self.conv1(x))) + x)

    class ResNet(nn.Module):
        def __init__(self, widths):
            super().__init__()
            a, b, c = widths
            self.conv1 = conv(1, a, 3)
            self.layer1 = nn.Sequential(Block(a, a), Block(a, a))
            self.layer2 = nn.Sequential(Block(a, b, 2), Block(b, b))
            self.layer3 = nn.Sequential(Block(b, c, 2), Block(c, c), SepBlock(c))
            self.fc = nn.Linear(c, 10)

        def forward(self, x):
            x = self.layer3(self.layer2(self.layer1(F.relu(self.conv1(x)))))
            return self.fc(x.mean((2, 3)))

    model = ResNet(WIDTHS)
    # Each residual branch starts as zero (SkipInit), which lets the net train without BatchNorm.
    for m in model.modules():
        if isinstance(m, (Block, SepBlock)):
            nn.init.zeros_(m.conv2.weight)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    batch = 64
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY, nesterov=True)
    steps = EPOCHS * ((len(xt) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(shift(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        torch_acc = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    path = OUT / "digits_resnet.onnx"
    export_onnx(model, path)
    n = sum(p.numel() for p in model.parameters())
    print(f"resnet: {n} params; held-out accuracy: PyTorch {torch_acc:.4f}, "
          f"ONNX in onnxruntime {accuracy(path, x_test, y_test):.4f} on {len(y_test)} digits")
    return path


def shift(x, gen):
    """The batch moved by up to one pixel in each direction (zero fill): digits are not always centred."""
    import torch

    pad = torch.nn.functional.pad(x, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
    return pad[:, :, dy:dy + 8, dx:dx + 8]


def export_onnx(model, path: Path) -> None:
    import torch

    with warnings.catch_warnings():             # the TorchScript exporter is deprecated, but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    onnx_model = onnx.load(str(path))
    onnx_model.producer_name = "losswidget-demo (PyTorch, scripts/train_demo.py)"
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))


def main(argv: list[str]) -> None:
    which = argv[0] if argv else "all"
    if which not in ("resnet", "mlp", "all"):
        raise SystemExit(f"usage: python scripts/train_demo.py [resnet|mlp|all] (got {which!r})")
    x_train, x_test, y_train, y_test = split()
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "digits_test.npz", image=x_test, y=y_test)
    if which in ("resnet", "all"):
        train_resnet(x_train, x_test, y_train, y_test)
    if which in ("mlp", "all"):
        train_mlp(x_train, x_test, y_train, y_test)


if __name__ == "__main__":
    main(sys.argv[1:])
