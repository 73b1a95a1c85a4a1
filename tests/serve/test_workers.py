"""``--workers N``: worker processes sharing the REST and gRPC ports, readiness, SIGTERM, memory.

Which worker answered is read from ``/proc`` (psutil): the worker holding the server side of a client's
connection is the one that served it.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper

import embed_runtime
from embed_runtime.contract import EmbeddingInfo
from embed_runtime.serve.metrics import MULTIPROCESS_DIR, ServeMetrics
from embed_runtime.serve.workers import WorkerBoard

from .conftest import save_model
from .helpers import REPO_MODELS, SERVE_CLI, free_port, json_infer_http, start_server

SEED = REPO_MODELS / "seed" / "model.onnx"
IN_FLIGHT = "embed_runtime_infer_in_flight"
MiB = 2**20


def workers_of(parent: int) -> list[psutil.Process]:
    """The worker processes of a server (the parent's children but multiprocessing's resource tracker)."""
    return [p for p in psutil.Process(parent).children() if "spawn_main" in " ".join(p.cmdline())]


def start_workers(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """``embed-runtime serve ARGS`` (with ``--workers 2``), ready, and both its workers started."""
    proc, rest = start_server(args, log, SERVE_CLI)
    deadline = time.monotonic() + 30
    while len(workers_of(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc, rest


def serving_pid(workers: list[psutil.Process], client_port: int) -> int:
    """The pid of the worker holding the server side of the client connection from ``client_port``."""
    for worker in workers:
        for conn in worker.net_connections("tcp"):
            if conn.raddr and conn.raddr.port == client_port:
                return worker.pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def client_ports(server_port: int) -> set[int]:
    """The local ports of this process's open connections to ``server_port``."""
    return {
        c.laddr.port
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and c.raddr.port == server_port and c.status == psutil.CONN_ESTABLISHED
    }


