"""``export_keras``: Keras model -> verified, minimal ONNX artifact, written atomically.

One pipeline for every export:

1. build: describe the Keras model (a model taking strings from the ids its TextVectorization or
   StringLookup produces, the layer declared as a text spec: :mod:`exporters.text`) and convert it with
   tf2onnx (big tables as small stand-ins,
   :mod:`exporters.large`; every table found by its origin, :mod:`exporters.tables`) into an
   :class:`~exporters.passes.ExportState`;
2. the rewrite passes, in the order of :data:`exporters.passes.PASSES`;
3. verify, once: parity with Keras on the graph as it will be read back, and the rewrite check (and for
   a string model, its lookup put into the graph where standard ops are exact, then Keras on strings vs
   the runtime's tokenizer and the graph);
4. finalize: IR version, producer and the contract's metadata;
5. a writer (:mod:`exporters.writers`): one inline ``.onnx``, or ``.onnx`` + external data;
6. the :class:`~exporters.report.ExportReport`, with the sha256 of what was written (the last pass names
   everything reproducibly: one model exported twice gives the same bytes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from embed_runtime import __version__
from embed_runtime.contract import (
    KEY_EXPORTER_VERSION,
    KEY_KERAS_FLAVOUR,
    KEY_KERAS_VERSION,
    KEY_MAX_ABS_DIFF,
    KEY_TENSORFLOW_VERSION,
    KEY_TF2ONNX_VERSION,
    ModelMetadata,
    text_props,
)

from . import intlookup, large, quantize, rewrite, tables, text
from .convert import convert, hide_gpus, load_rewritten
from .errors import ExportError
from .keras_model import KerasModelInfo, describe, load_model
from .passes import PASSES, ExportState
from .report import ExportReport, make_report
from .tracing import make_tf_function
from .verify import MeasuredTable, Parity, check_rewrite, compare, compare_compact, measure_tables
from .writers import check_destination, open_writer

EXPORTER_VERSION = __version__
"""The exporter ships in the same distribution as the runtime, under one version."""

__all__ = ["EXPORTER_VERSION", "ExportReport", "export_keras"]


def export_keras(
    model: Any,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-5,
    seed: int = 0,
    external_data_threshold: int | str | None = None,
    table_dtype: str = "float32",
) -> ExportReport:
    """Export a Keras Embedding model to a minimal, verified ONNX file.

    Args:
        model: a Keras 3 (TensorFlow backend) or tf-keras model object, or a path to a ``.keras``/``.h5``
            file or SavedModel folder.
        path: where to write the ``.onnx``. Written to a temporary file and renamed at the end: a failed
            export leaves nothing behind.
        opset: ONNX opset; ``None`` picks the lowest that tf2onnx converts and onnxruntime runs.
        verify: run Keras and the graph on seeded ids (several batch sizes, lengths and paddings) and fail
            if any float output differs by more than ``atol`` or any mask differs.
        atol: absolute tolerance for float outputs (float16 outputs get at least 1e-2).
        seed: seed of the verification ids.
        external_data_threshold: tables with more bytes than this (an int or a size such as ``"64MiB"``;
            default ``$EMBED_EXPORT_EXTERNAL_DATA_THRESHOLD`` or 64 MiB) bypass TensorFlow and tf2onnx:
            they are converted as small stand-ins and written from the Keras variables as ONNX external
            data, ``<path>.<content hash>.data`` beside the ``.onnx``, which onnxruntime memory-maps
            (see :mod:`exporters.large`).
        table_dtype: how the float32 tables are stored: ``"float32"``, ``"float16"`` (half the bytes) or
            ``"int8"`` (per-row symmetric, about a quarter); see :mod:`exporters.quantize`. Then ``verify``
            holds the graph to ``atol`` of the Keras model with the dequantized tables, each table element
            to its bound, and reports the differences from the original model.

    Returns:
        An :class:`ExportReport`; ``str(report)`` is a readable summary.

    Raises:
        ExportError: with a message that says what was wrong.
    """
    start = time.perf_counter()
    out = Path(path)
    check_destination(out)  # before any conversion work; the writer checks again when it writes
    quantize.check_table_dtype(table_dtype)
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol < float("inf"):
        raise ExportError(f"atol must be a finite number >= 0, not {atol!r}")
    hide_gpus()
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    model = intlookup.in_graph(model)  # IntegerLookups -> proven in-graph tables: raw int ids in
    front = text.split_front(model)  # a string model: export from its ids, declare the text spec
    keras = describe(model) if front is None else text.with_input_name(describe(front.id_model), front)
    text_specs = [] if front is None else text.specs(front, keras)
    big = large.big_tables(keras, large.resolve_threshold(external_data_threshold))
    with large.stand_ins(keras, big, seed) as stand_ins:
        state = build(keras, opset, stand_ins, table_dtype)
        for rewrite_pass in PASSES:
            rewrite_pass(state)
    with open_writer(out, state.model, state.stand_ins) as writer:
        measured = measure_tables(state.keras, state.compact, table_dtype) if verify else []
        session = writer.session(state.model) if verify else None
        checks = run_checks(state, session, atol, seed, measured) if session is not None else None
        if front is not None:  # the lookup into the graph where it is exact; then Keras on strings
            text_specs = text.finish(front, state, text_specs[0], session, writer.session, atol, measured)
        versions = finalize(state, checks[0] if checks else None, text_props(text_specs))
        written = writer.write(state.model)
    return make_report(out, keras.flavour, state.model, state.embeddings, checks, versions, written, start)


def build(
    keras: KerasModelInfo, opset: int | None, stand_ins: list[large.StandIn], table_dtype: str = "float32"
) -> ExportState:
    """Convert the model with tf2onnx (at ``opset``, or the lowest that works) into the state the passes
    start from. Each table is converted as its tracer and found by it (:mod:`exporters.tables`), so that
    layers with equal tables are told apart; the real values are back in both graphs before the passes.
    Weights that tf2onnx lists as graph inputs (old IR versions) are dropped from both graphs, so that the
    raw and the rewritten graph take the same inputs."""
    with tables.tracing(keras) as tracers:
        raw = convert(make_tf_function(keras), opset)
    rewrite.strip_initializer_inputs(raw)
    table_names = tables.restore(raw, tracers)
    model = onnx.ModelProto()
    model.CopyFrom(raw)
    return ExportState(keras, raw, model, table_names, stand_ins, table_dtype=table_dtype)


def run_checks(
    state: ExportState, session: Any, atol: float, seed: int, measured: Sequence[MeasuredTable]
) -> tuple[Parity, float]:
    """The export's checks, run once: parity with the Keras model of ``session``, the graph as the writer
    will store it (:meth:`exporters.writers.Writer.session`; :func:`exporters.verify.compare`, or
    :func:`~exporters.verify.compare_compact` with compact tables), then the rewrite check of the graph in
    memory (stand-in tables inline, as in the raw graph) against tf2onnx's, its compacted tables
    dequantized (:func:`exporters.verify.check_rewrite`). ``measured``: the compact tables as
    :func:`exporters.verify.measure_tables` measured them, once for these checks and the text check.

    Returns (parity, rewrite difference); raises :class:`ExportError` when either fails.
    """
    embeddings = state.embeddings
    input_dims = ModelMetadata(embeddings=tuple(embeddings)).input_dims()

    def compare_at(tolerance: float) -> Parity:
        return compare(state.keras, session, state.masks, embeddings, input_dims, tolerance, seed)

    compact = state.keras, measured, state.table_dtype
    parity = compare_compact(*compact, compare_at, atol) if state.compact else compare_at(atol)
    raw_dims = large.stand_in_input_dims(embeddings, state.stand_ins)
    raw = quantize.reference_raw(state.raw, state.compact)
    # Without stand-ins the writer's session is one of the graph in memory, with the same options
    # (exporters.convert.cpu_session): it serves the rewrite check too. With stand-ins it reads the real
    # tables from the staged data file while tf2onnx's graph holds the stand-ins: that check needs the
    # graph in memory, a different graph (not different options), so a session of its own.
    rewritten = load_rewritten(state.model) if state.stand_ins else session
    return parity, check_rewrite(raw, rewritten, state.keras, raw_dims, seed)


def finalize(state: ExportState, parity: Parity | None, extra_props: dict[str, str]) -> dict[str, str]:
    """Set the lowest IR version, the producer and the contract's metadata (versions, embeddings, the
    measured parity, ``extra_props`` such as the text spec) and check the graph; returns the versions
    recorded."""
    import tensorflow as tf
    import tf2onnx

    versions = {
        KEY_KERAS_FLAVOUR: state.keras.flavour,
        KEY_KERAS_VERSION: state.keras.keras_version,
        KEY_TENSORFLOW_VERSION: tf.__version__,
        KEY_TF2ONNX_VERSION: tf2onnx.__version__,
        KEY_EXPORTER_VERSION: EXPORTER_VERSION,
    }
    extra = {**extra_props, **({KEY_MAX_ABS_DIFF: f"{parity.worst:.3g}"} if parity else {})}
    metadata = ModelMetadata(tuple(state.embeddings), versions, extra)
    rewrite.finalize(state.model, metadata, EXPORTER_VERSION)
    return versions
