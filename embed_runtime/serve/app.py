"""The ASGI application: V2 endpoints over loaded :class:`embed_runtime.Runtime` objects.

Request bodies are read on the event loop (with a size limit); decoding, inference and encoding run in a
worker thread through an :class:`anyio.CapacityLimiter`, so the loop never blocks on a model and at most
``max_concurrency`` requests are being decoded, run or encoded at once. The rest wait for a slot.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from time import perf_counter
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embed_runtime.contract import PREFIX
from embed_runtime.errors import EmbedRuntimeError, InferenceError
from embed_runtime.serve.access_log import AccessLogMiddleware
from embed_runtime.serve.metrics import UNKNOWN_MODEL, ServeMetrics
from embed_runtime.serve.protocol import (
    InferRequest,
    PayloadTooLargeError,
    ProtocolError,
    encode_infer_response,
    parse_infer_request,
    v2_datatype,
)

logger = logging.getLogger(__name__)

MODEL_VERSION = "1"
"""The only version of each model: a served file has no history."""

HEADER_LENGTH = "Inference-Header-Content-Length"

# zlib ``wbits`` per accepted request Content-Encoding (tritonclient's request_compression_algorithm).
_DECOMPRESS_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class ServeConfig:
    """Server settings.

    Attributes:
        max_body_bytes: largest request body accepted (after decompression); larger ones get 413.
        max_concurrency: requests decoded, run or encoded at the same time; the others wait.
        access_log: whether to log one line per request to ``embed_runtime.serve.access``.
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_concurrency: int = 4
    access_log: bool = True


def _package_version() -> str:
    try:
        return version("embed-runtime")
    except PackageNotFoundError:
        return "unknown"


def _tensor_metadata(spec: Any, extra: dict[str, int]) -> dict[str, Any]:
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
    """One named model: its runtime and the V2 metadata computed once at start."""

    def __init__(self, name: str, runtime: Any) -> None:
        self.name = name
        self.runtime = runtime
        self.output_names = [spec.name for spec in runtime.outputs]
        self.metadata = {
            "name": name,
            "versions": [MODEL_VERSION],
            "platform": "onnx_onnxv1",
            "inputs": [
                _tensor_metadata(s, {"input_dim": s.input_dim, "input_length": s.input_length})
                for s in runtime.inputs
            ],
            "outputs": [_tensor_metadata(s, {}) for s in runtime.outputs],
            "parameters": {k: v for k, v in runtime.metadata.raw.items() if k.startswith(PREFIX)},
        }
        self.config = {  # Triton's model configuration, for clients that read it (perf_analyzer...)
            "name": name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "max_batch_size": 0,
            "input": [_tensor_config(t) for t in self.metadata["inputs"]],
            "output": [_tensor_config(t) for t in self.metadata["outputs"]],
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


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    decoder = zlib.decompressobj(_DECOMPRESS_WBITS[encoding])
    try:
        data = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"request body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise PayloadTooLargeError(f"request body decompresses to more than the limit of {limit} bytes")
    return data


class InferenceApp:
    """Handlers and shared state; :func:`create_app` wires them into a Starlette app."""

    def __init__(self, models: Mapping[str, Any], config: ServeConfig) -> None:
        self.models = {name: ServedModel(name, rt) for name, rt in models.items()}
        self.config = config
        self.metrics = ServeMetrics()
        self.limiter = anyio.CapacityLimiter(config.max_concurrency)
        self.server_metadata = {
            "name": "embed-runtime",
            "version": _package_version(),
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

    async def infer(self, request: Request) -> Response:
        """``POST /v2/models/{model}[/versions/{version}]/infer``."""
        start = perf_counter()
        label = UNKNOWN_MODEL
        self.metrics.in_flight.inc()
        try:
            model = self._model(request)
            label = model.name
            body = await self._read_body(request)
            header_length = self._header_length(request)
            encoding = request.headers.get("content-encoding", "identity").lower()
            if encoding != "identity" and encoding not in _DECOMPRESS_WBITS:
                raise ProtocolError(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
            payload, json_length = await anyio.to_thread.run_sync(
                self._infer_sync, model, body, header_length, encoding, limiter=self.limiter
            )
        except HTTPException as exc:
            response = _error(exc.status_code, exc.detail)
        except ProtocolError as exc:
            response = _error(exc.status, str(exc))
        except InferenceError as exc:
            response = _error(500, str(exc))
        except EmbedRuntimeError as exc:
            response = _error(400, str(exc))
        except Exception as exc:
            logger.exception("inference request on model %r failed", label)
            response = _error(500, f"internal server error: {type(exc).__name__}: {exc}")
        else:
            if json_length is None:
                response = Response(payload, media_type="application/json")
            else:
                response = Response(
                    payload,
                    media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(json_length)},
                )
        finally:
            self.metrics.in_flight.dec()
        self.metrics.observe(label, response.status_code, perf_counter() - start)
        return response

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"request body of {declared} bytes is over the limit of {limit} bytes")
        chunks = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _header_length(request: Request) -> int | None:
        value = request.headers.get(HEADER_LENGTH)
        if value is None:
            return None
        if not value.strip().isdigit():
            raise ProtocolError(f"{HEADER_LENGTH} must be a non-negative integer, found {value!r}")
        return int(value)

    def _infer_sync(
        self, model: ServedModel, body: bytes, header_length: int | None, encoding: str
    ) -> tuple[bytes, int | None]:
        """Decode, run and encode one request; runs in a worker thread."""
        if encoding != "identity":
            body = _decompress(body, encoding, self.config.max_body_bytes)
        request = parse_infer_request(body, header_length)
        selected = model.select_outputs(request)
        names = None if request.outputs is None else [name for name, _ in selected]
        start = perf_counter()
        results = model.runtime.run(request.inputs, outputs=names)
        self.metrics.run_seconds.labels(model.name).observe(perf_counter() - start)
        return encode_infer_response(
            model.name, MODEL_VERSION, request.id, [(name, results[name], b) for name, b in selected]
        )


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404/405 (unknown route, wrong method) as ``{"error": ...}``."""
    return _error(exc.status_code, exc.detail)


def create_app(models: Mapping[str, Any], config: ServeConfig | None = None) -> Starlette:
    """The V2 ASGI app serving ``models`` (name to loaded runtime)."""
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
            Route(base + "/infer", handlers.infer, methods=["POST"]),
        ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.handlers = handlers
    if config.access_log:
        app.add_middleware(AccessLogMiddleware)
    return app
