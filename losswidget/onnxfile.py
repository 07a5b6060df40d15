"""Open an ONNX file without loading its weights.

`onnx.load` parses every weight into Python bytes (a copy of the whole file). Profiling only ever needs one
weight at a time, so `open_model` walks the protobuf wire format itself: the main graph's large `raw_data`
fields are cut out of the message before protobuf parses it, and remembered as (offset, length) in the
file. External data files are located the same way. `ModelFile.array` then reads one tensor.

Weights are read with pread into memory the caller owns, never memory-mapped: a mapped file that another
process truncates underneath (re-exporting a model to the same path does) kills the process with SIGBUS,
which Python cannot catch, and a Jupyter kernel with it. A read of a file that shrank is short instead.
The files stay open from the first read on, so a model replaced by rename is still read from the file that
was parsed; one rewritten or truncated in place (its size or mtime moved since it was opened) is a
ModelError. Names that are not UTF-8, negative or too many dims and external data locations that leave
the model's folder are refused when the model is opened or the tensor read.
"""
from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from blake3 import blake3
from google.protobuf.message import DecodeError
from onnx import AttributeProto, NodeProto, TensorProto

from .errors import ModelChanged, ModelError
from .identity import hash_files, hash_files_async

# raw_data fields at least this large are left in the file; smaller ones (shapes, scales) are parsed inline.
_INLINE_LIMIT = 1024

_T = TensorProto
# element size in bits of each stored type; None: not a numeric tensor we can size (strings)
_BITS = {
    _T.FLOAT: 32, _T.UINT8: 8, _T.INT8: 8, _T.UINT16: 16, _T.INT16: 16, _T.INT32: 32, _T.INT64: 64,
    _T.BOOL: 8, _T.FLOAT16: 16, _T.DOUBLE: 64, _T.UINT32: 32, _T.UINT64: 64, _T.COMPLEX64: 64,
    _T.COMPLEX128: 128, _T.BFLOAT16: 16, _T.FLOAT8E4M3FN: 8, _T.FLOAT8E4M3FNUZ: 8, _T.FLOAT8E5M2: 8,
    _T.FLOAT8E5M2FNUZ: 8, _T.UINT4: 4, _T.INT4: 4,
}
for _name, _bits in (("FLOAT4E2M1", 4), ("FLOAT8E8M0", 8), ("UINT2", 2), ("INT2", 2)):
    if hasattr(_T, _name):  # newer onnx releases only
        _BITS[getattr(_T, _name)] = _bits

FLOAT_TYPES = frozenset(t for t in _BITS if t in {
    _T.FLOAT, _T.FLOAT16, _T.DOUBLE, _T.BFLOAT16, _T.FLOAT8E4M3FN, _T.FLOAT8E4M3FNUZ, _T.FLOAT8E5M2,
    _T.FLOAT8E5M2FNUZ, getattr(_T, "FLOAT4E2M1", -1), getattr(_T, "FLOAT8E8M0", -1)})
QUANT_TYPES = frozenset(t for t in _BITS if t in {
    _T.UINT8, _T.INT8, _T.UINT16, _T.INT16, _T.UINT4, _T.INT4, getattr(_T, "UINT2", -1),
    getattr(_T, "INT2", -1)})
PARAM_TYPES = FLOAT_TYPES | QUANT_TYPES
_NATIVE = {_T.FLOAT: np.float32, _T.FLOAT16: np.float16, _T.DOUBLE: np.float64, _T.INT8: np.int8,
           _T.UINT8: np.uint8, _T.INT16: np.int16, _T.UINT16: np.uint16, _T.INT32: np.int32,
           _T.INT64: np.int64, _T.UINT32: np.uint32, _T.UINT64: np.uint64, _T.BOOL: np.bool_}
# the repeated field holding a tensor's values when it has no raw_data
_VALUE_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"type {data_type}"


# numpy's limit on dims (32 before numpy 2); no real model comes near it
MAX_RANK = 32


