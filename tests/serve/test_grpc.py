"""The gRPC API (``--grpc-port``) against tritonclient's gRPC client: the REST tests' twins.

One server, started through ``embed-runtime serve``, answers REST and gRPC on two loopback ports, so
every error can be compared with the REST answer to the same request. The server's own message classes
are never imported here: they share the ``inference`` protobuf package with tritonclient's, which the
raw-stub tests use (the wire format is the same).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import embed_runtime
from embed_runtime import Runtime

from .helpers import REPO_MODELS, SERVE_CLI, RawHttp, free_port, start_server, stop_server

MAX_BATCH = 16


@pytest.fixture(scope="module")
def paths(model_paths: dict[str, Path]) -> dict[str, Path]:
    """Served name to model file: the repository's seed and classifier, the test recommender (two inputs,
    two BOOL masks among its four outputs)."""
    return {
        "seed": REPO_MODELS / "seed" / "model.onnx",
        "classifier": REPO_MODELS / "classifier" / "model.onnx",
        "recommender": model_paths["recommender"],
    }


@pytest.fixture(scope="module")
def urls(paths: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(REST, gRPC)`` addresses of one ``embed-runtime serve`` with --max-batch 16, a 1 MiB body limit."""
    grpc_port = free_port()
    args = [f"{name}={path}" for name, path in paths.items()]
    args += ["--grpc-port", str(grpc_port), "--max-batch", str(MAX_BATCH), "--max-body-mb", "1"]
    log = tmp_path_factory.mktemp("grpc") / "server.log"
    proc, rest = start_server([*args, "--providers", "cpu"], log, SERVE_CLI)
    yield rest, f"127.0.0.1:{grpc_port}"
    assert stop_server(proc) in (0, -15)


@pytest.fixture(scope="module")
def client(urls: tuple[str, str]) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(urls[1])
    yield c
    c.close()


@pytest.fixture(scope="module")
def rest(urls: tuple[str, str]) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(urls[0])


@pytest.fixture(scope="module")
def stub(urls: tuple[str, str]) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """A bare stub, for requests tritonclient does not make (typed contents, broken raw contents)."""
    with grpc.insecure_channel(urls[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def runtimes(paths: dict[str, Path]) -> dict[str, Runtime]:
    return {name: embed_runtime.load(path, providers="cpu") for name, path in paths.items()}


def _feeds(runtime: Runtime, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Random valid ids for every input, the last position padding (0) where the length is free."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in runtime.inputs:
        assert spec.input_dim is not None
        ids = rng.integers(1, spec.input_dim, (rows, spec.shape[1] or 5), dtype=np.int64)
        if spec.shape[1] is None:
            ids[:, -1] = 0
        feeds[spec.name] = ids
    return feeds


def _inputs(module: Any, feeds: dict[str, np.ndarray]) -> list:
    """``InferInput`` objects of tritonclient's ``module`` (grpc or http) holding ``feeds``."""
    tensors = []
    for name, ids in feeds.items():
        tensor = module.InferInput(name, list(ids.shape), "INT64")
        tensor.set_data_from_numpy(ids)
        tensors.append(tensor)
    return tensors


def _errors(
    client: grpcclient.InferenceServerClient,
    rest: httpclient.InferenceServerClient,
    model: str,
    feeds: dict[str, np.ndarray],
    **options: Any,
) -> tuple[InferenceServerException, InferenceServerException]:
    """Send the same failing request over gRPC and over REST; return both errors."""
    with pytest.raises(InferenceServerException) as over_grpc:
        client.infer(model, _inputs(grpcclient, feeds), **options)
    with pytest.raises(InferenceServerException) as over_rest:
        rest.infer(model, _inputs(httpclient, feeds), **options)
    return over_grpc.value, over_rest.value


def test_health_and_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("seed") and client.is_model_ready("recommender", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("seed", "2")
    meta = client.get_server_metadata()
    assert (meta.name, meta.version) == ("embed-runtime", embed_runtime.__version__)


@pytest.mark.parametrize("name", ["seed", "classifier", "recommender"])
def test_model_metadata_equals_rest(client, rest, name: str) -> None:
    over_grpc = client.get_model_metadata(name, as_json=True)
    over_rest = rest.get_model_metadata(name)
    assert (over_grpc["name"], over_grpc["versions"], over_grpc["platform"]) == (name, ["1"], "onnx_onnxv1")
    for key in ("inputs", "outputs"):
        # JSON of a protobuf message writes int64 as strings; the REST tensors also carry parameters
        got = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in over_grpc[key]]
        assert got == [(t["name"], t["datatype"], t["shape"]) for t in over_rest[key]]


@pytest.mark.parametrize("name", ["seed", "classifier", "recommender"])
def test_infer_equals_runtime(client, runtimes, name: str) -> None:
    runtime = runtimes[name]
    feeds = _feeds(runtime, rows=3, seed=len(name))
    result = client.infer(name, _inputs(grpcclient, feeds))
    expected = runtime.run(feeds)
    response = result.get_response()
    assert [o.name for o in response.outputs] == list(expected)
    assert len(response.raw_output_contents) == len(expected)
    for out in response.outputs:
        got = result.as_numpy(out.name)
        assert got.dtype == expected[out.name].dtype
        np.testing.assert_array_equal(got, expected[out.name])  # NaN (a padding-only row) equals NaN
    if name != "seed":
        masks = [o for o in response.outputs if o.name.endswith("mask")]
        assert masks and all(o.datatype == "BOOL" for o in masks)


def test_requested_outputs_version_and_id(client, runtimes) -> None:
    feeds = _feeds(runtimes["recommender"], rows=4, seed=7)
    wanted = ["item_emb_mask", "user_vec"]
    result = client.infer(
        "recommender",
        _inputs(grpcclient, feeds),
        model_version="1",
        outputs=[grpcclient.InferRequestedOutput(n) for n in wanted],
        request_id="req-7",
    )
    response = result.get_response()
    assert (response.id, response.model_version) == ("req-7", "1")
    assert [o.name for o in response.outputs] == wanted
    expected = runtimes["recommender"].run(feeds)
    for name in wanted:
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])
    assert result.as_numpy("item_emb_mask").dtype == np.bool_


def test_typed_contents(stub, runtimes) -> None:
    """Inputs in ``contents.int64_contents`` instead of raw bytes; outputs still come back raw."""
    feeds = _feeds(runtimes["classifier"], rows=2, seed=3)
    ids = feeds["token_ids"]
    request = service_pb2.ModelInferRequest(model_name="classifier")
    tensor = request.inputs.add(name="token_ids", datatype="INT64", shape=ids.shape)
    tensor.contents.int64_contents.extend(ids.reshape(-1).tolist())
    response = stub.ModelInfer(request)
    expected = runtimes["classifier"].run(feeds)
    assert [o.name for o in response.outputs] == list(expected)
    for out, raw in zip(response.outputs, response.raw_output_contents):
        got = np.frombuffer(raw, expected[out.name].dtype).reshape(list(out.shape))
        np.testing.assert_array_equal(got, expected[out.name])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda r: (r.inputs.add(name="input_ids", datatype="INT64", shape=[1, 10]), r.raw_input_contents.append(b"\0" * 8)),
            "input 'input_ids': raw_input_contents[0] is 8 bytes but shape [1, 10] of INT64 needs 80",
        ),
        (
            lambda r: (r.inputs.add(name="input_ids", datatype="INT64", shape=[1, 10]), r.raw_input_contents.extend([b"", b""])),
            "the request has 2 raw_input_contents for 1 inputs; give one per input, in input order",
        ),
        (
            lambda r: r.inputs.add(name="input_ids", datatype="INT64", shape=[1, 2]).contents.fp32_contents.extend([1.0, 2.0]),
            "input 'input_ids': INT64 contents go in int64_contents, but fp32_contents is set",
        ),
        (
            lambda r: r.inputs.add(name="input_ids", datatype="INT64", shape=[1, -2]),
            "input 'input_ids': 'shape' must be a list of non-negative integers below 2**63, found [1, -2]",
        ),
    ],
    ids=["raw-size", "raw-count", "wrong-contents", "negative-dim"],
)  # fmt: skip
def test_malformed_requests_are_invalid_argument(stub, build, message: str) -> None:
    request = service_pb2.ModelInferRequest(model_name="seed")
    build(request)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message


