import os
import tempfile

import pytest

from helpers import mlp, save

# the tests' model hashes are remembered in a folder of their own, not in the user's cache (identity.py)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="losswidget-test-cache-")


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", help="test_hostile's fuzzer: 5,000 inputs, not 600")
    parser.addoption("--fuzz-seed", type=int, default=0, help="test_hostile's fuzzer: the campaign's seed")


@pytest.fixture
def fuzz_count(request):
    return 5000 if request.config.getoption("--fuzz-long") else 600


@pytest.fixture
def fuzz_seed(request):
    return request.config.getoption("--fuzz-seed")


@pytest.fixture
def mlp_path(tmp_path):
    m, weights = mlp()
    return save(m, tmp_path / "mlp.onnx"), weights
