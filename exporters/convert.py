"""tf2onnx conversion: the traced ``tf.function`` to a raw ONNX model, at the lowest opset that works."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx

from .errors import ExportError

OPSET_CANDIDATES = (9, 11, 13, 15, 17)
"""Opsets tried in order when none is asked for: the first that converts and loads is kept, so that
older runtimes and other languages' onnxruntime builds can read the file."""

log = logging.getLogger("exporters")


def hide_gpus() -> None:
    """Make TensorFlow trace on the CPU: an LSTM traced on a GPU lowers to a cuDNN op tf2onnx cannot convert.

    Only possible before TensorFlow has initialised its devices; later calls change nothing.
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        log.debug("TensorFlow devices already initialised; tracing under tf.device('/CPU:0') only")


def _quiet_tf2onnx() -> None:
    """tf2onnx logs each op it cannot convert at one opset, traceback included, even when a higher opset
    then works; the failures that matter end up in our ExportError instead."""
    for name in ("tf2onnx", "tf2onnx.tfonnx", "tf2onnx.tf_utils", "tf2onnx.optimizer"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class _UnsupportedOp(Exception):
    """tf2onnx has no converter for a TensorFlow op at the opset being tried."""


class _StopAtUnsupportedOp(logging.Filter):
    """tf2onnx only logs a TensorFlow op it has no converter for at the opset, converts everything else
    and optimizes the graph (most of a conversion's time) before onnxruntime refuses it. Raising from the
    log record stops that conversion at once; the other records of that logger stay quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Tensorflow op [") and str(record.msg).endswith("is not supported"):
            raise _UnsupportedOp(record.getMessage())
        return False


@contextmanager
def _stop_at_unsupported_ops() -> Iterator[None]:
    logger = logging.getLogger("tf2onnx.tfonnx")
    stop, level = _StopAtUnsupportedOp(), logger.level
    logger.addFilter(stop)
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.removeFilter(stop)
        logger.setLevel(level)


def cpu_session(model: onnx.ModelProto | Path) -> Any:
    """A quiet onnxruntime CPU session, for the exporter's own checks. Give a path when the graph has
    external data (resolved beside the file); a proto is passed as bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def load_rewritten(model: onnx.ModelProto | Path) -> Any:
    """:func:`cpu_session` of a rewritten graph, or :class:`ExportError` if onnxruntime cannot load it."""
    try:
        return cpu_session(model)
    except Exception as exc:  # onnxruntime's own exception types are private
        raise ExportError(f"onnxruntime cannot load the rewritten graph: {exc}") from None


def _loads_in_onnxruntime(model: onnx.ModelProto) -> str | None:
    """None if onnxruntime can build a session for ``model``, else its error message."""
    try:
        cpu_session(model)
    except Exception as exc:  # onnxruntime raises several private exception types
        return str(exc).splitlines()[0]
    return None


def convert(function: Any, opset: int | None = None) -> onnx.ModelProto:
    """Convert ``function`` (from :func:`exporters.keras_model.make_tf_function`) with tf2onnx.

    With ``opset=None`` the candidates in :data:`OPSET_CANDIDATES` are tried from the lowest up; an
    explicit opset is used as given and fails with a readable :class:`ExportError` if tf2onnx cannot
    convert at it or onnxruntime cannot run the result.
    """
    import tensorflow as tf
    import tf2onnx

    _quiet_tf2onnx()
    candidates: Sequence[int] = OPSET_CANDIDATES if opset is None else (opset,)
    failures = []
    for candidate in candidates:
        try:
            with tf.device("/CPU:0"), _stop_at_unsupported_ops():
                model, _ = tf2onnx.convert.from_function(
                    function, input_signature=function.input_signature, opset=candidate
                )
        except Exception as exc:  # tf2onnx raises bare Exceptions, ValueErrors, KeyErrors...
            failures.append(f"opset {candidate}: tf2onnx failed: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        problem = _loads_in_onnxruntime(model)
        if problem is None:
            return model
        failures.append(f"opset {candidate}: onnxruntime cannot run the converted graph: {problem[:300]}")
    import onnxruntime as ort

    hint = "" if opset is None else f" (onnxruntime {ort.__version__} runs opsets 7 to 21; try --opset 13)"
    raise ExportError(
        "tf2onnx could not produce a graph onnxruntime runs" + hint + ":\n  " + "\n  ".join(failures)
    )
