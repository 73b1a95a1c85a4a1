"""Readiness: live as soon as the server answers, ready once every model has run its warm-up inference,
and both cheap while inference runs (no lock or slot shared with it), over REST and gRPC."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2, service_pb2_grpc

from embed_runtime import load
from embed_runtime.contract import EmbeddingInfo
from embed_runtime.serve import create_app

from .conftest import save_model
from .helpers import SERVE_MODULE, RawHttp, free_port, stop_server
from .test_cli import _asgi, _get

LENGTH = 4096
"""Fixed sequence length of the slow model, so that its warm-up is as slow as a request."""

PROBE_SECONDS = 0.5
"""Most a health probe may take while the slow model runs (each run takes seconds)."""


def build_slow(path: Path, layers: int = 80, width: int = 512) -> Path:
    """``input_ids`` (batch, 4096) -> a 10 x width table, then ``layers`` times MatMul + Tanh, summed to
    ``score`` (batch, 4096): about 1 GFLOP a layer per row, a second or more per run on one thread."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["x0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"x{i}", "weight"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"x{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"x{layers}", "axes"], ["score"], keepdims=0))
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", LENGTH])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", LENGTH])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((10, width)).astype(np.float32), "table"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(np.array([-1]), "axes"),
        ],
    )
    return save_model(path, graph, (EmbeddingInfo("slow", ("input_ids",), 10, width, False, None, None),))


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_slow(tmp_path_factory.mktemp("slow") / "slow.onnx")


def _start(args: list[str], log: Path) -> tuple[subprocess.Popen, RawHttp, str]:
    """Start a server and wait until it answers ``live`` (not ``ready``): the process, REST, gRPC address."""
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*SERVE_MODULE, *args, "--port", str(port), "--grpc-port", str(grpc_port), "--threads", "1"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    http = RawHttp(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if http.get("/v2/health/live").status_code == 200:
                return proc, http, f"127.0.0.1:{grpc_port}"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"server did not answer live:\n{log.read_text()}")


def _infer_body() -> bytes:
    ids = [[1] * LENGTH]
    return json.dumps(
        {"inputs": [{"name": "input_ids", "shape": [1, LENGTH], "datatype": "INT64", "data": ids}]}
    ).encode()


