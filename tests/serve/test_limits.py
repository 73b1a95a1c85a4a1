"""Per-model request limits on a live server: refused with 413 before any work, named in the message,
per model and for every model; and the post-run guard that no answer has another shape than the graph's."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embed_runtime import ConfigurationError, InferenceError, load
from embed_runtime.serve import Limits, ServeConfig, create_app
from embed_runtime.serve.limits import check_results
from embed_runtime.serve.metrics import ServeMetrics
from embed_runtime.serve.protocol import PayloadTooLargeError
from embed_runtime.serve.served import ServedModel

from .helpers import REPO_MODELS, RawHttp, start_server, stop_server

# every model: 16 rows, 256 ids, 10,485 bytes of outputs; recommender: 4 rows; fragile: 104 bytes
FLAGS = [
    "--max-batch", "16", "--max-batch", "recommender=4",
    "--max-ids", "256",
    "--max-output-mb", "0.01", "--max-output-mb", "fragile=0.0001",
]  # fmt: skip


@pytest.fixture(scope="module")
def limited(model_paths: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawHttp]:
    """A server of words, recommender and fragile with the limits of ``FLAGS``."""
    models = [
        str(model_paths["words"]),
        f"recommender={model_paths['recommender']}",
        str(model_paths["fragile"]),
    ]
    proc, url = start_server(
        [*models, *FLAGS, "--providers", "cpu"], tmp_path_factory.mktemp("limited") / "server.log"
    )
    yield RawHttp(url)
    stop_server(proc)


def _ids(name: str, shape: list[int], value: int = 1) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": "INT64", "data": np.full(shape, value).tolist()}


def _post(http: RawHttp, model: str, *inputs: dict[str, Any], **extra: Any) -> tuple[int, Any]:
    """Status and JSON (the JSON header of a binary response)."""
    response = http.post(f"/v2/models/{model}/infer", json_body={"inputs": list(inputs), **extra})
    length = int(response.headers.get("inference-header-content-length", len(response.content)))
    return response.status_code, json.loads(response.content[:length])


def _binary(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "parameters": {"binary_data": True}} for n in names]


def _refused(reply: tuple[int, Any], *texts: str) -> None:
    status, body = reply
    assert status == 413, body
    for text in texts:
        assert text in body["error"], body["error"]


def test_batch_limit_every_model_and_per_model(limited: RawHttp) -> None:
    _refused(
        _post(limited, "words", _ids("input_ids", [17, 1])),
        "a batch of 17 rows is over model 'words''s limit of 16 rows per request (--max-batch)",
    )
    assert _post(limited, "words", _ids("input_ids", [16, 1]))[0] == 200
    user, items = _ids("user_ids", [5, 1]), _ids("item_ids", [5, 1])
    _refused(_post(limited, "recommender", user, items), "limit of 4 rows per request (--max-batch)")
    user, items = _ids("user_ids", [4, 1]), _ids("item_ids", [4, 1])
    assert _post(limited, "recommender", user, items)[0] == 200


def test_ids_limit_counts_every_input(limited: RawHttp) -> None:
    _refused(
        _post(limited, "words", _ids("input_ids", [16, 17]), outputs=_binary("mask")),
        "the inputs hold 272 ids, over model 'words''s limit of 256 ids per request (--max-ids)",
    )
    status, body = _post(limited, "words", _ids("input_ids", [16, 16]), outputs=_binary("mask"))
    assert status == 200, body
    # recommender: 4 user ids + 4 x 63 item ids = 256 is in, one more item per row is out
    user = _ids("user_ids", [4, 1])
    outputs = _binary("item_emb_mask")
    assert _post(limited, "recommender", user, _ids("item_ids", [4, 63]), outputs=outputs)[0] == 200
    _refused(
        _post(limited, "recommender", user, _ids("item_ids", [4, 64]), outputs=outputs),
        "the inputs hold 260 ids",
    )


def test_output_limit_counts_json_at_its_longest(limited: RawHttp) -> None:
    """4 x 16 ids: embedding 4x16x8 FP32 and mask 4x16 BOOL are 2,112 bytes in binary, but up to
    512 x 25 + 64 x 6 = 13,184 bytes in JSON, over the 10,485 allowed."""
    ids = _ids("input_ids", [4, 16])
    _refused(
        _post(limited, "words", ids),
        "the requested outputs (embedding [4, 16, 8] JSON, mask [4, 16] JSON) would take 13,184 bytes",
        "limit of 10,485 bytes per response (--max-output-mb)",
        "as binary data",
    )
    status, body = _post(limited, "words", ids, outputs=_binary("embedding", "mask"))
    assert status == 200, body
    # only the mask, as JSON: 64 x 6 bytes
    status, body = _post(limited, "words", ids, outputs=[{"name": "mask"}])
    assert status == 200 and body["outputs"][0]["shape"] == [4, 16]


def test_output_the_graph_leaves_open_is_checked_after_the_run(limited: RawHttp) -> None:
    """fragile's ``pairs`` is ``[?, 4]``: counted as 1 x 4 before the run, as its real size after."""
    small = _post(limited, "fragile", _ids("input_ids", [1, 4]), outputs=_binary("pairs"))
    assert small[0] == 200 and small[1]["outputs"][0]["shape"] == [2, 4]
    _refused(
        _post(limited, "fragile", _ids("input_ids", [1, 16]), outputs=_binary("pairs")),
        "(pairs [8, 4] binary) would take 128 bytes, over model 'fragile''s limit of 104 bytes",
    )


