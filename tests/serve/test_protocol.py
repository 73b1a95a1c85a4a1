"""The V2 codec on its own: decoding JSON and binary tensors, and encoding responses tritonclient reads."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.http import InferResult

from embed_runtime.serve.codec import decode_inputs, encode_infer_response, json_value_width
from embed_runtime.serve.protocol import InferRequest, ProtocolError, count_json_values, parse_infer_request


def _request(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _decode(body: bytes, header_length: int | None = None) -> tuple[InferRequest, dict[str, np.ndarray]]:
    """The request's header and its decoded inputs."""
    request = parse_infer_request(body, header_length)
    return request, decode_inputs(request, body)


def test_nested_and_flat_json_data_agree() -> None:
    request, nested = _decode(
        _request({"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]})
    )
    _, flat = _decode(_request({"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]}))
    np.testing.assert_array_equal(nested["a"], flat["a"])
    np.testing.assert_array_equal(nested["a"], [[1, 2], [3, 4]])
    assert nested["a"].dtype == np.int64
    assert request.outputs is None and not request.binary_output


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT32", [1, -2], np.array([1, -2], np.int32)),
        ("FP32", [1, 2.5], np.array([1, 2.5], np.float32)),
        ("BOOL", [True, False], np.array([True, False])),
        ("UINT8", [255, 0], np.array([255, 0], np.uint8)),
    ],
)
def test_json_datatypes(datatype: str, data: list, expected: np.ndarray) -> None:
    _, inputs = _decode(_request({"name": "a", "shape": [2], "datatype": datatype, "data": data}))
    assert inputs["a"].dtype == expected.dtype
    np.testing.assert_array_equal(inputs["a"], expected)


@pytest.mark.parametrize(
    ("datatype", "data", "text"),
    [
        ("INT32", [2**31, 0], "value 2147483648 does not fit INT32"),
        ("UINT8", [-1, 0], "value -1 does not fit UINT8"),
        ("BOOL", [1, 0], "element at [0] is 1; BOOL data must be true or false, not integers"),
        ("INT64", [None, 1], "does not match datatype INT64"),
        ("BYTES", ["a", 1], "element at [1] is 1; BYTES data must be strings, not integers"),
        ("BF16", [1.0, 2.0], "unsupported datatype 'BF16'"),
    ],
)
def test_json_data_rejected(datatype: str, data: list, text: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(text)):
        _decode(_request({"name": "a", "shape": [2], "datatype": datatype, "data": data}))


def test_empty_tensor() -> None:
    _, inputs = _decode(_request({"name": "a", "shape": [0, 3], "datatype": "INT64", "data": []}))
    assert inputs["a"].shape == (0, 3) and inputs["a"].dtype == np.int64


def test_binary_inputs_follow_the_header_in_order() -> None:
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    b = np.array([True, False, True])
    header = _request(
        {"name": "a", "shape": [2, 3], "datatype": "INT64", "parameters": {"binary_data_size": 48}},
        {"name": "j", "shape": [1], "datatype": "FP32", "data": [0.5]},
        {"name": "b", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
        outputs=[{"name": "x", "parameters": {"binary_data": True}}, {"name": "y"}],
        parameters={"binary_data_output": False},
        id="r1",
    )
    body = header + a.tobytes() + bytes([1, 0, 2])  # any non-zero byte is True
    req, inputs = _decode(body, len(header))
    np.testing.assert_array_equal(inputs["a"], a)
    np.testing.assert_array_equal(inputs["b"], b)
    assert inputs["j"].tolist() == [0.5]
    assert req.outputs is not None
    assert [(o.name, o.binary) for o in req.outputs] == [("x", True), ("y", None)]
    assert req.id == "r1"


def test_response_round_trips_through_tritonclient() -> None:
    emb = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    mask = np.array([[True, False, True], [False, False, True]])
    body, header_length = encode_infer_response(
        "m", "1", "r", [("emb", emb, True), ("mask", mask, True), ("json_emb", emb, False)]
    )
    assert header_length is not None
    result = InferResult.from_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("emb"), emb)
    np.testing.assert_array_equal(result.as_numpy("mask"), mask)
    np.testing.assert_array_equal(result.as_numpy("json_emb"), emb)
    assert result.get_response()["id"] == "r"
    assert result.get_output("mask")["parameters"] == {"binary_data_size": 6}


def test_json_only_response_has_no_header_length() -> None:
    body, header_length = encode_infer_response("m", "1", None, [("mask", np.array([True]), False)])
    assert header_length is None
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "mask", "datatype": "BOOL", "shape": [1], "data": [True]}],
    }


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=40,
)


