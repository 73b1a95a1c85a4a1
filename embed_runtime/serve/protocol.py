"""The Open Inference Protocol (KServe V2) request header, with Triton's binary tensor data extension.

A request body is a JSON object, optionally followed by raw tensor bytes: the ``Inference-Header-Content-Length``
header then gives the JSON's length, and each binary input carries ``parameters.binary_data_size``; the raw
blocks follow the JSON in input order. Outputs go back the same way when asked with ``binary_data`` (per
output) or ``binary_data_output`` (per request). Tensors are little-endian and row-major; ``BOOL`` is one
byte per element. ``BYTES`` (the texts of a text model's string input) is JSON strings, or in binary each
element as a 4-byte little-endian length followed by that many bytes (Triton's encoding).

:func:`parse_infer_request` reads the JSON and checks its structure, shapes and datatypes but decodes no
tensor data, so that the server can hold a request against its limits before any real work;
:mod:`~embed_runtime.serve.codec` then decodes the data and encodes the response. The JSON is strict
(RFC 8259): ``NaN`` and ``Infinity`` are refused, and so are nesting and integer literals too large to
read. Everything here is pure (bytes in, objects out), so it can run in a worker thread.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

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
"""V2 datatypes of numbers this server reads and writes (``BF16`` is not among them; ``BYTES``: below)."""

BYTES = "BYTES"
"""The V2 datatype of texts, read (never written) as a numpy ``object`` array of ``str`` or ``bytes``."""

TEXT_DTYPE = np.dtype(object)

BYTES_PREFIX = 4
"""Bytes of the little-endian length before each element of binary ``BYTES`` data."""

_NUMPY_TO_V2 = {dtype: name for name, dtype in V2_TO_NUMPY.items()} | {TEXT_DTYPE: BYTES}

MAX_RANK = 32
"""Most axes a tensor may have (numpy's own limit is 64; an id input has 2)."""

MAX_AXIS = 2**63 - 1
"""Longest axis the protocol can state (shapes are int64 in V2)."""

MAX_NAME_LENGTH = 1024
"""Longest request ``id`` (echoed in the response) and input or output name (quoted in errors)."""


class ProtocolError(Exception):
    """A request that does not follow the protocol; ``status`` is the HTTP status to answer with."""

    status = 400


class PayloadTooLargeError(ProtocolError):
    """A request over one of the server's size limits."""

    status = 413


class UnrepresentableError(ProtocolError):
    """A result the requested encoding cannot carry (non-finite floats in JSON)."""

    status = 422


def v2_datatype(dtype: np.dtype) -> str:
    """The V2 datatype name of a numpy dtype; raises ``ValueError`` for one the protocol cannot carry."""
    try:
        return _NUMPY_TO_V2[np.dtype(dtype).newbyteorder("=")]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype this server supports") from None


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of a request's ``outputs``: the output name and whether it goes back as raw bytes
    (``None``: the entry does not say, the request's ``binary_data_output`` applies)."""

    name: str
    binary: bool | None


@dataclass(frozen=True)
class InputSpec:
    """One entry of a request's ``inputs``, checked but not decoded.

    Attributes:
        name: the input name.
        dtype: the numpy dtype of its V2 datatype.
        shape: its shape.
        data: the JSON ``data`` value, or ``None`` for binary data.
        binary: where its raw bytes lie in the body (``None`` for JSON data); their size matches the shape.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    data: Any
    binary: slice | None


@dataclass(frozen=True)
class InferRequest:
    """An inference request's header.

    Attributes:
        id: the request's ``id``, echoed in the response, or ``None``.
        inputs: the inputs, in request order (names are unique).
        outputs: the requested outputs (names are unique), or ``None`` for all of the model's outputs.
        binary_output: the request's ``binary_data_output`` parameter, the default for outputs sent back.
    """

    id: str | None
    inputs: tuple[InputSpec, ...]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, found {type(value).__name__}")
    return value


def _parse_bool_parameter(params: dict[str, Any], key: str, what: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise ProtocolError(f"{what}: parameter {key!r} must be true or false, found {short_text(value)}")
    return value


def parse_shape(name: str, shape: Any) -> tuple[int, ...]:
    """Input ``name``'s ``shape``, checked: at most :data:`MAX_RANK` axes, each in ``[0, 2**63)``."""
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= MAX_AXIS for d in shape):
        raise ProtocolError(
            f"input {name!r}: 'shape' must be a list of non-negative integers below 2**63, found "
            + short_text(shape)
        )
    if len(shape) > MAX_RANK:
        raise ProtocolError(f"input {name!r}: 'shape' has {len(shape)} axes; at most {MAX_RANK} are allowed")
    return tuple(shape)


def short_text(value: Any, as_json: bool = False, limit: int = 60) -> str:
    """``value`` as JSON or ``repr``, cut to ``limit`` characters, for an error message."""
    try:
        text = json.dumps(value) if as_json else repr(value)
    except RecursionError:  # nested almost as deep as the parser allows
        return f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= limit else text[:limit] + "..."


def _name(value: Any, what: str) -> str:
    """A string of at most :data:`MAX_NAME_LENGTH` characters."""
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string, found {short_text(value)}")
    if len(value) > MAX_NAME_LENGTH:
        raise ProtocolError(f"{what} has {len(value):,} characters; at most {MAX_NAME_LENGTH} are allowed")
    return value


def _numpy_dtype(name: str, datatype: Any) -> np.dtype:
    if datatype == BYTES:
        return TEXT_DTYPE
    try:
        return V2_TO_NUMPY[datatype]
    except (KeyError, TypeError):
        known = ", ".join(V2_TO_NUMPY) + f", {BYTES} (texts)"
        raise ProtocolError(
            f"input {name!r}: unsupported datatype {short_text(datatype)}; supported: {known}"
        ) from None


def _parse_outputs(value: Any) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError(f"'outputs' must be a list, found {type(value).__name__}")
    outputs: dict[str, RequestedOutput] = {}
    for entry in value:
        entry = _dict(entry, "each entry of 'outputs'")
        name = _name(entry.get("name"), "the 'name' of each entry of 'outputs'")
        if name in outputs:
            raise ProtocolError(f"output {name!r} is requested twice in 'outputs'; name each output once")
        params = _dict(entry.get("parameters", {}), f"output {name!r}: 'parameters'")
        if "classification" in params:
            raise ProtocolError(f"output {name!r}: the classification extension is not supported")
        outputs[name] = RequestedOutput(
            name, _parse_bool_parameter(params, "binary_data", f"output {name!r}")
        )
    return tuple(outputs.values())


def _refuse_constant(name: str) -> NoReturn:
    raise ProtocolError(f"request body is not valid JSON: {name} is not a JSON number; send finite numbers")


def count_json_values(body: bytes | bytearray, end: int) -> int:
    """An upper bound of the values (array items, object keys and values) in ``body[:end]``: each one
    but the outermost follows a ``[``, ``{``, ``,`` or ``:`` (characters inside strings count too)."""
    return 1 + sum(body.count(c, 0, end) for c in (b"[", b"{", b",", b":"))


def _loads(text: bytes | bytearray) -> Any:
    """Strict JSON: no ``NaN``/``Infinity``; nesting and integer literals too large to read give 400."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"request body is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(
            "request JSON is nested too deeply to read (a V2 request needs a few levels plus one per "
            "tensor axis)"
        ) from None
    except ValueError:  # what is left: an integer literal over Python's digit limit
        raise ProtocolError(
            f"request JSON has an integer literal longer than {sys.get_int_max_str_digits()} digits; "
            "tensor values must fit their datatype"
        ) from None


def _parse_input(entry: Any, offset: int, body_length: int, field: str) -> InputSpec:
    entry = _dict(entry, "each entry of 'inputs'")
    name = _name(entry.get("name"), "the 'name' of each entry of 'inputs'")
    shape = parse_shape(name, entry.get("shape"))
    dtype = _numpy_dtype(name, entry.get("datatype"))
    size = _dict(entry.get("parameters", {}), f"input {name!r}: 'parameters'").get("binary_data_size")
    if size is None:
        if "data" not in entry:
            raise ProtocolError(f"input {name!r} has neither 'data' nor a 'binary_data_size' parameter")
        return InputSpec(name, dtype, shape, entry["data"], None)
    if "data" in entry:
        raise ProtocolError(f"input {name!r} has both 'data' and a 'binary_data_size' parameter")
    if type(size) is not int or size < 0:
        raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
    if offset + size > body_length:
        raise ProtocolError(
            f"input {name!r}: binary_data_size is {size} bytes but only {body_length - offset} "
            "bytes of binary data are left in the body"
        )
    count = math.prod(shape)
    if dtype == TEXT_DTYPE:  # the length prefixes are read when the data is decoded
        if size < count * BYTES_PREFIX:
            raise ProtocolError(
                f"input {name!r}: {field} is {size} bytes but shape {list(shape)} of {BYTES} needs "
                f"at least {count * BYTES_PREFIX} ({BYTES_PREFIX}-byte length prefixes)"
            )
    elif size != count * dtype.itemsize:
        raise ProtocolError(
            f"input {name!r}: {field} is {size} bytes but shape {list(shape)} of "
            f"{v2_datatype(dtype)} needs {count * dtype.itemsize}"
        )
    return InputSpec(name, dtype, shape, None, slice(offset, offset + size))


def parse_infer_request(
    body: bytes | bytearray,
    header_length: int | None,
    max_json_values: int | None = None,
    binary_field: str = "binary_data_size",
) -> InferRequest:
    """Read an infer request's header; ``header_length`` is the ``Inference-Header-Content-Length`` header.

    ``max_json_values`` bounds the JSON before it is parsed (by :func:`count_json_values`), so that
    parsing takes memory in proportion to what the server admits. ``binary_field`` names an input's binary
    data in messages about its size (``{index}``: the input's position; gRPC's ``raw_input_contents[0]``).
    Raises :class:`ProtocolError` naming what is wrong (:class:`PayloadTooLargeError` for JSON over
    ``max_json_values``).
    """
    if header_length is None:
        header_length = len(body)
    elif not 0 <= header_length <= len(body):
        raise ProtocolError(
            f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
        )
    if max_json_values is not None:
        values = count_json_values(body, header_length)
        if values > max_json_values:
            raise PayloadTooLargeError(
                f"the request's JSON holds up to {values:,} values (array items, keys and values); "
                f"this model accepts at most {max_json_values:,} (its id limit, one list per row and room "
                "for the other fields); send fewer ids or binary tensor data"
            )
    request = _dict(
        _loads(body if header_length == len(body) else memoryview(body)[:header_length].tobytes()),
        "the request",
    )
    params = _dict(request.get("parameters", {}), "request 'parameters'")
    binary_output = bool(_parse_bool_parameter(params, "binary_data_output", "request"))
    request_id = request.get("id")
    if request_id is not None:
        request_id = _name(request_id, "'id'")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")

    inputs: dict[str, InputSpec] = {}
    offset = header_length
    for index, entry in enumerate(raw_inputs):
        spec = _parse_input(entry, offset, len(body), binary_field.format(index=index))
        if spec.name in inputs:
            raise ProtocolError(f"input {spec.name!r} appears twice")
        inputs[spec.name] = spec
        if spec.binary is not None:
            offset = spec.binary.stop
    if offset != len(body):
        raise ProtocolError(
            f"the body has {len(body) - offset} bytes after the JSON header that no input's "
            "binary_data_size accounts for"
        )
    return InferRequest(
        request_id, tuple(inputs.values()), _parse_outputs(request.get("outputs")), binary_output
    )