def binary_request(ids: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A binary V2 request of ``ids`` asking for binary outputs, and its headers."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_ids",
                    "datatype": "INT64",
                    "shape": list(ids.shape),
                    "parameters": {"binary_data_size": ids.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + ids.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """``embed-runtime serve seed --workers 2 --grpc-port P``: the process, REST and gRPC addresses."""
    grpc_port = free_port()
    log = tmp_path_factory.mktemp("workers") / "server.log"
    args = [str(SEED), "--workers", "2", "--grpc-port", str(grpc_port), "--no-access-log"]
    proc, rest = start_workers(args, log)
    yield proc, rest, f"127.0.0.1:{grpc_port}"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def _mark_and_wait(board: WorkerBoard, stop: Any) -> None:
    board.mark(True)
    stop.wait(30)


def test_board_counts_live_warm_workers_only() -> None:
    """A worker that died frees its slot for its replacement; ready needs every slot live."""
    spawn = multiprocessing.get_context("spawn")
    board, stop = WorkerBoard(2), spawn.Event()
    board.mark(True)
    board.mark(True)  # twice: still one slot
    assert not board.all_ready()
    dead = spawn.Process(target=board.mark, args=(True,))
    dead.start()
    dead.join(30)
    assert not board.all_ready()  # its slot holds a pid that is gone
    replacement = spawn.Process(target=_mark_and_wait, args=(board, stop))
    replacement.start()
    try:
        deadline = time.monotonic() + 30
        while not board.all_ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        board.mark(False)
        assert not board.all_ready()
    finally:
        stop.set()
        replacement.join(30)


def test_a_warm_up_ending_after_the_worker_stopped_marks_nothing() -> None:
    """At shutdown the app marks its worker gone while the warm-up thread may still be running: a later
    mark(True) from that thread must not mark the stopping worker ready again."""
    board = WorkerBoard(1)
    board.mark(False)  # the lifespan's finally
    board.mark(True)  # the warm-up thread, finishing afterwards
    assert not board.all_ready()


def _killed_mid_request(board: WorkerBoard) -> None:
    metrics = ServeMetrics()
    board.mark(True)
    metrics.in_flight.inc()
    os._exit(9)  # killed (OOM, SIGKILL) before the request ended


def _in_flight() -> list[str]:
    return [line for line in ServeMetrics().render().decode().splitlines() if line.startswith(IN_FLIGHT)]


def test_a_dead_worker_s_in_flight_requests_leave_metrics_with_its_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replacement of a worker killed mid-request takes its slot and drops its in-flight gauge, which
    the summed /metrics would show forever otherwise."""
    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path))
    board = WorkerBoard(1)
    dead = multiprocessing.get_context("spawn").Process(target=_killed_mid_request, args=(board,))
    dead.start()
    dead.join(60)
    assert dead.exitcode == 9 and _in_flight() == [f"{IN_FLIGHT} 1.0"]
    board.mark(True)  # its replacement is warm
    assert _in_flight() == []  # no live worker has counted a request yet: nothing to sum


@pytest.mark.parametrize("value", ["0", "-2", "1000"])
def test_bad_worker_counts_are_one_line_errors(value: str) -> None:
    result = subprocess.run(
        [*SERVE_CLI, str(SEED), "--workers", value], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"--workers {value} is out of range: give 1 to" in result.stderr


def test_a_model_that_does_not_load_stops_every_worker(tmp_path: Path) -> None:
    """Each worker prints the error in one line and exits with uvicorn's startup-failure status; the
    parent stops (rather than starting workers again and again) with status 1."""
    missing = tmp_path / "missing.onnx"
    result = subprocess.run(
        [*SERVE_CLI, str(missing), "--workers", "2", "--port", str(free_port()), "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if "embed-runtime serve: error: worker" in ln]
    assert errors and all(ln.endswith(f"model file not found: {missing}") for ln in errors), result.stderr


def test_workers_with_a_repository_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SERVE_CLI, "--model-repository", str(tmp_path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot be used with --model-repository" in result.stderr


def test_rest_requests_spread_over_workers(served: tuple[subprocess.Popen, str, str]) -> None:
    proc, rest, _ = served
    host, port = rest.split(":")
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    ids = np.arange(1, 11, dtype=np.int64).reshape(1, 10)
    expected = embed_runtime.load(SEED).run({"input_ids": ids})["embedding"]
    body, headers = binary_request(ids)
    pids = set()
    for _ in range(40):  # fresh connections until both workers have answered one
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", "/v2/models/seed/infer", body, headers)
            response = conn.getresponse()
            content = response.read()
            assert response.status == 200
            pids.add(serving_pid(workers, conn.sock.getsockname()[1]))
        finally:
            conn.close()
        length = int(response.getheader("Inference-Header-Content-Length"))
        np.testing.assert_array_equal(
            np.frombuffer(content[length:], np.float32).reshape(expected.shape), expected
        )
        if len(pids) == 2:
            break
    assert pids == {w.pid for w in workers}


def test_keep_alive_responses_are_not_delayed(served: tuple[subprocess.Popen, str, str]) -> None:
    """30 requests one after the other on one connection: well under a second, where Nagle's algorithm
    (a listening socket made without IPPROTO_TCP: asyncio leaves TCP_NODELAY off) made each wait ~40 ms
    for the client's delayed ACK."""
    _, rest, _ = served
    host, port = rest.split(":")
    body, headers = binary_request(np.arange(1, 11, dtype=np.int64).reshape(1, 10))
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/v2/models/seed/infer", body, headers)  # connect and warm up
        conn.getresponse().read()
        start = time.perf_counter()
        for _ in range(30):
            conn.request("POST", "/v2/models/seed/infer", body, headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        assert time.perf_counter() - start < 0.6
    finally:
        conn.close()


def _requests_total(rest: str) -> float:
    """``embed_runtime_infer_requests_total`` of model seed, from one scrape on a fresh connection."""
    host, port = rest.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    (line,) = [
        ln for ln in text.splitlines() if ln.startswith('embed_runtime_infer_requests_total{model="seed"}')
    ]
    return float(line.split()[-1])


def test_metrics_sum_over_workers(served: tuple[subprocess.Popen, str, str]) -> None:
    proc, rest, _ = served
    host, port = rest.split(":")
    workers = workers_of(proc.pid)
    before = _requests_total(rest)
    body, headers = binary_request(np.arange(1, 11, dtype=np.int64).reshape(1, 10))
    pids = set()
    for _ in range(20):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", "/v2/models/seed/infer", body, headers)
        assert conn.getresponse().read() and conn.sock is not None
        pids.add(serving_pid(workers, conn.sock.getsockname()[1]))
        conn.close()
    assert [_requests_total(rest) - before for _ in range(6)] == [20.0] * 6  # whichever worker answers
    assert len(pids) == 2, "the requests all reached one worker: the sum is not tested"


def test_grpc_connections_spread_over_workers(served: tuple[subprocess.Popen, str, str]) -> None:
    proc, _, grpc_url = served
    grpc_port = int(grpc_url.rsplit(":", 1)[1])
    workers = workers_of(proc.pid)
    ids = np.arange(5, 15, dtype=np.int64).reshape(1, 10)
    expected = embed_runtime.load(SEED).run({"input_ids": ids})["embedding"]
    pids = set()
    for _ in range(16):  # each client its own connection: SO_REUSEPORT hashes them over the workers
        client = grpcclient.InferenceServerClient(
            grpc_url, channel_args=[("grpc.use_local_subchannel_pool", 1)]
        )
        try:
            assert client.is_server_ready() and client.is_model_ready("seed")
            tensor = grpcclient.InferInput("input_ids", [1, 10], "INT64")
            tensor.set_data_from_numpy(ids)
            np.testing.assert_array_equal(client.infer("seed", [tensor]).as_numpy("embedding"), expected)
            pids |= {serving_pid(workers, port) for port in client_ports(grpc_port)}
        finally:
            client.close()
        if len(pids) == 2:
            break
    assert pids == {w.pid for w in workers}


def test_both_workers_listen_on_the_grpc_port(served: tuple[subprocess.Popen, str, str]) -> None:
    proc, _, grpc_url = served
    grpc_port = int(grpc_url.rsplit(":", 1)[1])
    for worker in workers_of(proc.pid):
        listening = {c.laddr.port for c in worker.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert grpc_port in listening, worker.pid


def test_sigterm_stops_every_worker_after_in_flight_requests(tmp_path: Path) -> None:
    proc, rest = start_workers([str(SEED), "--workers", "2", "--no-access-log"], tmp_path / "log")
    host, port = rest.split(":")
    workers = workers_of(proc.pid)
    head, body = json_infer_http(rest, "seed", list(range(10)))
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body[: len(body) // 2])  # in flight: half a body sent
        time.sleep(0.5)
        busy = serving_pid(workers, sock.getsockname()[1])
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert psutil.pid_exists(busy) and proc.poll() is None, "stopped with a request in flight"
        sock.sendall(body[len(body) // 2 :])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.startswith(b"HTTP/1.1 200 OK"), response[:200]
    assert proc.wait(timeout=30) == 0
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive and len(gone) == 2


def build_external(path: Path, rows: int, dim: int) -> Path:
    """A one-table Gather model whose ``rows x dim`` float32 table is ONNX external data (offset 0, which
    onnxruntime memory-maps), row ``r`` holding ``r * dim ... r * dim + dim - 1``."""
    data = path.with_name(path.name + ".data")
    np.arange(rows * dim, dtype=np.float32).tofile(data)
    table = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[rows, dim])
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data.name), ("offset", "0"), ("length", str(rows * dim * 4))):
        table.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["embedding"])],
        "big",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", "seq", dim])],
        initializer=[table],
    )
    return save_model(path, graph, (EmbeddingInfo("big", ("input_ids",), rows, dim, False, None, None),))


def memory_mib(pid: int, data_file: Path) -> dict[str, float]:
    """A process's anonymous RSS, and the RSS and PSS of its mappings of ``data_file`` (MiB)."""
    figures = {"anon": 0.0, "file_rss": 0.0, "file_pss": 0.0}
    mapping = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            mapping = fields[5] if len(fields) > 5 else ""
        elif fields[0] == "Anonymous:":
            figures["anon"] += int(fields[1]) / 1024
        elif mapping == str(data_file) and fields[0] in ("Rss:", "Pss:"):
            figures["file_" + fields[0][:-1].lower()] += int(fields[1]) / 1024
    return figures


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/smaps")
def test_workers_share_an_external_table(tmp_path: Path) -> None:
    rows, dim = 262_144, 64  # a 64 MiB table
    table_mib = rows * dim * 4 / MiB
    model = build_external(tmp_path / "big.onnx", rows, dim)
    data = model.with_name("big.onnx.data").resolve()
    proc, rest = start_workers([str(model), "--workers", "2", "--no-access-log"], tmp_path / "log")
    try:
        workers = workers_of(proc.pid)
        before = {w.pid: memory_mib(w.pid, data) for w in workers}
        ids = np.arange(0, rows, 16, dtype=np.int64).reshape(16, -1)  # a row on every page of the table
        body, headers = binary_request(ids)
        host, port = rest.split(":")
        for _ in range(40):  # until both workers have read the whole table
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("POST", "/v2/models/big/infer", body, headers)
            response = conn.getresponse()
            content = response.read()
            conn.close()
            assert response.status == 200
            length = int(response.getheader("Inference-Header-Content-Length"))
            first_values = np.frombuffer(content[length:], np.float32)[: 2 * dim]
            np.testing.assert_array_equal(first_values, np.r_[0:dim, 16 * dim : 17 * dim].astype(np.float32))
            after = {w.pid: memory_mib(w.pid, data) for w in workers}
            if all(m["file_rss"] > 0.9 * table_mib for m in after.values()):
                break
        parent_anon = memory_mib(proc.pid, data)["anon"]
        for pid, figures in after.items():
            assert figures["file_rss"] > 0.9 * table_mib, (pid, figures)  # the table is mapped and read...
            assert figures["file_pss"] < 0.6 * table_mib, (pid, figures)  # ... shared by the two workers
            assert figures["anon"] - before[pid]["anon"] < table_mib / 4, (pid, before[pid], figures)
            assert figures["anon"] - parent_anon < table_mib / 2, (pid, parent_anon, figures)  # no copy
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
