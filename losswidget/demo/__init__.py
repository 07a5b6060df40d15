"""The bundled demo models, trained on scikit-learn's digits, with their held-out digits.

Made by scripts/train_demo.py (PyTorch and scikit-learn, the `[train]` extra); nothing here needs either.
- "resnet" (the default): a residual CNN with 18 prunable layers (17 Conv incl. two 1x1 projections and a
  depthwise conv, one Gemm head) of 144 to 36,864 weights; its layers differ widely in how much pruning they
  take, which is what a loss profile shows.
- "mlp": a 4-layer MLP (Gemm), fast to profile; the tests use it where the model's size does not matter.

Both are judged on the same 450 held-out digits (digits_test.npz), kept in a fixed order: benchmarks profile on
the first 150 and judge on the other 300. ACCURACY is each ONNX model's accuracy on all 450 in onnxruntime.
"""
from __future__ import annotations

from importlib.resources import files

import numpy as np

from ..errors import SettingsError

MODELS = {"resnet": "digits_resnet.onnx", "mlp": "digits_mlp.onnx"}
ACCURACY = {"resnet": 0.9933, "mlp": 0.9711}
DESCRIPTION = {"resnet": "a residual CNN with 18 layers", "mlp": "a 4-layer MLP"}


def demo(model: str = "resnet") -> tuple[str, dict[str, np.ndarray]]:
    """(model path, data) for a bundled demo model: "resnet" (default) or "mlp" (4 layers, for fast tests).

    data["image"] holds the 450 held-out digits in [0, 1] as the model takes them (float32 [450, 1, 8, 8] for
    "resnet", [450, 64] for "mlp") and data["y"] their labels (int64), in a fixed order.

    >>> path, data = demo()
    >>> losswidget.analyze(path, "one-shot", data=data, labels="y", metric="loss")
    """
    if model not in MODELS:
        raise SettingsError(f"No demo model named {model!r}: choose one of {', '.join(map(repr, MODELS))}")
    folder = files(__name__)
    with np.load(folder / "digits_test.npz") as npz:
        image, y = npz["image"], npz["y"]
    if model == "mlp":
        image = image.reshape(len(image), -1)
    return str(folder / MODELS[model]), {"image": image, "y": y}