def test_json_is_bounded_before_it_is_parsed(limited: RawHttp) -> None:
    """Values the request does not need count too: words takes 256 ids + 16 rows + 65,536 other values."""
    ids = _ids("input_ids", [1, 1])
    status, body = _post(limited, "words", ids, junk=[0] * 70_000)
    assert status == 413, body
    assert "the request's JSON holds up to 70,0" in body["error"]
    assert "this model accepts at most 65,808" in body["error"]
    assert _post(limited, "words", ids, junk=[0] * 60_000)[0] == 200


def test_duplicate_output_names_are_refused(limited: RawHttp) -> None:
    status, body = _post(limited, "words", _ids("input_ids", [1, 1]), outputs=[{"name": "mask"}] * 3)
    assert status == 400
    assert body["error"] == "output 'mask' is requested twice in 'outputs'; name each output once"


def test_limits_of_an_unknown_model_are_refused(model_paths: dict[str, Path]) -> None:
    runtime = load(model_paths["words"], providers="cpu")
    with pytest.raises(
        ConfigurationError, match="limits are given for model\\(s\\) 'nope', which are not served"
    ):
        create_app({"words": runtime}, ServeConfig(model_limits={"nope": Limits()}))


@pytest.mark.parametrize("field", ["max_batch", "max_ids", "max_output_bytes"])
@pytest.mark.parametrize("value", [0, -1, 2**40 + 1, 1.5, True])
def test_limit_values_are_checked(field: str, value: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=re.escape(f"Limits.{field} must be an integer from 1 to 2**40")
    ):
        Limits(**{field: value})


def test_no_answer_with_another_batch_than_sent(model_paths: dict[str, Path]) -> None:
    """The guard after every run: an output whose shape differs from what the graph gives for the inputs
    (a batch of 0 for 3 rows sent, as issue 16 found) is an error, never an answer."""
    runtime = load(model_paths["words"], providers="cpu")
    feeds = {"input_ids": np.zeros((3, 2), np.int64)}
    good = runtime.run(feeds)
    check_results("words", runtime, [("embedding", True)], feeds, good, Limits())
    wrong = {"embedding": np.zeros((0, 2, 8), np.float32)}
    with pytest.raises(
        InferenceError,
        match=re.escape("returned output 'embedding' of shape (0, 2, 8) where these inputs give (3, 2, 8)"),
    ):
        check_results("words", runtime, [("embedding", True)], feeds, wrong, Limits())


def _in_flight(http: RawHttp) -> float:
    found = re.search(r"^embed_runtime_infer_in_flight (\S+)$", http.get("/metrics").text, re.M)
    assert found is not None
    return float(found.group(1))


def test_admission_holds_bodies_back(launch: Any, model_paths: dict[str, Path]) -> None:
    """With --max-concurrency 1, two requests still sending their bodies are admitted; a third waits, before
    its body is read, until one of them is answered."""
    _, url = launch([str(model_paths["words"]), "--max-concurrency", "1", "--providers", "cpu"])
    http = RawHttp(url)
    body = json.dumps({"inputs": [_ids("input_ids", [1, 2])]}).encode()
    head = f"POST /v2/models/words/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    slow = [socket.create_connection((http.host, http.port), timeout=10) for _ in range(2)]
    try:
        for sock in slow:
            sock.sendall(head + body[:5])
        deadline = time.monotonic() + 10
        while _in_flight(http) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        third: dict[str, Any] = {}
        waiter = threading.Thread(
            target=lambda: third.update(reply=http.post("/v2/models/words/infer", body))
        )
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive(), "a third request was admitted while two bodies were being read"
        slow[0].sendall(body[5:])
        assert slow[0].recv(100).startswith(b"HTTP/1.1 200")
        waiter.join(10)
        assert third["reply"].status_code == 200
    finally:
        for sock in slow:
            sock.close()


def test_long_texts_are_refused_from_their_lengths_before_padding() -> None:
    """A few long texts among many short ones: 413 naming --max-ids from the row lengths, before the
    ``rows x longest`` ids (and their mask) are allocated (64 MB here, 2 GiB for a 150 KB body)."""
    runtime = load(REPO_MODELS / "text" / "model.onnx", providers="cpu")
    model = ServedModel("text", runtime, Limits(max_ids=4096))
    model.warm_up()
    texts = [b"a " * 20_000] + [b"a"] * 399  # padded: 400 x 20,000 int64 ids
    blob = b"".join(len(t).to_bytes(4, "little") + t for t in texts)
    text = {"name": "text", "datatype": "BYTES", "shape": [len(texts)]}
    head = json.dumps({"inputs": [{**text, "parameters": {"binary_data_size": len(blob)}}]}).encode()
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError, match=r"8,000,000 ids, over model 'text'.s limit of 4,096"):
            model.infer(head + blob, len(head), ServeMetrics())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, f"{peak:,} bytes allocated at the peak"
