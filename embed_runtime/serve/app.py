"""The ASGI application: V2 endpoints over loaded :class:`embed_runtime.Runtime` objects.

An inference request is first admitted: at most ``2 * max_concurrency`` are admitted at once (from reading
the body to handing the response to the server), the others wait before their body is read, so the
memory held by bodies and responses is bounded. Request bodies are read on the event loop (with a size
limit); decoding, the limit checks, inference and encoding run in a worker thread through an
:class:`anyio.CapacityLimiter`, so the loop never blocks on a model and at most ``max_concurrency``
requests are being decoded, run or encoded at once. The rest wait for a slot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

import embed_runtime
from embed_runtime import ConfigurationError, Runtime, TensorInfo
from embed_runtime.contract import PREFIX
from embed_runtime.errors import EmbedRuntimeError, InferenceError
from embed_runtime.serve.access_log import AccessLogMiddleware
from embed_runtime.serve.codec import decode_inputs, encode_infer_response
from embed_runtime.serve.compression import WBITS, decompress
from embed_runtime.serve.limits import Limits, check_inputs, check_outputs, check_results, shape_stand_ins
from embed_runtime.serve.metrics import UNKNOWN_MODEL, ServeMetrics
from embed_runtime.serve.protocol import (
    InferRequest,
    PayloadTooLargeError,
    ProtocolError,
    parse_infer_request,
    v2_datatype,
)

logger = logging.getLogger(__name__)

MODEL_VERSION = "1"
"""The only version of each model: a served file has no history."""

HEADER_LENGTH = "Inference-Header-Content-Length"

ADMITTED_PER_SLOT = 2
"""Inference requests admitted (holding a body or a response) per ``max_concurrency`` slot."""

_SEND_CHUNK = 1 << 20


@dataclass(frozen=True)
class ServeConfig:
    """Server settings.

    Attributes:
        max_body_bytes: largest request body accepted (after decompression); larger ones get 413.
        max_concurrency: requests decoded, run or encoded at the same time; the others wait.
        access_log: whether to log one line per request to ``embed_runtime.serve.access``.
        limits: the request :class:`~embed_runtime.serve.limits.Limits` of every model ...
        model_limits: ... but those named here.
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_concurrency: int = 4
    access_log: bool = True
    limits: Limits = field(default_factory=Limits)
    model_limits: Mapping[str, Limits] = field(default_factory=dict)


def _tensor_metadata(spec: TensorInfo, extra: dict[str, int | None]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": spec.name,
        "datatype": v2_datatype(spec.dtype),
        "shape": [-1 if d is None else int(d) for d in spec.shape],
    }
    params = {key: value for key, value in extra.items() if value is not None}
    if params:
        meta["parameters"] = params
    return meta


def _tensor_config(meta: dict[str, Any]) -> dict[str, Any]:
    return {"name": meta["name"], "data_type": "TYPE_" + meta["datatype"], "dims": meta["shape"]}


