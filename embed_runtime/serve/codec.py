"""Tensor data of the V2 protocol: decoding a checked request's inputs and encoding a response.

JSON ``data`` is flat or nested row-major; every value must have the JSON type of the datatype (integers
for integer datatypes, ``true``/``false`` for ``BOOL``, numbers for floats), so that ``[1, true]`` is not
read as ``[1, 1]``; ``BYTES`` data must be strings. Binary data is little-endian and row-major, ``BOOL``
one byte per element, ``BYTES`` each element a 4-byte little-endian length and its bytes (Triton's
encoding); ``BYTES`` inputs decode to ``object`` arrays of ``str`` (JSON) or ``bytes`` (binary), which the
runtime's text front end checks (UTF-8) and tokenizes.

Responses follow RFC 8259 JSON: a float output holding ``NaN`` or an infinity cannot be sent as JSON data
and is refused (:class:`~embed_runtime.serve.protocol.UnrepresentableError`, 422) with a message telling
the client to ask for it as binary data, which carries IEEE floats exactly. JSON values are written in
chunks, so that encoding takes little memory beyond the response itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np
import orjson

from embed_runtime.conversion import position
from embed_runtime.serve.protocol import (
    BYTES,
    BYTES_PREFIX,
    TEXT_DTYPE,
    InferRequest,
    ProtocolError,
    UnrepresentableError,
    short_text,
    v2_datatype,
)

_CHUNK = 1 << 16
"""Values encoded to JSON at a time."""

_JSON_TYPES = {"b": (bool,), "i": (int,), "u": (int,), "f": (int, float), "O": (str,)}
"""Python types of the JSON values each kind of datatype accepts (``bool`` is not an ``int`` here)."""

_JSON_WORDS = {"b": "true or false", "i": "integers", "u": "integers", "f": "numbers", "O": "strings"}

_TYPE_WORDS = {bool: "booleans", int: "integers", float: "floats", str: "strings", list: "lists"}


def json_value_width(dtype: np.dtype) -> int:
    """The most bytes one value of ``dtype`` takes in a response's JSON ``data``, its comma included."""
    if dtype.kind == "b":
        return len("false,")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return max(len(str(info.min)), len(str(info.max))) + 1
    return len("-2.2250738585072014e-308,")  # the longest repr of a Python float


def _position(index: int, shape: tuple[int, ...]) -> str:
    """The place of flat element ``index`` in ``shape``, named as the runtime's messages name it."""
    return position(tuple(int(i) for i in np.unravel_index(index, shape)))


def _flatten(name: str, shape: tuple[int, ...], data: list[Any]) -> list[Any]:
    """The values of a flat or regularly nested list, row-major; nesting may not be deeper than the shape."""
    flat = data
    depth = 1
    while flat and isinstance(flat[0], list):
        if depth >= max(len(shape), 1):
            raise ProtocolError(f"input {name!r}: 'data' is nested deeper than shape {list(shape)}")
        if any(type(x) is not list for x in flat) or len(set(map(len, flat))) != 1:
            raise ProtocolError(f"input {name!r}: 'data' is a ragged nested list")
        flat = list(chain.from_iterable(flat))
        depth += 1
    return flat