def test_bad_ids_are_invalid_argument_with_the_rest_message(client, rest) -> None:
    ids = {"input_ids": np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 5000]], dtype=np.int64)}
    over_grpc, over_rest = _errors(client, rest, "seed", ids)
    assert over_grpc.status() == "StatusCode.INVALID_ARGUMENT" and over_rest.status() == "400"
    assert "id 5000" in over_grpc.message()
    assert over_grpc.message() == over_rest.message()


@pytest.mark.parametrize(("model", "version"), [("nope", ""), ("seed", "2")])
def test_unknown_model_or_version_is_not_found(client, rest, model: str, version: str) -> None:
    ids = {"input_ids": np.zeros((1, 10), np.int64)}
    over_grpc, over_rest = _errors(client, rest, model, ids, model_version=version)
    assert over_grpc.status() == "StatusCode.NOT_FOUND" and over_rest.status() == "404"
    assert over_grpc.message() == over_rest.message()
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata(model, version)
    assert info.value.status() == "StatusCode.NOT_FOUND" and info.value.message() == over_rest.message()


def test_over_a_limit_is_resource_exhausted(client, rest) -> None:
    ids = {"input_ids": np.zeros((MAX_BATCH + 1, 10), np.int64)}
    over_grpc, over_rest = _errors(client, rest, "seed", ids)
    assert over_grpc.status() == "StatusCode.RESOURCE_EXHAUSTED" and over_rest.status() == "413"
    assert "--max-batch" in over_grpc.message()
    assert over_grpc.message() == over_rest.message()


def test_message_over_the_body_limit_is_resource_exhausted(stub) -> None:
    request = service_pb2.ModelInferRequest(model_name="seed")
    request.inputs.add(name="input_ids", datatype="INT64", shape=[1, 10])
    request.raw_input_contents.append(b"\0" * (2**20 + 1))
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrent_requests_get_their_own_answers(urls: tuple[str, str], runtimes) -> None:
    batches = [_feeds(runtimes["classifier"], rows=1 + i % 3, seed=20 + i) for i in range(24)]

    def call(feeds: dict[str, np.ndarray]) -> np.ndarray:
        c = grpcclient.InferenceServerClient(urls[1])
        try:
            return c.infer("classifier", _inputs(grpcclient, feeds)).as_numpy("mask")
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, batches))
    for feeds, got in zip(batches, results):
        np.testing.assert_array_equal(got, runtimes["classifier"].run(feeds)["mask"])


def test_grpc_requests_are_in_the_metrics(client, urls: tuple[str, str]) -> None:
    ids = {"input_ids": np.full((1, 10), 5000, np.int64)}
    with pytest.raises(InferenceServerException):
        client.infer("seed", _inputs(grpcclient, ids))
    text = RawHttp(urls[0]).get("/metrics").text
    assert 'embed_runtime_infer_failures_total{model="seed",status="400"}' in text
