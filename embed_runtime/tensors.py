"""What the runtime knows about one graph input or output (:class:`TensorInfo`), and onnxruntime's type
strings as numpy dtypes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

ORT_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}
"""onnxruntime's type strings (``NodeArg.type``) to numpy dtypes; anything else maps to ``object``."""


def numpy_dtype(ort_type: str) -> np.dtype[Any]:
    """The numpy dtype of an onnxruntime type string such as ``tensor(int64)`` (``object`` if unknown)."""
    return ORT_TO_NUMPY.get(ort_type, np.dtype(object))


class NodeArg(Protocol):
    """The part of ``onnxruntime.NodeArg`` (``session.get_inputs()`` items) that :func:`tensor_info` reads."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def shape(self) -> Any: ...  # a list of ints, symbolic names (str) and None; not a list for non-tensors


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output.

    Attributes:
        name: the graph name.
        dtype: numpy dtype of the tensor (``object`` for non-tensor types).
        shape: one entry per axis: an int when static, ``None`` when dynamic.
        input_dim: for id inputs of an exported model, valid ids are ``0 <= id < input_dim``.
        input_length: the static sequence length (axis 1) of an input, when the model fixes it.
        dim_names: the graph's symbolic name of each dynamic axis (``None`` for static or unnamed axes).
        padding_id: for id inputs that only ``mask_zero`` Embeddings read, the id that pads ragged rows
            (the mask output marks those positions); ``None`` where id 0 is a real token, and then rows
            must all have the same (fixed) length.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]
    input_dim: int | None = None
    input_length: int | None = None
    dim_names: tuple[str | None, ...] = ()
    padding_id: int | None = None


def tensor_info(
    arg: NodeArg, input_dims: Mapping[str, int] | None = None, padding_ids: Mapping[str, int] | None = None
) -> TensorInfo:
    """The :class:`TensorInfo` of an onnxruntime ``NodeArg``. ``input_dims`` is given for graph inputs
    (then ``input_length`` is read from a rank-2 shape); both maps come from the model's metadata."""
    raw = list(arg.shape) if isinstance(arg.shape, (list, tuple)) else []
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in raw)
    names = tuple(d if isinstance(d, str) and d else None for d in raw)
    length = shape[1] if input_dims is not None and len(shape) == 2 else None
    return TensorInfo(
        name=arg.name,
        dtype=numpy_dtype(arg.type),
        shape=shape,
        input_dim=None if input_dims is None else input_dims.get(arg.name),
        input_length=length,
        dim_names=names,
        padding_id=None if padding_ids is None else padding_ids.get(arg.name),
    )


def expected_shape(
    output: TensorInfo, inputs: Sequence[TensorInfo], feeds: Mapping[str, np.ndarray]
) -> tuple[int | None, ...]:
    """Shape of ``output`` for these feeds of ``inputs``: static dims, and dynamic dims whose symbolic
    name is shared with an input axis; ``None`` where the graph does not say."""
    sizes: dict[str, int] = {}
    for graph_input in inputs:
        if graph_input.name in feeds:
            for dim_name, size in zip(graph_input.dim_names, feeds[graph_input.name].shape):
                if dim_name is not None:
                    sizes[dim_name] = size
    return tuple(
        static if static is not None else sizes.get(dim_name or "")
        for static, dim_name in zip(output.shape, output.dim_names or (None,) * len(output.shape))
    )


def batch_axes(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> list[tuple[str, str]]:
    """``(output, input)`` pairs whose first axes share one symbolic name in the graph (``batch``...):
    those outputs must have as many rows as that input."""
    first = {i.dim_names[0]: i.name for i in inputs if i.dim_names and i.dim_names[0] is not None}
    return [
        (o.name, first[o.dim_names[0]]) for o in outputs if o.dim_names and o.dim_names[0] in first
    ]
