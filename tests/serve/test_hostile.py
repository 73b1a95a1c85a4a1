"""Hostile requests that used to get a 500, a wrong 200 or invalid JSON (issue 16, items 2 and 7): each gets
a 4xx naming what is wrong, or an exact answer, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest

from embed_runtime import EmbedRuntimeError, load

from .helpers import REPO_MODELS, RawHttp, Reply

WORDS = "/v2/models/words/infer"


def _ids(shape: list[int], data: Any, datatype: str = "INT64", name: str = "input_ids") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _strict_json(content: bytes) -> Any:
    """RFC 8259 JSON only: ``NaN`` and ``Infinity`` are errors, as in strict parsers."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(content, parse_constant=refuse)


def _binary_outputs(reply: Reply) -> dict[str, np.ndarray]:
    """The binary outputs of a V2 response, by name."""
    length = int(reply.headers["inference-header-content-length"])
    offset, arrays = length, {}
    dtypes = {"FP32": np.float32, "BOOL": np.bool_}
    for out in _strict_json(reply.content[:length])["outputs"]:
        size = out["parameters"]["binary_data_size"]
        raw = reply.content[offset : offset + size]
        arrays[out["name"]] = np.frombuffer(raw, dtypes[out["datatype"]]).reshape(out["shape"])
        offset += size
    return arrays


DEEP = b"[" * 50_000 + b"]" * 50_000

CASES = [
    # id, body, status, text in the error
    (
        "nested-50000-deep",
        _body(_ids([1, 1], 1), junk=0).replace(b"0}", DEEP + b"}"),
        400,
        "nested too deeply",
    ),
    (
        "5000-digit-integer",
        _body(_ids([1, 1], [[0]])).replace(b"[[0]]", b"[[" + b"7" * 5000 + b"]]"),
        400,
        "integer literal longer than 4300 digits",
    ),
    ("shape-2**62-by-0", _body(_ids([2**62, 0], [])), 413, "a batch of 4,611,686,018,427,387,904 rows"),
    ("shape-2**64-by-0", _body(_ids([2**64, 0], [])), 400, "non-negative integers below 2**63"),
    ("shape-0-by-2**62", _body(_ids([0, 2**62], [])), 413, "(--max-ids)"),
    ("shape-rank-40", _body(_ids([1] * 40, [1])), 400, "'shape' has 40 axes; at most 32"),
    (
        "bool-in-int64",
        _body(_ids([1, 2], [1, True])),
        400,
        "element at [0, 1] is true; INT64 data must be integers, not booleans",
    ),
    ("nan-token", _body(_ids([1, 1], [1])).replace(b"[1]}", b"[NaN]}"), 400, "NaN is not a JSON number"),
    (
        "1e999-in-fp32",
        _body(_ids([1, 1], [1.5], "FP32")).replace(b"1.5", b"1e999"),
        400,
        "value Infinity does not fit FP32 (element at [0, 0])",
    ),
    ("nested-deeper-than-shape", _body(_ids([1, 1], [[[1]]])), 400, "nested deeper than shape [1, 1]"),
    (
        "id-of-1025-characters",
        _body(_ids([1, 1], [1]), id="i" * 1025),
        400,
        "'id' has 1,025 characters; at most 1024",
    ),
    (
        "1500-copies-of-one-output",
        _body(_ids([1, 1], [1]), outputs=[{"name": "embedding"}] * 1500),
        400,
        "output 'embedding' is requested twice in 'outputs'",
    ),
]


