"""gRPC admission: ModelInfer calls beyond ``calls_admitted`` are refused at once, so that the pool
keeps threads for ServerReady and ModelReady while inference is saturated, and a call whose client has
gone while it waited for a slot is not run.

The scenario runs in a child process: it imports the server's own message classes, which cannot share a
process with tritonclient's (the other gRPC tests import those)."""

from __future__ import annotations

import json
import subprocess
import sys

from .helpers import REPO_MODELS, free_port

SCENARIO = """
import json, os, sys, time, traceback
import grpc, numpy as np, embed_runtime
from embed_runtime.serve.app import InferenceApp, ServeConfig
from embed_runtime.serve.grpc import PROBE_THREADS, SERVICE, calls_admitted, start_grpc_server
from embed_runtime.serve.proto import grpc_predict_v2_pb2 as pb

model, address = sys.argv[1:]
def main():
    app = InferenceApp({"seed": embed_runtime.load(model, providers="cpu")},
                       ServeConfig(max_concurrency=1, grpc_address=address))
    app.warm_up()
    server = start_grpc_server(app, address)
    channel = grpc.insecure_channel(address)
    def method(name, request, response):
        return channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=request.SerializeToString,
                                   response_deserializer=response.FromString)
    ready = method("ServerReady", pb.ServerReadyRequest, pb.ServerReadyResponse)
    model_ready = method("ModelReady", pb.ModelReadyRequest, pb.ModelReadyResponse)
    infer = method("ModelInfer", pb.ModelInferRequest, pb.ModelInferResponse)
    request = pb.ModelInferRequest(
        model_name="seed",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input_ids", datatype="INT64", shape=[1, 10])],
        raw_input_contents=[np.ones((1, 10), np.int64).tobytes()],
    )
    app.slots.acquire()  # the one slot is busy (a long REST request)
    gone = infer.future(request, timeout=2)  # admitted; its deadline passes while it waits for the slot
    time.sleep(0.5)
    kept = infer.future(request, timeout=60)  # admitted; runs once the slot is free
    time.sleep(0.5)
    waiting = [infer.future(request, timeout=60) for _ in range(calls_admitted(app) - 2)]  # admitted, wait
    time.sleep(0.5)
    flood = [infer.future(request, timeout=60) for _ in range(2 * PROBE_THREADS)]  # refused
    start = time.monotonic()
    probes = [ready(pb.ServerReadyRequest(), timeout=5).ready,
              model_ready(pb.ModelReadyRequest(name="seed"), timeout=5).ready]
    probe_seconds = time.monotonic() - start
    refused = [(str(f.exception().code()), f.exception().details()) for f in flood]
    gone_code = str(gone.exception().code())
    time.sleep(0.5)  # the server's own deadline comes a transit time after the client's
    app.slots.release()
    kept_name = kept.result().model_name
    waited = sum(f.result().model_name == "seed" for f in waiting)
    runs = app.metrics.registry.get_sample_value(
        "embed_runtime_inference_duration_seconds_count", {"model": "seed"})
    print(json.dumps({"probes": probes, "probe_seconds": probe_seconds, "refused": refused,
                      "gone": gone_code, "kept": kept_name, "waited": waited, "runs": runs}))
    server.stop(0)

try:
    main()
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)  # threads still waiting for the held slot would keep the process alive
sys.stdout.flush()
os._exit(0)
"""


def test_probes_answer_while_inference_is_saturated() -> None:
    address = f"127.0.0.1:{free_port()}"
    child = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(REPO_MODELS / "seed" / "model.onnx"), address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    assert seen["probes"] == [True, True] and seen["probe_seconds"] < 5
    busy = (
        "the server is busy: 32 inference calls are in already, the most it admits with --max-concurrency 1"
    )
    assert len(seen["refused"]) == 8
    assert all(code == "StatusCode.RESOURCE_EXHAUSTED" and busy in text for code, text in seen["refused"])
    assert seen["gone"] == "StatusCode.DEADLINE_EXCEEDED" and seen["kept"] == "seed"
    assert seen["waited"] == 30, "admitted calls that waited for the slot were not all answered"
    assert seen["runs"] == 31, "the call whose deadline passed while it waited was run anyway"
