"""Named axes of the graph's inputs and outputs: ``batch``, ``sequence`` (``<input>_sequence`` with several
inputs), static lengths, and what shape inference or a probe run of the graph can tell about the others."""

from __future__ import annotations

import numpy as np
import onnx

from .convert import cpu_session


def sequence_dim(input_name: str, lengths: dict[str, int | None]) -> int | str:
    """The second axis of id input ``input_name``: its static length, else ``sequence`` when the model has
    one input and ``<input>_sequence`` when it has several (so that their lengths may differ)."""
    if lengths.get(input_name) is not None:
        return int(lengths[input_name])  # type: ignore[arg-type]
    return "sequence" if len(lengths) == 1 else f"{input_name}_sequence"


def set_dim(dim: onnx.TensorShapeProto.Dimension, value: int | str) -> None:
    """Make ``dim`` the size ``value`` (an int) or the axis name ``value`` (a str)."""
    dim.Clear()
    if isinstance(value, int):
        dim.dim_value = value
    else:
        dim.dim_param = value


def set_io_dims(model: onnx.ModelProto, lengths: dict[str, int | None]) -> None:
    """Name the axes: inputs ``(batch, sequence_dim)``; outputs' first axis ``batch``."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        set_dim(dims[0], "batch")
        set_dim(dims[1], sequence_dim(inp.name, lengths))
    inferred = _inferred_output_dims(model)
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        better = inferred.get(out.name)
        if better is not None and len(better) == len(dims):
            for dim, new in zip(dims, better):
                if dim.dim_param.startswith("unk__") and new is not None:
                    set_dim(dim, new)
        if dims:
            set_dim(dims[0], "batch")


def name_tracking_dims(model: onnx.ModelProto, lengths: dict[str, int | None]) -> None:
    """Name output axes that tf2onnx left as ``unk__N`` but that follow an input's sequence length.

    Shape inference cannot see through RNN loops, so this asks the graph itself: it runs twice with
    different, per-input distinct lengths (id 1 everywhere) and gives an unknown output axis the input's
    sequence axis name when its size equals that input's length in both runs.
    """
    dynamic = [name for name, length in lengths.items() if length is None]
    unknown = [
        o
        for o in model.graph.output
        if any(d.dim_param.startswith("unk__") for d in o.type.tensor_type.shape.dim)
    ]
    if not dynamic or not unknown:
        return
    session = cpu_session(model)
    names = [o.name for o in unknown]

    def probe(spread: int) -> list[tuple[dict[str, int], list[tuple[int, ...]]]]:
        runs = []
        for base in (3, 4):
            trial = {n: lengths[n] or base + spread * dynamic.index(n) for n in lengths}
            feeds = {n: np.ones((2, length), np.int64) for n, length in trial.items()}
            runs.append((trial, [r.shape for r in session.run(names, feeds)]))
        return runs

    try:
        runs = probe(spread=10)
    except Exception:  # inputs that must share a length (an Add of two lookups): probe them together
        runs = probe(spread=0)
    for i, out in enumerate(unknown):
        for axis, dim in enumerate(out.type.tensor_type.shape.dim):
            if not dim.dim_param.startswith("unk__"):
                continue
            match = [n for n in dynamic if all(shapes[i][axis] == trial[n] for trial, shapes in runs)]
            if len(match) == 1:
                set_dim(dim, str(sequence_dim(match[0], lengths)))


def _inferred_output_dims(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Output dims as ONNX shape inference derives them from the named input axes (tf2onnx leaves
    ``unk__N`` placeholders where TensorFlow did not know a dim)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for out in probe.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        probe = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # inference is a nicety here; the original dims stay
        return {}
    found: dict[str, list[int | str | None]] = {}
    for out in probe.graph.output:
        if out.type.tensor_type.HasField("shape"):
            found[out.name] = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in out.type.tensor_type.shape.dim
            ]
    return found


def placeholder_dims(model: onnx.ModelProto, tensor: str, name: str) -> list[int | str]:
    """Dims for an output ``name`` shaped like the intermediate ``tensor``: ``batch``, then placeholders
    ``unk__<name>_<axis>`` that :func:`set_io_dims` and :func:`name_tracking_dims` name where they can.
    The rank is what shape inference says (2, ``(batch, sequence)``, when it cannot tell)."""
    rank = 2
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a nicety here
        inferred = model
    for info in inferred.graph.value_info:
        if info.name == tensor and info.type.tensor_type.HasField("shape"):
            rank = len(info.type.tensor_type.shape.dim)
    dims: list[int | str] = ["batch"]
    return dims + [f"unk__{name}_{axis}" for axis in range(1, rank)]
