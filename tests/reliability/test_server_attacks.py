"""Issue 16, item 1: tiny requests that used to cause huge work. Each is now refused before any work, in
milliseconds and without memory growth; and the heaviest requests the default limits admit stay within the
memory bound that docs/serve.md states.

Before the limits (issue 16's figures): 1,500 copies of one output name -> a 366 MB answer and 1.2 GB of peak
RSS; shape [100000000, 0] -> 8 s of work and 3.7 GB kept; 1 MB of JSON zeros shaped [50000, 10] -> a 642 MB
JSON answer, 3.3 GB peak and 21 s.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from tests.reliability.live import LiveServer, MiB

SEED = "/v2/models/seed/infer"


def _request(name: str, shape: list[int], data: Any, **extra: Any) -> bytes:
    return json.dumps(
        {"inputs": [{"name": name, "shape": shape, "datatype": "INT64", "data": data}], **extra}
    ).encode()


ROWS = np.random.default_rng(0).integers(0, 1000, (100, 10)).tolist()

ATTACKS = [
    # id, model, body, status, text in the error
    (
        "1500-copies-of-one-output",
        "seed",
        _request(
            "input_ids",
            [100, 10],
            ROWS,
            outputs=[{"name": "embedding", "parameters": {"binary_data": True}}] * 1500,
        ),
        400,
        "output 'embedding' is requested twice",
    ),
    (
        "shape-100000000-by-0",
        "classifier",
        _request("token_ids", [100_000_000, 0], []),
        413,
        "a batch of 100,000,000 rows is over model 'classifier''s limit of 4,096 rows per request (--max-batch)",
    ),
    (
        "1MB-of-json-zeros-50000-by-10",
        "seed",
        _request("input_ids", [50_000, 10], [0] * 500_000),
        413,
        "a batch of 50,000 rows is over model 'seed''s limit of 4,096 rows per request (--max-batch)",
    ),
]


@pytest.mark.parametrize(
    ("model", "body", "status", "text"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
def test_small_request_huge_work_is_refused_at_once(
    live_server: LiveServer, model: str, body: bytes, status: int, text: str
) -> None:
    http = live_server.http
    assert http.post(SEED, content=_request("input_ids", [1, 10], [ROWS[0]])).status_code == 200  # warm
    with live_server.peak() as rss:
        start = time.perf_counter()
        response = http.post(f"/v2/models/{model}/infer", content=body)
        seconds = time.perf_counter() - start
    assert response.status_code == status, response.content[:300]
    assert text in response.json()["error"]
    assert len(response.content) < 1000
    assert seconds < 2.0
    assert rss.growth_mib < 32, f"peak RSS grew by {rss.growth_mib:.0f} MiB"


def test_heaviest_admitted_json_answer_stays_within_the_bound(live_server: LiveServer) -> None:
    """seed, 4,096 rows in JSON: the largest JSON answer the default limits admit (2,621,440 floats, at
    most 64 MiB of text). docs/serve.md bounds a request in a slot by 3 x the output limit plus the body
    and its parsed JSON; here that is well under 3 x 64 MiB + 16 MiB."""
    ids = np.random.default_rng(1).integers(0, 1000, (4096, 10))
    with live_server.peak() as rss:
        response = live_server.http.post(SEED, content=_request("input_ids", [4096, 10], ids.tolist()))
    assert response.status_code == 200
    output = response.json()["outputs"][0]
    assert output["shape"] == [4096, 10, 64] and len(output["data"]) == 4096 * 640
    assert len(response.content) < 64 * MiB
    assert rss.growth_mib < 3 * 64 + 16, f"peak RSS grew by {rss.growth_mib:.0f} MiB"
