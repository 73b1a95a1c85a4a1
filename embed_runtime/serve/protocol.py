"""Codec for the Open Inference Protocol (KServe V2) with Triton's binary tensor data extension.

A request body is a JSON object, optionally followed by raw tensor bytes: the ``Inference-Header-Content-Length``
header then gives the JSON's length, and each binary input carries ``parameters.binary_data_size``; the raw
blocks follow the JSON in input order. Outputs go back the same way when asked with ``binary_data`` (per
output) or ``binary_data_output`` (per request). Tensors are little-endian and row-major; ``BOOL`` is one
byte per element.

Everything here is pure (bytes in, arrays out and back), so it can run in a worker thread.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
"""V2 datatypes this server reads and writes (``BYTES`` and ``BF16`` are not among them)."""

_NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items()}

# numpy kinds a JSON array may decode to for each kind of target dtype: JSON integers for integer
# tensors, JSON numbers for float tensors, JSON true/false for BOOL.
_ALLOWED_JSON_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


class ProtocolError(Exception):
    """A request that does not follow the protocol; ``status`` is the HTTP status to answer with."""

    status = 400


class PayloadTooLargeError(ProtocolError):
    """A request body over the server's size limit."""

    status = 413


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype name of a numpy dtype; raises ``ValueError`` for one the protocol cannot carry."""
    try:
        return _NUMPY_TO_V2[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype this server supports") from None


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of a request's ``outputs``: the output name and whether it goes back as raw bytes."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request.

    Attributes:
        id: the request's ``id``, echoed in the response, or ``None``.
        inputs: input name to array, in request order.
        outputs: the requested outputs, or ``None`` for all of the model's outputs.
        binary_output: the request's ``binary_data_output`` parameter, the default for outputs sent back.
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, found {type(value).__name__}")
    return value


def _parse_bool_parameter(params: dict[str, Any], key: str, what: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise ProtocolError(f"{what}: parameter {key!r} must be true or false, found {value!r}")
    return value


def _parse_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(
            f"input {name!r}: 'shape' must be a list of non-negative integers, found {shape!r}"
        )
    return tuple(shape)


def _numpy_dtype(name: str, datatype: Any) -> np.dtype:
    try:
        return V2_TO_NUMPY[datatype]
    except (KeyError, TypeError):
        known = ", ".join(V2_TO_NUMPY)
        raise ProtocolError(
            f"input {name!r}: unsupported datatype {datatype!r}; supported: {known}"
        ) from None


def _decode_json_data(name: str, dtype: np.dtype, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A tensor from a JSON ``data`` array (flat or nested, row-major), checked against dtype and shape."""
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        arr = np.array(data)
    except (ValueError, OverflowError):
        raise ProtocolError(f"input {name!r}: 'data' is a ragged nested list") from None
    if arr.size != count:
        raise ProtocolError(
            f"input {name!r}: shape {list(shape)} holds {count} elements but 'data' has {arr.size}"
        )
    if count == 0:
        return np.zeros(shape, dtype)
    if arr.dtype.kind not in _ALLOWED_JSON_KINDS[dtype.kind]:
        raise ProtocolError(
            f"input {name!r}: 'data' does not match datatype {v2_datatype(dtype)} (found {_describe(arr)})"
        )
    if dtype.kind in "iu" and not np.can_cast(arr.dtype, dtype):
        info = np.iinfo(dtype)
        low, high = int(arr.min()), int(arr.max())
        if low < info.min or high > info.max:
            raise ProtocolError(
                f"input {name!r}: value {low if low < info.min else high} does not fit {v2_datatype(dtype)}"
            )
    return arr.astype(dtype, copy=False).reshape(shape)


def _describe(arr: np.ndarray) -> str:
    kinds = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}
    return kinds.get(arr.dtype.kind, "mixed, non-numeric or too large values")


