"""tritonclient.http against the real server: health, metadata, and inference equal to in-process runs."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import embed_runtime

from .helpers import RawHttp


@pytest.fixture(scope="module")
def client(server: str) -> httpclient.InferenceServerClient:
    """A tritonclient on the shared server."""
    return httpclient.InferenceServerClient(server)


@pytest.fixture(scope="module")
def runtimes(model_paths: dict[str, Path]) -> dict:
    """The same models loaded in-process."""
    return {name: embed_runtime.load(path) for name, path in model_paths.items()}


def _ids(shape: tuple[int, int], high: int, seed: int = 0) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(0, high, shape, dtype=np.int64)
    ids[:, -1] = 0  # padding, so the mask has both values
    return ids


def _input(name: str, data: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(data.shape), "INT64")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "embed-runtime"
    assert meta["version"] == embed_runtime.__version__
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("words")
    assert meta["name"] == "words"
    assert meta["platform"] == "onnx_onnxv1"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1], "parameters": {"input_dim": 50}}
    ]
    assert meta["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, -1, 8]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, -1]},
    ]
    (layer,) = json.loads(meta["parameters"]["embed_runtime.embeddings"])
    assert (layer["layer"], layer["input_dim"], layer["output_dim"], layer["mask_zero"]) == (
        "words",
        50,
        8,
        True,
    )
    assert meta["parameters"]["embed_runtime.format"] == "1"

    rec = client.get_model_metadata("recommender", model_version="1")
    assert [(i["name"], i["shape"]) for i in rec["inputs"]] == [("user_ids", [-1, 1]), ("item_ids", [-1, -1])]
    assert [o["datatype"] for o in rec["outputs"]] == ["FP32", "FP32", "BOOL", "BOOL"]


def test_model_config(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("recommender")
    assert config["max_batch_size"] == 0
    assert config["input"][0] == {"name": "user_ids", "data_type": "TYPE_INT64", "dims": [-1, 1]}
    assert [o["data_type"] for o in config["output"]] == ["TYPE_FP32", "TYPE_FP32", "TYPE_BOOL", "TYPE_BOOL"]


def test_model_ready(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("words")
    assert client.is_model_ready("fragile", model_version="1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("words", model_version="2")


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_equals_runtime(client, runtimes, binary_in: bool, binary_out: bool) -> None:
    ids = _ids((3, 7), 50)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("embedding", "mask")]
    result = client.infer("words", [_input("input_ids", ids, binary_in)], outputs=outputs)
    expected = runtimes["words"].run({"input_ids": ids})
    for name in ("embedding", "mask"):
        got = result.as_numpy(name)
        assert got.dtype == expected[name].dtype
        np.testing.assert_array_equal(got, expected[name])
        sent = result.get_output(name)
        assert ("parameters" in sent) is binary_out
    assert result.as_numpy("mask").dtype == np.bool_


def test_infer_defaults_send_binary_and_get_every_output(client, runtimes) -> None:
    ids = _ids((2, 5), 50, seed=1)
    result = client.infer("words", [_input("input_ids", ids)])
    expected = runtimes["words"].run({"input_ids": ids})
    response = result.get_response()
    assert response["model_name"] == "words"
    assert [o["name"] for o in response["outputs"]] == ["embedding", "mask"]
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    for name, value in expected.items():
        np.testing.assert_array_equal(result.as_numpy(name), value)


def test_two_inputs_and_requested_outputs(client, runtimes) -> None:
    users = _ids((4, 1), 30, seed=2)
    users[0, 0] = 7
    items = _ids((4, 6), 40, seed=3)
    wanted = ["item_emb_mask", "user_vec"]
    result = client.infer(
        "recommender",
        [_input("user_ids", users), _input("item_ids", items, binary=False)],
        outputs=[httpclient.InferRequestedOutput(n) for n in wanted],
        model_version="1",
        request_id="req-7",
    )
    response = result.get_response()
    assert response["id"] == "req-7"
    assert [o["name"] for o in response["outputs"]] == wanted
    expected = runtimes["recommender"].run({"user_ids": users, "item_ids": items})
    for name in wanted:
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request(client, runtimes, algorithm: str) -> None:
    ids = _ids((2, 9), 50, seed=4)
    result = client.infer("words", [_input("input_ids", ids)], request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(
        result.as_numpy("embedding"), runtimes["words"].run({"input_ids": ids})["embedding"]
    )


def test_error_reaches_tritonclient(client) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("words", [_input("input_ids", np.array([[1, 50]]))])
    assert info.value.status() == "400"
    assert "input_ids" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("words", [_input("input_ids", np.array([[1]]))], model_version="3")
    assert info.value.status() == "404"


def test_concurrent_requests_get_their_own_answers(server: str, runtimes) -> None:
    batches = [_ids((1 + i % 3, 2 + i % 5), 50, seed=10 + i) for i in range(24)]

    def call(ids: np.ndarray) -> np.ndarray:
        client = httpclient.InferenceServerClient(server)
        try:
            return client.infer("words", [_input("input_ids", ids)]).as_numpy("embedding")
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, batches))
    for ids, got in zip(batches, results):
        np.testing.assert_array_equal(got, runtimes["words"].run({"input_ids": ids})["embedding"])


def test_metrics(http: RawHttp) -> None:
    http.post(
        "/v2/models/words/infer",
        json_body={"inputs": [{"name": "input_ids", "shape": [1, 1], "datatype": "INT64", "data": [3]}]},
    )
    http.post("/v2/models/words/infer", content=b"{")
    text = http.get("/metrics").text
    assert 'embed_runtime_infer_requests_total{model="words"}' in text
    assert 'embed_runtime_infer_failures_total{model="words",status="400"}' in text
    assert 'embed_runtime_infer_request_duration_seconds_bucket{le="0.001",model="words"}' in text
    assert 'embed_runtime_inference_duration_seconds_count{model="words"}' in text
    assert "process_resident_memory_bytes" in text


def test_one_access_log_line_per_request(http: RawHttp, server_log: Path) -> None:
    http.get("/v2/health/live?probe=access-log")
    deadline = time.monotonic() + 5
    while not (lines := [ln for ln in server_log.read_text().splitlines() if "probe=access-log" in ln]):
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.05)
    time.sleep(0.2)
    lines = [ln for ln in server_log.read_text().splitlines() if "probe=access-log" in ln]
    assert len(lines) == 1
    assert '"GET /v2/health/live?probe=access-log HTTP/1.1" 200' in lines[0]