class ServedModel:
    """One named model: its runtime, its limits and the V2 metadata computed once at start."""

    def __init__(self, name: str, runtime: Runtime, limits: Limits) -> None:
        self.name = name
        self.runtime = runtime
        self.limits = limits
        self.max_json_values = limits.json_values(len(runtime.inputs))
        self.output_names = [spec.name for spec in runtime.outputs]
        inputs = [
            _tensor_metadata(s, {"input_dim": s.input_dim, "input_length": s.input_length})
            for s in runtime.inputs
        ]
        outputs = [_tensor_metadata(s, {}) for s in runtime.outputs]
        self.metadata: dict[str, Any] = {
            "name": name,
            "versions": [MODEL_VERSION],
            "platform": "onnx_onnxv1",
            "inputs": inputs,
            "outputs": outputs,
            "parameters": {k: v for k, v in runtime.metadata.raw.items() if k.startswith(PREFIX)},
        }
        # Triton's model configuration, for clients that read it (perf_analyzer...)
        self.config: dict[str, Any] = {
            "name": name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": 0,
            "input": [_tensor_config(t) for t in inputs],
            "output": [_tensor_config(t) for t in outputs],
        }

    def select_outputs(self, request: InferRequest) -> list[tuple[str, bool]]:
        """``(name, binary)`` of each output to send back, in response order."""
        if request.outputs is None:
            return [(name, request.binary_output) for name in self.output_names]
        selected = []
        for out in request.outputs:
            if out.name not in self.output_names:
                raise ProtocolError(
                    f"model {self.name!r} has no output {out.name!r}; its outputs are "
                    + ", ".join(self.output_names)
                )
            selected.append((out.name, request.binary_output if out.binary is None else out.binary))
        return selected

    def infer(
        self, body: bytes | bytearray, header_length: int | None, metrics: ServeMetrics
    ) -> tuple[bytes, int | None]:
        """Check, decode, run and encode one request; runs in a worker thread."""
        request = parse_infer_request(body, header_length, self.max_json_values)
        check_inputs(self.name, request.inputs, self.limits)
        selected = self.select_outputs(request)
        check_outputs(self.name, self.runtime, selected, shape_stand_ins(request.inputs), self.limits)
        inputs = decode_inputs(request, body)
        names = None if request.outputs is None else [n for n, _ in selected]
        request_id = request.id
        del request  # its parsed JSON data is no longer needed: free it before the run
        start = perf_counter()
        results = self.runtime.run(inputs, outputs=names)
        metrics.run_seconds.labels(self.name).observe(perf_counter() - start)
        check_results(self.name, self.runtime, selected, inputs, results, self.limits)
        return encode_infer_response(
            self.name, MODEL_VERSION, request_id, [(name, results[name], b) for name, b in selected]
        )


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

    def __init__(self, models: Mapping[str, Runtime], config: ServeConfig) -> None:
        unknown = sorted(set(config.model_limits) - set(models))
        if unknown:
            raise ConfigurationError(
                f"limits are given for model(s) {', '.join(map(repr, unknown))}, which are not served; "
                "the models are " + (", ".join(map(repr, models)) or "none")
            )
        self.models = {
            name: ServedModel(name, rt, config.model_limits.get(name, config.limits))
            for name, rt in models.items()
        }
        self.config = config
        self.metrics = ServeMetrics()
        self.limiter = anyio.CapacityLimiter(config.max_concurrency)
        self.admission = anyio.Semaphore(ADMITTED_PER_SLOT * config.max_concurrency)
        self.server_metadata = {
            "name": "embed-runtime",
            "version": embed_runtime.__version__,
            "extensions": ["binary_tensor_data"],
        }

    def _model(self, request: Request) -> ServedModel:
        name = request.path_params["model"]
        model = self.models.get(name)
        if model is None:
            raise HTTPException(
                404, f"unknown model {name!r}; this server has: " + ", ".join(sorted(self.models))
            )
        version_ = request.path_params.get("version", MODEL_VERSION)
        if version_ != MODEL_VERSION:
            raise HTTPException(404, f"model {name!r} has no version {version_!r}; it has {MODEL_VERSION}")
        return model

    async def live(self, request: Request) -> Response:
        """``GET /v2/health/live``."""
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        """``GET /v2/health/ready``: every model is loaded before the app starts."""
        return JSONResponse({"ready": True})

    async def server_info(self, request: Request) -> Response:
        """``GET /v2``."""
        return JSONResponse(self.server_metadata)

    async def model_metadata(self, request: Request) -> Response:
        """``GET /v2/models/{model}[/versions/{version}]``."""
        return JSONResponse(self._model(request).metadata)

    async def model_config(self, request: Request) -> Response:
        """``GET /v2/models/{model}[/versions/{version}]/config`` (Triton's model configuration extension)."""
        return JSONResponse(self._model(request).config)

    async def model_ready(self, request: Request) -> Response:
        """``GET /v2/models/{model}[/versions/{version}]/ready``."""
        model = self._model(request)
        return JSONResponse({"name": model.name, "ready": True})

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
            payload, json_length = await anyio.to_thread.run_sync(
                self._infer_sync, model, body, header_length, encoding, limiter=self.limiter
            )
        except HTTPException as exc:
            return label, _error(exc.status_code, exc.detail)
        except ProtocolError as exc:
            return label, _error(exc.status, str(exc))
        except ClientDisconnect:
            return label, _error(400, "the client closed the connection before sending the whole body")
        except InferenceError as exc:
            return label, _error(500, str(exc))
        except EmbedRuntimeError as exc:
            return label, _error(400, str(exc))
        except Exception as exc:
            logger.exception("inference request on model %r failed", label)
            return label, _error(500, f"internal server error: {type(exc).__name__}: {exc}")
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
        """Decompress, then :meth:`ServedModel.infer`; runs in a worker thread."""
        data = body if encoding == "identity" else decompress(body, encoding, self.config.max_body_bytes)
        return model.infer(data, header_length, self.metrics)


class _Endpoint:
    """A raw ASGI endpoint for a :class:`Route` (Starlette wraps plain functions and methods as
    request/response handlers)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown route, wrong method) as ``{"error": ...}``.

    Registered for :class:`HTTPException` only; Starlette types every handler as taking an ``Exception``,
    so the handler narrows it as Starlette's own does.
    """
    assert isinstance(exc, HTTPException)
    return _error(exc.status_code, exc.detail)


def create_app(models: Mapping[str, Runtime], config: ServeConfig | None = None) -> Starlette:
    """The V2 ASGI app serving ``models`` (name to loaded runtime).

    Raises :class:`~embed_runtime.ConfigurationError` when ``config.model_limits`` names a model that is
    not in ``models``.
    """
    config = config or ServeConfig()
    handlers = InferenceApp(models, config)
    model_paths = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
    routes = [
        Route("/v2/health/live", handlers.live, methods=["GET"]),
        Route("/v2/health/ready", handlers.ready, methods=["GET"]),
        Route("/v2", handlers.server_info, methods=["GET"]),
        Route("/metrics", handlers.prometheus, methods=["GET"]),
    ]
    for base in model_paths:
        routes += [
            Route(base, handlers.model_metadata, methods=["GET"]),
            Route(base + "/ready", handlers.model_ready, methods=["GET"]),
            Route(base + "/config", handlers.model_config, methods=["GET"]),
            Route(base + "/infer", _Endpoint(handlers.infer), methods=["POST"]),
        ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.handlers = handlers
    if config.access_log:
        app.add_middleware(AccessLogMiddleware)
    return app
