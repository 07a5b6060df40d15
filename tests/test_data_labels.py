"""Data with a labels array beside the inputs: the error says how to use it (labels are never guessed)."""
import numpy as np
import pytest

from losswidget import analyze
from losswidget.errors import DataError

from helpers import arr, mlp, save


def test_data_error_names_the_labels_fix(tmp_path):
    model = save(mlp()[0], tmp_path / "mlp.onnx")
    with pytest.raises(DataError, match=r"If 'y' holds the labels, pass labels='y' \(in the widget: Labels 'y'\)"):
        analyze(model, "one-shot", data={"x": arr(6, 4), "y": np.arange(6)})
    with pytest.raises(DataError) as info:                       # not one per sample: not offered as labels
        analyze(model, "one-shot", data={"x": arr(6, 4), "y": np.arange(5)})
    assert "labels=" not in str(info.value)
    profile = analyze(model, "one-shot", data={"x": arr(6, 4), "y": np.arange(6) % 3}, labels="y",
                      sparsity_levels=[0, 0.5])
    assert len(profile.layers) == 2