def _decode_binary_data(
    name: str, dtype: np.dtype, shape: tuple[int, ...], raw: memoryview, size: int
) -> np.ndarray:
    """A tensor from ``size`` raw little-endian bytes, which must be exactly what ``shape`` needs."""
    count = math.prod(shape)
    if size != count * dtype.itemsize:
        raise ProtocolError(
            f"input {name!r}: binary_data_size is {size} bytes but shape {list(shape)} of "
            f"{v2_datatype(dtype)} needs {count * dtype.itemsize}"
        )
    if dtype.kind == "b":
        return (np.frombuffer(raw, dtype=np.uint8, count=count) != 0).reshape(shape)
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count).reshape(shape)
    if not arr.flags.aligned or not arr.dtype.isnative:
        arr = arr.astype(dtype)
    return arr


def _parse_outputs(value: Any) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError(f"'outputs' must be a list, found {type(value).__name__}")
    outputs = []
    for entry in value:
        entry = _dict(entry, "each entry of 'outputs'")
        name = entry.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"each entry of 'outputs' needs a string 'name', found {name!r}")
        params = _dict(entry.get("parameters", {}), f"output {name!r}: 'parameters'")
        if "classification" in params:
            raise ProtocolError(f"output {name!r}: the classification extension is not supported")
        binary = _parse_bool_parameter(params, "binary_data", f"output {name!r}")
        outputs.append(RequestedOutput(name, binary))
    return tuple(outputs)


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode an infer request body; ``header_length`` is the ``Inference-Header-Content-Length`` header.

    Raises :class:`ProtocolError` naming what is wrong.
    """
    if header_length is None:
        header_length = len(body)
    elif not 0 <= header_length <= len(body):
        raise ProtocolError(
            f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
        )
    view = memoryview(body)
    try:
        request = json.loads(view[:header_length].tobytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    request = _dict(request, "the request")
    params = _dict(request.get("parameters", {}), "request 'parameters'")
    binary_output = bool(_parse_bool_parameter(params, "binary_data_output", "request"))
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"'id' must be a string, found {request_id!r}")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")

    inputs: dict[str, np.ndarray] = {}
    offset = header_length
    for entry in raw_inputs:
        entry = _dict(entry, "each entry of 'inputs'")
        name = entry.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"each entry of 'inputs' needs a string 'name', found {name!r}")
        if name in inputs:
            raise ProtocolError(f"input {name!r} appears twice")
        shape = _parse_shape(name, entry.get("shape"))
        dtype = _numpy_dtype(name, entry.get("datatype"))
        in_params = _dict(entry.get("parameters", {}), f"input {name!r}: 'parameters'")
        size = in_params.get("binary_data_size")
        if size is None:
            if "data" not in entry:
                raise ProtocolError(f"input {name!r} has neither 'data' nor a 'binary_data_size' parameter")
            inputs[name] = _decode_json_data(name, dtype, shape, entry["data"])
            continue
        if "data" in entry:
            raise ProtocolError(f"input {name!r} has both 'data' and a 'binary_data_size' parameter")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(body):
            raise ProtocolError(
                f"input {name!r}: binary_data_size is {size} bytes but only {len(body) - offset} "
                "bytes of binary data are left in the body"
            )
        inputs[name] = _decode_binary_data(name, dtype, shape, view[offset : offset + size], size)
        offset += size
    if offset != len(body):
        raise ProtocolError(
            f"the body has {len(body) - offset} bytes after the JSON header that no input's "
            "binary_data_size accounts for"
        )
    return InferRequest(request_id, inputs, _parse_outputs(request.get("outputs")), binary_output)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, int | None]:
    """Encode ``(name, array, binary)`` outputs as a V2 response body.

    Returns the body and, when any output is binary, the JSON header's length for the
    ``Inference-Header-Content-Length`` response header (else ``None``).
    """
    entries = []
    blobs = []
    for name, arr, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.ravel().tolist()
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = entries
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
