import pytest

from helpers import mlp, save


@pytest.fixture
def mlp_path(tmp_path):
    m, weights = mlp()
    return save(m, tmp_path / "mlp.onnx"), weights