def numel(tensor: TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= int(d)
    return n


def native_dtype(data_type: int) -> type | None:
    """numpy's dtype for a stored element type, None where numpy has none (bfloat16, float8, 4-bit)."""
    return _NATIVE.get(data_type)


def stored_bytes(tensor: TensorProto) -> int:
    """The tensor's size as stored (what reading it costs); elements of unknown size count 4 bytes."""
    return (numel(tensor) * _BITS.get(tensor.data_type, 32) + 7) // 8


@dataclass(frozen=True)
class Blob:
    """Where a tensor's bytes lie: a file, an offset and a length."""
    path: str
    offset: int
    length: int


class _Corrupt(Exception):
    pass


class _FileBytes:
    """Indexable file contents read with pread through a small window (for the header walk)."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size
        self.start, self.window = 0, b""

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop = key.start, min(key.stop, self.size)
            return os.pread(self.fd, max(stop - start, 0), start)
        if not self.start <= key < self.start + len(self.window):
            self.start, self.window = key, os.pread(self.fd, 1 << 16, key)
            if not self.window:
                raise _Corrupt
        return self.window[key - self.start]


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf, pos: int, end: int):
    """Yield (field number, wire type, field start, value start, field end) of one message's fields."""
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        num, wire = key >> 3, key & 7
        vstart = pos
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, vstart = _varint(buf, pos, end)
            pos = vstart + length
        elif wire == 5:
            pos += 4
        else:
            raise _Corrupt
        if num == 0 or pos > end:
            raise _Corrupt
        yield num, wire, start, vstart, pos


def _strip_raw(buf, start: int, end: int) -> tuple[bytes, str, tuple[int, int]] | None:
    """For one TensorProto: (message without raw_data, name, (raw offset, raw length)), if raw_data is big."""
    name, raw = "", None
    for num, wire, fstart, vstart, fend in _fields(buf, start, end):
        if num == 8 and wire == 2:
            name = bytes(buf[vstart:fend]).decode("utf-8", "replace")
        elif num == 9 and wire == 2 and fend - vstart >= _INLINE_LIMIT:
            raw = (fstart, vstart, fend)
    if raw is None:
        return None
    fstart, vstart, fend = raw
    return bytes(buf[start:fstart]) + bytes(buf[fend:end]), name, (vstart, fend - vstart)


def _scan(buf, size: int, path: str) -> tuple[onnx.ModelProto, dict[str, Blob]]:
    """Parse the model with the main graph's large raw_data fields left out (see module doc)."""
    top, graph_parts, blobs = [], [], {}
    saw_graph = False
    for num, wire, start, vstart, end in _fields(buf, 0, size):
        if not (num == 7 and wire == 2):
            top.append(bytes(buf[start:end]))
            continue
        saw_graph = True
        for gnum, gwire, gstart, gvstart, gend in _fields(buf, vstart, end):
            stripped = _strip_raw(buf, gvstart, gend) if (gnum == 5 and gwire == 2) else None
            if stripped is None:
                graph_parts.append(bytes(buf[gstart:gend]))
                continue
            message, name, (offset, length) = stripped
            graph_parts.append(_encode_varint((5 << 3) | 2) + _encode_varint(len(message)) + message)
            blobs[name] = Blob(path, offset, length)
    model = onnx.ModelProto()
    model.ParseFromString(b"".join(top))
    if saw_graph:
        model.graph.ParseFromString(b"".join(graph_parts))
    if not saw_graph or not model.ir_version:
        raise _Corrupt
    return model, blobs


class _Source:
    """One open file the weights are read from, and its size and mtime when it was opened."""

    def __init__(self, file, path: str):
        self.file, self.path = file, path
        st = os.fstat(file.fileno())
        self.size, self.mtime_ns, self.dev, self.ino = st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino
        self.identity = (self.dev, self.ino, self.size, self.mtime_ns)

    def replaced(self) -> bool:
        """Whether the path now names another file (moved over it) than the one open here."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != (self.dev, self.ino)

    def read_into(self, view: memoryview, offset: int) -> None:
        """Fill `view` with the bytes from `offset` on; ModelError when the file ended early or changed."""
        fd, done = self.file.fileno(), 0
        while done < len(view):
            if _PREADV:
                n = os.preadv(fd, [view[done:]], offset + done)
            else:
                chunk = os.pread(fd, min(len(view) - done, 1 << 30), offset + done)
                view[done:done + len(chunk)] = chunk
                n = len(chunk)
            if n <= 0:
                break
            done += n
        self.check(done < len(view))

    def check(self, short: bool = False) -> None:
        st = os.fstat(self.file.fileno())
        if short or (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns):
            raise ModelChanged(
                f"{self.path} changed while it was being read (it is {st.st_size} bytes now, {self.size} when "
                "opened): it was rewritten or truncated in place. Run the analysis again once it is written.")


_PREADV = hasattr(os, "preadv")


def _open_regular(path: str, what: str):
    """The file opened for reading, without blocking on FIFOs; ModelError unless it is a readable regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {what} {path}: {_reason(exc)}.") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelError(f"{what.capitalize()} {path} is not a regular file.")
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _shown(text: str, limit: int = 80) -> str:
    """A name from the file as it can be shown in a message (repr, cut short)."""
    r = repr(text)
    return r if len(r) <= limit else r[:limit - 4] + "...'"


class ModelFile:
    """An ONNX model whose weights stay on disk until asked for, one tensor at a time (see the module doc)."""

    def __init__(self, model: onnx.ModelProto, path: Path | None = None, blobs: dict[str, Blob] | None = None,
                 file=None):
        """`file`: the model file, opened, that `model` was parsed from (its weights are read from it)."""
        self.model = model
        self.path = path
        self.folder = path.parent.resolve() if path is not None else Path.cwd().resolve()
        self._blobs = blobs or {}
        self._sources: dict[str, _Source] = {}
        self._seen: dict[str, tuple] = {}    # path -> (device, inode, size, mtime) of the file first opened there
        self._main = str(path.resolve()) if path is not None else None
        if file is not None:
            self._sources[self._main] = src = _Source(file, str(path))
            self._seen[self._main] = src.identity
        self._lock = threading.Lock()
        self._hash: str | None = None
        self._files: dict[str, tuple[Path, bool, os.stat_result | None]] = {}

    # -- bytes -----------------------------------------------------------------------------------------
    def _source(self, path: str) -> _Source:
        """The open file at `path` (opened on first use; after `close`, opened again only if it is still the
        file first read there)."""
        with self._lock:
            src = self._sources.get(path)
            if src is None:
                shown = str(self.path) if path == self._main else path
                src = _Source(_open_regular(path, "model file" if path == self._main else "external data file"), shown)
                if self._seen.setdefault(path, src.identity) != src.identity:
                    src.file.close()
                    raise ModelChanged(f"{shown} is not the file it was when the model was opened (it was replaced "
                                       "or rewritten). Open the model again.")
                self._sources[path] = src
            return src

    def _read(self, blob: Blob) -> np.ndarray:
        """The blob's bytes as a new uint8 array."""
        out = np.empty(blob.length, np.uint8)
        self._source(blob.path).read_into(memoryview(out), blob.offset)
        return out

    def blob(self, tensor: TensorProto) -> Blob | None:
        """Where the tensor's bytes lie when they are not inside the parsed message (None: inline)."""
        if tensor.data_location == TensorProto.EXTERNAL:
            return self._external_blob(tensor)
        if not _has_inline_data(tensor) and numel(tensor) and tensor.name in self._blobs:
            return self._blobs[tensor.name]
        return None

    def _external_file(self, location: str) -> tuple[Path, bool, os.stat_result | None]:
        """(resolved path, whether it is outside the model's folder, its stat when inside) of an external
        data file, looked up once per location (a 7B export names one file from hundreds of tensors)."""
        found = self._files.get(location)
        if found is None:
            target = (self.folder / location).resolve()
            outside = os.path.isabs(location) or not target.is_relative_to(self.folder)
            found = self._files[location] = (target, outside, None if outside else target.stat())
        return found

    def _external_blob(self, tensor: TensorProto) -> Blob:
        info = {e.key: e.value for e in tensor.external_data}
        where = self.path or "the model"
        location = info.get("location", "")
        if not location:
            raise ModelError(f"Tensor '{tensor.name}' in {where} says its data is external but names no file.")
        try:
            target, outside, st = self._external_file(location)
        except FileNotFoundError:
            raise ModelError(
                f"External data file {_shown(location)} for tensor '{tensor.name}' was not found in {self.folder}. "
                "Copy it beside the model (ONNX models saved with external data are several files).") from None
        except (OSError, ValueError, RuntimeError) as exc:   # a name too long, a NUL byte, a symlink loop ...
            raise ModelError(f"Cannot use external data location {_shown(location)} of tensor '{tensor.name}' in "
                             f"{where}: {_reason(exc)}.") from None
        if outside:
            raise ModelError(
                f"Refusing external data location {_shown(location)} of tensor '{tensor.name}' in {where}: it points "
                f"outside the model's folder {self.folder}. Keep external data files beside the model.")
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"External data location {_shown(location)} of tensor '{tensor.name}' in {where} is not "
                             "a regular file.")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else st.st_size - offset
        except ValueError:
            raise ModelError(f"Tensor '{tensor.name}' in {where} has a malformed external data offset/length.") from None
        if offset < 0 or length < 0 or offset + length > st.st_size:
            raise ModelError(
                f"Tensor '{tensor.name}' wants bytes {offset}..{offset + length} of {_shown(location)}, which has "
                f"only {st.st_size} bytes: the external data file is truncated or belongs to another model.")
        return Blob(str(target), offset, length)

    def check(self, tensor: TensorProto) -> None:
        """Raise ModelError when the tensor's dims are invalid or its declared shape and its stored data
        disagree in size."""
        if len(tensor.dims) > MAX_RANK or any(d < 0 for d in tensor.dims):
            dims = list(tensor.dims)
            raise ModelError(f"Tensor '{tensor.name}' declares an invalid shape "
                             f"{dims if len(dims) <= 8 else f'of {len(dims)} dims'} (negative dims, or more than "
                             f"{MAX_RANK}): the file is corrupt or was written by a broken exporter.")
        bits = _BITS.get(tensor.data_type)
        if bits is None:
            return
        n = numel(tensor)
        blob = self.blob(tensor)
        if blob is not None or tensor.HasField("raw_data"):
            have = blob.length if blob is not None else len(tensor.raw_data)
            want = (n * bits + 7) // 8
            unit = "bytes"
        else:
            field = next((f for f in _VALUE_FIELDS if len(getattr(tensor, f))), None)
            have, want, unit = (len(getattr(tensor, field)) if field else 0), n, "values"
            if field == "int32_data" and bits < 8 and have == -(-n * bits // 8):
                have = n  # sub-byte types may be stored packed in int32_data
        if have != want:
            raise ModelError(
                f"Tensor '{tensor.name}' declares shape {list(tensor.dims)} of {type_name(tensor.data_type)} "
                f"({want} {unit}) but stores {have} {unit}: the file is corrupt or was written by a broken exporter.")

    def array(self, tensor: TensorProto) -> np.ndarray:
        """The tensor's values in their stored dtype (read from the file when they lie there; read-only)."""
        self.check(tensor)
        blob = self.blob(tensor)
        if blob is None:
            try:
                return onnx.numpy_helper.to_array(tensor)
            except Exception as exc:  # onnx raises assorted errors for odd tensors
                raise ModelError(f"Cannot decode tensor '{tensor.name}': {exc}") from None
        stored = self.stored(tensor)
        if stored is not None:
            return stored
        if tensor.data_type == _T.BFLOAT16:
            raw = self._read(blob).view(np.uint16)
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(tuple(tensor.dims))
        return self.array(self.inline(tensor))

    def stored(self, tensor: TensorProto, out: np.ndarray | None = None) -> np.ndarray | None:
        """The tensor's bytes as read from the file, in its stored dtype (a new read-only array); None when the
        bytes are inside the message or numpy has no such dtype (bfloat16, float8, 4-bit). `out`: a writable
        C-contiguous array of at least the tensor's size in bytes to read into instead (the result is then a
        view of it)."""
        blob = self.blob(tensor)
        native = _NATIVE.get(tensor.data_type)
        if blob is None or native is None:
            return None
        self.check(tensor)
        if out is None:
            arr = self._read(blob)
        else:
            arr = out.reshape(-1).view(np.uint8)[:blob.length]
            self._source(blob.path).read_into(memoryview(arr), blob.offset)
        arr = arr.view(native).reshape(tuple(tensor.dims))
        if out is None:
            arr.flags.writeable = False
        return arr

    def inline(self, tensor: TensorProto) -> TensorProto:
        """The tensor with its bytes inside the message (read from the file when they lie there)."""
        blob = self.blob(tensor)
        if blob is None:
            return tensor
        self.check(tensor)
        full = TensorProto()
        full.CopyFrom(tensor)
        del full.external_data[:]
        full.data_location = TensorProto.DEFAULT
        full.raw_data = self._read(blob).tobytes()
        return full

    def read_chunks(self, blob: Blob, chunk: int = 1 << 26):
        """The blob's bytes in chunks of at most `chunk` bytes (for copying large tensors without holding them)."""
        src = self._source(blob.path)
        for start in range(blob.offset, blob.offset + blob.length, chunk):
            out = bytearray(min(chunk, blob.offset + blob.length - start))
            src.read_into(memoryview(out), start)
            yield out

    def read(self, tensor: TensorProto, start: int = 0, length: int | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """Bytes start..start+length (default: to the end) of the tensor's stored data, as uint8 read from the
        file (into `out`'s memory when given: a writable C-contiguous array of at least that many bytes)."""
        blob = self.blob(tensor)
        if blob is None:
            raise ModelError(f"Tensor '{tensor.name}' has its data inside the model, not in a file.")
        length = blob.length - start if length is None else length
        if start < 0 or length < 0 or start + length > blob.length:
            raise ModelError(f"Bytes {start}..{start + length} are not in tensor '{tensor.name}' ({blob.length} bytes).")
        buf = np.empty(length, np.uint8) if out is None else out.reshape(-1).view(np.uint8)[:length]
        self._source(blob.path).read_into(memoryview(buf), blob.offset + start)
        return buf

    def release(self, tensor: TensorProto, start: int = 0, length: int | None = None) -> None:
        """Nothing to do: tensors are read into memory their callers own, nothing of the file is mapped (kept
        for callers written when weights were memory-mapped)."""

    # -- identity --------------------------------------------------------------------------------------
    def content_hash(self, block: bool = True) -> str | None:
        """"blake3:<hex>" of the model file (and of its external data files, in name order): of the files the
        weights were read from, even when another file has been moved to their path since.

        BLAKE3 rather than SHA-256: it identifies the model for profile caches, and on a 343 MB model it
        costs 0.14 s of CPU where SHA-256 costs 0.38 s, more than a third of a magnitude profile. Hashes of
        unchanged files are remembered in this process and on disk (identity.py), so a multi-GB model is
        hashed once. `block=False`: the hash if already known, else None, with the hashing started on a
        background thread (`hash_future` waits for it).
        """
        if self._hash is None:
            if self.path is None:
                self._hash = "blake3:" + blake3(self.model.SerializeToString()).hexdigest()
            elif self._moved():
                self._hash = self._snapshot_hash()
            elif block:
                self._hash = hash_files(self._hash_paths())
            else:
                future = self.hash_future()
                if not future.done() or future.exception() is not None:
                    return None
                self._hash = future.result()
        return self._hash

    def hash_future(self) -> Future:
        """A Future of `content_hash()`, done at once when the hash is known (see identity.py)."""
        if self._hash is not None or self.path is None:
            done: Future = Future()
            done.set_result(self.content_hash())
            return done
        return hash_files_async(self._hash_paths())

    def _hash_paths(self) -> list[Path]:
        return [self.path] + sorted(Path(p) for p in self.external_paths())

    def _moved(self) -> bool:
        """Whether a file read so far has another file at its path now; ModelChanged when one was rewritten
        in place (its hash by path would not be of what was read)."""
        with self._lock:
            sources = list(self._sources.values())
        moved = False
        for src in sources:
            src.check()
            moved |= src.replaced()
        return moved

    def _snapshot_hash(self) -> str:
        """content_hash of the open files themselves (not cached: only for files moved away since)."""
        sources = [self._source(self._main)] + [self._source(p) for p in sorted(self.external_paths())]
        digests = [self._digest(s) for s in sources]
        h = digests[0] if len(digests) == 1 else blake3(b"".join(d.digest() for d in digests))
        return "blake3:" + h.hexdigest()

    @staticmethod
    def _digest(src: _Source):
        h, buf = blake3(), bytearray(1 << 20)
        view = memoryview(buf)
        for start in range(0, src.size, len(buf)):
            n = min(len(buf), src.size - start)
            src.read_into(view[:n], start)
            h.update(view[:n])
        src.check()
        return h

    def external_paths(self) -> set[str]:
        """The external data files the model's tensors point into."""
        return {b.path for b in self._external_blobs()}

    def _external_blobs(self):
        for tensor, _ in stored_tensors(self.model.graph):
            if tensor.data_location == TensorProto.EXTERNAL:
                yield self._external_blob(tensor)

    def close(self) -> None:
        with self._lock:
            for src in self._sources.values():
                src.file.close()
            self._sources.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def constant_tensor(node: NodeProto) -> TensorProto | None:
    """The tensor a Constant node holds (named like its output), or None for other value kinds."""
    for attr in node.attribute:
        if attr.name == "value" and attr.type == AttributeProto.TENSOR:
            t = TensorProto()
            t.CopyFrom(attr.t)
            t.name = node.output[0] if node.output else ""
            return t
    return None


_BRANCH_ORDER = {"then_branch": 0, "else_branch": 1}


def subgraphs(node: NodeProto):
    """A node's subgraphs as (attribute name, graph); an If's then-branch before its else-branch
    (helper.make_node sorts attributes by name)."""
    for attr in sorted(node.attribute, key=lambda a: _BRANCH_ORDER.get(a.name, 2)):
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def stored_tensors(graph: onnx.GraphProto, copy: bool = True):
    """Every stored tensor of the graph and its subgraphs (initializers and Constant nodes), with a key
    unique per stored tensor: (graph number in walk order, name); subgraphs may reuse an outer name.
    A Constant's tensor is a copy named like the node's output, or with `copy=False` the node's own
    (mutable) tensor, whatever its name."""
    count = 0

    def walk(g: onnx.GraphProto):
        nonlocal count
        scope = count
        count += 1
        for t in g.initializer:
            yield t, (scope, t.name)
        for node in g.node:
            if node.op_type == "Constant" and node.output:
                if copy:
                    tensor = constant_tensor(node)
                else:
                    tensor = next((a.t for a in node.attribute if a.name == "value" and a.type == AttributeProto.TENSOR),
                                  None)
                if tensor is not None:
                    yield tensor, (scope, node.output[0])
            for _, sub in subgraphs(node):
                yield from walk(sub)

    yield from walk(graph)


def _has_inline_data(tensor: TensorProto) -> bool:
    return tensor.HasField("raw_data") or any(len(getattr(tensor, f)) for f in _VALUE_FIELDS)


def open_model(model) -> ModelFile:
    """A ModelFile for a path or an in-memory onnx.ModelProto; bad files raise one clear ModelError."""
    if isinstance(model, onnx.ModelProto):
        check_names(model)
        return ModelFile(model)
    if not isinstance(model, (str, os.PathLike)):
        raise ModelError(f"Expected a path to an .onnx file or an onnx.ModelProto, got {type(model).__name__}.")
    path = Path(model).expanduser()
    try:
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read model file {_shown(str(path))}: {_reason(exc)}.") from None
    if not exists:
        raise ModelError(f"Model file not found: {path}")
    if not is_file:
        raise ModelError(f"{path} is not a file; give the path of an .onnx model file.")
    f = _open_regular(str(path), "model file")
    try:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise ModelError(f"{path} is empty, not an ONNX model.")
        try:
            model_proto, blobs = _scan(_FileBytes(f.fileno(), size), size, str(path.resolve()))
        except (_Corrupt, DecodeError, UnicodeDecodeError, RecursionError):
            raise ModelError(_corrupt_message(path, f)) from None
        for blob in blobs.values():  # cheap: only offsets, but catches a file cut short inside a weight
            if blob.offset + blob.length > size:
                raise ModelError(_corrupt_message(path, f))
        check_names(model_proto, path)
    except BaseException:
        f.close()
        raise
    return ModelFile(model_proto, path, blobs, f)


def check_names(model: onnx.ModelProto, path: Path | None = None) -> None:
    """ModelError when a name in the graphs is not UTF-8 (protobuf then gives bytes, which nothing expects)."""
    def bad(where: str):
        raise ModelError(f"{path or 'The model'} is not a valid ONNX model: the name of {where} is not UTF-8 "
                         "text. Re-export it.")
    if not all(type(x) is str for x in (model.producer_name, model.domain, *(o.domain for o in model.opset_import))):
        bad("the model's producer, domain or an opset")
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for vi in (*g.input, *g.output, *g.value_info):
            if type(vi.name) is not str:
                bad(f"a graph input/output ({vi.name[:40]!r})")
        for t in g.initializer:
            if type(t.name) is not str or not all(type(e.value) is str for e in t.external_data):
                bad(f"an initializer ({t.name[:40]!r})")
        for i, node in enumerate(g.node):
            texts = (node.name, node.op_type, node.domain, *node.input, *node.output)
            if not all(type(x) is str for x in texts):
                bad(f"node {i} of graph {g.name!r} or one of its inputs/outputs")
            for a in node.attribute:
                if type(a.name) is not str:
                    bad(f"an attribute of node {i}")
                if a.type == AttributeProto.TENSOR and (type(a.t.name) is not str or not all(
                        type(e.value) is str for e in a.t.external_data)):
                    bad(f"the tensor of node {i}")
                if a.type == AttributeProto.GRAPH:
                    graphs.append(a.g)
                elif a.type == AttributeProto.GRAPHS:
                    graphs.extend(a.graphs)


def _corrupt_message(path: Path, f) -> str:
    head = os.pread(f.fileno(), 64, 0)
    if head[:1] in (b"{", b"<", b"#") or head.startswith((b"PK", b"\x89HDF", b"\x93NUMPY")):
        return f"{path} is not an ONNX model (it looks like another kind of file). Give an .onnx file."
    return (f"{path} is not a readable ONNX model: it is truncated or corrupt, or not ONNX at all. "
            "Re-export or re-download it.")


def light_model(mf: ModelFile) -> onnx.ModelProto:
    """The model without large weight data, for shape inference (which serializes the model it gets)."""
    if mf.path is not None:
        return mf.model  # its large raw_data already lies outside the parsed message
    light = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "domain", "model_version"):
        setattr(light, name, getattr(mf.model, name))
    light.opset_import.extend(mf.model.opset_import)
    src, dst = mf.model.graph, light.graph
    dst.name = src.name
    for part in ("node", "input", "output", "value_info"):
        getattr(dst, part).extend(getattr(src, part))
    for t in src.initializer:
        if t.data_type in (TensorProto.INT64, TensorProto.INT32) or numel(t) <= 256:
            dst.initializer.append(t)
        else:
            dst.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
    return light
