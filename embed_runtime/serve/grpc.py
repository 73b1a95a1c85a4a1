"""The Open Inference Protocol's gRPC API: ``inference.GRPCInferenceService`` (KServe's
``grpc_predict_v2.proto``), served by a ``grpc`` server and its thread pool beside the REST server.

Each call runs in a thread of the pool from start to end: an inference takes one of the app's
``--max-concurrency`` slots (a semaphore REST requests take too) for decoding, running and encoding. This
costs half the server CPU per call of ``grpc.aio`` on the event loop with a hop to a worker thread, which
crossed threads three times per call (``docs/serve.md``, "gRPC against REST").

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer, with tensors either in
``raw_input_contents`` (little-endian, row-major, ``BOOL`` one byte an element, ``BYTES`` each element a
4-byte length and its bytes: tritonclient's default) or in the typed ``contents`` fields; outputs always go
back in ``raw_output_contents``. A ModelInfer request is turned into the V2 HTTP body it stands for (a JSON
header, then the raw blocks as binary tensor data; typed numbers become JSON ``data`` and typed
``bytes_contents`` a binary block in Triton's length-prefixed encoding, so that texts need not be UTF-8 to
reach the runtime's own check) and runs through the same parser, limits, runtime and messages as a REST
request, under the same ``--max-concurrency`` slots. At most :func:`calls_admitted` ModelInfer calls are
taken in at once (each holds a thread of the pool and its message while it waits for a slot); one more is
refused at once with ``RESOURCE_EXHAUSTED`` (:class:`BusyError`), so the pool keeps :data:`PROBE_THREADS`
for readiness probes. The HTTP status of an error maps to a gRPC status
code (:data:`GRPC_CODES`). A message over ``--max-body-mb`` is refused by grpcio itself with
``RESOURCE_EXHAUSTED``.

The message classes are generated from ``proto/grpc_predict_v2.proto`` (see ``proto/README.md`` for the
command). Their package is ``inference``, as in tritonclient's own generated code: the two cannot be
imported into one process (protobuf's default descriptor pool refuses the second definition), which is
why this module is imported only when a gRPC port is given.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]
import numpy as np

from embed_runtime import ConfigurationError
from embed_runtime.serve.metrics import UNKNOWN_MODEL
from embed_runtime.serve.proto import grpc_predict_v2_pb2 as pb
from embed_runtime.serve.protocol import (
    BYTES,
    BYTES_PREFIX,
    V2_TO_NUMPY,
    ProtocolError,
    parse_infer_request,
    parse_shape,
    v2_datatype,
)
from embed_runtime.serve.served import ServedModel, failure

if TYPE_CHECKING:
    from embed_runtime.serve.app import InferenceApp

logger = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"

GRPC_CODES: dict[int, Any] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The gRPC status code of each HTTP status a request can fail with."""

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
"""The ``InferTensorContents`` field that holds each datatype (FP16 has none: it must be sent raw)."""

PROBE_THREADS = 4
"""Threads of the gRPC server's pool beyond those admitted inference calls can hold (waiting for a slot or
running), so that ServerReady, ModelReady and metadata calls are answered under load."""

MIN_CALLS_ADMITTED = 32
"""ModelInfer calls taken in at once when REST would admit fewer (``2 * --max-concurrency``): a gRPC client
opens many calls on one channel and a refused call is an error to it, while a REST request beyond those
admitted waits before its body is read. Their messages count in the memory bound (``docs/serve.md``)."""


def calls_admitted(handlers: InferenceApp) -> int:
    """ModelInfer calls taken in at once: as many as REST admits, and at least :data:`MIN_CALLS_ADMITTED`."""
    return max(handlers.admitted, MIN_CALLS_ADMITTED)


class BusyError(ProtocolError):
    """A ModelInfer call beyond the admitted ones (429, gRPC ``RESOURCE_EXHAUSTED``): it is refused at once
    rather than holding a thread of the pool that probes need."""

    status = 429


