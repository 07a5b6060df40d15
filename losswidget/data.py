"""Data for data-driven profiles: checked against the model's inputs once, then cut into batches.

Accepted: a dict of arrays (input name -> array, first axis = samples), an iterable of such dicts
(batches), a path to an .npz file, or "random" (explicitly; shapes from the model, symbolic dims from
`random_dims` or 1). Labels: an array (first axis = samples), or the key of one in the dict / .npz.

Nothing is materialised before its size is known to fit (`memory_budget`): an .npz member is read from
its header first and only its first `samples` rows are decompressed (a few KB of zip can declare
gigabytes), and random data is sized from the model's declared shapes before it is drawn.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import DataError, first_line

_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
       onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
       onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: type
    shape: tuple            # ints, or str / None for symbolic dims


@dataclass
class Dataset:
    """Checked batches: `batches[i]` maps input name -> array; `labels[i]` matches it (or None)."""
    batches: list[dict[str, np.ndarray]]
    labels: list[np.ndarray] | None
    samples: int
    source: str                          # "arrays", "batches", a .npz path, or "random"
    random: bool = False


def available_memory() -> int:
    """Bytes this process can still allocate: the system's available memory (Linux: MemAvailable), less when
    an address-space limit (RLIMIT_AS) leaves less room."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 34                      # no way to ask (16 GiB)
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            avail = min(avail, soft - used)
    except (ImportError, OSError, StopIteration, ValueError, IndexError):
        pass
    return max(int(avail), 0)


def memory_budget() -> int:
    """What data and the dense outputs kept for it may take: half the available memory (the rest is for the
    model's runs and everything else)."""
    return available_memory() // 2


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """DataError when `nbytes` exceed the memory budget; `what` says what would take them, `fix` how to shrink it."""
    budget = memory_budget()
    if nbytes > budget:
        raise DataError(f"{what} would take {_gb(nbytes)}, more than the {_gb(budget)} this process can spare; {fix}.")


