"""``embed-runtime serve`` beside MLServer: ``python benchmarks/serve_load.py --mlserver [--write-docs]``.

For each model (``models/seed``, ``models/tagger``), three servers run at once on loopback ports: ours
(``python -m embed_runtime.serve``, REST and ``--grpc-port``; with its defaults, then ``--workers 2``) and
MLServer (from the separate virtual environment ``.venv-mlserver``, ``pip install mlserver onnxruntime
"uvloop<0.22"``: MLServer 1.7.1's inference workers fail to start with uvloop 0.22 and later) serving the
same ``.onnx`` through :data:`MLSERVER_RUNTIME`, a custom ``MLModel`` that runs onnxruntime, written with
its settings into a temporary folder. For the :data:`BATCHED` models, two more run next: ours and MLServer
with dynamic (MLServer: adaptive) batching of up to :data:`BATCH` rows. Each answer is first checked
against the runtime in-process, over both protocols. Then the same client code loads each: REST with V2
JSON tensors both ways (MLServer has no binary tensor extension), one keep-alive connection per client;
gRPC ``ModelInfer`` with ``raw_input_contents``, one channel (TCP connection) per client, requests and
responses kept as bytes. For each protocol and concurrency the servers run in ABBA order (A B C C B A),
``--cell-seconds`` each after 0.5 s of warm-up. RSS is the sum over the server's process tree (MLServer
runs inference in a worker process). Without ``.venv-mlserver`` the side by side is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from _docs import write_between
from serve_load import ROOT, _client, _load, free_port, make_request

import embed_runtime

MLSERVER_VENV = ROOT / ".venv-mlserver"
MODELS = ("seed", "tagger")
CONCURRENCY = (1, 8, 32)
PROTOCOLS = ("REST", "gRPC")
DOCS = ROOT / "docs" / "serve.md"
BEGIN, END = "<!-- serve_load --mlserver: begin -->", "<!-- serve_load --mlserver: end -->"
INFER = "/inference.GRPCInferenceService/ModelInfer"
BATCH = 32
"""Dynamic batching's rows per batch, in both servers, for the models in :data:`BATCHED`."""
BATCHED = ("tagger",)
BATCHED_CONCURRENCY = (8, 32)
BATCH_WINDOW = 0.001
"""Seconds the first request of a batch waits for it to fill: MLServer's ``max_batch_time``, our
``--max-queue-delay-us``."""

MLSERVER_RUNTIME = """
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        values = self.session.run(self.names, feeds)
        outputs = [NumpyCodec.encode_output(n, v) for n, v in zip(self.names, values)]
        return InferenceResponse(model_name=self.name, outputs=outputs)
"""
"""The MLServer custom runtime: onnxruntime on the decoded inputs, every output back."""


class Server:
    """One server subprocess with a REST and a gRPC port."""

    def __init__(self, label: str, command: list[str], cwd: Path | None, rest: int, grpc_port: int) -> None:
        self.label, self.rest, self.grpc = label, rest, grpc_port
        self.log = (cwd or Path("/tmp")) / f"{label.split()[0]}-{rest}.log"
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{label} exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{rest}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{label} did not become ready")

    def rss_mb(self) -> float:
        """RSS of the server and its children, MiB."""
        root = psutil.Process(self.proc.pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_ours(name: str, path: Path, workers: int, batch: tuple[int, float] | None = None) -> Server:
    """``embed-runtime serve`` with its defaults but ``--workers`` and, with ``batch`` (rows, seconds),
    dynamic batching of up to that many rows in as many slots, waiting up to that long for a batch to
    fill (``--max-batch-size --max-concurrency --max-queue-delay-us``), no access log. With the default
    ``--max-batch-size auto``, the label says what the server's warm-up decided (from its log)."""
    rest, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "embed_runtime.serve", f"{name}={path}", "--port", str(rest)]
    command += ["--grpc-port", str(grpc_port), "--no-access-log", "--log-level", "info"]
    command += ["--workers", str(workers)]
    label = "embed-runtime serve" + (f" --workers {workers}" if workers > 1 else "")
    if batch:
        command += ["--max-batch-size", str(batch[0]), "--max-concurrency", str(batch[0])]
        command += ["--max-queue-delay-us", str(round(batch[1] * 1e6))]
        label += f", batching {batch[0]}"
    server = Server(label, command, None, rest, grpc_port)
    if not batch:
        on = f"model {name!r}: dynamic batching on" in server.log.read_text()
        server.label += f" (auto: batching {'on' if on else 'off'})"
    return server


