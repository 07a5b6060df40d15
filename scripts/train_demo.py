"""Train and export the bundled demo model: an MLP classifier on scikit-learn's digits (bundled, no download).

  pip install -e ".[train]" && python scripts/train_demo.py

Writes losswidget/demo/digits_mlp.onnx and losswidget/demo/digits_test.npz (the held-out split: images as
float32 "x" [n, 64] scaled to [0, 1], integer labels "y") and prints the held-out accuracy of both the
scikit-learn model and the exported ONNX model run in onnxruntime.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

OUT = Path(__file__).resolve().parent.parent / "losswidget" / "demo"
HIDDEN = (128, 64, 32)


def export(clf: MLPClassifier) -> onnx.ModelProto:
    """The MLP as Gemm + Relu layers, weights named like a framework would name them."""
    nodes, inits, x = [], [], "image"
    names = [f"fc{i + 1}" for i in range(len(clf.coefs_) - 1)] + ["classifier"]
    for i, (name, w, b) in enumerate(zip(names, clf.coefs_, clf.intercepts_)):
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
    return model


def main() -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, alpha=1e-4, max_iter=600, random_state=0)
    clf.fit(x_train, y_train)
    model = export(clf)
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(OUT / "digits_mlp.onnx"))
    np.savez_compressed(OUT / "digits_test.npz", image=x_test, y=y_test)
    logits = ort.InferenceSession(str(OUT / "digits_mlp.onnx")).run(None, {"image": x_test})[0]
    print(f"held-out accuracy: scikit-learn {clf.score(x_test, y_test):.4f}, "
          f"ONNX in onnxruntime {(logits.argmax(1) == y_test).mean():.4f} on {len(y_test)} digits")


if __name__ == "__main__":
    main()
