"""The ASGI application: V2 endpoints over loaded :class:`embed_runtime.Runtime` objects.

An inference request is first admitted: at most ``2 * max_concurrency`` are admitted at once (from reading
the body to handing the response to the server), the others wait before their body is read, so the
memory held by bodies and responses is bounded. Request bodies are read on the event loop (with a size
limit); decoding, the limit checks, inference and encoding run in a worker thread (one per admitted
request, :attr:`InferenceApp.threads`), so the loop never blocks on a model, and in one of
``max_concurrency`` slots (:attr:`InferenceApp.slots`), so that at most that many requests are being
decoded, run or encoded at once. The rest wait for a slot; a request waiting for its dynamic batch gives
its slot back meanwhile (:mod:`~embed_runtime.serve.batcher`).

The app's startup warms every model up in a thread (``/v2/health/live`` answers meanwhile, ``ready``
after) and, with ``ServeConfig.grpc_address``, starts the gRPC API (its own thread pool; its calls take
the same ``max_concurrency`` slots, :attr:`InferenceApp.slots`). With a model repository
(:mod:`~embed_runtime.serve.repository`) it also serves the V2 repository extension.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

import embed_runtime
from embed_runtime import ConfigurationError, Runtime
from embed_runtime.serve.access_log import AccessLogMiddleware
from embed_runtime.serve.batcher import AUTO, Batcher, BatchSettings
from embed_runtime.serve.compression import WBITS, decompress
from embed_runtime.serve.limits import Limits
from embed_runtime.serve.metrics import UNKNOWN_MODEL, ServeMetrics
from embed_runtime.serve.protocol import PayloadTooLargeError, ProtocolError
from embed_runtime.serve.repository import ModelRepository, ServedModels
from embed_runtime.serve.served import MODEL_VERSION, ServedModel, failure

if TYPE_CHECKING:
    from embed_runtime.serve.workers import WorkerBoard

logger = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"

ADMITTED_PER_SLOT = 2
"""Inference requests admitted (holding a body or a response) per ``max_concurrency`` slot."""

_SEND_CHUNK = 1 << 20

OPENAPI = Path(__file__).with_name("openapi.json")
"""The REST API's OpenAPI description (KServe's published V2 spec adjusted to what is implemented),
served at ``/v2/openapi.json``."""


@dataclass(frozen=True)
class ServeConfig:
    """Server settings.

    Attributes:
        max_body_bytes: largest request body accepted (after decompression); larger ones get 413.
        max_concurrency: requests decoded, run or encoded at the same time; the others wait.
        access_log: whether to log one line per request to ``embed_runtime.serve.access``.
        limits: the request :class:`~embed_runtime.serve.limits.Limits` of every model ...
        model_limits: ... but those named here.
        grpc_address: ``host:port`` to serve the gRPC API on (:mod:`~embed_runtime.serve.grpc`), started
            and stopped with the app; ``None``: no gRPC.
        graceful_timeout: seconds in-flight gRPC calls get to finish when the app stops.
        batching: dynamic batching (:mod:`~embed_runtime.serve.batcher`) of every model (``None``: off;
            the default batches a model where its warm-up finds it pays) ...
        model_batching: ... but those named here (``None``: off for that model).
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_concurrency: int = 4
    access_log: bool = True
    limits: Limits = field(default_factory=Limits)
    model_limits: Mapping[str, Limits] = field(default_factory=dict)
    grpc_address: str | None = None
    graceful_timeout: float = 30.0
    batching: BatchSettings | None = AUTO
    model_batching: Mapping[str, BatchSettings | None] = field(default_factory=dict)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _BodyResponse(Response):
    """A response whose body goes to the server in chunks of :data:`_SEND_CHUNK` bytes, so that the server
    never holds a second copy of a large body."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = memoryview(self.body)
        for start in range(0, max(len(body), 1), _SEND_CHUNK):
            chunk = body[start : start + _SEND_CHUNK]
            more = start + _SEND_CHUNK < len(body)
            await send({"type": "http.response.body", "body": bytes(chunk), "more_body": more})


class InferenceApp:
    """Handlers and shared state; :func:`create_app` wires them into a Starlette app."""

    def __init__(
        self,
        models: Mapping[str, Runtime],
        config: ServeConfig,
        repository: ModelRepository | None = None,
        workers: WorkerBoard | None = None,
    ) -> None:
        on_disk = repository.names() if repository else []
        names = [*models, *on_disk]
        for what, named in (
            ("limits are", config.model_limits),
            ("batching (--max-batch-size, --max-queue-delay-us) is", config.model_batching),
        ):
            unknown = sorted(set(named) - set(names))
            if unknown:
                raise ConfigurationError(
                    f"{what} given for model(s) {', '.join(map(repr, unknown))}, which are not served; "
                    "the models are " + (", ".join(map(repr, names)) or "none")
                )
        clash = sorted(set(models) & set(on_disk))
        if clash:
            raise ConfigurationError(
                f"model(s) {', '.join(map(repr, clash))} are given as paths and are in the model repository "
                "too; name them differently with NAME=PATH"
            )
        self.config = config
        self.workers = workers
        """With ``--workers N``: ready also needs every worker warm (:mod:`~embed_runtime.serve.workers`)."""
        served: dict[str, Mapping[str, ServedModel]] = {
            name: {MODEL_VERSION: ServedModel(name, rt, self.limits(name))} for name, rt in models.items()
        }
        for name in on_disk:
            assert repository is not None
            served[name] = repository.build(name, self.limits(name), {})
        self.models = ServedModels(served, repository, set(models))
        for model in self.models.all():
            self.setup(model)
        self.metrics = ServeMetrics()
        self.slots = threading.BoundedSemaphore(config.max_concurrency)
        """The inference slots REST requests (in :attr:`threads`) and gRPC calls both take."""
        self.admitted = ADMITTED_PER_SLOT * config.max_concurrency
        """Inference requests admitted at once: REST requests (:attr:`admission`), gRPC calls likewise."""
        self.admission = anyio.Semaphore(self.admitted, fast_acquire=True)
        self.threads = ThreadPoolExecutor(self.admitted, thread_name_prefix="embed-runtime-infer")
        """Threads REST requests are decoded, run and encoded in (cheaper hand-off than anyio.to_thread's)."""
        self.server_metadata: dict[str, Any] = {
            "name": "embed-runtime",
            "version": embed_runtime.__version__,
            "extensions": ["binary_tensor_data"],
        }
        self.openapi_spec = OPENAPI.read_bytes()

    def limits(self, name: str) -> Limits:
        """The request limits of model ``name``."""
        return self.config.model_limits.get(name, self.config.limits)

    def setup(self, model: ServedModel) -> None:
        """Give ``model`` its batcher, when batching is on for it; before its warm-up (which probes it)."""
        settings = self.config.model_batching.get(model.name, self.config.batching)  # None: off
        if settings is not None:
            model.batcher = Batcher(model.name, model.runtime, settings, model.limits.max_ids)

    def _model(self, request: Request) -> ServedModel:
        return self.models.lookup(request.path_params["model"], request.path_params.get("version"))

    def is_ready(self, model: ServedModel | None = None) -> bool:
        """Whether ``model`` (``None``: every model) has run its warm-up inference, in every worker (reads
        of flags: no lock, no waiting)."""
        own = model.ready if model else all(m.ready for m in self.models.all())
        return own and (self.workers is None or self.workers.all_ready())

    def warm_up(self) -> None:
        """Warm up every model in turn (in a thread started with the app)."""
        for model in self.models.all():
            model.warm_up()
        if self.workers is not None and all(model.ready for model in self.models.all()):
            self.workers.mark(True)

    async def live(self, request: Request) -> Response:
        """``GET /v2/health/live``: 200 as soon as the server answers."""
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        """``GET /v2/health/ready``: 200 once every model is warm, 503 before."""
        ready = self.is_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def openapi(self, request: Request) -> Response:
        """``GET /v2/openapi.json``: :data:`OPENAPI`."""
        return Response(self.openapi_spec, media_type="application/json")

    async def server_info(self, request: Request) -> Response:
        """``GET /v2``."""
        return JSONResponse(self.server_metadata)

    async def model_metadata(self, request: Request) -> Response:
        """``GET /v2/models/{model}[/versions/{version}]``."""
        params = request.path_params
        return JSONResponse(self.models.metadata(params["model"], params.get("version")))

    async def model_config(self, request: Request) -> Response:
        """``GET /v2/models/{model}[/versions/{version}]/config`` (Triton's model configuration extension)."""
        return JSONResponse(self._model(request).config)

    async def model_ready(self, request: Request) -> Response:
        """``GET /v2/models/{model}[/versions/{version}]/ready``."""
        model = self._model(request)
        ready = self.is_ready(model)
        return JSONResponse({"name": model.name, "ready": ready}, status_code=200 if ready else 503)

    async def repository_index(self, request: Request) -> Response:
        """``POST /v2/repository/index``: every model on disk or loaded, each version with its state."""
        return JSONResponse(self.models.index())

    async def repository_change(self, request: Request) -> Response:
        """``POST /v2/repository/models/{model}/load`` and ``.../unload``: loading (and warming up) runs in
        a worker thread outside the inference slots; the change is published at once when done."""
        name, action = request.path_params["model"], request.url.path.rsplit("/", 1)[1]
        try:
            if action == "load":
                await anyio.to_thread.run_sync(self.models.load, name, self.limits(name), self.setup)
            else:
                self.models.unload(name)
        except Exception as exc:
            return _error(*failure(exc, f"{action} of model {name!r}", logger))
        return JSONResponse({})

    async def prometheus(self, request: Request) -> Response:
        """``GET /metrics``."""
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v2/models/{model}[/versions/{version}]/infer``, as an ASGI app: admitted (see the module
        docstring) until the response has been handed to the server."""
        start = perf_counter()
        self.metrics.in_flight.inc()
        try:
            async with self.admission:
                label, response = await self._infer(Request(scope, receive))
                await response(scope, receive, send)
        finally:
            self.metrics.in_flight.dec()
        self.metrics.observe(label, response.status_code, perf_counter() - start)

    async def _infer(self, request: Request) -> tuple[str, Response]:
        """The metrics label and the response of one admitted inference request."""
        label = UNKNOWN_MODEL
        try:
            model = self._model(request)
            label = model.name
            body = await self._read_body(request)
            header_length = self._header_length(request)
            encoding = request.headers.get("content-encoding", "identity").lower()
            if encoding != "identity" and encoding not in WBITS:
                raise ProtocolError(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
            payload, json_length = await asyncio.get_running_loop().run_in_executor(
                self.threads, self._infer_sync, model, body, header_length, encoding
            )
        except ClientDisconnect:
            return label, _error(400, "the client closed the connection before sending the whole body")
        except Exception as exc:
            return label, _error(*failure(exc, f"inference request on model {label!r}", logger))
        if json_length is None:
            return label, _BodyResponse(payload, media_type="application/json")
        return label, _BodyResponse(
            payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
        )

    async def _read_body(self, request: Request) -> bytearray:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"request body of {declared} bytes is over the limit of {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
            body += chunk
        return body

    @staticmethod
    def _header_length(request: Request) -> int | None:
        value = request.headers.get(HEADER_LENGTH)
        if value is None:
            return None
        if not value.strip().isdigit():
            raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, found {value!r}")
        return int(value)

    def _infer_sync(
        self, model: ServedModel, body: bytearray, header_length: int | None, encoding: str
    ) -> tuple[bytes, int | None]:
        """Decompress, then :meth:`ServedModel.infer`, in one of the :attr:`slots`; runs in a worker thread."""
        with self.slots:
            data = body if encoding == "identity" else decompress(body, encoding, self.config.max_body_bytes)
            return model.infer(data, header_length, self.metrics, self.slots)


class _Endpoint:
    """A raw ASGI endpoint for a :class:`Route` (Starlette wraps plain functions and methods as
    request/response handlers)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown route, wrong method) and an unknown model or version (404) as
    ``{"error": ...}``.

    Registered for :class:`HTTPException` and :class:`ProtocolError` only; Starlette types every handler as
    taking an ``Exception``, so the handler narrows it as Starlette's own does.
    """
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, exc.detail)
    assert isinstance(exc, ProtocolError)
    return _error(exc.status, str(exc))


def _lifespan(handlers: InferenceApp) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """Start the models' warm-up in a thread (the server answers ``live`` meanwhile, ``ready`` after) and,
    when configured, the gRPC server; stop the gRPC server with the app."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        threading.Thread(target=handlers.warm_up, name="embed-runtime-warm-up", daemon=True).start()
        address, server = handlers.config.grpc_address, None
        if address is not None:
            from embed_runtime.serve.grpc import start_grpc_server  # grpcio is only needed for gRPC

            server = start_grpc_server(handlers, address)
        try:
            yield
        finally:
            if handlers.workers is not None:
                handlers.workers.mark(False)
            if server is not None:
                await anyio.to_thread.run_sync(server.stop(handlers.config.graceful_timeout).wait)
            handlers.metrics.close()

    return lifespan


