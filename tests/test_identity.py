"""Model identity (issue 15): content hashes remembered on disk per file state, never blocking when asked not to."""
import json
import os
import time

import pytest
from blake3 import blake3

import losswidget
from losswidget import identity
from losswidget.analysis import model_hash, model_hash_future
from losswidget.onnxfile import open_model

from helpers import mlp, save


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty cache folder, and nothing remembered in this process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(identity, "_memory", {})
    return tmp_path / "cache" / "losswidget" / "hashes.json"


def settled(*paths):
    """Files last written an hour ago: old enough for their hashes to be remembered on disk."""
    then = time.time_ns() - 3600 * 10**9
    for p in paths:
        os.utime(p, ns=(then, then))


def external_model(folder):
    m, _ = mlp(hidden=300)
    path = save(m, folder / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                location="ext.onnx.data", size_threshold=0)
    return path, folder / "ext.onnx.data"


def test_the_hash_is_blake3_of_the_file_or_of_the_files_digests(tmp_path, cache):
    path = save(mlp()[0], tmp_path / "m.onnx")
    assert model_hash(path) == "blake3:" + blake3(open(path, "rb").read()).hexdigest()
    ext, data = external_model(tmp_path)
    digests = [blake3(open(p, "rb").read()).digest() for p in (ext, data)]
    assert model_hash(ext) == "blake3:" + blake3(b"".join(digests)).hexdigest()


def test_a_model_seen_before_is_not_read_again(tmp_path, cache, monkeypatch):
    ext, data = external_model(tmp_path)
    settled(ext, data)
    first = model_hash(ext)
    assert json.loads(cache.read_text())["entries"]
    monkeypatch.setattr(identity, "_memory", {})                # as a new process: only the disk remembers

    def no_reading(paths):
        raise AssertionError("hashed again")
    monkeypatch.setattr(identity, "compute_hash", no_reading)
    assert model_hash(ext) == first
    assert model_hash(ext, block=False) == first
    assert model_hash_future(ext).result(timeout=0) == first
    p = losswidget.analyze(ext, "approximated")
    assert p.model.hash == first


def test_a_changed_file_gets_a_new_hash_even_with_its_old_size_and_mtime(tmp_path, cache):
    ext, data = external_model(tmp_path)
    settled(ext, data)
    first = model_hash(ext)
    st = os.stat(data)
    raw = bytearray(open(data, "rb").read())
    raw[100] ^= 0xFF                                            # one weight byte, in place: same size
    with open(data, "r+b") as f:
        f.write(raw)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))        # and the old mtime back
    assert os.stat(data).st_size == st.st_size and os.stat(data).st_mtime_ns == st.st_mtime_ns
    second = model_hash(ext)
    assert second != first
    assert second == "blake3:" + blake3(b"".join(blake3(open(p, "rb").read()).digest() for p in (ext, data))).hexdigest()


def test_a_file_written_just_now_is_not_remembered_on_disk(tmp_path, cache):
    path = save(mlp()[0], tmp_path / "fresh.onnx")                # its mtime may not move on a quick rewrite
    model_hash(path)
    assert not cache.exists() or not json.loads(cache.read_text())["entries"]
    settled(path)
    model_hash(path)
    assert len(json.loads(cache.read_text())["entries"]) == 1


def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path, cache):
    path = save(mlp()[0], tmp_path / "m.onnx")
    settled(path)
    for junk in ("{not json", "[]", '{"version": 1, "entries": {"k": 5}}', '{"version": 99, "entries": {}}', "\0" * 10):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(junk)
        identity._memory.clear()
        assert model_hash(path).startswith("blake3:")
        assert len(json.loads(cache.read_text())["entries"]) == 1


def test_the_cache_keeps_the_newest_entries_only(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(identity, "MAX_ENTRIES", 3)
    paths = []
    for i in range(5):
        paths.append(save(mlp(seed=i)[0], tmp_path / f"m{i}.onnx"))
        settled(paths[-1])
        model_hash(paths[-1])
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 3 and all(str(tmp_path / f"m{i}.onnx") in "".join(entries) for i in (2, 3, 4))


def test_an_unwritable_cache_is_no_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(identity, "_memory", {})
    path = save(mlp()[0], tmp_path / "m.onnx")
    settled(path)
    assert model_hash(path) == "blake3:" + blake3(open(path, "rb").read()).hexdigest()


def test_not_blocking_gives_none_then_the_hash(tmp_path, cache, monkeypatch):
    path = save(mlp(hidden=64)[0], tmp_path / "m.onnx")
    settled(path)
    gate = __import__("threading").Event()
    real = identity.compute_hash

    def slow(paths):
        assert gate.wait(10)
        return real(paths)
    monkeypatch.setattr(identity, "compute_hash", slow)
    with open_model(path) as mf:
        assert mf.content_hash(block=False) is None                # returns at once while the thread waits
        future = model_hash_future(path)
        assert future is mf.hash_future() and not future.done()   # one computation, however many ask
        gate.set()
        digest = future.result(timeout=10)
        assert mf.content_hash(block=False) == digest == "blake3:" + blake3(open(path, "rb").read()).hexdigest()


def test_cache_can_be_turned_off(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("LOSSWIDGET_HASH_CACHE", "0")
    path = save(mlp()[0], tmp_path / "m.onnx")
    settled(path)
    model_hash(path)
    assert not cache.exists()