@pytest.mark.parametrize(("body", "status", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_json(http: RawHttp, body: bytes, status: int, text: str) -> None:
    response = http.post(WORDS, content=body)
    assert response.status_code == status, response.text
    assert text in _strict_json(response.content)["error"]
    assert http.post(WORDS, content=_body(_ids([1, 2], [4, 0]))).status_code == 200


ANSWER = _body(_ids([1, 2], [4, 0]))
GZIP_CASES = [
    # id, Content-Encoding, body, status, text in the error
    (
        "gzip-trailing-garbage",
        "gzip",
        gzip.compress(ANSWER) + b"garbage",
        400,
        "7 bytes after the end of gzip member 1",
    ),
    ("gzip-cut-short", "gzip", gzip.compress(ANSWER)[:-4], 400, "ends in the middle of its gzip data"),
    ("deflate-trailing-bytes", "deflate", zlib.compress(ANSWER) + b"\0", 400, "after the end of its deflate"),
    (
        "gzip-1025-members",
        "gzip",
        gzip.compress(ANSWER) + gzip.compress(b"") * 1024,
        400,
        "more than 1024 gzip",
    ),
]


@pytest.mark.parametrize(
    ("encoding", "body", "status", "text"), [c[1:] for c in GZIP_CASES], ids=[c[0] for c in GZIP_CASES]
)
def test_bad_compressed_bodies(http: RawHttp, encoding: str, body: bytes, status: int, text: str) -> None:
    response = http.post(WORDS, content=body, headers={"Content-Encoding": encoding})
    assert response.status_code == status, response.text
    assert text in response.json()["error"]


def test_every_gzip_member_is_read(http: RawHttp) -> None:
    """RFC 1952: a gzip body is a series of members; the request is their data joined."""
    parts = [ANSWER[:10], ANSWER[10:25], ANSWER[25:]]
    body = b"".join(gzip.compress(p) for p in parts)
    response = http.post(WORDS, content=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json() == http.post(WORDS, content=ANSWER).json()


def test_gzip_members_share_the_body_limit(http: RawHttp, body_limit: int) -> None:
    member = gzip.compress(b" " * (body_limit // 2 + 1))
    response = http.post(WORDS, content=member * 2, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompresses to more than the limit" in response.json()["error"]


def test_nan_output_is_refused_in_json_and_exact_in_binary(repo_server: RawHttp) -> None:
    """The classifier gives NaN for an all-padding row: RFC 8259 JSON has no NaN, so the JSON answer is a
    422 telling the client to ask for binary data; the binary answer carries the NaN exactly."""
    path = "/v2/models/classifier/infer"
    ids = _ids([2, 3], [[5, 7, 0], [0, 0, 0]], name="token_ids")
    response = repo_server.post(path, content=_body(ids))
    assert response.status_code == 422, response.text
    error = _strict_json(response.content)["error"]
    assert "output 'probability' holds 1 NaN or infinite value(s) (the first at [1, 0])" in error
    assert '"parameters": {"binary_data": true}' in error
    binary = repo_server.post(path, content=_body(ids, parameters={"binary_data_output": True}))
    assert binary.status_code == 200
    expected = load(REPO_MODELS / "classifier" / "model.onnx", providers="cpu").run([[5, 7, 0], [0, 0, 0]])
    got = _binary_outputs(binary)
    np.testing.assert_array_equal(got["probability"], expected["probability"])  # NaN equals NaN here
    assert np.isnan(got["probability"][1, 0]) and np.isfinite(got["probability"][0, 0])
    finite = repo_server.post(path, content=_body(_ids([1, 3], [[5, 7, 0]], name="token_ids")))
    assert finite.status_code == 200
    assert _strict_json(finite.content)["outputs"][0]["data"] == pytest.approx(expected["probability"][0])


@pytest.mark.parametrize("model", ["classifier", "recurrent", "tagger"])
def test_rows_of_length_zero_keep_their_batch(repo_server: RawHttp, model: str) -> None:
    """Shape [3, 0]: the answer has 3 rows, or is the runtime's own error as a 400; never another batch."""
    runtime = load(REPO_MODELS / model / "model.onnx", providers="cpu")
    response = repo_server.post(
        f"/v2/models/{model}/infer",
        content=_body(_ids([3, 0], [], name="token_ids"), parameters={"binary_data_output": True}),
    )
    try:
        expected = runtime.run(np.zeros((3, 0), np.int64))
    except EmbedRuntimeError as exc:
        assert response.status_code == 400
        assert response.json()["error"] == str(exc)
        return
    assert response.status_code == 200, response.text
    got = _binary_outputs(response)
    assert {name: a.shape for name, a in got.items()} == {name: a.shape for name, a in expected.items()}
    assert all(a.shape[0] == 3 for a in got.values())


NESTED_IN = {
    "shape": '{"inputs": [{"name": "input_ids", "shape": %s, "datatype": "INT64", "data": [1]}]}',
    "data": '{"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, %s]}]}',
    "datatype": '{"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": %s, "data": [1]}]}',
    "parameter": '{"inputs": [], "parameters": {"binary_data_output": %s}}',
}


@pytest.mark.parametrize("where", NESTED_IN)
def test_nesting_up_to_the_parser_limit(http: RawHttp, where: str) -> None:
    """Values nested just under the parser's limit are parsed; quoting them in the error must not fail."""
    statuses = set()
    for depth in range(960, 1001):
        body = (NESTED_IN[where] % ("[" * depth + "]" * depth)).encode()
        statuses.add(http.post(WORDS, content=body).status_code)
    assert statuses == {400}