def _timed(call: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def test_ready_only_after_warm_up_in_process(model_paths: dict[str, Path]) -> None:
    """Without the app's startup (so without its warm-up thread) the server is live, not ready."""
    app = create_app({"words": load(model_paths["words"], providers="cpu")})
    assert anyio.run(_get, app, "/v2/health/live")[0] == 200
    status, body = anyio.run(_get, app, "/v2/health/ready")
    assert (status, json.loads(body)) == (503, {"ready": False})
    status, body = anyio.run(_get, app, "/v2/models/words/ready")
    assert (status, json.loads(body)) == (503, {"name": "words", "ready": False})
    app.state.handlers.warm_up()
    assert anyio.run(_get, app, "/v2/health/ready")[0] == 200
    assert anyio.run(_get, app, "/v2/models/words/ready")[0] == 200


def test_an_app_serves_through_a_second_lifespan(model_paths: dict[str, Path]) -> None:
    """An app started, stopped and started again (as in-process use and tests do) still infers: its
    inference threads outlive a lifespan."""
    app = create_app({"words": load(model_paths["words"], providers="cpu")})
    body = json.dumps(
        {"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 0]}]}
    )

    async def one_lifespan() -> tuple[int, bytes]:
        async with app.router.lifespan_context(app):
            deadline = time.monotonic() + 60
            while not app.state.handlers.is_ready() and time.monotonic() < deadline:
                await anyio.sleep(0.01)  # the lifespan's own warm-up thread
            return await _asgi(app, "POST", "/v2/models/words/infer", body.encode())

    for _ in range(2):
        status, reply = anyio.run(one_lifespan)
        assert status == 200, reply


@pytest.mark.slow
def test_live_before_ready_while_warming_up(
    slow_model: Path, model_paths: dict[str, Path], tmp_path: Path
) -> None:
    proc, http, grpc_address = _start([str(model_paths["words"]), str(slow_model)], tmp_path / "server.log")
    try:
        assert http.get("/v2/health/ready").status_code == 503
        assert http.get("/v2/models/slow/ready").json() == {"name": "slow", "ready": False}
        reply = http.post("/v2/models/slow/infer", _infer_body())
        assert reply.status_code == 503
        assert reply.json()["error"] == "model 'slow' is not ready yet (it is warming up); retry later"
        with grpc.insecure_channel(grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
            assert not stub.ServerReady(service_pb2.ServerReadyRequest()).ready
            assert not stub.ModelReady(service_pb2.ModelReadyRequest(name="slow")).ready
            request = service_pb2.ModelInferRequest(model_name="slow")
            request.inputs.add(name="input_ids", datatype="INT64", shape=[1, LENGTH])
            request.raw_input_contents.append(np.ones(LENGTH, "<i8").tobytes())
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        deadline = time.monotonic() + 60
        while http.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)
        assert http.post("/v2/models/slow/infer", _infer_body()).status_code == 200
    finally:
        stop_server(proc)
    log = (tmp_path / "server.log").read_text()
    assert "model 'words' is ready" in log and "model 'slow' is ready" in log


def _in_flight(http: RawHttp) -> float:
    line = next(
        ln for ln in http.get("/metrics").text.splitlines() if ln.startswith("embed_runtime_infer_in_flight ")
    )
    return float(line.split()[1])


@pytest.mark.slow
def test_probes_stay_fast_under_load(slow_model: Path, tmp_path: Path) -> None:
    """With --max-concurrency 1, one slow inference running and one waiting for the slot, every probe
    answers within PROBE_SECONDS, before either inference is answered."""
    proc, http, grpc_address = _start([str(slow_model), "--max-concurrency", "1"], tmp_path / "server.log")
    try:
        while http.get("/v2/health/ready").status_code != 200:
            time.sleep(0.05)
        replies: list[int] = []
        workers = [
            threading.Thread(
                target=lambda: replies.append(http.post("/v2/models/slow/infer", _infer_body()).status_code)
            )
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 10
        while _in_flight(http) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with grpc.insecure_channel(grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            probes = [
                lambda: http.get("/v2/health/live").status_code == 200,
                lambda: http.get("/v2/health/ready").status_code == 200,
                lambda: http.get("/v2/models/slow/ready").status_code == 200,
                lambda: stub.ServerReady(service_pb2.ServerReadyRequest()).ready,
                lambda: stub.ModelReady(service_pb2.ModelReadyRequest(name="slow")).ready,
            ]
            for probe in probes * 3:
                ok, seconds = _timed(probe)
                assert ok and seconds < PROBE_SECONDS, seconds
        assert not replies, "an inference finished before the probes: they did not run under load"
        for worker in workers:
            worker.join(60)
        assert replies == [200, 200]
    finally:
        stop_server(proc)


def _slow_request() -> Any:
    request = service_pb2.ModelInferRequest(model_name="slow")
    request.inputs.add(name="input_ids", datatype="INT64", shape=[1, LENGTH])
    request.raw_input_contents.append(np.ones(LENGTH, "<i8").tobytes())
    return request


@pytest.mark.slow
def test_sigterm_lets_a_grpc_call_and_a_rest_request_finish(slow_model: Path, tmp_path: Path) -> None:
    """With --max-concurrency 1, a slow gRPC call runs and a REST request waits for the one slot they
    share when SIGTERM comes: both are answered, then the server exits."""
    proc, http, grpc_address = _start([str(slow_model), "--max-concurrency", "1"], tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 60
        while http.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answers: dict[str, Any] = {}
        with grpc.insecure_channel(grpc_address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            calls = [
                threading.Thread(target=lambda: answers.update(grpc=stub.ModelInfer(_slow_request()))),
                threading.Thread(
                    target=lambda: answers.update(rest=http.post("/v2/models/slow/infer", _infer_body()))
                ),
            ]
            calls[0].start()
            while _in_flight(http) < 1:
                time.sleep(0.01)
            calls[1].start()
            while _in_flight(http) < 2:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            for call in calls:
                call.join(60)
        assert list(answers) == ["grpc", "rest"]  # the REST request waited for the slot the call held
        assert [o.name for o in answers["grpc"].outputs] == ["score"]
        assert answers["rest"].status_code == 200
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            stop_server(proc)