RAW_FIELD = "raw_input_contents[{index}]"
"""How the V2 parser names an input's raw bytes in its messages (``binary_data_size`` over REST)."""


def _contents_data(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any]:
    """The values of an input sent in its typed ``contents``, as the JSON ``data`` list of a V2 request."""
    field = _CONTENTS_FIELD.get(tensor.datatype)
    filled = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    if tensor.datatype in V2_TO_NUMPY and field is None:
        raise ProtocolError(
            f"input {tensor.name!r}: {tensor.datatype} data must be sent in raw_input_contents"
        )
    wrong = [name for name in filled if name != field]
    if wrong:
        raise ProtocolError(
            f"input {tensor.name!r}: {tensor.datatype} contents go in {field}, but {', '.join(wrong)} is set"
        )
    return list(getattr(tensor.contents, field)) if field else []


def _bytes_block(tensor: pb.ModelInferRequest.InferInputTensor, texts: list[bytes]) -> bytes:
    """The binary ``BYTES`` data of an input's ``bytes_contents``: one length-prefixed element per text;
    refuses a count of elements other than the shape's."""
    shape = list(tensor.shape)
    if len(texts) != math.prod(parse_shape(tensor.name, shape)):  # the parser's own shape check
        raise ProtocolError(
            f"input {tensor.name!r}: shape {shape} holds {math.prod(shape)} elements but bytes_contents "
            f"has {len(texts)}"
        )
    return b"".join(len(text).to_bytes(BYTES_PREFIX, "little") + text for text in texts)


def v2_body(request: pb.ModelInferRequest) -> tuple[bytes, int]:
    """The V2 HTTP request body a ModelInfer request stands for, and its JSON header's length.

    Raw contents become binary tensor data (one ``binary_data_size`` block per input, in order), typed
    ``bytes_contents`` such a block too and other typed contents JSON ``data``; every output is asked for
    as binary data. Raises :class:`ProtocolError` when raw contents do not come one per input or are mixed
    with typed contents, or ``bytes_contents`` hold other than the shape's count of elements.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            f"the request has {len(raw)} raw_input_contents for {len(request.inputs)} inputs; "
            "give one per input, in input order"
        )
    inputs = []
    blocks = list(raw)
    for index, tensor in enumerate(request.inputs):  # raw sizes are checked by the parser
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(
                    f"input {tensor.name!r} has contents although the request has raw_input_contents; "
                    "send every input one way"
                )
            entry["parameters"] = {"binary_data_size": len(raw[index])}
        elif tensor.datatype == BYTES:
            blocks.append(_bytes_block(tensor, _contents_data(tensor)))
            entry["parameters"] = {"binary_data_size": len(blocks[-1])}
        else:
            entry["data"] = _contents_data(tensor)
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [
            {"name": out.name, "parameters": {"classification": 0}}
            if "classification" in out.parameters
            else {"name": out.name}
            for out in request.outputs
        ]
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([head, *blocks]), len(head)


def _infer_sync(model: ServedModel, request: pb.ModelInferRequest, handlers: InferenceApp) -> Any:
    """Check, decode, run and encode one ModelInfer request, as the REST path does; in a worker thread."""
    body, header_length = v2_body(request)
    parsed = parse_infer_request(body, header_length, model.max_json_values, RAW_FIELD)
    outputs = model.execute(*model.prepare(parsed, body), handlers.metrics, handlers.slots)
    response = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
    for name, array, _ in outputs:
        response.outputs.add(name=name, datatype=v2_datatype(array.dtype), shape=array.shape)
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        response.raw_output_contents.append(raw.tobytes())
    return response


class InferenceService:
    """The RPC handlers, over the REST app's models, metrics and inference slots; each runs in a thread of
    the server's pool."""

    def __init__(self, handlers: InferenceApp) -> None:
        self.handlers = handlers
        self.admitted = calls_admitted(handlers)
        self.admission = threading.BoundedSemaphore(self.admitted)
        """ModelInfer calls admitted at once (:func:`calls_admitted`), taken without waiting."""

    def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.handlers.is_ready())

    def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        """Ready: the model is served and warm; an unknown model or version is not ready."""
        try:
            model = self.handlers.models.lookup(request.name, request.version)
        except ProtocolError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.handlers.is_ready(model))

    def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        meta = self.handlers.server_metadata
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        try:
            meta = self.handlers.models.metadata(request.name, request.version)
        except ProtocolError as exc:
            context.abort(GRPC_CODES[exc.status], str(exc))
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[
                tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]
            ],
            outputs=[
                tensors(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]
            ],
        )

    def model_infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        """Inference, counted in the same metrics as REST (failures under their HTTP status): admitted
        (:class:`BusyError` when as many calls as REST admits are in), then in one of the app's
        ``--max-concurrency`` slots, which REST requests take too; a call whose client has gone (cancelled,
        past its deadline) while it waited for a slot is not run."""
        start = perf_counter()
        metrics = self.handlers.metrics
        label, status, message = UNKNOWN_MODEL, 200, ""
        metrics.in_flight.inc()
        admitted = self.admission.acquire(blocking=False)
        try:
            model = self.handlers.models.lookup(request.model_name, request.model_version)
            label = model.name
            if not admitted:
                raise BusyError(
                    f"the server is busy: {self.admitted} inference calls are in already, the most it admits "
                    f"with --max-concurrency {self.handlers.config.max_concurrency}; retry later"
                )
            with self.handlers.slots:
                if not context.is_active() or context.time_remaining() <= 0:
                    raise ProtocolError("the client cancelled the call or its deadline passed: not run")
                response = _infer_sync(model, request, self.handlers)
        except Exception as exc:
            status, message = failure(exc, f"gRPC inference request on model {label!r}", logger)
        finally:
            if admitted:
                self.admission.release()
            metrics.in_flight.dec()
        metrics.observe(label, status, perf_counter() - start)
        if status != 200:
            context.abort(GRPC_CODES[status], message)
        return response


