"""The bundled demo: a small MLP trained on scikit-learn's digits, with its held-out split.

Made by scripts/train_demo.py (scikit-learn, the `[train]` extra); nothing here needs scikit-learn.
Held-out accuracy of the ONNX model in onnxruntime: 97.1% on 450 digits.
"""
from __future__ import annotations

from importlib.resources import files

import numpy as np

ACCURACY = 0.9711


def demo() -> tuple[str, dict[str, np.ndarray]]:
    """(model path, data): data["image"] is [450, 64] float32 in [0, 1], data["y"] the class labels.

    >>> path, data = demo()
    >>> losswidget.analyze(path, "one-shot", data=data, labels="y", metric="loss")
    """
    folder = files(__name__)
    with np.load(folder / "digits_test.npz") as npz:
        data = {"image": npz["image"], "y": npz["y"]}
    return str(folder / "digits_mlp.onnx"), data
