"""A seeded, structure-aware fuzzer for losswidget's inputs (used by test_hostile.py; not collected itself).

Seeds are small models built here with onnx.helper (each feature the reader handles: blobs, external data,
Constant weights, If bodies, quantized and blocked weights, LSTM, float16 / bfloat16), a profile, a plan,
a SparseML analysis and an .npz. Mutants come from:
- bytes: truncation (anywhere, or at a field boundary), byte flips, varint values and lengths replaced by
  extreme ones, wire types changed: found by walking the protobuf wire format (nested messages too);
- crafted protos: tensor dims / types / data, external data entries (escaping paths, symlink loops, NUL,
  long names, bad offsets), node attributes (block_size, axis, ...), names (invalid UTF-8, regex-hostile),
  input shapes, deep nesting, op swaps, opsets;
- JSON: values replaced by hostile ones (Infinity, 1e400, huge ints, deep nesting, wrong types), keys
  renamed or dropped; .npz: bytes as above, and arrays that expand far beyond their file size.

Every mutant runs in a worker process whose address space is capped (RLIMIT_AS) and whose peak RSS is
reset before each input (/proc/self/clear_refs) and read after it. A step ends as "ok", the name of a
LossWidgetError subclass, or a failure: "BUG <exception>", "hang" (past the time budget), "signal N"
(the worker died), "memory" (peak RSS grew past the budget). `python tests/fuzzing.py N [SEED]` runs a
campaign from the command line and prints its statistics; `--replay I` runs one input in this process.
"""
from __future__ import annotations

import io
import json
import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
TIME_BUDGET_S = 10.0
RSS_BUDGET_MB = 200
AS_HEADROOM_MB = 1024          # address space allowed past the warmed-up worker's (threads reserve a lot)


# -- seeds -------------------------------------------------------------------------------------------------
def _arr(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "seed", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def seed_models() -> dict[str, onnx.ModelProto]:
    """Small runnable models, one per feature of the reader (weights >= 1 KB lie outside the parsed message)."""
    rng = np.random.default_rng(7)
    seeds = {}
    seeds["mlp"] = _model(
        [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1, name="fc1"),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "fc2.weight"], ["y"], name="fc2")],
        [_vi("x", ["N", 16])], [_vi("y", ["N", 10])],
        [_init("fc1.weight", _arr(rng, 32, 16)), _init("fc1.bias", _arr(rng, 32)),
         _init("fc2.weight", _arr(rng, 32, 10))])
    seeds["conv"] = _model(
        [helper.make_node("Conv", ["x", "conv.weight"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]),
         helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "head.weight"], ["y"], transB=1, name="head")],
        [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 5])],
        [_init("conv.weight", _arr(rng, 16, 3, 3, 3)), _init("head.weight", _arr(rng, 5, 16))])
    q = rng.integers(-127, 127, (64, 32)).astype(np.int8)
    seeds["dq_axis"] = _model(
        [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
         helper.make_node("MatMul", ["x", "w"], ["y"], name="qfc")],
        [_vi("x", [2, 64])], [_vi("y", [2, 32])],
        [_init("wq", q), _init("ws", np.abs(_arr(rng, 32)) / 100), _init("wz", np.zeros(32, np.int8))], opset=13)
    seeds["dq_block"] = _model(
        [helper.make_node("DequantizeLinear", ["bq", "bs"], ["w"], axis=0, block_size=16),
         helper.make_node("MatMul", ["x", "w"], ["y"], name="bfc")],
        [_vi("x", [2, 64])], [_vi("y", [2, 32])],
        [_init("bq", q), _init("bs", np.abs(_arr(rng, 4, 32)) / 100)], opset=21)
    const = helper.make_node("Constant", [], ["cw"], value=_init("cw", _arr(rng, 24, 16)), name="const_w")
    seeds["constant"] = _model(
        [const, helper.make_node("Transpose", ["cw"], ["cwt"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "cwt"], ["y"], name="proj")],
        [_vi("x", ["N", 16])], [_vi("y", ["N", 24])])
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "tw"], ["ty"], name="then_fc")], "then", [],
                               [_vi("ty", [2, 8])], [_init("tw", _arr(rng, 16, 8))])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "outer.weight"], ["ey"], name="else_fc")], "else",
                               [], [_vi("ey", [2, 8])])
    seeds["if"] = _model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")],
        [_vi("x", [2, 16]), _vi("cond", [], TensorProto.BOOL)], [_vi("y", [2, 8])],
        [_init("outer.weight", _arr(rng, 16, 8))])
    seeds["lstm"] = _model(
        [helper.make_node("LSTM", ["x", "W", "R"], ["Y", "Yh"], hidden_size=8, name="rnn")],
        [_vi("x", ["T", 2, 12])], [_vi("Yh", [1, 2, 8])],
        [_init("W", _arr(rng, 1, 32, 12)), _init("R", _arr(rng, 1, 32, 8))])
    seeds["qlinear"] = _model(
        [helper.make_node("QLinearMatMul", ["a", "as", "az", "bq", "bs", "bz", "ys", "yz"], ["yq"], name="qmm"),
         helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])],
        [_vi("a", [2, 64], TensorProto.UINT8)], [_vi("y", [2, 32])],
        [_init("as", np.float32(0.02)), _init("az", np.uint8(128)),
         _init("bq", rng.integers(0, 255, (64, 32)).astype(np.uint8)), _init("bs", np.float32(0.01)),
         _init("bz", np.uint8(128)), _init("ys", np.float32(0.05)), _init("yz", np.uint8(128))], opset=13)
    half = _init("hw", _arr(rng, 16, 40).astype(np.float16))
    seeds["fp16"] = _model(
        [helper.make_node("Cast", ["hw"], ["hw32"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "hw32"], ["y"], name="half")],
        [_vi("x", [2, 16])], [_vi("y", [2, 40])], [half])
    bf = helper.make_tensor("bw", TensorProto.BFLOAT16, [16, 40],
                            (_arr(rng, 16, 40).view(np.uint32) >> 16).astype(np.uint16).tobytes(), raw=True)
    seeds["bf16"] = _model(
        [helper.make_node("Cast", ["bw"], ["bw32"], to=TensorProto.FLOAT),
         helper.make_node("MatMul", ["x", "bw32"], ["y"], name="bhalf")],
        [_vi("x", [2, 16])], [_vi("y", [2, 40])], [bf])
    seeds["einsum"] = _model(
        [helper.make_node("Einsum", ["x", "ew"], ["y"], equation="bi,io->bo", name="ein")],
        [_vi("x", [2, 32])], [_vi("y", [2, 12])], [_init("ew", _arr(rng, 32, 12))], opset=13)
    return seeds


