"""Models for the tests, built with onnx.helper (or the shared generator): nothing comes from a network."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def arr(*shape, dtype=np.float32, seed=None):
    rng = np.random.default_rng(seed) if seed is not None else RNG
    return rng.standard_normal(shape).astype(dtype)


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def save(m, path, **kw):
    onnx.save(m, str(path), **kw)
    return str(path)


def mlp(hidden=8, seed=0):
    """x[1,4] -> Gemm(w1) -> Relu -> MatMul(w2): two layers, known weights."""
    w1, w2 = arr(hidden, 4, seed=seed), arr(hidden, 3, seed=seed + 1)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    return model(nodes, [vi("x", [1, 4])], [vi("y", [1, 3])],
                 [init("w1", w1), init("b1", np.zeros(hidden, np.float32)), init("w2", w2)]), (w1, w2)




def residual_mlp(blocks=3, width=8, classes=6):
    """x[n, width] -> blocks of MatMul-Tanh-MatMul with a skip Add -> MatMul head: pruning one block changes
    everything after it, through the skip connections too."""
    nodes, inits, x = [], [], "x"
    for b in range(blocks):
        inits += [init(f"b{b}.w1", arr(width, width, seed=b)), init(f"b{b}.w2", arr(width, width, seed=10 + b))]
        nodes += [helper.make_node("MatMul", [x, f"b{b}.w1"], [f"h{b}"], name=f"b{b}.fc1"),
                  helper.make_node("Tanh", [f"h{b}"], [f"t{b}"]),
                  helper.make_node("MatMul", [f"t{b}", f"b{b}.w2"], [f"m{b}"], name=f"b{b}.fc2"),
                  helper.make_node("Add", [x, f"m{b}"], [f"r{b}"])]
        x = f"r{b}"
    inits.append(init("head", arr(width, classes, seed=99)))
    nodes.append(helper.make_node("MatMul", [x, "head"], ["y"], name="head"))
    return model(nodes, [vi("x", ["n", width])], [vi("y", ["n", classes])], inits)


def outlier_cnn(convs=63, channels=16, size=8, tiny_at=20, seed=0):
    """x[1, channels, size, size] -> `convs` 3x3 Conv+Relu layers with one tiny fixed-weight layer among
    them at `tiny_at`: a depthwise 1x1 Conv of `channels` weights all 0.5 ("features.blur"). Its
    approximated sensitivity is ~140x the others' (few params, full-size activations), as a fixed
    filter in a real detector is."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(convs + 1):
        if i == tiny_at:
            inits.append(init("blur.weight", np.full((channels, 1, 1, 1), 0.5, np.float32)))
            nodes.append(helper.make_node("Conv", [x, "blur.weight"], [f"c{i}"], group=channels, name="features.blur"))
            x = f"c{i}"
            continue
        w = (rng.standard_normal((channels, channels, 3, 3)) * 0.1 * (1 + rng.random())).astype(np.float32)
        inits.append(init(f"features.{i}.conv.weight", w))
        nodes += [helper.make_node("Conv", [x, f"features.{i}.conv.weight"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   name=f"features.{i}.conv"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    shape = [1, channels, size, size]
    return model(nodes, [vi("x", shape)], [vi(x, shape)], inits)


def layered_net(tmp_path, layers=12, width=8):
    """`layers` MatMul + Tanh layers named block<i>.fc, of three widths and mixed weight scales, so params
    and sensitivities differ from layer to layer."""
    nodes, inits, x, w_in = [], [], "x", width
    for i in range(layers):
        w_out = width * (1 + i % 3)
        inits.append(init(f"block{i}.weight", arr(w_in, w_out, seed=i) * (1 + (7 * i) % 5)))
        nodes += [helper.make_node("MatMul", [x, f"block{i}.weight"], [f"h{i}"], name=f"block{i}.fc"),
                  helper.make_node("Tanh", [f"h{i}"], [f"t{i}"])]
        x, w_in = f"t{i}", w_out
    return save(model(nodes, [vi("x", ["n", width])], [vi(x, ["n", w_in])], inits), tmp_path / "net.onnx")


def llama(layers=2, hidden=64, inter=96, vocab=100, seed=0):
    """A LLaMA-shaped decoder stack (as ../shared/bench/make_llm.py writes, fp32, small): per layer q/k/v/o
    projections around single-head attention and a gated MLP, then an lm_head; input x [1, seq, hidden]."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], [init("ln.weight", np.ones(hidden, np.float32)), init("ln.bias", np.zeros(hidden, np.float32))]

    def linear(x, name, k, n):
        w = (rng.standard_normal((k, n)) * (1 + 0.5 * rng.standard_exponential((k, n))) / np.sqrt(k)).astype(np.float32)
        inits.append(init(name + ".weight", w))
        nodes.append(helper.make_node("MatMul", [x, name + ".weight"], [name + "_out"], name=name))
        return name + "_out"

    x = "x"
    for i in range(layers):
        p = f"model.layers.{i}"
        nodes.append(helper.make_node("LayerNormalization", [x, "ln.weight", "ln.bias"], [p + "_ln1"], axis=-1))
        q, k, v = (linear(p + "_ln1", f"{p}.self_attn.{t}_proj", hidden, hidden) for t in "qkv")
        nodes += [helper.make_node("Transpose", [k], [p + "_kt"], perm=[0, 2, 1]),
                  helper.make_node("MatMul", [q, p + "_kt"], [p + "_s"]),
                  helper.make_node("Softmax", [p + "_s"], [p + "_a"], axis=-1),
                  helper.make_node("MatMul", [p + "_a", v], [p + "_av"])]
        o = linear(p + "_av", p + ".self_attn.o_proj", hidden, hidden)
        nodes += [helper.make_node("Add", [x, o], [p + "_r1"]),
                  helper.make_node("LayerNormalization", [p + "_r1", "ln.weight", "ln.bias"], [p + "_ln2"], axis=-1)]
        g = linear(p + "_ln2", p + ".mlp.gate_proj", hidden, inter)
        u = linear(p + "_ln2", p + ".mlp.up_proj", hidden, inter)
        nodes += [helper.make_node("Sigmoid", [g], [p + "_sg"]), helper.make_node("Mul", [g, p + "_sg"], [p + "_silu"]),
                  helper.make_node("Mul", [p + "_silu", u], [p + "_gu"])]
        d = linear(p + "_gu", p + ".mlp.down_proj", inter, hidden)
        nodes.append(helper.make_node("Add", [p + "_r1", d], [p + "_out"]))
        x = p + "_out"
    logits = linear(x, "lm_head", hidden, vocab)
    return model(nodes, [vi("x", [1, "seq", hidden])], [vi(logits, [1, "seq", vocab])], inits)


def quantize_nbits(w, bits=4, block_size=16, zero_points="packed", g_idx=None):
    """MatMulNBits' inputs for the float weight w [K, N], quantized asymmetrically per block along K (as
    onnxruntime's MatMulNBitsQuantizer does) by hand: (B [N, blocks, block_size·bits/8] uint8, scales [N, blocks],
    zero points: packed uint8 [N, ceil(blocks·bits/8)], float [N, blocks] or None (symmetric about the middle code),
    and the dequantized weight [K, N] onnxruntime should apply). `g_idx` [K]: each input's block (GPTQ's act-order);
    default k // block_size."""
    k, n = w.shape
    blocks = -(-k // block_size)
    top = (1 << bits) - 1
    group = np.arange(k) // block_size if g_idx is None else np.asarray(g_idx)
    wt = w.T.astype(np.float64)                                   # [N, K]
    scale, zp = np.ones((n, blocks)), np.zeros((n, blocks))
    for b in range(blocks):
        cols = wt[:, group == b]
        if not cols.size:
            continue
        if zero_points is None:
            scale[:, b] = np.maximum(np.abs(cols).max(axis=1) / (top // 2 + 0.5), 1e-8)
        else:
            lo, hi = np.minimum(cols.min(axis=1), 0), np.maximum(cols.max(axis=1), 0)
            scale[:, b] = np.maximum((hi - lo) / top, 1e-8)
            zp[:, b] = np.clip(np.round(-lo / scale[:, b]), 0, top)
    scale = scale.astype(np.float32)
    if zero_points is None:
        zp[:] = 1 << (bits - 1)
    elif zero_points == "float":
        zp = zp + 0.25                                            # a zero point off the integer grid
    q = np.clip(np.round(wt / scale[:, group]) + zp[:, group], 0, top).astype(np.uint8)
    deq = ((q.astype(np.float32) - zp[:, group].astype(np.float32)) * scale[:, group]).T
    padded = np.zeros((n, blocks * block_size), np.uint8)
    padded[:, :k] = q
    per = 8 // bits

    def pack(codes):
        out = np.zeros(codes.shape[:-1] + (-(-codes.shape[-1] // per),), np.uint8)
        for j in range(per):
            part = codes[..., j::per]
            out[..., :part.shape[-1]] |= (part << (j * bits)).astype(np.uint8)
        return out

    packed = pack(padded.reshape(n, blocks, block_size))
    if zero_points == "packed":
        zps = pack(zp.astype(np.uint8))
    elif zero_points == "float":
        zps = zp.astype(np.float32)
    else:
        zps = None
    return packed, scale, zps, deq.astype(np.float32)
