"""Apply a plan: write the model with each planned layer's smallest weights removed.

Rules (README "Plans"): for a layer planned at sparsity s, the round(s x n) lowest-ranked weights are set
to zero, or to the zero point for quantized storage. The plan's criterion sets the rank: "magnitude", |w|
of the dequantized values (the weights one-shot profiles prune); "activation", |w| x ||x_j|| with the
input norms the plan carries (the weights activation-aware profiles prune in their recovery runs). Equal
ranks go in index order. Every other byte of the model is unchanged. Weights that
lived in external data files stay external, written with the others to one data file beside the output
(`OUT.onnx.data`). Both files are written under temporary names and renamed into place, so a failed or
interrupted prune leaves no half-written model. The input is never modified.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import LossWidgetError, ModelError, SettingsError
from .files import temp_file
from .graph import read_graph
from .onnxfile import ModelFile, open_model, stored_tensors
from .plan import Plan, load_plan
from .weights import criterion_scores, pruned_copy

log = logging.getLogger(__name__)

CRITERIA = ("magnitude", "activation")

_VALUE_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def prune(model, plan, out) -> str:
    """Write `model` pruned by `plan` (a Plan or a plan JSON path) to `out`; returns the output path."""
    if not isinstance(plan, Plan):
        plan = load_plan(plan)
    if plan.criterion not in CRITERIA:
        raise SettingsError(f"This plan removes weights in '{plan.criterion}' order, which this losswidget does not "
                            f"know (it knows {', '.join(CRITERIA)}); upgrade losswidget to apply it.")
    out = Path(out).expanduser()
    if out.suffix != ".onnx":
        raise SettingsError(f"The pruned model's path should end in .onnx, got {out}.")
    with open_model(model) as mf:
        sources = {mf.path.resolve()} if mf.path else set()
        sources |= {Path(p).resolve() for p in mf.external_paths()}
        data_name = out.name + ".data"
        if out.resolve() in sources or (out.parent / data_name).resolve() in sources:
            raise SettingsError(f"Refusing to write the pruned model over its source ({out}); choose another path.")
        if plan.model_hash and plan.model_hash != mf.content_hash():
            log.warning("the plan was made for model %s, not %s; its layers match by name and size", plan.model_hash,
                        mf.content_hash())
        new = _pruned_tensors(mf, plan)
        full = _full_model(mf)
        _write(mf, full, new, out, data_name)
    return str(out)


def _pruned_tensors(mf: ModelFile, plan: Plan) -> dict[tuple[int, str], bytes]:
    """Stored-tensor key -> the pruned tensor's bytes in its stored type."""
    layers = read_graph(mf).layers
    by_weight: dict[str, list] = {}
    for layer in layers:
        by_weight.setdefault(layer.weight, []).append(layer)
    new = {}
    for p in plan.layers:
        if p.excluded or p.pruned == 0:
            continue
        found = by_weight.get(p.weight, [])
        layer = next((l for l in found if l.index == p.index), found[0] if len(found) == 1 else None)
        if layer is None or layer.params != p.params:
            raise ModelError(f"The plan's layer {p.name!r} (weight '{p.weight}', {p.params} params) is not in this "
                             "model: the plan was made for another model.")
        if plan.criterion == "activation":
            if p.input_norms is None:
                raise SettingsError(f"The plan's layer {p.name!r} is pruned in activation order but carries no input "
                                    "norms; make the plan again from its activation profile.")
            arr = pruned_copy(mf, layer.ref, p.pruned, scores=criterion_scores(mf, layer.ref, p.input_norms))
        else:
            arr = pruned_copy(mf, layer.ref, p.pruned)
        new[layer.ref.key] = _raw(arr, layer.ref.tensor)
        mf.release(layer.ref.tensor)
    return new


def _raw(arr: np.ndarray, tensor: TensorProto) -> bytes:
    """The array's bytes in the tensor's stored type (4-bit and float8 types packed as ONNX stores them)."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        return numpy_helper.from_array(np.asarray(arr).astype(dtype, copy=False)).raw_data
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"Cannot write tensor '{tensor.name}' back in its stored type: {exc}") from None


def _full_model(mf: ModelFile) -> onnx.ModelProto:
    """The whole model with inline weights (external data left on disk): what gets edited and written."""
    if mf.path is None:
        full = onnx.ModelProto()
        full.CopyFrom(mf.model)
        return full
    try:
        return onnx.load(str(mf.path), load_external_data=False)
    except Exception as exc:  # protobuf raises assorted errors; open_model already read this file
        raise ModelError(f"Cannot read {mf.path} whole to write a pruned copy: {exc}") from None


def _write(mf: ModelFile, full: onnx.ModelProto, new: dict, out: Path, data_name: str) -> None:
    if not out.parent.is_dir():
        raise SettingsError(f"Cannot write the pruned model to {out}: the folder {out.parent} does not exist.")
    tmp_model = tmp_data = None
    try:
        data_fd, tmp_data = temp_file(out.parent / data_name)
        wrote_data = False
        with os.fdopen(data_fd, "wb") as data:
            for tensor, key in stored_tensors(full.graph, copy=False):
                external = tensor.data_location == TensorProto.EXTERNAL
                if key not in new and not external:
                    continue
                if not external:
                    for f in _VALUE_FIELDS:
                        tensor.ClearField(f)
                    tensor.raw_data = new[key]
                    continue
                offset = data.tell()
                if key in new:
                    data.write(new[key])
                else:
                    for chunk in mf.read_chunks(mf.blob(tensor)):
                        data.write(chunk)
                del tensor.external_data[:]
                for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(data.tell() - offset))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
                wrote_data = True
            data.flush()
            os.fsync(data.fileno())
        model_fd, tmp_model = temp_file(out)
        with os.fdopen(model_fd, "wb") as f:
            f.write(full.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        if wrote_data:
            os.replace(tmp_data, out.parent / data_name)
        os.replace(tmp_model, out)
    except (OSError, ValueError) as exc:
        raise LossWidgetError(f"Cannot write the pruned model to {out}: {exc}") from None
    finally:
        for tmp in (tmp_model, tmp_data):
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
