"""Bounded load test of ``embed-runtime serve`` against a bare Starlette + onnxruntime reference.

Loopback only. For each server: start it as a subprocess, check one answer against the runtime in-process,
then run ``--concurrency`` clients, each on one keep-alive connection sending the same pre-encoded request
back to back, for ``--duration`` seconds (and at most ``--max-requests`` requests), and stop; ``--rounds`` times per
server, in ABBA order. Reports
requests/s, p50/p99 latency, errors and the server's RSS before and after.

    python benchmarks/serve_load.py [MODEL.onnx] [--duration 20] [--concurrency 8] [--json-out FILE]

MODEL defaults to models/seed/model.onnx when present, else a stand-in model (a 1000x64 table, mask) is
built. The reference server (``--reference-server``, started by this script) speaks only the binary
tensor subset the load uses: it parses the JSON header, wraps the raw ids, runs onnxruntime in a worker
thread under the same concurrency limit, and returns raw outputs; the ratio of the two shows what the
full server (validation, V2 codec, metrics) costs. Ours runs with dynamic batching off there (the
reference does not batch); ``--batching`` adds a line with it on (``auto``: the server's default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import embed_runtime

ROOT = Path(__file__).resolve().parent.parent
SEED_MODEL = ROOT / "models" / "seed" / "model.onnx"
HEADER = "Inference-Header-Content-Length"


def build_stand_in(path: Path) -> Path:
    """A 1000x64 float32 table with a ``mask`` output and the contract's metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from embed_runtime.contract import EmbeddingInfo, ModelMetadata

    table = np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["embedding"]),
            helper.make_node("Equal", ["input_ids", "zero"], ["is_pad"]),
            helper.make_node("Not", ["is_pad"], ["mask"]),
        ],
        "stand_in",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", "seq", 64]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "seq"]),
        ],
        initializer=[numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(0), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    info = EmbeddingInfo("embedding", ("input_ids",), 1000, 64, True, 0, "mask")
    helper.set_model_props(model, ModelMetadata(embeddings=(info,)).to_props())
    onnx.save(model, path)
    return path


def reference_app(path: str, max_concurrency: int) -> Any:
    """The minimal reference: one Starlette route calling onnxruntime directly, binary tensors only."""
    import anyio
    import onnxruntime as ort
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    options = ort.SessionOptions()  # the runtime's defaults: no spinning of idle pool threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    limiter = anyio.CapacityLimiter(max_concurrency)

    async def infer(request: Request) -> Response:
        body = await request.body()
        length = int(request.headers[HEADER])
        header = json.loads(body[:length])
        feed, offset = {}, length
        for tensor in header["inputs"]:
            size = tensor["parameters"]["binary_data_size"]
            feed[tensor["name"]] = np.frombuffer(body, np.int64, size // 8, offset).reshape(tensor["shape"])
            offset += size
        values = await anyio.to_thread.run_sync(session.run, None, feed, limiter=limiter)
        blobs = [v.tobytes() for v in values]
        outputs = [
            {"name": o.name, "shape": list(v.shape), "parameters": {"binary_data_size": len(b)}}
            for o, v, b in zip(session.get_outputs(), values, blobs)
        ]
        out_header = json.dumps({"outputs": outputs}).encode()
        return Response(out_header + b"".join(blobs), headers={HEADER: str(len(out_header))})

    return Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], port: int) -> subprocess.Popen:
    """Start a server subprocess and wait until its port accepts connections."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{command} exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{command} did not start")


def serve_command(model: str, port: int, max_concurrency: int, batching: str = "off") -> list[str]:
    """``embed-runtime serve MODEL`` on ``port``, quiet, with ``--max-batch-size`` ``batching`` (``N[:US]``
    adds ``--max-queue-delay-us US``)."""
    size, _, delay = batching.partition(":")
    return [
        *(sys.executable, "-m", "embed_runtime.serve", model, "--port", str(port), "--no-access-log"),
        *("--max-concurrency", str(max_concurrency), "--log-level", "warning", "--max-batch-size", size),
        *(["--max-queue-delay-us", delay] if delay else []),
    ]


def make_request(rt: Any, batch: int, seq: int, seed: int = 0) -> tuple[dict[str, np.ndarray], bytes, int]:
    """Random ids for every input, the binary V2 body asking for binary outputs, and its header length."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in rt.inputs:
        length = spec.shape[1] if spec.shape[1] is not None else seq
        feeds[spec.name] = rng.integers(1, spec.input_dim or 2, (batch, length), dtype=np.int64)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for n, a in feeds.items()
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return feeds, header + b"".join(a.tobytes() for a in feeds.values()), len(header)