def _values(value: object) -> int:
    """Values in a parsed JSON document, object keys included."""
    if isinstance(value, list):
        return 1 + sum(map(_values, value))
    if isinstance(value, dict):
        return 1 + len(value) + sum(map(_values, value.values()))
    return 1


@given(_JSON, st.booleans())
def test_json_value_count_is_an_upper_bound(document: object, spaced: bool) -> None:
    """The server bounds a request's JSON by this count before parsing it: it may never count less than
    the parser would create."""
    text = json.dumps(document, separators=(", ", ": ") if spaced else (",", ":")).encode()
    assert count_json_values(text, len(text)) >= _values(document)
    assert count_json_values(text + b"  ", len(text)) == count_json_values(text, len(text))


def _json_float32_round_trip(array: np.ndarray) -> list[str]:
    """Encode ``array`` as a JSON output, check it reads back as the same float32 bits; its value texts."""
    body, _ = encode_infer_response("m", "1", None, [("out", array, False)])
    data = json.loads(body)["outputs"][0]["data"]
    np.testing.assert_array_equal(np.array(data, dtype=np.float32).view(np.uint32), array.view(np.uint32))
    return body.decode().split('"data":[')[1].rstrip("]}").split(",")


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=50))
def test_json_float32_outputs_give_back_every_bit(values: list[float]) -> None:
    """float32 outputs are written as the shortest text that reads back as the same float32 (0.1 as
    ``0.1``, as numpy prints a float32): every value (subnormals, the largest and -0.0 included) reads back
    as the same bits, within the bytes :func:`json_value_width` counts."""
    array = np.array([*values, 0.1, 1e-45, 3.4028235e38, -1.1754944e-38, -0.0], dtype=np.float32)
    texts = _json_float32_round_trip(array)
    assert [float(t) for t in texts] == [float(str(v)) for v in array]  # numpy's shortest float32 text
    assert texts[-5] == "0.1" and texts[-1] == "-0.0"  # not "-0", which reads as the integer 0
    assert max(len(t) + 1 for t in texts) <= json_value_width(np.dtype(np.float32))


@pytest.mark.parametrize(
    "array",
    [
        np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max], dtype=np.int64),
        np.array([0, np.iinfo(np.uint64).max], dtype=np.uint64),
        np.array([[True, False], [False, True]]),
        np.array([1 / 3, -0.0, 5e-324, 1.7976931348623157e308], dtype=np.float64),
        np.array([1 / 3, 65504.0, -0.0], dtype=np.float16),
        np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
        np.array([0.25, -7.5], dtype=">f4"),  # big-endian
    ],
    ids=["int64", "uint64", "bool", "float64", "float16", "transposed", "big-endian"],
)
def test_json_outputs_of_every_numeric_dtype_read_back_exactly(array: np.ndarray) -> None:
    """JSON ``data`` of an output reads back, row-major, as the same values in the same dtype: integers at
    both ends of their range, booleans as ``true``/``false``, floats of each width; arrays that are not
    C-contiguous or not native-endian as well."""
    body, _ = encode_infer_response("m", "1", None, [("out", array, False)])
    output = json.loads(body)["outputs"][0]
    assert output["shape"] == list(array.shape)
    assert [type(v) for v in output["data"]] == [type(v) for v in array.reshape(-1).tolist()]
    got = np.array(output["data"], dtype=array.dtype.newbyteorder("=")).reshape(array.shape)
    np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(array, got.dtype).view(np.uint8))