EXTERNAL = "mlp_ext"          # the mlp seed saved with its tensors in "weights.bin"


def write_seeds(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, m in seed_models().items():
        paths[name] = folder / f"{name}.onnx"
        onnx.save(m, str(paths[name]))
    ext = folder / "ext"
    ext.mkdir(exist_ok=True)
    onnx.save(seed_models()["mlp"], str(ext / "model.onnx"), save_as_external_data=True, location="weights.bin",
              size_threshold=0, all_tensors_to_one_file=True)
    paths[EXTERNAL] = ext / "model.onnx"
    return paths


# -- the protobuf wire format (enough to find where to cut and what to corrupt) --------------------------------
@dataclass
class Wire:
    keys: list = field(default_factory=list)       # (start, end) of field keys
    lengths: list = field(default_factory=list)    # (start, end) of length varints
    values: list = field(default_factory=list)     # (start, end) of varint values
    payloads: list = field(default_factory=list)   # (start, end) of length-delimited payloads
    bounds: list = field(default_factory=list)     # field start offsets


def _read_varint(buf: bytes, pos: int, end: int):
    result = shift = 0
    while pos < end and shift < 70:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    return None, pos


def encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _message(buf: bytes, start: int, end: int, wire: Wire, depth: int) -> bool:
    """Record the fields of buf[start:end] if it parses as a message (nested ones too, to a depth)."""
    pos, found = start, Wire()
    while pos < end:
        fstart = pos
        key, pos = _read_varint(buf, pos, end)
        if key is None or key >> 3 == 0:
            return False
        found.bounds.append(fstart)
        found.keys.append((fstart, pos))
        kind = key & 7
        if kind == 0:
            vstart = pos
            value, pos = _read_varint(buf, pos, end)
            if value is None:
                return False
            found.values.append((vstart, pos))
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        elif kind == 2:
            lstart = pos
            length, pos = _read_varint(buf, pos, end)
            if length is None or pos + length > end:
                return False
            found.lengths.append((lstart, pos))
            found.payloads.append((pos, pos + length))
            pos += length
        else:
            return False
        if pos > end:
            return False
    for part in ("keys", "lengths", "values", "payloads", "bounds"):
        getattr(wire, part).extend(getattr(found, part))
    if depth < 8:
        for a, b in list(found.payloads):
            if b - a >= 2:
                _message(buf, a, b, wire, depth + 1)
    return True


def wire_map(buf: bytes) -> Wire:
    wire = Wire()
    _message(buf, 0, len(buf), wire, 0)
    return wire


# -- byte mutations ----------------------------------------------------------------------------------------
EXTREME = [0, 1, 2, 3, 127, 128, 255, 1 << 31, (1 << 31) - 1, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63,
           (1 << 64) - 1]


def mutate_bytes(buf: bytes, rng: random.Random) -> tuple[bytes, str]:
    wire = wire_map(buf)
    kind = rng.choice(["truncate", "truncate_field", "flip", "varint", "length", "wire", "splice"])
    b = bytearray(buf)
    if kind == "truncate" or (kind == "truncate_field" and not wire.bounds):
        cut = rng.randrange(1, len(buf))
        return bytes(b[:cut]), f"truncate at {cut}"
    if kind == "truncate_field":
        cut = max(1, rng.choice(wire.bounds) + rng.choice([-1, 0, 1, 2]))
        return bytes(b[:cut]), f"truncate at field boundary {cut}"
    if kind == "flip" or not (wire.values or wire.lengths):
        n = rng.choice([1, 1, 2, 4, 16])
        where = []
        for _ in range(n):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256) if rng.random() < 0.5 else b[i] ^ (1 << rng.randrange(8))
            where.append(i)
        return bytes(b), f"flip bytes {where[:4]}"
    if kind == "wire" and wire.keys:
        a, e = rng.choice(wire.keys)
        key, _ = _read_varint(buf, a, e)
        new = (key & ~7) | rng.choice([0, 1, 2, 3, 4, 5, 6, 7])
        return bytes(b[:a]) + encode_varint(new) + bytes(b[e:]), f"wire type of key at {a} -> {new & 7}"
    if kind == "splice" and len(wire.bounds) > 2:
        i, j = sorted(rng.sample(wire.bounds, 2))
        if rng.random() < 0.5:
            return bytes(b[:i]) + bytes(b[j:]), f"cut bytes {i}..{j}"
        return bytes(b[:j]) + bytes(b[i:j]) + bytes(b[j:]), f"repeat bytes {i}..{j}"
    spans = wire.lengths if (kind == "length" and wire.lengths) else (wire.values or wire.lengths)
    a, e = rng.choice(spans)
    old, _ = _read_varint(buf, a, e)
    new = rng.choice(EXTREME + [old + 1, old - 1 if old else 0, old * 2, old + 1024])
    return bytes(b[:a]) + encode_varint(new) + bytes(b[e:]), f"varint at {a}: {old} -> {new}"


