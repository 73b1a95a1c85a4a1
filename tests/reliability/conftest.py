"""Fixtures for the server reliability tests: a live loopback server of the committed models.

The server runs as ``python -m embed_runtime.serve`` in a subprocess (the helpers of ``tests/serve``), with
the default limits; tests talk to it over HTTP only and watch its resident memory with psutil
(:mod:`tests.reliability.live`).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `import tests.serve.helpers` under plain `pytest` too
    sys.path.insert(0, str(ROOT))

from tests.reliability.live import MODELS, LiveServer  # noqa: E402
from tests.serve.helpers import REPO_MODELS, start_server, stop_server  # noqa: E402

if not all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn", "prometheus_client", "psutil")):
    collect_ignore_glob = ["test_server_*.py"]  # the serve extra or psutil is not installed


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of :data:`MODELS` with the default limits and no access log, for one test module."""
    log = tmp_path_factory.mktemp("reliability") / "server.log"
    models = [str(REPO_MODELS / name / "model.onnx") for name in MODELS]
    proc, url = start_server([*models, "--providers", "cpu", "--no-access-log"], log)
    yield LiveServer(proc, url, log)
    assert proc.poll() is None, f"the server died:\n{log.read_text()}"
    stop_server(proc)
