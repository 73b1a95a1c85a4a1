"""What the runtime knows about one graph input or output (:class:`TensorInfo`), onnxruntime's type
strings as numpy dtypes, a value any input takes (:func:`stand_in`), and the checks and shapes of outputs:
the outputs a call selects (:func:`select_outputs`), the shape these feeds give (:func:`expected_shape`,
:func:`empty_output`), the ``out=`` arrays (:func:`check_out`) and the rows onnxruntime returned
(:func:`check_batch_rows`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .errors import InferenceError, InputTypeError, InvalidInputError

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


def stand_in(info: TensorInfo, rows: int, length: int) -> np.ndarray:
    """A value of input ``info`` that any graph takes: zeros (empty strings for a string input), with
    ``rows`` on an open batch axis (axis 0), ``length`` on its other open axes and the graph's size on
    fixed ones, whatever the input's rank."""
    shape = [(rows if axis == 0 else length) if d is None else d for axis, d in enumerate(info.shape)]
    return np.full(shape, "" if info.dtype == object else 0, info.dtype)


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


def empty_output(
    output: TensorInfo, inputs: Sequence[TensorInfo], feeds: Mapping[str, np.ndarray]
) -> np.ndarray:
    """An empty ``output`` for an empty batch of ``feeds`` that onnxruntime refused to run: no rows, the
    other axes as :func:`expected_shape` gives them (0 where the graph does not say)."""
    shape = [0 if d is None else d for d in expected_shape(output, inputs, feeds)]
    if shape:
        shape[0] = 0
    return np.empty(tuple(shape), dtype=output.dtype)


def batch_axes(inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo]) -> list[tuple[str, str]]:
    """``(output, input)`` pairs whose first axes share one symbolic name in the graph (``batch``...):
    those outputs must have as many rows as that input."""
    first = {i.dim_names[0]: i.name for i in inputs if i.dim_names and i.dim_names[0] is not None}
    return [(o.name, first[o.dim_names[0]]) for o in outputs if o.dim_names and o.dim_names[0] in first]


def check_batch_rows(
    result: Mapping[str, np.ndarray],
    feeds: Mapping[str, np.ndarray],
    axes: Sequence[tuple[str, str]],
    model: str,
) -> None:
    """Raise :class:`InferenceError` when an output of ``result`` has another number of rows than the input
    whose batch axis it shares (``axes``: :func:`batch_axes`)."""
    for output, graph_input in axes:
        got, sent = result.get(output), feeds[graph_input]
        if got is not None and got.shape[:1] != sent.shape[:1]:
            raise InferenceError(
                f"onnxruntime returned {got.shape[0] if got.ndim else 'no'} rows of {output!r} for "
                f"{sent.shape[0]} rows of {graph_input!r} in {model} (shape {got.shape}); refusing a result "
                "with a different batch"
            )


def select_outputs(outputs: Sequence[str] | str, names: Sequence[str]) -> tuple[str, ...]:
    """The requested ``outputs`` (one name or several) of a model whose outputs are ``names``; raises
    :class:`InvalidInputError` for an unknown name or an empty selection."""
    chosen = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    unknown = [n for n in chosen if n not in names]
    if unknown or not chosen:
        raise InvalidInputError(
            f"unknown output(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"the model's outputs are {', '.join(names)}"
        )
    return chosen


def check_out(
    out: np.ndarray | Mapping[str, np.ndarray],
    names: tuple[str, ...],
    feeds: Mapping[str, np.ndarray],
    inputs: Sequence[TensorInfo],
    outputs: Mapping[str, TensorInfo],
) -> dict[str, np.ndarray]:
    """``out=`` as ``{output name: array}``, checked against the requested outputs ``names`` that these
    feeds of ``inputs`` produce: names, dtypes, contiguity, and every shape the graph states."""
    if isinstance(out, np.ndarray):
        if len(names) != 1:
            raise InvalidInputError(
                f"out= is a single array but {len(names)} outputs are requested ({', '.join(names)}); "
                "pass a dict {output name: array} or outputs=[name]"
            )
        out = {names[0]: out}
    elif not isinstance(out, Mapping):
        raise InputTypeError(f"out= must be a numpy array or a dict of them, not {type(out).__name__}")
    unknown = [n for n in out if n not in names]
    if unknown:
        raise InvalidInputError(
            f"out= names {', '.join(map(repr, unknown))}, which is not among the requested outputs "
            f"{', '.join(names)}"
        )
    for name, arr in out.items():
        dtype = outputs[name].dtype
        if not isinstance(arr, np.ndarray):
            raise InputTypeError(f"out[{name!r}] must be a numpy array, not {type(arr).__name__}")
        if arr.dtype != dtype:
            raise InputTypeError(f"out[{name!r}] has dtype {arr.dtype}; output {name!r} is {dtype}")
        if not (arr.flags.c_contiguous and arr.flags.writeable):
            raise InvalidInputError(f"out[{name!r}] must be a writeable C-contiguous array")
        want = expected_shape(outputs[name], inputs, feeds)
        if arr.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, arr.shape)):
            shown = "(" + ", ".join("?" if w is None else str(w) for w in want) + ")"
            raise InvalidInputError(f"out[{name!r}] has shape {arr.shape}; these inputs give {shown}")
    return dict(out)