# -- crafted protos ----------------------------------------------------------------------------------------
def _tensors(m: onnx.ModelProto):
    """Every stored tensor (initializers and Constant values, subgraphs too), mutable."""
    out = []

    def walk(g):
        out.extend(g.initializer)
        for node in g.node:
            for a in node.attribute:
                if a.type == AttributeProto.TENSOR:
                    out.append(a.t)
                if a.type == AttributeProto.GRAPH:
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)
    walk(m.graph)
    return out


def _nodes(m: onnx.ModelProto):
    out = []

    def walk(g):
        for node in g.node:
            out.append(node)
            for a in node.attribute:
                if a.type == AttributeProto.GRAPH:
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)
    walk(m.graph)
    return out


HOSTILE_DIMS = [[-4, -4], [-1], [1 << 40], [1 << 20, 1 << 20], [0], [1] * 65, [1] * 33, [3], [(1 << 63) - 1],
                [2, -2, -8], [1 << 31, 2]]
HOSTILE_INTS = [0, -1, -5, 1, 2, 3, 1 << 25, 1 << 40, -(1 << 40), (1 << 63) - 1, 100, -100]
LOCATIONS = ["../escape.bin", "/etc/hostname", "sub/../../escape.bin", "loop", "nul\x00byte.bin", "x" * 300,
             "dir", "fifo", "link_out", "missing.bin", "weights.bin", ".", "", "weights.bin/"]