def start_mlserver(
    name: str, path: Path, folder: Path, parallel_workers: int, batch: tuple[int, float] | None = None
) -> Server:
    """MLServer with :data:`MLSERVER_RUNTIME` serving ``path`` as ``name``, from ``folder``; with ``batch``,
    its adaptive batching (``max_batch_size``, ``max_batch_time`` in seconds)."""
    rest, grpc_port, metrics = free_port(), free_port(), free_port()
    folder.mkdir()
    (folder / "runtime.py").write_text(MLSERVER_RUNTIME)
    ports = {"http_port": rest, "grpc_port": grpc_port, "metrics_port": metrics}
    settings = {**ports, "debug": False, "parallel_workers": parallel_workers, "logging_level": "WARNING"}
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / name).mkdir()
    runtime = {"implementation": "runtime.OnnxModel", "parameters": {"uri": str(path)}}
    batching = {"max_batch_size": batch[0], "max_batch_time": batch[1]} if batch else {}
    (folder / name / "model-settings.json").write_text(json.dumps({"name": name, **runtime, **batching}))
    label = f"MLServer {mlserver_version()}" + (f", batching {batch[0]}" if batch else "")
    command = [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)]
    return Server(label, command, folder, rest, grpc_port)


def mlserver_version() -> str:
    found = list((MLSERVER_VENV / "lib").glob("python*/site-packages/mlserver-*.dist-info"))
    match = re.search(r"mlserver-(.+)\.dist-info", found[0].name) if found else None
    return match.group(1) if match else "?"


