"""Per-model request limits, held against a request's header before its data is decoded or the model runs.

A request is refused with 413 when its JSON holds more values than the limits could need
(:meth:`Limits.json_values`), an input's batch is over ``max_batch``, its ids are over ``max_ids``, or the
outputs it asks for would take more than ``max_output_bytes`` (:func:`check_outputs`, from the shapes the
graph gives for these inputs; what the graph leaves open is checked after the run, by
:func:`check_results`, before anything is encoded). The limits bound the memory one request can take: see
the "Limits" section of ``docs/serve.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from embed_runtime import ConfigurationError, Runtime
from embed_runtime.errors import InferenceError
from embed_runtime.serve.codec import json_value_width
from embed_runtime.serve.protocol import InputSpec, PayloadTooLargeError

MAX_LIMIT = 2**40
"""Largest value a limit may take: numpy and onnxruntime cannot hold arrays much larger."""

JSON_ROOM = 65_536
"""JSON values a request may hold besides its ids and row lists: names, shapes, parameters, outputs."""


@dataclass(frozen=True)
class Limits:
    """What one request to a model may ask for.

    Attributes:
        max_batch: rows (axis 0) of each input.
        max_ids: elements of all inputs together; an empty input's other axes may not multiply to more
            either, so that a shape such as ``[0, 2**62]`` is refused too.
        max_output_bytes: the requested outputs' size in the response: raw bytes for binary outputs, the
            longest their JSON text could be for JSON outputs (:func:`~embed_runtime.serve.codec.json_value_width`
            bytes a value).

    Raises :class:`~embed_runtime.ConfigurationError` unless each is an integer from 1 to :data:`MAX_LIMIT`.
    """

    max_batch: int = 4096
    max_ids: int = 1 << 20
    max_output_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_ids", "max_output_bytes"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= MAX_LIMIT:
                raise ConfigurationError(f"Limits.{name} must be an integer from 1 to 2**40, got {value!r}")

    def json_values(self, inputs: int) -> int:
        """Most JSON values a request to a model with ``inputs`` inputs may hold: its ids, one list per row
        of each input, and :data:`JSON_ROOM`."""
        return self.max_ids + inputs * self.max_batch + JSON_ROOM


def check_inputs(model: str, inputs: Sequence[InputSpec], limits: Limits) -> None:
    """Refuse (:class:`~embed_runtime.serve.protocol.PayloadTooLargeError`) inputs over ``limits``."""
    total = 0
    for spec in inputs:
        where = f"input {spec.name!r} of shape {list(spec.shape)}"
        if spec.shape and spec.shape[0] > limits.max_batch:
            raise PayloadTooLargeError(
                f"{where}: a batch of {spec.shape[0]:,} rows is over model {model!r}'s limit of "
                f"{limits.max_batch:,} rows per request (--max-batch); send smaller batches"
            )
        count = math.prod(spec.shape)
        span = math.prod(d for d in spec.shape if d)
        if count == 0 and span > limits.max_ids:
            raise PayloadTooLargeError(
                f"{where}: the axes besides the empty one multiply to {span:,}, over model {model!r}'s "
                f"limit of {limits.max_ids:,} ids per request (--max-ids)"
            )
        total += count
    if total > limits.max_ids:
        raise PayloadTooLargeError(
            f"the inputs hold {total:,} ids, over model {model!r}'s limit of {limits.max_ids:,} ids per "
            "request (--max-ids); send fewer rows"
        )


def shape_stand_ins(inputs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """Arrays of the inputs' shapes that take no memory (for :meth:`Runtime.expected_shape`); the shapes
    must have passed :func:`check_inputs`."""
    return {s.name: np.broadcast_to(np.zeros((), s.dtype), s.shape) for s in inputs}


def _size(shape: Sequence[int | None], dtype: np.dtype, binary: bool) -> int:
    """Bytes of an output of this shape (unknown axes counted as 1) in the response."""
    count = math.prod(1 if d is None else d for d in shape)
    return count * (dtype.itemsize if binary else json_value_width(dtype))


def _check_size(
    model: str, sizes: list[tuple[str, Sequence[int | None], np.dtype, bool]], limits: Limits
) -> None:
    total = sum(_size(shape, dtype, binary) for _, shape, dtype, binary in sizes)
    if total <= limits.max_output_bytes:
        return
    parts = ", ".join(
        f"{name} {['?' if d is None else d for d in shape]} {'binary' if binary else 'JSON'}"
        for name, shape, _, binary in sizes
    )
    raise PayloadTooLargeError(
        f"the requested outputs ({parts}) would take {total:,} bytes, over model {model!r}'s limit of "
        f"{limits.max_output_bytes:,} bytes per response (--max-output-mb); send fewer rows, request fewer "
        "outputs, or request them as binary data (JSON is counted at its longest)"
    )


def check_outputs(
    model: str,
    runtime: Runtime,
    selected: Sequence[tuple[str, bool]],
    feeds: Mapping[str, np.ndarray],
    limits: Limits,
) -> None:
    """Refuse outputs ``(name, binary)`` whose response size, from the shapes the graph gives for ``feeds``
    (only their shapes are read), is over ``limits.max_output_bytes``; unknown axes count as 1 here."""
    dtypes = {o.name: o.dtype for o in runtime.outputs}
    _check_size(
        model,
        [(name, runtime.expected_shape(name, feeds), dtypes[name], b) for name, b in selected],
        limits,
    )


def check_results(
    model: str,
    runtime: Runtime,
    selected: Sequence[tuple[str, bool]],
    feeds: Mapping[str, np.ndarray],
    results: Mapping[str, np.ndarray],
    limits: Limits,
) -> None:
    """After the run: every output has the shape the graph gives for ``feeds`` (so never a batch other
    than the one sent: :class:`~embed_runtime.errors.InferenceError` otherwise), and the real sizes are
    within ``limits.max_output_bytes``."""
    for name, _ in selected:
        want, got = runtime.expected_shape(name, feeds), results[name].shape
        if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got)):
            shown = "(" + ", ".join("?" if w is None else str(w) for w in want) + ")"
            raise InferenceError(
                f"model {model!r} returned output {name!r} of shape {tuple(got)} where these inputs give "
                f"{shown}; not answering with a different shape"
            )
    _check_size(model, [(name, results[name].shape, results[name].dtype, b) for name, b in selected], limits)
