"""Large models (issue 15): magnitude shared out to executors by layer size, weights read by slices."""
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import losswidget
from losswidget.analysis.magnitude import model_state, remote_measure, tasks_by_size
from losswidget.errors import AnalysisCancelled, ModelError, SettingsError
from losswidget.graph import read_graph
from losswidget.onnxfile import open_model
from losswidget.weights import Weight

from helpers import arr, init, model, quantize_nbits, save, vi

MS = helper.make_opsetid("com.microsoft", 1)


def mixed_model(folder, widths=(48, 8, 96, 16, 8, 64)):
    """MatMul layers of very different sizes (float32, float16), a 4-bit MatMulNBits one, external data."""
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i == 2:
            packed, s, z, _ = quantize_nbits(arr(a, b, seed=i), 4, 16, "packed")
            inits += [init(f"q{i}", packed), init(f"s{i}", s), init(f"z{i}", z)]
            nodes.append(helper.make_node("MatMulNBits", [x, f"q{i}", f"s{i}", f"z{i}"], [f"h{i}"], name=f"fc{i}",
                                          domain="com.microsoft", K=a, N=b, bits=4, block_size=16))
        else:
            w = arr(a, b, seed=i).astype(np.float16 if i == 1 else np.float32)
            inits.append(init(f"w{i}", w))
            src = x
            if i == 1:
                nodes.append(helper.make_node("Cast", [x], [f"c{i}"], to=TensorProto.FLOAT16))
                src = f"c{i}"
            nodes.append(helper.make_node("MatMul", [src, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
            if i == 1:
                nodes.append(helper.make_node("Cast", [f"h{i}"], [f"h{i}f"], to=TensorProto.FLOAT))
                x = f"h{i}f"
                continue
        x = f"h{i}"
    m = model(nodes, [vi("x", [1, widths[0]])], [vi(x, None)], inits, extra_opsets=[MS])
    return save(m, folder / "mixed.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                location="mixed.onnx.data", size_threshold=0)


def test_tasks_hold_large_layers_alone_and_small_ones_together(tmp_path):
    with open_model(mixed_model(tmp_path)) as mf:
        layers = read_graph(mf).layers
    sizes = {l.index: Weight(mf, l.ref).stored().nbytes for l in layers}
    tasks = tasks_by_size(layers, task_bytes=4000)
    assert sorted(i for t in tasks for i in t) == [l.index for l in layers]           # each layer once
    for t in tasks:
        assert len(t) == 1 or sum(sizes[i] for i in t) <= 4000                       # small ones up to the size
    totals = [sum(sizes[i] for i in t) for t in tasks]
    assert totals == sorted(totals, reverse=True)                                    # largest first
    assert [len(t) for t in tasks_by_size(layers, task_bytes=1 << 30)] == [len(layers)]


def test_process_pool_and_dask_give_the_in_process_numbers(tmp_path):
    from distributed import Client, LocalCluster

    path = mixed_model(tmp_path)
    here = losswidget.analyze(path, "magnitude")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = losswidget.analyze(path, "magnitude", executor=pool)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dasked = losswidget.analyze(path, "magnitude", executor=client.get_executor())
    for other in (pooled, dasked):
        assert other.to_dict()["layers"] == here.to_dict()["layers"]
        assert other.model == here.model


def test_an_executor_needs_a_path_and_can_be_cancelled(tmp_path):
    path = mixed_model(tmp_path)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(SettingsError, match="file path"):
            losswidget.analyze(onnx.load(path), "magnitude", executor=pool)
        cancel = threading.Event()
        seen = []

        def on_layer(i, measured):
            seen.append(i)
            cancel.set()
        with pytest.raises(AnalysisCancelled) as err:
            losswidget.analyze(path, "magnitude", executor=pool, cancel=cancel, on_layer=on_layer)
    assert err.value.partial is not None and len(err.value.partial.layers) == len(seen) >= 1


def test_a_worker_refuses_a_model_that_changed(tmp_path):
    path = mixed_model(tmp_path)
    with open_model(path) as mf:
        layers = read_graph(mf).layers
        key = model_state(path, mf)
    assert remote_measure(path, key, [(0, layers[0].weight)], np.array([0.0, 0.5]))[0][0] == 0
    mixed_model(tmp_path, widths=(48, 8, 96, 16, 8, 32))           # rewritten with other weights
    with pytest.raises(ModelError, match="changed"):
        remote_measure(path, key, [(0, layers[0].weight)], np.array([0.0, 0.5]))


def test_slices_read_ahead_give_the_whole_weight_and_a_reader_can_be_read_twice(tmp_path):
    path = mixed_model(tmp_path)
    with open_model(path) as mf:
        for layer in read_graph(mf).layers:
            w = Weight(mf, layer.ref)
            whole = w.values()
            for budget in (64, 1000, 1 << 20):
                parts = list(w.slices(budget, release=True))
                assert np.array_equal(np.concatenate(parts), whole)
                assert len(parts) == len(w.steps(budget)) and (budget > 4 * whole.size or len(parts) > 1)
            for keep in (0, 1 << 30):
                read = w.reader(budget=256, keep=keep)
                first = [np.array(p) for p in read()]
                second = list(read())
                assert all(np.array_equal(a, b) for a, b in zip(first, second)) and len(first) == len(second)
                if keep and layer.ref.kind != "plain":
                    assert all(a is b for a, b in zip(read(), second))      # kept, not dequantized again


def test_compiled_and_numpy_dequantization_give_the_same_values(tmp_path, monkeypatch):
    pytest.importorskip("numba")
    from losswidget import weights

    cases = [dict(bits=4, zero_points="packed", k=40), dict(bits=8, zero_points=None, k=64),
             dict(bits=2, zero_points="float", k=64)]
    for i, case in enumerate(cases):
        packed, s, z, deq = quantize_nbits(arr(case["k"], 24, seed=i), case["bits"], 16, case["zero_points"])
        inputs = ["x", "B", "s"] + (["z"] if z is not None else [])
        inits = [init("B", packed), init("s", s)] + ([init("z", z)] if z is not None else [])
        m = model([helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=case["k"], N=24,
                                    bits=case["bits"], block_size=16)], [vi("x", [1, case["k"]])], [vi("y", None)],
                  inits, extra_opsets=[MS])
        path = save(m, tmp_path / f"m{i}.onnx")
        with open_model(path) as mf:
            (layer,) = read_graph(mf).layers
            monkeypatch.setattr(weights, "_KERNEL", [])
            compiled = Weight(mf, layer.ref).values()
            assert weights._compiled() is not None
            monkeypatch.setattr(weights, "_KERNEL", [None])
            plain = Weight(mf, layer.ref).values()
        assert np.array_equal(compiled, plain) and np.allclose(compiled.T, deq, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("engine", ["numpy", "numba"])
def test_float16_magnitudes_by_their_bits_are_exact_for_every_value(engine, monkeypatch):
    from losswidget import weights

    if engine == "numba":
        pytest.importorskip("numba")
        monkeypatch.setattr(weights, "_KERNEL", [])
    else:
        monkeypatch.setattr(weights, "_KERNEL", [None])
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)   # all 65536 float16s
    want = np.abs(every.astype(np.float32))
    for values in (every, every[(every.view(np.uint16) & 0x7C00) != 0x7C00]):      # with and without inf/NaN
        got = weights.abs_half(values, np.empty(values.size, np.float32))
        expect = np.abs(values.astype(np.float32))
        assert np.array_equal(got, expect, equal_nan=True)
        assert np.array_equal(got.view(np.uint32)[~np.isnan(expect)], expect.view(np.uint32)[~np.isnan(expect)])
    assert (weights._compiled_kernels() is not None) == (engine == "numba")
    assert want.size == 65536


def test_pattern_and_code_readers_give_the_stored_weight_by_ranges(tmp_path):
    """half_slices and code_blocks (the magnitude kernels' readers) give exactly what is stored, in slices of
    rows read ahead, for weights in external data and inside the message."""
    path = mixed_model(tmp_path)
    with open_model(path) as mf:
        for layer in read_graph(mf).layers:
            w = Weight(mf, layer.ref)
            for budget in (64, 1000, 1 << 20):
                if layer.ref.kind == "nbits":
                    parts = list(w.code_blocks(budget))
                    assert len(parts) == len(w.steps(budget)) and all(p[3] == 16 for p in parts)
                    packed = np.concatenate([p[0] for p in parts]).reshape(-1)
                    assert np.array_equal(packed, w.stored().reshape(-1))
                    codes = np.stack([packed & 15, packed >> 4], -1).reshape(w.rows, -1, 16)   # [N, blocks, 16]
                    scale = np.concatenate([p[1] for p in parts])
                    zp = np.concatenate([p[2] for p in parts])
                    dequantized = (codes - zp[..., None]) * scale[..., None]
                    assert np.array_equal(dequantized.astype(np.float32).reshape(w.rows, -1), w.values())
                elif layer.ref.tensor.data_type == TensorProto.FLOAT16:
                    parts = list(w.half_slices(budget))
                    assert len(parts) == len(w.steps(budget)) and all(p.dtype == np.float16 for p in parts)
                    assert np.array_equal(np.concatenate(parts).reshape(-1), w.stored().reshape(-1))
                else:
                    with pytest.raises(ValueError, match="float16"):
                        next(w.half_slices(budget))
                    with pytest.raises(ValueError, match="n-bit"):
                        next(w.code_blocks(budget))


@pytest.mark.parametrize("external", [True, False])
def test_bfloat16_weights_are_read_as_patterns_and_measured_exactly(tmp_path, external):
    w32 = (arr(96, 40, seed=2) * np.float32(3)).astype(np.float32)
    bits = (w32.view(np.uint32) >> 16).astype(np.uint16)                       # bfloat16 by truncation
    values = (bits.astype(np.uint32) << 16).view(np.float32)
    t = helper.make_tensor("w", TensorProto.BFLOAT16, list(bits.shape), bits.tobytes(), raw=True)
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("MatMul", ["xb", "w"], ["y"], name="fc")]
    m = model(nodes, [vi("x", [1, 96])], [vi("y", None, TensorProto.BFLOAT16)], [t])
    kw = dict(save_as_external_data=True, location="bf.data", size_threshold=0) if external else {}
    path = save(m, tmp_path / "bf.onnx", **kw)
    with open_model(path) as mf:
        (layer,) = read_graph(mf).layers
        w = Weight(mf, layer.ref)
        parts = list(w.half_slices(1000))
        assert len(parts) > 1 and all(p.dtype == np.uint16 for p in parts)
        assert np.array_equal(np.concatenate(parts), bits)
        assert np.array_equal(w.values(), values)
    levels = [i / 100 for i in range(100)]
    p = losswidget.analyze(path, "magnitude", sparsity_levels=levels)
    s, out, prev = np.sort(np.abs(values).ravel()), [], 0
    for level in levels:                                    # SparseML's rule over sorted |w|, float32 means
        idx = min(round(level * s.size), s.size - 1)
        if level <= 1e-9:
            out.append(0.0)
        elif idx > prev:
            out.append(float(np.mean(s[prev:idx])))
            prev = idx
        else:
            out.append(float(s[idx]))
            prev = idx + 1
    np.testing.assert_allclose(p.layers[0].values, out, rtol=1e-6)
