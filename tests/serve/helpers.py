"""Helpers for the server tests: a raw HTTP client and starting/stopping a server subprocess."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Reply:
    """A raw HTTP response."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body as text."""
        return self.content.decode()

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.content)


class RawHttp:
    """Plain ``http.client`` requests (one connection each), so tests send exactly the bytes they mean."""

    def __init__(self, url: str) -> None:
        self.host, port = url.split(":")
        self.port = int(port)

    def request(
        self,
        method: str,
        path: str,
        content: bytes | Iterable[bytes] = b"",
        headers: dict[str, str] | None = None,
        json_body: Any = None,
    ) -> Reply:
        """Send one request and read the whole response."""
        if json_body is not None:
            content = json.dumps(json_body).encode()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            chunked = not isinstance(content, bytes)
            conn.request(method, path, body=content, headers=headers or {}, encode_chunked=chunked)
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def get(self, path: str) -> Reply:
        """``GET path``."""
        return self.request("GET", path)

    def post(self, path: str, content: bytes | Iterable[bytes] = b"", **kwargs: Any) -> Reply:
        """``POST path`` with ``content`` or ``json_body``."""
        return self.request("POST", path, content, **kwargs)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
"""The repository's committed example models (``models/<name>/model.onnx``)."""

SERVE_MODULE = (sys.executable, "-m", "embed_runtime.serve")
"""``python -m embed_runtime.serve``."""

SERVE_CLI = (sys.executable, "-m", "embed_runtime.cli", "serve")
"""``embed-runtime serve``, through the runtime's CLI."""


def start_server(
    args: list[str], log_path: Path, command: tuple[str, ...] = SERVE_MODULE
) -> tuple[subprocess.Popen, str]:
    """Start ``COMMAND ARGS`` on a free port; wait until it is ready.

    Returns the process and its ``host:port``.
    """
    port = free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [*command, *args, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if RawHttp(url).get("/v2/health/ready").status_code == 200:
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not become ready:\n{log_path.read_text()}")


def json_infer_http(url: str, model: str, ids: list[int]) -> tuple[bytes, bytes]:
    """The raw HTTP/1.1 head and JSON body of an inference of one row of ``ids`` on ``model``."""
    tensor = {"name": "input_ids", "shape": [1, len(ids)], "datatype": "INT64", "data": ids}
    body = json.dumps({"inputs": [tensor]}).encode()
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {url}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head, body


def stop_server(proc: subprocess.Popen) -> int:
    """SIGTERM the server and return its exit status."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