def create_app(
    models: Mapping[str, Runtime],
    config: ServeConfig | None = None,
    repository: ModelRepository | None = None,
    workers: WorkerBoard | None = None,
) -> Starlette:
    """The V2 ASGI app serving ``models`` (name to loaded runtime) and every model of ``repository``, which
    it loads here, with the repository extension's endpoints.

    Raises :class:`~embed_runtime.ConfigurationError` when ``config.model_limits`` names a model that is
    not served, or a model is both in ``models`` and in the repository.
    """
    config = config or ServeConfig()
    handlers = InferenceApp(models, config, repository, workers)
    model_paths = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    routes = [
        Route("/v2/health/live", handlers.live, methods=["GET"]),
        Route("/v2/health/ready", handlers.ready, methods=["GET"]),
        Route("/v2", handlers.server_info, methods=["GET"]),
        Route("/v2/openapi.json", handlers.openapi, methods=["GET"]),
        Route("/metrics", handlers.prometheus, methods=["GET"]),
    ]
    for base in model_paths:
        routes += [
            Route(base, handlers.model_metadata, methods=["GET"]),
            Route(base + "/ready", handlers.model_ready, methods=["GET"]),
            Route(base + "/config", handlers.model_config, methods=["GET"]),
            Route(base + "/infer", _Endpoint(handlers.infer), methods=["POST"]),
        ]
    if repository is not None:
        routes += [
            Route("/v2/repository/index", handlers.repository_index, methods=["POST"]),
            Route("/v2/repository/models/{model}/load", handlers.repository_change, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", handlers.repository_change, methods=["POST"]),
        ]
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, ProtocolError: _http_error},
        lifespan=_lifespan(handlers),
    )
    app.state.handlers = handlers
    if config.access_log:
        app.add_middleware(AccessLogMiddleware)
    return app
