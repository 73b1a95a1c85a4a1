"""Bad requests over raw HTTP: each gets the right status and an error that says what was wrong, and the
server goes on answering correctly afterwards."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from .helpers import RawHttp

WORDS = "/v2/models/words/infer"


def _tensor(data: Any, shape: list[int], datatype: str = "INT64", name: str = "input_ids") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _json(*inputs: dict, **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _binary(ids: np.ndarray, size: int | None = None, extra: bytes = b"") -> tuple[bytes, dict[str, str]]:
    raw = ids.astype("<i8").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": list(ids.shape),
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": len(raw) if size is None else size},
                }
            ]
        }
    ).encode()
    return header + raw + extra, {"Inference-Header-Content-Length": str(len(header))}


_binary_short, _binary_short_headers = _binary(np.array([[1, 2, 3]]), size=16)
_binary_extra, _binary_extra_headers = _binary(np.array([[1, 2]]), extra=b"\0" * 8)
_binary_over, _binary_over_headers = _binary(np.array([[1, 2]]), size=24)

CASES = [
    # id, path, body, headers, status, text in the error
    ("malformed-json", WORDS, b'{"inputs": [', {}, 400, "not valid JSON"),
    ("not-an-object", WORDS, b"[1, 2]", {}, 400, "must be a JSON object"),
    ("no-inputs", WORDS, b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    (
        "unknown-datatype",
        WORDS,
        _json(_tensor([1], [1, 1], "INT128")),
        {},
        400,
        "unsupported datatype 'INT128'",
    ),
    ("floats-as-int64", WORDS, _json(_tensor([1.5, 2], [1, 2])), {}, 400, "does not match datatype INT64"),
    ("strings-as-int64", WORDS, _json(_tensor(["a"], [1, 1])), {}, 400, "does not match datatype INT64"),
    (
        "fp32-ids",
        WORDS,
        _json(_tensor([1.0, 2.0], [1, 2], "FP32")),
        {},
        400,
        "'input_ids' has dtype float32; ids must be integers",
    ),
    (
        "shape-data-mismatch",
        WORDS,
        _json(_tensor([1, 2, 3, 4, 5], [2, 3])),
        {},
        400,
        "holds 6 elements but 'data' has 5",
    ),
    ("ragged-data", WORDS, _json(_tensor([[1, 2], [3]], [2, 2])), {}, 400, "ragged"),
    ("negative-shape", WORDS, _json(_tensor([1], [-1, 1])), {}, 400, "non-negative integers"),
    ("too-big-for-int64", WORDS, _json(_tensor([2**64], [1, 1])), {}, 400, "INT64"),
    (
        "id-out-of-range",
        WORDS,
        _json(_tensor([3, 50], [1, 2])),
        {},
        400,
        "id 50 at position [0, 1] is outside the allowed range [0, 50)",
    ),
    (
        "negative-id",
        WORDS,
        _json(_tensor([-1, 3], [1, 2])),
        {},
        400,
        "id -1 at position [0, 0] is outside the allowed range",
    ),
    ("unknown-model", "/v2/models/nope/infer", _json(_tensor([1], [1, 1])), {}, 404, "unknown model 'nope'"),
    (
        "unknown-version",
        "/v2/models/words/versions/2/infer",
        _json(_tensor([1], [1, 1])),
        {},
        404,
        "no version '2'",
    ),
    (
        "unknown-input",
        WORDS,
        _json(_tensor([1], [1, 1]), _tensor([1], [1, 1], name="extra")),
        {},
        400,
        "unknown input(s) 'extra'",
    ),
    (
        "missing-input",
        "/v2/models/recommender/infer",
        _json(_tensor([1], [1, 1], name="user_ids")),
        {},
        400,
        "missing input(s) 'item_ids'",
    ),
    (
        "bool-ids",
        WORDS,
        _json(_tensor([True], [1, 1], "BOOL")),
        {},
        400,
        "has dtype bool; ids must be integers",
    ),
    (
        "rank-1-ids",
        WORDS,
        _json(_tensor([1, 2], [2])),
        {},
        400,
        "input 'input_ids' has rank 1 (shape [2]) but model 'words' expects rank 2 (batch, seq); send one "
        "sequence of 2 ids as shape [1, 2]",
    ),
    ("duplicate-input", WORDS, _json(_tensor([1], [1, 1]), _tensor([2], [1, 1])), {}, 400, "appears twice"),
    (
        "unknown-output",
        WORDS,
        _json(_tensor([1], [1, 1]), outputs=[{"name": "nope"}]),
        {},
        400,
        "has no output 'nope'",
    ),
    (
        "no-data",
        WORDS,
        _json({"name": "input_ids", "shape": [1], "datatype": "INT64"}),
        {},
        400,
        "neither 'data'",
    ),
    (
        "binary-size-vs-shape",
        WORDS,
        _binary_short,
        _binary_short_headers,
        400,
        "binary_data_size is 16 bytes",
    ),
    (
        "binary-bytes-left-over",
        WORDS,
        _binary_extra,
        _binary_extra_headers,
        400,
        "8 bytes after the JSON header",
    ),
    ("binary-size-past-body", WORDS, _binary_over, _binary_over_headers, 400, "only 16 bytes"),
    (
        "header-length-past-body",
        WORDS,
        b"{}",
        {"Inference-Header-Content-Length": "99"},
        400,
        "the body has 2 bytes",
    ),
    (
        "bad-header-length",
        WORDS,
        b"{}",
        {"Inference-Header-Content-Length": "x"},
        400,
        "non-negative integer",
    ),
    (
        "bad-encoding",
        WORDS,
        _json(_tensor([1], [1, 1])),
        {"Content-Encoding": "br"},
        400,
        "Content-Encoding 'br'",
    ),
    ("bad-gzip", WORDS, b"not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    (
        "onnxruntime-failure",
        "/v2/models/fragile/infer",
        _json(_tensor([1, 2, 3], [1, 3])),
        {},
        500,
        "cannot be reshaped",
    ),
]


def _assert_still_serves(http) -> None:
    response = http.post(WORDS, content=_json(_tensor([[4, 0]], [1, 2])))
    assert response.status_code == 200, response.text
    mask = next(o for o in response.json()["outputs"] if o["name"] == "mask")
    assert mask == {"name": "mask", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_request(http, path: str, body: bytes, headers: dict, status: int, text: str) -> None:
    response = http.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert text in error, error
    _assert_still_serves(http)


def test_body_over_limit(http: RawHttp, body_limit: int) -> None:
    body = b" " * (body_limit + 1)
    response = http.post(WORDS, content=body)
    assert response.status_code == 413
    assert "over the limit" in response.json()["error"]
    _assert_still_serves(http)


def test_chunked_body_over_limit(http: RawHttp, body_limit: int) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(body_limit // 2**16 + 1):
            yield b" " * 2**16

    response = http.post(WORDS, content=chunks())
    assert response.status_code == 413
    assert "over the limit" in response.json()["error"]
    _assert_still_serves(http)


def test_gzip_bomb_over_limit(http: RawHttp, body_limit: int) -> None:
    body = gzip.compress(b" " * (body_limit + 10))
    response = http.post(WORDS, content=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "decompresses to more than the limit" in response.json()["error"]


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/v2/nothing", 404), ("GET", WORDS, 405)])
def test_unknown_route_answers_json(http: RawHttp, method: str, path: str, status: int) -> None:
    response = http.request(method, path)
    assert response.status_code == status
    assert "error" in response.json()
