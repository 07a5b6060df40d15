import os
import tempfile

import pytest

from helpers import mlp, save

# the tests' model hashes are remembered in a folder of their own, not in the user's cache (identity.py)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="losswidget-test-cache-")


@pytest.fixture
def mlp_path(tmp_path):
    m, weights = mlp()
    return save(m, tmp_path / "mlp.onnx"), weights