def decode_json_data(name: str, dtype: np.dtype, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A tensor from a JSON ``data`` value (flat or nested, row-major), checked against dtype and shape."""
    flat = _flatten(name, shape, data if isinstance(data, list) else [data])
    count = math.prod(shape)
    if len(flat) != count:
        raise ProtocolError(
            f"input {name!r}: shape {list(shape)} holds {count} elements but 'data' has {len(flat)}"
        )
    if count == 0:
        return np.zeros(shape, dtype)
    allowed = _JSON_TYPES[dtype.kind]
    wrong = set(map(type, flat)).difference(allowed)
    if wrong:
        first = next(i for i, x in enumerate(flat) if type(x) not in allowed)
        found = ", ".join(sorted(_TYPE_WORDS.get(t, "objects or nulls") for t in wrong))
        datatype = v2_datatype(dtype)
        raise ProtocolError(
            f"input {name!r}: 'data' does not match datatype {datatype}: element at "
            f"{_position(first, shape)} is {short_text(flat[first], as_json=True)}; {datatype} data must be "
            f"{_JSON_WORDS[dtype.kind]}, not {found}"
        )
    try:
        with np.errstate(over="ignore"):
            arr: np.ndarray | None = np.array(flat, dtype=dtype)
    except OverflowError:
        arr = None
    if arr is None or (dtype.kind == "f" and not np.isfinite(arr).all()):
        info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
        first = next(i for i, x in enumerate(flat) if not info.min <= x <= info.max)
        raise ProtocolError(
            f"input {name!r}: value {short_text(flat[first], as_json=True)} does not fit {v2_datatype(dtype)} "
            f"(element at {_position(first, shape)})"
        )
    return arr.reshape(shape)


def decode_binary_data(dtype: np.dtype, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    """A tensor from raw little-endian bytes (their size was checked against the shape)."""
    count = math.prod(shape)
    if dtype.kind == "b":
        return (np.frombuffer(raw, dtype=np.uint8, count=count) != 0).reshape(shape)
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<"), count=count).reshape(shape)
    if not arr.flags.aligned or not arr.dtype.isnative:
        arr = arr.astype(dtype)
    return arr


def decode_binary_bytes(name: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    """An ``object`` array of ``bytes`` from binary ``BYTES`` data: each element a 4-byte little-endian
    length and that many bytes, row-major; the lengths must account for the data exactly."""
    count = math.prod(shape)
    out = np.empty(count, dtype=object)
    pos, end = 0, len(raw)
    for i in range(count):
        where = f"input {name!r}: {BYTES} element at {_position(i, shape)}"
        if pos + BYTES_PREFIX > end:  # the parser checked room for every prefix: a previous length lied
            raise ProtocolError(f"{where} has no room left for its {BYTES_PREFIX}-byte length prefix")
        size = int.from_bytes(raw[pos : pos + BYTES_PREFIX], "little")
        pos += BYTES_PREFIX
        if pos + size > end:
            raise ProtocolError(
                f"{where} declares {size:,} bytes but only {end - pos:,} are left in its binary data"
            )
        out[i] = raw[pos : pos + size].tobytes()
        pos += size
    if pos != end:
        raise ProtocolError(
            f"input {name!r}: {end - pos:,} bytes of binary {BYTES} data are left after its {count:,} "
            "length-prefixed elements"
        )
    return out.reshape(shape)


def decode_inputs(request: InferRequest, body: bytes | bytearray) -> dict[str, np.ndarray]:
    """Input name to array, in request order, for a request read by
    :func:`~embed_runtime.serve.protocol.parse_infer_request` from ``body``."""
    view = memoryview(body)
    arrays = {}
    for spec in request.inputs:
        if spec.binary is None:
            arrays[spec.name] = decode_json_data(spec.name, spec.dtype, spec.shape, spec.data)
        elif spec.dtype == TEXT_DTYPE:
            arrays[spec.name] = decode_binary_bytes(spec.name, spec.shape, view[spec.binary])
        else:
            arrays[spec.name] = decode_binary_data(spec.dtype, spec.shape, view[spec.binary])
    return arrays


def _json_data(name: str, arr: np.ndarray) -> Iterator[bytes]:
    """The JSON array of ``arr``'s values, row-major, in pieces; refuses non-finite floats.

    Numbers and booleans are written by orjson from the array's memory: integers exactly, floats as the
    shortest text that reads back as the same value of their own width (``0.1`` for float32 0.1; float16
    as the shortest text of its float32 value; ``-0.0`` for negative zero).
    """
    flat = arr.reshape(-1)
    yield b"["
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        if chunk.dtype.kind == "f" and not np.isfinite(chunk).all():
            bad = ~np.isfinite(flat)
            raise UnrepresentableError(
                f"output {name!r} holds {int(np.count_nonzero(bad))} NaN or infinite value(s) (the first at "
                f"{_position(int(np.argmax(bad)), arr.shape)}), which JSON cannot carry; request it as "
                f'binary data: "outputs": [{{"name": "{name}", "parameters": {{"binary_data": true}}}}]'
            )
        if chunk.dtype.kind in "biuf":
            native = np.ascontiguousarray(chunk, dtype=chunk.dtype.newbyteorder("="))
            text = orjson.dumps(native, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
        else:
            text = orjson.dumps(chunk.tolist())[1:-1]
        yield text if start == 0 else b"," + text
    yield b"]"


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, int | None]:
    """Encode ``(name, array, binary)`` outputs as a V2 response body.

    Returns the body and, when any output is binary, the JSON header's length for the
    ``Inference-Header-Content-Length`` response header (else ``None``). Raises
    :class:`~embed_runtime.serve.protocol.UnrepresentableError` for a JSON output holding NaN or infinity.
    """
    head: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        head["id"] = request_id
    pieces = [json.dumps(head, separators=(",", ":"))[:-1].encode(), b',"outputs":[']  # id: any str
    blobs: list[memoryview] = []
    for i, (name, arr, binary) in enumerate(outputs):
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(arr.dtype), "shape": list(arr.shape)}
        if binary:
            raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            blobs.append(raw.reshape(-1).view(np.uint8).data)
        pieces.append((b"," if i else b"") + orjson.dumps(entry))
        if not binary:
            pieces[-1] = pieces[-1][:-1] + b',"data":'
            pieces.extend(_json_data(name, arr))
            pieces.append(b"}")
    pieces.append(b"]}")
    header = b"".join(pieces)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