def rest_request(name: str, port: int, feeds: dict[str, np.ndarray]) -> bytes:
    """The HTTP/1.1 request of a V2 JSON inference of ``feeds`` (JSON outputs back)."""
    inputs = [
        {"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.ravel().tolist()}
        for k, v in feeds.items()
    ]
    body = json.dumps({"inputs": inputs}).encode()
    head = (
        f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def grpc_request(name: str, feeds: dict[str, np.ndarray]) -> bytes:
    """A serialized ``ModelInferRequest`` of ``feeds`` in ``raw_input_contents``."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=name)
    for key, value in feeds.items():
        request.inputs.add(name=key, datatype="INT64", shape=value.shape)
        request.raw_input_contents.append(value.tobytes())
    return request.SerializeToString()


def check_answers(server: Server, name: str, feeds: dict[str, np.ndarray], expected: dict[str, Any]) -> None:
    """One REST (JSON) and one gRPC (raw) answer of ``server`` must match the runtime in-process."""
    import grpc
    from tritonclient.grpc import service_pb2

    body = rest_request(name, server.rest, feeds).partition(b"\r\n\r\n")[2]
    url = f"http://127.0.0.1:{server.rest}/v2/models/{name}/infer"
    post = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=30) as reply:
        outputs = {o["name"]: o for o in json.loads(reply.read())["outputs"]}
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc}") as channel:
        raw = channel.unary_unary(INFER)(grpc_request(name, feeds), timeout=30)
    response = service_pb2.ModelInferResponse.FromString(raw)
    for key, value in expected.items():
        got = np.array(outputs[key]["data"], dtype=value.dtype).reshape(outputs[key]["shape"])
        np.testing.assert_allclose(got, value, rtol=1e-6, err_msg=f"{server.label} REST {key}")
        index = [o.name for o in response.outputs].index(key)
        got = np.frombuffer(response.raw_output_contents[index], value.dtype).reshape(value.shape)
        np.testing.assert_allclose(got, value, rtol=1e-6, err_msg=f"{server.label} gRPC {key}")


async def _grpc_client(
    port: int, request: bytes, stop: float, budget: list[int], latencies: list[float]
) -> int:
    """One channel sending ``request`` until ``stop``; returns its error count."""
    import grpc

    errors = 0
    target = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.unary_unary(INFER)
        while time.perf_counter() < stop and budget[0] > 0:
            budget[0] -= 1
            start = time.perf_counter()
            try:
                await call(request, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - start)
    return errors


def load_once(
    server: Server, protocol: str, requests: dict[str, bytes], clients: int, seconds: float
) -> dict:
    """One timed load of ``server`` (after 0.5 s of the same load, not counted)."""
    port, client = (server.rest, _client) if protocol == "REST" else (server.grpc, _grpc_client)
    figures: dict = {}
    for duration in (0.5, seconds):
        figures = asyncio.run(_load(port, requests[protocol], clients, duration, 1_000_000, client))
    return {**figures, "rss_mb": server.rss_mb()}


def summary(runs: list[dict]) -> dict:
    ms = np.concatenate([np.array(r["latencies"]) for r in runs]) * 1000
    return {
        "requests_per_s": round(ms.size / sum(r["seconds"] for r in runs), 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "errors": sum(r["errors"] for r in runs),
        "requests": int(ms.size),
        "rss_mb": round(max(r["rss_mb"] for r in runs), 1),
    }


def load_cells(
    model: str,
    servers: list[Server],
    feeds: dict[str, np.ndarray],
    concurrency: tuple[int, ...],
    seconds: float,
) -> list[dict]:
    """Every protocol and concurrency of ``servers``, each cell's runs in ABBA order, alternated by cell."""
    cells: list[dict] = []
    for protocol in PROTOCOLS:
        for clients in concurrency:
            order = servers + servers[::-1] if len(cells) % 2 == 0 else servers[::-1] + servers
            runs: dict[str, list[dict]] = {s.label: [] for s in servers}
            for server in order:
                requests = {
                    "REST": rest_request(model, server.rest, feeds),
                    "gRPC": grpc_request(model, feeds),
                }
                runs[server.label].append(load_once(server, protocol, requests, clients, seconds))
            cell = {"model": model, "protocol": protocol, "clients": clients}
            cells.append(cell | {"servers": {label: summary(r) for label, r in runs.items()}})
            print(json.dumps(cells[-1]), file=sys.stderr)
    return cells


def side_by_side(args: argparse.Namespace, tmp: Path) -> dict | None:
    """Every cell of the side by side (``args``: :func:`add_arguments`' and ``seq``); ``None`` (with a
    message) when MLServer is not installed."""
    if not (MLSERVER_VENV / "bin" / "mlserver").exists():
        print(
            f"skipping the MLServer side by side: {MLSERVER_VENV} has no mlserver (python3.11 -m venv "
            f"{MLSERVER_VENV.name} && {MLSERVER_VENV.name}/bin/pip install mlserver onnxruntime 'uvloop<0.22')",
            file=sys.stderr,
        )
        return None
    cells: list[dict] = []
    shapes: dict[str, dict[str, list[int]]] = {}
    for model in MODELS:
        path = ROOT / "models" / model / "model.onnx"
        rt = embed_runtime.load(path)
        feeds = make_request(rt, 1, args.seq)[0]
        window = (BATCH, args.batch_window_ms / 1000)
        groups: list[tuple[tuple[int, ...], tuple[int, float] | None, tuple[int, ...]]]
        groups = [((1, 2), None, CONCURRENCY)]  # our workers, the batching of all, the concurrency
        if model in BATCHED:
            groups.append(((1,), window, BATCHED_CONCURRENCY))
        for ours, batch, concurrency in groups:
            servers: list[Server] = []
            try:
                for workers in ours:
                    servers.append(start_ours(model, path, workers, batch))
                folder = tmp / f"mlserver-{model}-{len(cells)}"
                servers.append(start_mlserver(model, path, folder, args.mlserver_parallel_workers, batch))
                for server in servers:
                    check_answers(server, model, feeds, rt.run(feeds))
                cells += load_cells(model, servers, feeds, concurrency, args.cell_seconds)
            finally:
                for server in servers:
                    server.stop()
        shapes[model] = {k: list(v.shape) for k, v in feeds.items()}
    return {"cells": cells, "request_shapes": shapes}


def markdown(result: dict, context: str) -> str:
    """The side by side as a Markdown table (each cell's lines beside the MLServer of the same settings,
    cells in model, protocol, clients order), with the ratios the issue sets as targets."""
    lines = [
        context,
        "",
        "| model | protocol | clients | server | requests/s | / MLServer | p50 ms | p99 ms | errors | RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    cells = sorted(
        result["cells"], key=lambda c: (MODELS.index(c["model"]), c["protocol"] == "gRPC", c["clients"])
    )
    for cell in cells:
        theirs = next(label for label in cell["servers"] if label.startswith("MLServer"))
        base = cell["servers"][theirs]["requests_per_s"]
        for label, f in cell["servers"].items():
            ratio = f"**{f['requests_per_s'] / base:.2f}**" if label != theirs else ""
            lines.append(
                f"| {cell['model']} | {cell['protocol']} | {cell['clients']} | {label} | "
                f"{f['requests_per_s']:,.0f} | {ratio} | {f['p50_ms']} | {f['p99_ms']} | {f['errors']} | "
                f"{f['rss_mb']:.0f} |"
            )
    rates = {
        (c["model"], c["protocol"], c["clients"], label): f["requests_per_s"]
        for c in cells
        for label, f in c["servers"].items()
    }
    lines += ["", "gRPC / REST requests/s, per server:", ""]
    for label in dict.fromkeys(label for c in cells for label in c["servers"]):
        ratios = [
            f"{model} {clients}: {rate / rates[model, 'REST', clients, label]:.2f}"
            for (model, protocol, clients, name), rate in rates.items()
            if name == label and protocol == "gRPC"
        ]
        lines.append(f"- {label}: " + ", ".join(ratios))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``serve_load.py``'s options for the side by side."""
    parser.add_argument(
        "--mlserver",
        action="store_true",
        help="instead: seed and tagger beside MLServer (.venv-mlserver), REST and gRPC, 1/8/32 clients",
    )
    parser.add_argument("--cell-seconds", type=float, default=2.5, help="--mlserver: seconds per run")
    parser.add_argument(
        "--mlserver-parallel-workers", type=int, default=1, help="--mlserver: its parallel_workers"
    )
    window = "--mlserver: batching lines' max_batch_time / --max-queue-delay-us (default: %(default)s)"
    parser.add_argument("--batch-window-ms", type=float, default=BATCH_WINDOW * 1000, help=window)
    parser.add_argument(
        "--write-docs", action="store_true", help="--mlserver: put the table in docs/serve.md"
    )


def main(args: argparse.Namespace) -> int:
    """``--mlserver``: the side by side; print it, optionally into the docs."""
    started = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory() as tmp:
        result = side_by_side(args, Path(tmp))
    if result is None:
        return 0
    versions = ", ".join(f"{p} {version(p)}" for p in ("onnxruntime", "uvicorn", "grpcio"))
    context = (
        f"Run on {started} with `python benchmarks/serve_load.py --mlserver --write-docs` "
        f"({args.cell_seconds:g} s per run after 0.5 s of warm-up, two runs per server per line in ABBA "
        f'order; MLServer `parallel_workers` {args.mlserver_parallel_workers}; "batching {BATCH}": ours with '
        f"`--max-batch-size {BATCH} --max-concurrency {BATCH} --max-queue-delay-us "
        f"{round(args.batch_window_ms * 1000)}`, MLServer with `max_batch_size` {BATCH} and `max_batch_time` "
        f"{args.batch_window_ms / 1000:g}; one row per request, "
        f"shapes {result['request_shapes']}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs shared with other work and with the load client; "
        f"Python {platform.python_version()}, {versions}):"
    )
    text = markdown(result, context)
    print(text)
    if args.write_docs:
        write_between(DOCS, BEGIN, END, text)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    return 0