def _gb(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def model_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dims = tuple((d.dim_value if d.HasField("dim_value") else (d.dim_param or None)) for d in t.shape.dim)
        specs.append(InputSpec(vi.name, _NP.get(t.elem_type, np.float32), dims))
    return specs


def _check(name: str, arr, spec: InputSpec, what: str) -> np.ndarray:
    try:
        arr = np.asarray(arr)
    except Exception:
        raise DataError(f"{what}: input '{name}' is not an array.") from None
    if arr.dtype != spec.dtype:
        same_kind = np.can_cast(arr.dtype, spec.dtype, "same_kind") and arr.dtype.kind == np.dtype(spec.dtype).kind
        if not same_kind:
            raise DataError(f"{what}: input '{name}' has dtype {arr.dtype}, the model expects "
                            f"{np.dtype(spec.dtype).name}. Convert it, e.g. arr.astype(np.{np.dtype(spec.dtype).name}).")
        arr = arr.astype(spec.dtype)
    if spec.shape and arr.ndim != len(spec.shape):
        raise DataError(f"{what}: input '{name}' has shape {list(arr.shape)}, the model expects "
                        f"{_fmt(spec.shape)} (first axis = samples).")
    for axis, (have, want) in enumerate(zip(arr.shape, spec.shape)):
        if isinstance(want, int) and want > 0 and have != want and axis > 0:
            raise DataError(f"{what}: input '{name}' has shape {list(arr.shape)}, the model expects "
                            f"{_fmt(spec.shape)} (axis {axis} must be {want}).")
    if arr.shape and arr.shape[0] == 0:
        raise DataError(f"{what}: input '{name}' holds no samples.")
    return arr


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def _check_names(d: dict, specs: list[InputSpec], label_key: str | None, what: str) -> None:
    """DataError unless the keys of `d` (arrays, or stand-ins of their shape and dtype) are exactly the
    model's inputs (and the labels' key, when one is named)."""
    names, keys = {s.name for s in specs}, set(d)
    if label_key is not None and label_key not in keys:
        raise DataError(f"{what}: no labels '{label_key}' among {sorted(map(str, keys))}.")
    unknown = sorted(map(str, keys - names - ({label_key} if label_key else set())))
    if unknown:
        hint = ""
        looks = [k for k in label_candidates(d, specs) if k in unknown] if label_key is None else []
        if looks:
            hint = (f" If {looks[0]!r} holds the labels, pass labels={looks[0]!r} (in the widget: Labels "
                    f"{looks[0]!r}); otherwise leave it out of the data.")
        raise DataError(f"{what}: unknown input name(s) {unknown}; the model's inputs are {sorted(names)}.{hint}")
    missing = sorted(names - keys)
    if missing:
        raise DataError(f"{what}: missing input(s) {missing}; the model's inputs are {sorted(names)}.")


def _from_dict(d: dict, specs: list[InputSpec], label_key: str | None, what: str):
    _check_names(d, specs, label_key, what)
    labels = np.asarray(d[label_key]) if label_key is not None else None
    arrays = {s.name: _check(s.name, d[s.name], s, what) for s in specs}
    counts = {a.shape[0] for n, a in arrays.items() if n not in _scalars(specs)}
    if len(counts) > 1:
        raise DataError(f"{what}: inputs disagree on the number of samples: "
                        f"{ {k: v.shape[0] for k, v in arrays.items() if k not in _scalars(specs)} }.")
    return arrays, labels


def label_candidates(d: dict, specs: list[InputSpec]) -> list[str]:
    """Keys of `d` that are not model inputs but could be its labels: a numeric array with one entry per
    sample (the inputs' first axis). Only named in messages: guessing labels silently could pick a wrong one
    and turn a KL profile into a task-loss one without the user knowing."""
    names = {s.name for s in specs}
    counts = {np.shape(d[s.name])[0] for s in specs if s.name in d and s.shape != () and np.ndim(d[s.name]) > 0}
    if len(counts) != 1:
        return []
    n = counts.pop()
    found = []
    for key, value in d.items():
        if key in names or not hasattr(value, "dtype") or value.dtype.kind not in "biuf":
            continue
        if value.ndim >= 1 and value.shape[0] == n:
            found.append(key)
    return sorted(found, key=lambda k: (d[k].dtype.kind == "f", k))      # integer arrays (class ids) first


def _scalars(specs: list[InputSpec]) -> set[str]:
    """Rank-0 inputs (flags, thresholds): the same value goes with every batch."""
    return {s.name for s in specs if s.shape == ()}


def _fixed_batch(specs: list[InputSpec]) -> int | None:
    dims = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    return dims.pop() if len(dims) == 1 else None


def load_data(data, model: onnx.ModelProto, *, labels=None, samples: int | None = None,
              batch_size: int | None = None, random_dims: dict | None = None, seed: int = 0) -> Dataset:
    """Check `data` against the model's inputs and cut it into batches (see the module doc)."""
    specs = model_inputs(model)
    if not specs:
        raise DataError("The model has no inputs to feed.")
    fixed = _fixed_batch(specs)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if samples is not None and (not isinstance(samples, int) or samples < 1):
        raise DataError(f"samples must be a positive integer, got {samples!r}.")
    label_key = labels if isinstance(labels, str) else None
    label_arr = None if isinstance(labels, str) or labels is None else np.asarray(labels)
    random = isinstance(data, str) and data == "random"
    if random:
        n = samples or 4
        rng = np.random.default_rng(seed)
        dims = dict(random_dims or {})
        shapes = {s.name: ([n] if s.shape else []) + [d if isinstance(d, int) and d > 0 else int(dims.get(d, 1))
                                                       for d in s.shape[1:]] for s in specs}
        # drawn in float64 / int64, then cast: 8 bytes an element, and the cast copy
        need = sum(_count(shape) * (8 + np.dtype(s.dtype).itemsize) for s, shape in zip(specs, shapes.values()))
        check_fits(need, f"data='random' for inputs of shapes {list(shapes.values())[:3]}",
                   "give the model's symbolic dims smaller sizes with random_dims=, or fewer samples")
        arrays = {}
        for s in specs:
            kind = np.dtype(s.dtype).kind
            arrays[s.name] = (rng.standard_normal(shapes[s.name]).astype(s.dtype) if kind == "f"
                              else rng.integers(0, 2, shapes[s.name]).astype(s.dtype))
        source = "random"
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise DataError(f"Data file not found: {path}")
        d = read_npz(path, samples, lambda stand_ins: _check_names(stand_ins, specs, label_key, str(path)))
        arrays, found = _from_dict(d, specs, label_key, str(path))
        label_arr = found if found is not None else label_arr
        source = str(path)
    elif isinstance(data, dict):
        arrays, found = _from_dict(data, specs, label_key, "data")
        label_arr = found if found is not None else label_arr
        source = "arrays"
    elif data is None:
        raise DataError("One-shot profiles need data: a dict of arrays, batches, an .npz path, "
                        "or data=\"random\" (random data does not tell which layers matter; use it for a smoke test).")
    else:
        try:
            parts = [_from_dict(b, specs, label_key, f"batch {i}") for i, b in enumerate(data)]
        except TypeError:
            raise DataError(f"Unsupported data of type {type(data).__name__}: give a dict of arrays, an "
                            "iterable of such dicts, an .npz path or \"random\".") from None
        if not parts:
            raise DataError("The data holds no batches.")
        arrays = {s.name: (parts[0][0][s.name] if s.shape == () else np.concatenate([p[0][s.name] for p in parts]))
                  for s in specs}
        found = [p[1] for p in parts]
        if any(f is not None for f in found):
            label_arr = np.concatenate(found)
        source = "batches"
    scalars = {k: arrays.pop(k) for k in _scalars(specs) if k in arrays}
    if not arrays:
        raise DataError("The model's inputs are all scalars: there is no sample axis to run samples along.")
    total = next(iter(arrays.values())).shape[0]
    n = min(total, samples) if samples else total
    if label_arr is not None:
        if label_arr.ndim == 0 or label_arr.dtype.kind not in "iuf":
            raise DataError(f"Labels must be an array of class indices or float targets with one entry per sample, "
                            f"got {label_arr.dtype} of shape {list(label_arr.shape)}.")
        if len(label_arr) != total:
            raise DataError(f"Labels hold {len(label_arr)} samples but the data holds {total}.")
    size = fixed or batch_size or min(n, 32)
    if fixed and batch_size and batch_size != fixed:
        raise DataError(f"The model's inputs have a fixed batch dimension of {fixed}; batch_size {batch_size} "
                        "cannot be used.")
    if fixed and n % fixed:
        n -= n % fixed
        if n == 0:
            raise DataError(f"The model takes batches of exactly {fixed} samples; the data has only {total}.")
    batches = [{**{k: v[i:i + size] for k, v in arrays.items()}, **scalars} for i in range(0, n, size)]
    lab = [label_arr[i:i + size] for i in range(0, n, size)] if label_arr is not None else None
    return Dataset(batches, lab, n, source, random)


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def read_npz(path: Path, samples: int | None = None, check_names=None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, each cut to its first `samples` rows (all when None), decompressing no
    more than that; DataError when it is not a readable .npz of plain arrays, or what it expands to does not
    fit in memory. Arrays must agree on their number of samples (rank-0 arrays aside). `check_names(d)`,
    given stand-ins of the arrays (their shape and dtype, no data), may refuse the file before anything
    is decompressed."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({first_line(exc)}).") from None
    with zf:
        members = {(i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i for i in zf.infolist()}
        headers = {name: _member(zf, info, path, name, _npy_header) for name, info in members.items()}
        if check_names is not None:
            check_names({name: np.broadcast_to(np.zeros((), dtype), shape)
                         for name, (shape, _, dtype) in headers.items()})
        out, rows, total = {}, {}, 0
        for name, (shape, fortran, dtype) in headers.items():
            take = (shape[0] if samples is None or fortran else min(shape[0], samples)) if shape else 0
            part = _count((take, *shape[1:]) if shape and not fortran else shape) * dtype.itemsize
            total += part
            check_fits(total, f"the arrays of {path}", "pass samples= to read fewer of them")

            def read(f, shape=shape, fortran=fortran, dtype=dtype, take=take, part=part):
                _npy_header(f)
                arr = _read_exactly(f, part, dtype)
                if fortran:
                    return arr.reshape(shape[::-1]).T[:samples] if shape else arr.reshape(())
                return arr.reshape((take, *shape[1:]) if shape else ())
            out[name] = _member(zf, members[name], path, name, read)
            if shape:
                rows[name] = shape[0]
    if len(set(rows.values())) > 1:
        raise DataError(f"The arrays of {path} disagree on the number of samples: {rows}.")
    return out


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, name: str, fn):
    """fn(the member opened), with the errors of a damaged zip, zlib stream or .npy header as one DataError."""
    try:
        with zf.open(info) as f:
            return fn(f)
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, KeyError, TypeError, SyntaxError,
            NotImplementedError, RuntimeError, MemoryError) as exc:
        raise DataError(f"{path} is not a readable .npz file: array {name!r} is damaged ({first_line(exc)}).") from None


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        raise ValueError("it holds Python objects, which are not loaded (no pickles)")
    if any(int(d) < 0 for d in shape):
        raise ValueError(f"its header declares shape {shape}")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _read_exactly(f, nbytes: int, dtype: np.dtype) -> np.ndarray:
    out = np.empty(nbytes // max(dtype.itemsize, 1), dtype)
    view, done = memoryview(out).cast("B"), 0
    while done < nbytes:
        got = f.readinto(view[done:])
        if not got:
            raise ValueError(f"it ends after {done} of its {nbytes} bytes")
        done += got
    return out