def _unary(method: Callable[[Any, Any], Any], request_type: Any, response_type: Any) -> Any:
    return grpc.unary_unary_rpc_method_handler(
        method,
        request_deserializer=request_type.FromString,
        response_serializer=response_type.SerializeToString,
    )


def start_grpc_server(handlers: InferenceApp, address: str) -> Any:
    """Start a ``grpc`` server of :class:`InferenceService` on ``address`` (``host:port``) with a pool of
    one thread per admitted inference call (:func:`calls_admitted`) and
    :data:`PROBE_THREADS` more, and at most twice as many calls running or queued (grpcio answers more with
    ``RESOURCE_EXHAUSTED``); returns it (``server.stop(grace)`` gives an event set once it stopped).

    Raises :class:`~embed_runtime.ConfigurationError` when the address cannot be bound.
    """
    service = InferenceService(handlers)
    methods = {
        "ServerLive": _unary(service.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": _unary(service.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": _unary(service.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": _unary(
            service.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
        ),
        "ModelMetadata": _unary(service.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelInfer": _unary(service.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
    }
    threads = service.admitted + PROBE_THREADS
    server = grpc.server(
        ThreadPoolExecutor(threads, thread_name_prefix="embed-runtime-grpc"),
        maximum_concurrent_rpcs=2 * threads,
        options=[
            ("grpc.max_receive_message_length", handlers.config.max_body_bytes),
            ("grpc.max_send_message_length", -1),  # responses are bounded by --max-output-mb
            # a port in use is an error, not a second listener, but for the workers of --workers N
            ("grpc.so_reuseport", int(handlers.workers is not None)),
        ],
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigurationError(f"cannot serve gRPC on {address}: {exc}") from None
    if port == 0:
        raise ConfigurationError(f"cannot serve gRPC on {address}: the address cannot be bound")
    server.start()
    logger.info("gRPC inference service on %s", address)
    return server
