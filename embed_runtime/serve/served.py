"""One served model (:class:`ServedModel`) and the errors and statuses both protocols share.

The REST app (:mod:`~embed_runtime.serve.app`) and the gRPC service (:mod:`~embed_runtime.serve.grpc`)
run every inference through :meth:`ServedModel.prepare` and :meth:`ServedModel.execute`, so a request gets the same checks, limits and
messages over either; :func:`error_status` gives the HTTP status of an error, which the gRPC service maps
to its status code. A model is ready once it has run one warm-up inference (:meth:`ServedModel.warm_up`);
readiness is a flag read without any lock, so health checks never wait behind inference.

A text model's string inputs (declared by ``embed_runtime.text``) are served as ``BYTES`` tensors of texts,
shape ``[-1]`` (``[-1, -1]``, rows of tokens, for a ``StringLookup``): :meth:`ServedModel.prepare` tokenizes
them with the runtime's text front end, so that the limits, the batcher and the run see the ids.
"""

from __future__ import annotations

import logging
import threading
from time import perf_counter
from typing import Any

import numpy as np

from embed_runtime import Runtime, TensorInfo
from embed_runtime.contract import PREFIX
from embed_runtime.errors import EmbedRuntimeError, InferenceError
from embed_runtime.serve.batcher import Batcher
from embed_runtime.serve.codec import decode_inputs, encode_infer_response
from embed_runtime.serve.limits import Limits, check_inputs, check_outputs, check_results, shape_stand_ins
from embed_runtime.serve.metrics import ServeMetrics
from embed_runtime.serve.protocol import (
    BYTES,
    TEXT_DTYPE,
    InferRequest,
    InputSpec,
    ProtocolError,
    parse_infer_request,
    v2_datatype,
)
from embed_runtime.tensors import stand_in

logger = logging.getLogger(__name__)

MODEL_VERSION = "1"
"""The version of a model given by its path (a served file has no history); a model repository has others."""

WARM_UP_LENGTH = 8
"""Length given to the dynamic axes other than the batch (1 row) in the warm-up inference."""


class UnknownModelError(ProtocolError):
    """A model or version this server does not have (404, gRPC ``NOT_FOUND``)."""

    status = 404


class ModelNotReadyError(ProtocolError):
    """An inference request for a model that has not finished its warm-up (503, gRPC ``UNAVAILABLE``)."""

    status = 503


def error_status(exc: Exception) -> int | None:
    """The HTTP status a request failing with ``exc`` is answered with (``None``: unexpected, a 500 to log)."""
    if isinstance(exc, ProtocolError):
        return exc.status
    if isinstance(exc, InferenceError):
        return 500
    if isinstance(exc, EmbedRuntimeError):  # the runtime's own validation: ids, names, shapes
        return 400
    return None


def failure(exc: Exception, what: str, log: logging.Logger) -> tuple[int, str]:
    """The HTTP status and message a request failing with ``exc`` is answered with, over REST or gRPC;
    an unexpected error is a 500, logged to ``log`` with its traceback as "``what`` failed"."""
    status = error_status(exc)
    if status is not None:
        return status, str(exc)
    log.error("%s failed", what, exc_info=exc)
    return 500, f"internal server error: {type(exc).__name__}: {exc}"


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
    datatype = "STRING" if meta["datatype"] == BYTES else meta["datatype"]  # Triton's config name
    return {"name": meta["name"], "data_type": "TYPE_" + datatype, "dims": meta["shape"]}


def _text_metadata(runtime: Runtime, spec: TensorInfo) -> dict[str, Any] | None:
    """The V2 metadata of ``spec`` as a ``BYTES`` input of texts when the model declares it takes text."""
    tokenizer = runtime.text.tokenizers.get(spec.name) if runtime.text is not None else None
    if tokenizer is None:
        return None
    rows_of_tokens = tokenizer.spec.layer_class == "StringLookup"
    return {
        "name": spec.name,
        "datatype": BYTES,
        "shape": [-1, -1] if rows_of_tokens else [-1],
        "parameters": {"text_layer": tokenizer.spec.layer_class, "input_dim": spec.input_dim},
    }


def warm_up_feeds(inputs: tuple[TensorInfo, ...] | list[TensorInfo]) -> dict[str, np.ndarray]:
    """One row of zeros per input (empty strings for a string input): fixed axes as the graph has them,
    other axes :data:`WARM_UP_LENGTH` (:func:`~embed_runtime.tensors.stand_in`)."""
    return {spec.name: stand_in(spec, 1, WARM_UP_LENGTH) for spec in inputs}