def check_answer(port: int, model: str, rt: Any, feeds: dict[str, np.ndarray]) -> None:
    """One tritonclient call must equal the runtime in-process."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = []
    for name, arr in feeds.items():
        tensor = httpclient.InferInput(name, list(arr.shape), "INT64")
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    result = client.infer(model, inputs)
    for name, value in rt.run(feeds).items():
        if not np.array_equal(result.as_numpy(name), value):
            raise AssertionError(f"server output {name!r} differs from the runtime")
    client.close()


async def _client(port: int, request: bytes, stop: float, budget: list[int], latencies: list[float]) -> int:
    """One keep-alive connection sending ``request`` until ``stop``; returns its error count."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    try:
        while time.perf_counter() < stop and budget[0] > 0:
            budget[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(int(ln.split(":")[1]) for ln in lines if ln.lower().startswith("content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            errors += lines[0].split()[1] != "200"
    finally:
        writer.close()
    return errors


async def _load(
    port: int, request: bytes, concurrency: int, duration: float, max_requests: int, client: Any = _client
) -> dict:
    """Run the clients (``client``: :func:`_client` or one of the same signature); the raw latencies (s),
    error count and elapsed seconds."""
    latencies: list[float] = []
    budget = [max_requests]
    start = time.perf_counter()
    errors = await asyncio.gather(
        *(client(port, request, start + duration, budget, latencies) for _ in range(concurrency))
    )
    return {"latencies": latencies, "errors": int(sum(errors)), "seconds": time.perf_counter() - start}


def run_load(command: list[str], port: int, model: str, body: bytes, hlen: int, args: Any) -> dict:
    """Start one server, warm it, load it for ``args.duration`` s, stop it; raw figures and RSS (MiB)."""
    proc = start(command, port)
    try:
        http = (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/octet-stream\r\n{HEADER}: {hlen}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        asyncio.run(_load(port, http, args.concurrency, args.warmup, args.max_requests))
        rss_before = psutil.Process(proc.pid).memory_info().rss
        figures = asyncio.run(_load(port, http, args.concurrency, args.duration, args.max_requests))
        rss_after = psutil.Process(proc.pid).memory_info().rss
        figures.update(server_timings(port))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return {**figures, "rss_before_mb": rss_before / 2**20, "rss_after_mb": rss_after / 2**20}


def server_timings(port: int) -> dict[str, float]:
    """Mean request and ``run()`` time (ms) from the server's /metrics (warm-up included); ``{}`` when it
    has none (the reference)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except urllib.error.HTTPError:
        return {}
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    mean = {}
    for key, metric in (("request", "infer_request_duration_seconds"), ("run", "inference_duration_seconds")):
        total = samples[f"embed_runtime_{metric}_sum"]
        mean[f"server_{key}_ms"] = 1000 * total / samples[f"embed_runtime_{metric}_count"]
    return mean


def summarize(name: str, runs: list[dict]) -> dict:
    """Figures over all rounds of one server: total rate, pooled percentiles, errors, RSS range."""
    ms = np.concatenate([np.array(r["latencies"]) for r in runs]) * 1000
    seconds = sum(r["seconds"] for r in runs)
    return {
        "server": name,
        "requests": int(ms.size),
        "seconds": round(seconds, 1),
        "requests_per_s": round(ms.size / seconds, 1),
        "requests_per_s_per_round": [round(len(r["latencies"]) / r["seconds"], 1) for r in runs],
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": sum(r["errors"] for r in runs),
        "rss_before_mb": round(min(r["rss_before_mb"] for r in runs), 1),
        "rss_after_mb": round(max(r["rss_after_mb"] for r in runs), 1),
    } | {
        key: round(float(np.mean([r[key] for r in runs])), 3)
        for key in ("server_request_ms", "server_run_ms")
        if key in runs[0]
    }


def main() -> int:
    """Run the load against our server and the reference; print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", nargs="?", help="ONNX model (default: models/seed/model.onnx or a stand-in)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="concurrent clients (default: %(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds of load per server (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of load before measuring (default: %(default)s)"
    )
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="request cap per run (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="load runs per server, alternating (default: %(default)s)"
    )
    parser.add_argument("--batch", type=int, default=1, help="rows per request (default: %(default)s)")
    parser.add_argument(
        "--seq", type=int, default=32, help="ids per row for a dynamic axis (default: %(default)s)"
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=4, help="server inference slots (default: %(default)s)"
    )
    parser.add_argument(
        "--batching",
        metavar="N[:US]|auto",
        help="also load our server with dynamic batching: --max-batch-size N --max-queue-delay-us US, or "
        "--max-batch-size auto (the server's default; the other line has batching off)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--reference-server", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    import serve_mlserver  # not at the top: it imports this module

    serve_mlserver.add_arguments(parser)
    args = parser.parse_args()

    if args.reference_server:
        import uvicorn

        app = reference_app(args.reference_server, args.max_concurrency)
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
        return 0

    if args.mlserver:
        return serve_mlserver.main(args)
    with tempfile.TemporaryDirectory() as tmp:
        path = (
            Path(args.model)
            if args.model
            else SEED_MODEL
            if SEED_MODEL.exists()
            else build_stand_in(Path(tmp) / "stand_in.onnx")
        )
        rt = embed_runtime.load(path)
        feeds, body, hlen = make_request(rt, args.batch, args.seq)
        name = "bench"
        ours_port, ref_port = free_port(), free_port()
        ours_cmd = serve_command(f"{name}={path}", ours_port, args.max_concurrency)
        proc = start(ours_cmd, ours_port)
        try:
            check_answer(ours_port, name, rt, feeds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        ref_cmd = [
            sys.executable,
            __file__,
            "--reference-server",
            str(path),
            "--port",
            str(ref_port),
            "--max-concurrency",
            str(args.max_concurrency),
        ]
        servers = {
            "embed-runtime serve --max-batch-size off": (ours_cmd, ours_port),
            "reference (Starlette + onnxruntime)": (ref_cmd, ref_port),
        }
        if args.batching:
            batch_port = free_port()
            batch_cmd = serve_command(f"{name}={path}", batch_port, args.max_concurrency, args.batching)
            servers[f"embed-runtime serve, batching {args.batching}"] = (batch_cmd, batch_port)
        runs: dict[str, list[dict]] = {label: [] for label in servers}
        for round_ in range(args.rounds):  # ABBA order, so drift in the machine's load hits both alike
            for label in list(servers)[:: 1 if round_ % 2 == 0 else -1]:
                runs[label].append(run_load(*servers[label], name, body, hlen, args))
        results = [summarize(label, r) for label, r in runs.items()]
    report = {
        "model": str(path),
        "request": {n: list(a.shape) for n, a in feeds.items()},
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "versions": {
            p: version(p)
            for p in (
                "embed-runtime",
                "onnxruntime",
                "numpy",
                "starlette",
                "uvicorn",
                "httptools",
                "uvloop",
                "orjson",
            )
        }
        | {"python": platform.python_version()},
        "results": results,
        "throughput_ratio": round(results[0]["requests_per_s"] / results[1]["requests_per_s"], 3),
    }
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
