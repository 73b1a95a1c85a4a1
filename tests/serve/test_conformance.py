"""Conformance: the served OpenAPI description, checked by schemathesis against the live server (no 5xx,
every response as described), and hostile HTTP requests in the spirit of Triton's HTTP tests that the other
server tests do not send yet."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from .helpers import RawHttp

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

WORDS = "/v2/models/words/infer"
EXAMPLES = 25
"""Examples schemathesis generates per operation (9 operations)."""


def _narrowed_spec(http: RawHttp) -> dict[str, Any]:
    """The shared server's own OpenAPI description, its model names narrowed to two served models that
    answer every valid request (``fragile`` fails on purpose: see conftest) and one that is not served."""
    reply = http.get("/v2/openapi.json")
    assert reply.status_code == 200
    spec: dict[str, Any] = reply.json()
    for item in spec["paths"].values():
        for param in item.get("parameters", []):
            if param["name"] == "model_name":
                param["schema"] = {"type": "string", "enum": ["words", "recommender", "nope"]}
    return spec


def test_live_server_conforms_to_its_openapi(http: RawHttp, server: str) -> None:
    """schemathesis: :data:`EXAMPLES` generated requests per operation; no 5xx, every status, content
    type and body as described."""
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    spec = _narrowed_spec(http)
    operations = [result.ok() for result in schemathesis.openapi.from_dict(spec).get_all_operations()]
    assert len(operations) == len(spec["paths"])  # one method per path
    statuses: dict[str, set[int]] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def conforms(case: Any) -> None:
            response = case.call_and_validate(base_url=f"http://{server}", checks=checks)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        conforms()
    # the generated requests reached the models: metadata answered, bad inferences refused with a 4xx
    assert 200 in statuses["GET /v2/models/{model_name}"]
    assert any(400 <= status < 500 for status in statuses["POST /v2/models/{model_name}/infer"])


def test_openapi_describes_the_served_paths(http: RawHttp) -> None:
    spec = http.get("/v2/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in spec["paths"]:
        concrete = path.replace("{model_name}", "words").replace("{model_version}", "1")
        method = "post" if path.endswith("/infer") else "get"
        reply = http.request(method.upper(), concrete, json_body={"inputs": []} if method == "post" else None)
        assert reply.status_code != 404 or "model" not in reply.json()["error"], path
        assert str(reply.status_code) in spec["paths"][path][method]["responses"], (path, reply.status_code)


def _ids(shape: list[int], data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input_ids", "shape": shape, "datatype": "INT64", "data": data}]}


@pytest.mark.parametrize(
    ("shape", "status", "text"),
    [
        ([2**32, 2**32], 413, "rows"),  # element count 2**64: overflows int64
        ([3, 2**62], 413, "(--max-ids)"),  # element count over 2**63
        ([-1, 2], 400, "non-negative integers"),
        ([2, -3], 400, "non-negative integers"),
        ([1, 2**63], 400, "below 2**63"),
    ],
)
def test_shapes_that_overflow_or_are_negative(
    http: RawHttp, shape: list[int], status: int, text: str
) -> None:
    reply = http.post(WORDS, json_body=_ids(shape, [1, 2]))
    assert (reply.status_code, text in reply.json()["error"]) == (status, True), reply.text


def _binary_request(header_length: Callable[[int], int], ids: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": list(ids.shape),
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": ids.nbytes},
                }
            ]
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(header_length(len(header)))}
    return header + ids.tobytes(), headers


@pytest.mark.parametrize(
    "lie",
    [lambda n: 0, lambda n: n - 5, lambda n: n + 3],
    ids=["zero", "cuts-the-json", "reaches-into-the-data"],
)
def test_binary_header_lengths_that_lie(http: RawHttp, lie: Callable[[int], int]) -> None:
    body, headers = _binary_request(lie, np.arange(1, 5, dtype=np.int64).reshape(1, 4))
    reply = http.post(WORDS, body, headers=headers)
    assert reply.status_code == 400, reply.text
    assert "not valid JSON" in reply.json()["error"]


def test_chunked_binary_body_is_read_whole(http: RawHttp) -> None:
    ids = np.arange(1, 9, dtype=np.int64).reshape(2, 4)
    body, headers = _binary_request(lambda n: n, ids)
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    chunked = http.post(WORDS, iter(pieces), headers=headers)
    whole = http.post(WORDS, body, headers=headers)
    assert chunked.status_code == whole.status_code == 200
    assert chunked.content == whole.content


def test_chunked_body_cut_short_is_not_answered_200(server: str) -> None:
    """A chunked body whose last chunk never comes: the server must not answer as if it were whole."""
    host, port = server.split(":")
    body = json.dumps(_ids([1, 2], [1, 2])).encode()
    head = f"POST {WORDS} HTTP/1.1\r\nHost: {server}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head + f"{len(body):x}\r\n".encode() + body[:-3])
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert not answer.startswith(b"HTTP/1.1 200")
