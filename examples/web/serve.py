"""A static server for the browser page: the repository root on a loopback port.

    python examples/web/serve.py [--port 8000]      # then open http://127.0.0.1:8000/examples/web/

The page reads the models from models/ and examples/web/models/, and onnxruntime-web's files from
examples/web/node_modules/ (``npm ci`` in examples/web first). ``.wasm`` is served as ``application/wasm``,
which the browser requires to compile it while it streams in, and ``.mjs`` as JavaScript.
"""

from __future__ import annotations

import argparse
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PAGE = "/examples/web/"


class StaticHandler(SimpleHTTPRequestHandler):
    """Files under the repository root, with the MIME types onnxruntime-web needs, no caching, no log."""

    extensions_map = {  # noqa: RUF012 (the base class declares it as a plain class attribute)
        **SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".json": "application/json",
        ".onnx": "application/octet-stream",
        ".npz": "application/octet-stream",
    }

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start(port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve the repository root on 127.0.0.1:``port`` (0: a free one) in a daemon thread; returns the
    server (``shutdown()`` it) and the page's URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(StaticHandler, directory=str(REPO)))
    threading.Thread(target=server.serve_forever, name="examples-web-server", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}{PAGE}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="loopback port (0: a free one)")
    port = parser.parse_args().port
    server, url = start(port)
    print(f"serving {REPO} - open {url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