class ServedModel:
    """One named model: its runtime, its limits, the V2 metadata computed once at start, and whether it
    is ready (it has run its warm-up inference)."""

    def __init__(self, name: str, runtime: Runtime, limits: Limits, version: str = MODEL_VERSION) -> None:
        self.name = name
        self.version = version
        self.runtime = runtime
        self.limits = limits
        self.ready = False
        self.batcher: Batcher | None = None
        """Set before warm-up to batch this model's requests (:mod:`~embed_runtime.serve.batcher`)."""
        self.max_json_values = limits.json_values(len(runtime.inputs))
        self.output_names = [spec.name for spec in runtime.outputs]
        self.ranks = {spec.name: len(spec.shape) for spec in runtime.inputs}
        inputs = [
            _text_metadata(runtime, s)
            or _tensor_metadata(s, {"input_dim": s.input_dim, "input_length": s.input_length})
            for s in runtime.inputs
        ]
        self.text_inputs = frozenset(m["name"] for m in inputs if m["datatype"] == BYTES)
        outputs = [_tensor_metadata(s, {}) for s in runtime.outputs]
        self.metadata: dict[str, Any] = {
            "name": name,
            "versions": [version],
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

    def warm_up(self) -> None:
        """Run one inference and mark the model ready; a failure is logged and leaves it not ready. With
        batching, the batcher's probe batch is that inference; else (or when it fails) one row of
        :func:`warm_up_feeds`. A model already ready (an app started again) is not warmed up again, so its
        batching decision stays the one requests were served with."""
        if self.ready:
            return
        start = perf_counter()
        try:
            if self.batcher is None or not self.batcher.probe():
                self.runtime.run(warm_up_feeds(self.runtime.inputs))
        except Exception:
            logger.exception("warm-up inference of model %r failed; it stays not ready", self.name)
            return
        self.ready = True
        logger.info("model %r is ready (warm-up took %.1f ms)", self.name, 1e3 * (perf_counter() - start))

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

    def prepare(
        self, request: InferRequest, body: bytes | bytearray
    ) -> tuple[dict[str, np.ndarray], list[tuple[str, bool]]]:
        """Check ``request`` (read from ``body``) against the limits and decode its inputs: the feeds and
        the ``(name, binary)`` outputs to send back. Runs in a worker thread."""
        if not self.ready:
            raise ModelNotReadyError(f"model {self.name!r} is not ready yet (it is warming up); retry later")
        check_inputs(self.name, request.inputs, self.limits)
        self.check_ranks(request.inputs)
        selected = self.select_outputs(request)
        if all(spec.dtype != TEXT_DTYPE for spec in request.inputs):
            check_outputs(self.name, self.runtime, selected, shape_stand_ins(request.inputs), self.limits)
            return decode_inputs(request, body), selected
        feeds = self.tokenized(decode_inputs(request, body))
        check_inputs(
            self.name, [InputSpec(k, v.dtype, v.shape, None, None) for k, v in feeds.items()], self.limits
        )
        check_outputs(self.name, self.runtime, selected, feeds, self.limits)
        return feeds, selected

    def check_ranks(self, inputs: tuple[InputSpec, ...] | list[InputSpec]) -> None:
        """Refuse an id input of another rank than the graph's, with a hint a V2 client can act on (the
        runtime's own message suggests its Python ``single_sequence`` argument)."""
        for spec in inputs:
            want = self.ranks.get(spec.name)
            if want is None or spec.dtype == TEXT_DTYPE or len(spec.shape) == want:
                continue
            hint = ""
            if want == 2 and len(spec.shape) == 1:
                hint = f"; send one sequence of {spec.shape[0]} ids as shape [1, {spec.shape[0]}]"
            raise ProtocolError(
                f"input {spec.name!r} has rank {len(spec.shape)} (shape {list(spec.shape)}) but model "
                f"{self.name!r} expects rank {want}{' (batch, seq)' if want == 2 else ''}{hint}"
            )

    def tokenized(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` with each ``BYTES`` input turned into the ids the model sees (the runtime's text front
        end: its errors, such as texts that are not UTF-8, answer 400)."""
        feeds = {}
        front = self.runtime.text  # None exactly when text_inputs is empty
        for name, arr in inputs.items():
            if arr.dtype != TEXT_DTYPE:
                feeds[name] = arr
            elif front is None or name not in self.text_inputs:
                takes = (
                    f"takes texts as {BYTES} in {', '.join(sorted(self.text_inputs))}"
                    if self.text_inputs
                    else "takes no text"
                )
                raise ProtocolError(
                    f"input {name!r} of model {self.name!r} takes ids, not {BYTES}; the model {takes}"
                )
            else:
                feeds[name] = front.ids({name: arr}, self.check_padded)[name]  # ids only: no mask to build
        return feeds

    def check_padded(self, name: str, shape: tuple[int, int]) -> None:
        """Refuse texts of input ``name`` whose ids, padded to ``shape``, would be over the limits (413),
        before the padded array is made."""
        check_inputs(self.name, [InputSpec(name, np.dtype(np.int64), shape, None, None)], self.limits)

    def execute(
        self,
        inputs: dict[str, np.ndarray],
        selected: list[tuple[str, bool]],
        metrics: ServeMetrics,
        slot: threading.Semaphore | None = None,
    ) -> list[tuple[str, np.ndarray, bool]]:
        """Run the model on prepared ``inputs``: the ``(name, array, binary)`` outputs, checked against the
        graph's shapes and the output limit. Runs in a worker thread holding ``slot``, an inference slot
        (if any), which the batcher gives back while the request waits for its batch."""
        names: list[str] | None = [name for name, _ in selected]
        if names == self.output_names:
            names = None  # every output, in the graph's order: the runtime's default
        start = perf_counter()
        if self.batcher is None:
            results = self.runtime.run(inputs, outputs=names)
        else:
            results = self.batcher.run(inputs, names, slot)
        metrics.run_seconds.labels(self.name).observe(perf_counter() - start)
        check_results(self.name, self.runtime, selected, inputs, results, self.limits)
        return [(name, results[name], binary) for name, binary in selected]

    def infer(
        self,
        body: bytes | bytearray,
        header_length: int | None,
        metrics: ServeMetrics,
        slot: threading.Semaphore | None = None,
    ) -> tuple[bytes, int | None]:
        """Read, check, decode, run and encode one V2 HTTP request body; runs in a worker thread holding
        ``slot`` (see :meth:`execute`)."""
        request = parse_infer_request(body, header_length, self.max_json_values)
        request_id, (inputs, selected) = request.id, self.prepare(request, body)
        del request  # its parsed JSON data is no longer needed: free it before the run
        return encode_infer_response(
            self.name, self.version, request_id, self.execute(inputs, selected, metrics, slot)
        )
