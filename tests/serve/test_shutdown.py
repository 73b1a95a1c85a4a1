"""SIGTERM lets an in-flight request finish, then the server exits cleanly (started as ``embed-runtime serve``)."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from .helpers import SERVE_CLI, json_infer_http


def test_sigterm_finishes_in_flight_request(model_paths: dict[str, Path], launch, tmp_path: Path) -> None:
    proc, url = launch([str(model_paths["words"]), "--no-access-log"], SERVE_CLI)
    host, port = url.split(":")
    head, body = json_infer_http(url, "words", [5, 6, 0])
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A slow client: headers and half the body, then SIGTERM, then the rest.
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "server exited with a request in flight"
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=2).close()
        sock.sendall(body[len(body) // 2 :])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", response
    outputs = json.loads(rest.partition(b"\r\n\r\n")[2])["outputs"]
    assert [o["name"] for o in outputs] == ["embedding", "mask"]
    assert outputs[1]["data"] == [True, True, False]
    # uvicorn re-raises the signal once it has shut down, so the exit status is -SIGTERM
    assert proc.wait(timeout=10) in (0, -signal.SIGTERM)
    log = (tmp_path / "server.log").read_text()
    assert "Waiting for connections to close" in log
    assert "POST /v2/models/words/infer" not in log  # --no-access-log
