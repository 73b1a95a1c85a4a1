"""One log line per HTTP request: client, request line, status, response bytes and duration."""

from __future__ import annotations

import logging
from time import perf_counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("embed_runtime.serve.access")


class AccessLogMiddleware:
    """Pure ASGI middleware (no per-request task or body buffering) writing to ``embed_runtime.serve.access``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through and log it once the response is done (or failed)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500
        size = 0

        async def send_and_record(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            client = scope.get("client")
            query = scope.get("query_string", b"")
            path = scope["path"] + ("?" + query.decode("latin-1") if query else "")
            access_logger.info(
                '%s "%s %s HTTP/%s" %d %dB %.2fms',
                f"{client[0]}:{client[1]}" if client else "-",
                scope["method"],
                path,
                scope.get("http_version", "1.1"),
                status,
                size,
                (perf_counter() - start) * 1000,
            )