def craft(m: onnx.ModelProto, rng: random.Random, folder: Path) -> tuple[onnx.ModelProto | bytes, str]:
    """One semantic mutation of a parsed seed (files it needs are made in `folder`)."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    tensors, nodes = _tensors(m2), _nodes(m2)
    kind = rng.choice(["dims", "dtype", "data", "external", "attr", "name", "utf8", "inputs", "nest", "op",
                       "opset", "scale", "dup", "wiring"])
    if kind == "dims" and tensors:
        t = rng.choice(tensors)
        dims = rng.choice(HOSTILE_DIMS)
        del t.dims[:]
        t.dims.extend(dims)
        return m2, f"dims of {t.name!r} -> {dims[:4]}{'...' if len(dims) > 4 else ''} ({len(dims)} dims)"
    if kind == "dtype" and tensors:
        t = rng.choice(tensors)
        t.data_type = rng.choice(list(range(0, 26)) + [100, -1 & 0x7FFFFFFF])
        return m2, f"data_type of {t.name!r} -> {t.data_type}"
    if kind == "data" and tensors:
        t = rng.choice(tensors)
        choice = rng.choice(["short", "long", "empty", "float_data", "both"])
        if choice == "short":
            t.raw_data = t.raw_data[: len(t.raw_data) // 2]
        elif choice == "long":
            t.raw_data = t.raw_data + b"\0" * rng.choice([1, 4, 4096])
        elif choice == "empty":
            t.ClearField("raw_data")
        elif choice == "float_data":
            t.ClearField("raw_data")
            t.float_data.extend([1.0] * rng.choice([0, 1, 7, 64]))
        else:
            t.float_data.extend([1.0, 2.0])
        return m2, f"data of {t.name!r}: {choice}"
    if kind == "external" and tensors:
        t = rng.choice(tensors)
        location = rng.choice(LOCATIONS)
        _external_fixture(folder, location)
        raw = t.raw_data
        (folder / "weights.bin").write_bytes(raw or b"\0" * 16)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        t.external_data.add(key="location", value=location)
        for key in ("offset", "length"):
            if rng.random() < 0.6:
                value = rng.choice(["0", "-1", "abc", "1e3", str(1 << 70), "4", str(len(raw)), str(len(raw) + 1), ""])
                t.external_data.add(key=key, value=value)
        return m2, f"{t.name!r} external at {location[:40]!r} {[(e.key, e.value) for e in t.external_data][1:]}"
    if kind == "attr" and nodes:
        node = rng.choice(nodes)
        name = rng.choice(["block_size", "axis", "transA", "transB", "group", "hidden_size", "to", "perm",
                           "kernel_shape", "pads", "strides", "dilations", "direction", "equation"])
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        if name in ("perm", "kernel_shape", "pads", "strides", "dilations"):
            node.attribute.append(helper.make_attribute(name, [rng.choice(HOSTILE_INTS) for _ in range(rng.randrange(0, 5))],
                                                        attr_type=AttributeProto.INTS))
        elif name in ("direction", "equation"):
            node.attribute.append(helper.make_attribute(name, rng.choice(["", "up", "ii->", "a" * 500, "bi,io->bo"])))
        else:
            node.attribute.append(helper.make_attribute(name, rng.choice(HOSTILE_INTS)))
        return m2, f"attribute {name} of {node.op_type} {node.name!r}"
    if kind == "name" and tensors:
        t = rng.choice(tensors)
        new = rng.choice(["_quantized" * rng.choice([100, 5000]) + "x", "a" * 100000, "", ":0", "/", "%s%n",
                          "x" + "_DequantizeLinear" * 3000 + "!", "w" * 50 + ".weight"])
        _rename(m2, t, new)
        return m2, f"rename {t.name[:20]!r} -> {new[:30]!r} ({len(new)} chars)"
    if kind == "utf8":
        targets = [n for n in nodes if n.name] + [t for t in tensors if t.name]
        if targets:
            obj = rng.choice(targets)
            marker = "Z" * max(len(obj.name), 4)
            old = obj.name
            if isinstance(obj, onnx.NodeProto):
                obj.name = marker
            else:
                _rename(m2, obj, marker)
            data = m2.SerializeToString()
            bad = bytearray(marker.encode())
            bad[rng.randrange(len(bad))] = rng.choice([0xFF, 0xC3, 0x80, 0xED])
            return data.replace(marker.encode(), bytes(bad)), f"invalid UTF-8 in name {old[:20]!r}"
    if kind == "inputs" and len(m2.graph.input):
        vi = rng.choice(list(m2.graph.input))
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            d = rng.choice(list(dims))
            choice = rng.choice([1 << 40, 1 << 30, -1, 0, "sym", 1 << 62])
            if choice == "sym":
                d.dim_param = "S"
            else:
                d.dim_value = choice
            return m2, f"input {vi.name!r} dim -> {choice}"
        vi.type.tensor_type.elem_type = rng.choice([0, 8, 16, 100])
        return m2, f"input {vi.name!r} elem type -> {vi.type.tensor_type.elem_type}"
    if kind == "nest":
        depth = rng.choice([40, 200, 1200])
        return nested(m2, depth), f"graph nested {depth} deep in If bodies"
    if kind == "op" and nodes:
        node = rng.choice(nodes)
        node.op_type = rng.choice(["Conv", "MatMul", "Gemm", "LSTM", "QLinearConv", "MatMulInteger", "Einsum",
                                   "DequantizeLinear", "Constant", "If", "Loop", "NoSuchOp", "Identity"])
        return m2, f"op of {node.name!r} -> {node.op_type}"
    if kind == "opset":
        m2.opset_import[0].version = rng.choice([0, 1, 7, 11, 23, 1000])
        if rng.random() < 0.3:
            m2.ir_version = rng.choice([1, 3, 100])
        return m2, f"opset -> {m2.opset_import[0].version}, ir {m2.ir_version}"
    if kind == "scale":
        scales = [n for n in nodes if n.op_type in ("DequantizeLinear", "QLinearMatMul")]
        if scales:
            node = rng.choice(scales)
            target = next((t for t in tensors if t.name in node.input[1:]), None)
            if target is not None:
                n = rng.choice([2, 3, 1 << 12, 64 * 32 + 1])
                new = numpy_helper.from_array(np.ones(n, np.float32) if rng.random() < 0.5 else np.ones((1, n), np.float32),
                                              target.name)
                target.CopyFrom(new)
                return m2, f"scale/zero point {target.name!r} -> {list(new.dims)}"
    if kind == "dup" and tensors:
        t = rng.choice(tensors)
        extra = m2.graph.initializer.add()
        extra.CopyFrom(t)
        extra.dims.append(2)
        return m2, f"duplicate initializer {t.name!r} with other dims"
    if kind == "wiring" and nodes:
        node = rng.choice(nodes)
        names = [o for n in nodes for o in n.output] + [t.name for t in tensors] + ["", "nothing"]
        if node.input:
            i = rng.randrange(len(node.input))
            node.input[i] = rng.choice(names)
            return m2, f"input {i} of {node.name or node.op_type} rewired to {node.input[i]!r}"
        node.input.append(rng.choice(names))
        return m2, f"input added to {node.op_type}"
    return m2, "unchanged"


def _rename(m: onnx.ModelProto, tensor: TensorProto, new: str) -> None:
    old = tensor.name
    for node in _nodes(m):
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old and node.op_type == "Constant":
                node.output[i] = new
    tensor.name = new


def nested(m: onnx.ModelProto, depth: int) -> bytes:
    """The model with its graph `depth` If bodies deep, written as bytes (protobuf's Python API refuses to
    build messages nested past its recursion limit)."""
    def field(number: int, payload: bytes) -> bytes:
        return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload

    outs = b"".join(field(12, o.SerializeToString()) for o in m.graph.output)
    body = m.graph.SerializeToString()
    empty = field(2, b"empty") + outs
    for i in range(depth):
        then_attr = field(1, b"then_branch") + encode_varint(20 << 3) + encode_varint(5) + field(6, body)
        else_attr = field(1, b"else_branch") + encode_varint(20 << 3) + encode_varint(5) + field(6, empty)
        node = field(1, b"cond_nest") + b"".join(field(2, o.name.encode()) for o in m.graph.output)
        node += field(4, b"If") + field(5, then_attr) + field(5, else_attr)
        body = field(1, node) + field(2, f"level{i}".encode()) + outs
    top = onnx.ModelProto()
    top.CopyFrom(m)
    top.graph.Clear()
    cond = _vi("cond_nest", [], TensorProto.BOOL).SerializeToString()
    inputs = b"".join(field(11, i.SerializeToString()) for i in m.graph.input) + field(11, cond)
    return top.SerializeToString() + field(7, body + inputs)


def _external_fixture(folder: Path, location: str) -> None:
    """The files some hostile locations name: a symlink loop, a directory, a FIFO, a link out of the folder."""
    try:
        if location == "loop" and not os.path.lexists(folder / "loop"):
            os.symlink("loop2", folder / "loop")
            os.symlink("loop", folder / "loop2")
        elif location == "dir":
            (folder / "dir").mkdir(exist_ok=True)
        elif location == "fifo" and not (folder / "fifo").exists():
            os.mkfifo(folder / "fifo")
        elif location == "link_out" and not os.path.lexists(folder / "link_out"):
            os.symlink("/etc/hostname", folder / "link_out")
        (folder.parent / "escape.bin").write_bytes(b"\0" * 4096)
    except OSError:
        pass


# -- JSON and .npz mutants ---------------------------------------------------------------------------------
HOSTILE_JSON = ["Infinity", "-Infinity", "NaN", "1e400", "-1e400", "9" * 5000, "-1", "true", "null", '"abc"', "[]",
                "{}", '{"a": 1}', "[" * 5000 + "]" * 5000, '"' + "x" * 100 + '"', "0.5", "-0.5", "1.5", "2",
                '["a", 1]', "[[1]]", '{"0.5": "x"}', '{"nan": 1, "-1": 2}']


def mutate_json(text: str, rng: random.Random) -> tuple[str, str]:
    """Replace one value (found by walking the parsed document), rename or drop a key, or cut the text."""
    doc = json.loads(text)
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node[:6]):
                walk(v, path + [i])
    walk(doc, [])
    kind = rng.choice(["value", "value", "value", "key", "drop", "cut"])
    if kind == "cut":
        cut = rng.randrange(1, len(text))
        return text[:cut], f"cut at {cut}"
    path = rng.choice(paths[1:] or paths)
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1] if path else None
    if kind in ("key", "drop") and isinstance(parent, dict):
        value = parent.pop(last)
        if kind == "key":
            parent[rng.choice(["-1", "nan", "2.5", "", last + "x"])] = value
        return json.dumps(doc), f"{kind} {path}"
    marker = "\u0001HOSTILE\u0001"
    if last is None:
        return rng.choice(HOSTILE_JSON), "whole document replaced"
    parent[last] = marker
    value = rng.choice(HOSTILE_JSON)
    return json.dumps(doc).replace(json.dumps(marker), value), f"{path} -> {value[:30]}"


def npz_mutants(folder: Path, rng: random.Random, clean: Path, index: int) -> tuple[Path, str]:
    """An .npz for the mlp seed: byte mutants of a clean one, or crafted arrays (huge expansions, odd dtypes)."""
    out = folder / f"data{index}.npz"
    kind = rng.choice(["bytes", "bytes", "bomb", "dtype", "shape", "labels", "names"])
    x = np.random.default_rng(index).standard_normal((6, 16)).astype(np.float32)
    y = np.arange(6) % 10
    if kind == "bytes":
        data, what = mutate_bytes(clean.read_bytes(), rng)
        out.write_bytes(data)
        return out, "npz " + what
    if kind == "bomb":
        rows = rng.choice([1 << 16, 1 << 20, 1 << 24])
        zip_bomb(out, "x", (rows, 16), rng.choice([True, False]))
        return out, f"x of {rows} x 16 zeros, compressed"
    if kind == "dtype":
        dtype = rng.choice(["complex64", "U4", "int64", "float16", "bool", "V8", "datetime64[s]"])
        np.savez(out, x=np.zeros((6, 16)).astype(dtype), y=y)
        return out, f"x as {dtype}"
    if kind == "shape":
        shape = rng.choice([(6,), (6, 17), (0, 16), (6, 16, 1), (), (1 << 16, 0)])
        np.savez(out, x=np.zeros(shape, np.float32), y=y)
        return out, f"x of shape {shape}"
    if kind == "labels":
        labels = rng.choice([np.array(999), np.full(6, 999), np.full(6, -3), np.zeros((6, 2), np.int64),
                             np.array(["a"] * 6), np.full(6, 1.5), np.zeros(5, np.int64), np.full(6, 1 << 40)])
        np.savez(out, x=x, y=labels)
        return out, f"labels {labels.dtype} {labels.shape} {labels.reshape(-1)[:1]}"
    np.savez(out, x=x, y=y, **{rng.choice(["z", "", "x/../y"]): x})
    return out, "extra array"


def zip_bomb(path: Path, name: str, shape: tuple, fortran: bool) -> None:
    """A valid .npz whose one array of float32 zeros of `shape` fits in a few KB per GB.

    Deflate restarts after a full flush, so every 16 MB block of zeros compresses to the same bytes: one
    block is compressed and repeated, and the zip is written by hand (zipfile would compress it all)."""
    import struct
    import zlib
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": fortran, "shape": shape})
    head, total = b"\x93NUMPY\x01\x00" + header.getvalue()[8:], int(np.prod(shape)) * 4
    block = bytes(1 << 24)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts, crc = [c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)], zlib.crc32(head)
    full, rest = divmod(total, len(block))
    piece = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    parts += [piece] * full
    for _ in range(full):
        crc = zlib.crc32(block, crc)
    parts.append(c.compress(block[:rest]) + c.flush())
    crc = zlib.crc32(block[:rest], crc)
    data, size, member = b"".join(parts), len(head) + total, f"{name}.npy".encode()
    assert size < 1 << 32, "no ZIP64 here"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(member), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size,
                          len(member), 0, 0, 0, 0, 0, 0)
    offset = len(local) + len(member) + len(data)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(member), offset, 0)
    path.write_bytes(local + member + data + central + member + end)


# -- what a worker does with one input ---------------------------------------------------------------------
def _outcome(fn) -> str:
    from losswidget.errors import LossWidgetError
    try:
        fn()
        return "ok"
    except LossWidgetError as exc:
        return type(exc).__name__
    except BaseException as exc:  # noqa: BLE001 - every other exception is what the fuzzer looks for
        if isinstance(exc, KeyboardInterrupt):
            raise
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "losswidget" in f.filename), "?")
        return f"BUG {type(exc).__name__} at {where}: {str(exc)[:160]}"


def run_input(task: dict) -> dict:
    """Run every step of one input; {step: outcome}."""
    import losswidget
    from losswidget import analyze
    from losswidget.plan import load_plan
    from losswidget.prune import prune

    out = {}
    kind, path = task["kind"], task["path"]
    scratch = Path(task["scratch"])
    if kind == "model":
        profiles = {}
        for method in ("approximated", "magnitude", "one-shot"):
            kw = {"data": "random", "sparsity_levels": [0.5, 0.9]} if method == "one-shot" else {}

            def step(method=method, kw=kw):
                profiles[method] = analyze(path, method, **kw)
            out[method] = _outcome(step)
            if method == "approximated" and out[method] not in ("ok",) and not out[method].startswith("BUG"):
                break                                # the file cannot be read: the other methods meet the same
        if "magnitude" in profiles:
            out["prune"] = _outcome(lambda: prune(path, profiles["magnitude"].plan(0.5), scratch / "pruned.onnx"))
    elif kind in ("profile", "sparseml"):
        def use():
            p = losswidget.load_profile(path)
            p.summary_at(0.5), p.to_json(scratch / "p.json"), p.to_csv(), p.plan(), p.most_sensitive(3)
            p.plan(0.6, exclude=[0]) if p.layers else None
        out["load"] = _outcome(use)
        if kind == "sparseml":
            out["from_sparseml"] = _outcome(lambda: losswidget.from_sparseml(path, model=task["model"]))
    elif kind == "plan":
        def use():
            plan = load_plan(path)
            plan.to_json(scratch / "plan.json"), plan.to_csv(), plan.to_recipe()
            prune(task["model"], plan, scratch / "pruned.onnx")
        out["plan"] = _outcome(use)
    elif kind == "data":
        labels = task.get("labels", "y")
        out["one-shot"] = _outcome(lambda: analyze(task["model"], "one-shot", data=path, labels=labels,
                                                   metric="loss" if labels else "auto", samples=task.get("samples"),
                                                   sparsity_levels=[0.5]))
    return out


def _vm() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmSize", "VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def worker_main() -> None:
    """Read tasks (JSON lines) from stdin, answer each with its outcomes and peak RSS growth."""
    import warnings
    warnings.simplefilter("ignore")
    import logging
    logging.disable(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    warm = Path(sys.argv[2])
    for seed in sorted(warm.parent.glob("*.onnx")):     # imports, thread pools, compiled kernels: once, not per input
        run_input({"kind": "model", "path": str(seed), "scratch": str(warm.parent)})
    limit = _vm()["VmSize"] + AS_HEADROOM_MB * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        task = json.loads(line)
        with open("/proc/self/clear_refs", "w") as f:       # resets VmHWM (peak RSS) to the current RSS
            f.write("5")
        before = _vm()["VmRSS"]
        t0 = time.perf_counter()
        outcomes = run_input(task)
        grown = (_vm()["VmHWM"] - before) / (1 << 20)
        print(json.dumps({"outcomes": outcomes, "rss_mb": round(grown, 1),
                          "seconds": round(time.perf_counter() - t0, 3)}), flush=True)


class Worker:
    """The parent's handle on one worker process (restarted after a crash or a hang)."""

    def __init__(self, warm: Path):
        self.warm = warm
        self.proc = None

    def start(self) -> None:
        env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__)), "--worker", str(self.warm)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=env, cwd=str(self.warm.parent))
        line = self._readline(120)
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError("fuzz worker did not start")

    def _readline(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else None

    def run(self, task: dict, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()
        t0 = time.perf_counter()
        line = self._readline(timeout)
        if line:
            return json.loads(line)
        if self.proc.poll() is None:                      # still running: a hang
            self.proc.kill()
            self.proc.wait()
            return {"outcomes": {"input": "hang"}, "rss_mb": 0.0, "seconds": time.perf_counter() - t0}
        code = self.proc.wait()
        what = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        return {"outcomes": {"input": what}, "rss_mb": 0.0, "seconds": time.perf_counter() - t0}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- campaigns ---------------------------------------------------------------------------------------------
@dataclass
class Record:
    index: int
    kind: str
    seed: str
    what: str
    size: int
    outcomes: dict
    rss_mb: float
    seconds: float

    def failures(self) -> list[str]:
        bad = [f"{k}: {v}" for k, v in self.outcomes.items()
               if v.startswith(("BUG", "hang", "signal", "exit"))]
        if self.rss_mb > RSS_BUDGET_MB:
            bad.append(f"peak RSS grew {self.rss_mb:.0f} MB")
        if self.seconds > TIME_BUDGET_S:
            bad.append(f"took {self.seconds:.1f} s")
        return bad


def make_inputs(folder: Path, count: int, seed: int):
    """(kind, seed name, description, task) for `count` mutants; mutant i depends only on (seed, i)."""
    seeds = write_seeds(folder / "seeds")
    parsed = {name: onnx.load(str(p), load_external_data=False) for name, p in seeds.items()}
    model_bytes = {name: p.read_bytes() for name, p in seeds.items()}
    profile_text, plan_text, sparseml_text, npz = _document_seeds(folder / "seeds", seeds["mlp"])
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        d = folder / f"m{i}"
        d.mkdir(parents=True, exist_ok=True)
        task = {"scratch": str(d)}
        roll = rng.random()
        if roll < 0.78:
            name = rng.choice(sorted(seeds))
            path = d / "model.onnx"
            if name == EXTERNAL:
                shutil.copy(seeds[EXTERNAL].parent / "weights.bin", d / "weights.bin")
            if rng.random() < 0.45:
                data, what = mutate_bytes(model_bytes[name], rng)
                if name == EXTERNAL and rng.random() < 0.4:
                    ext, what = mutate_bytes((d / "weights.bin").read_bytes(), rng)
                    (d / "weights.bin").write_bytes(ext)
                    data, what = model_bytes[name], "weights.bin " + what
            else:
                crafted, what = craft(parsed[name], rng, d)
                data = crafted if isinstance(crafted, bytes) else _serialize(crafted)
                if data is None:
                    data, what = model_bytes[name], what + " (could not serialize; seed used)"
                if rng.random() < 0.15:
                    data, more = mutate_bytes(data, rng)
                    what += "; " + more
            path.write_bytes(data)
            yield "model", name, what, {**task, "kind": "model", "path": str(path)}
        elif roll < 0.88:
            kind = rng.choice(["profile", "sparseml"])
            text, what = mutate_json(profile_text if kind == "profile" else sparseml_text, rng)
            path = d / "doc.json"
            path.write_text(text)
            yield kind, kind, what, {**task, "kind": kind, "path": str(path), "model": str(seeds["mlp"])}
        elif roll < 0.93:
            text, what = mutate_json(plan_text, rng)
            path = d / "plan.json"
            path.write_text(text)
            yield "plan", "plan", what, {**task, "kind": "plan", "path": str(path), "model": str(seeds["mlp"])}
        else:
            path, what = npz_mutants(d, rng, npz, i)
            yield "data", "npz", what, {**task, "kind": "data", "path": str(path), "model": str(seeds["mlp"])}


def _serialize(m: onnx.ModelProto) -> bytes | None:
    try:
        return m.SerializeToString()
    except (ValueError, RecursionError):     # protobuf refuses some crafted messages (e.g. nesting past its limit)
        return None


def _document_seeds(folder: Path, mlp: Path):
    import losswidget
    profile = losswidget.analyze(str(mlp), "magnitude", sparsity_levels=[0.5, 0.9])
    profile_text = profile.to_json()
    plan_text = profile.plan(0.5).to_json()
    sparseml = {"results": [{"id": l.id, "name": l.weight, "index": l.index,
                             "sparse_measurements": [[lv, [v]] for lv, v in zip(l.levels, l.values)],
                             "averages": {str(lv): v for lv, v in zip(l.levels, l.values)}}
                            for l in profile.layers]}
    npz = folder / "data.npz"
    np.savez_compressed(npz, x=np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32),
                        y=np.arange(6) % 10)
    return profile_text, plan_text, json.dumps(sparseml), npz


def campaign(folder: Path, count: int, seed: int = 0, progress=None) -> list[Record]:
    folder.mkdir(parents=True, exist_ok=True)
    seeds = write_seeds(folder / "seeds")
    worker = Worker(seeds["mlp"])
    records = []
    try:
        for i, (kind, name, what, task) in enumerate(make_inputs(folder, count, seed)):
            answer = worker.run(task, TIME_BUDGET_S)
            size = Path(task["path"]).stat().st_size if Path(task["path"]).exists() else 0
            records.append(Record(i, kind, name, what, size, answer["outcomes"], answer["rss_mb"], answer["seconds"]))
            if progress is not None:
                progress(records[-1])
    finally:
        worker.close()
    return records


def statistics(records: list[Record]) -> dict[str, int]:
    """Outcomes by class over every step of every input."""
    counts: dict[str, int] = {}
    for r in records:
        for v in r.outcomes.values():
            key = v.split(" at ")[0] if v.startswith("BUG") else v
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main()
        return
    import argparse
    import tempfile
    ap = argparse.ArgumentParser(description="run a fuzz campaign and print its statistics")
    ap.add_argument("count", type=int)
    ap.add_argument("seed", type=int, nargs="?", default=0)
    ap.add_argument("--replay", type=int, help="run input I in this process and print its outcomes")
    ap.add_argument("--keep", help="folder to keep the mutants in")
    a = ap.parse_args()
    folder = Path(a.keep or tempfile.mkdtemp(prefix="losswidget-fuzz-"))
    if a.replay is not None:
        for i, (kind, name, what, task) in enumerate(make_inputs(folder, a.replay + 1, a.seed)):
            if i == a.replay:
                print(kind, name, what)
                print(run_input(task))
        return
    t0 = time.perf_counter()

    def show(r: Record):
        bad = r.failures()
        if bad:
            print(f"#{r.index} {r.kind}/{r.seed} [{r.what[:90]}] ({r.size} B): {'; '.join(bad)}", flush=True)
    records = campaign(folder, a.count, a.seed, show)
    print(f"{len(records)} inputs in {time.perf_counter() - t0:.1f} s; max peak RSS growth "
          f"{max(r.rss_mb for r in records):.0f} MB; slowest {max(r.seconds for r in records):.2f} s")
    for k, v in statistics(records).items():
        print(f"  {v:6d}  {k}")
    for r in sorted(records, key=lambda r: -r.seconds)[:3]:
        print(f"  slow: #{r.index} {r.kind}/{r.seed} [{r.what[:80]}] {r.seconds:.2f} s {r.outcomes}")
    for r in sorted(records, key=lambda r: -r.rss_mb)[:3]:
        print(f"  memory: #{r.index} {r.kind}/{r.seed} [{r.what[:80]}] {r.rss_mb:.0f} MB {r.outcomes}")
    if not a.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
