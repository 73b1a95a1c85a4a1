"""``export_keras``: Keras model -> verified, minimal ONNX artifact, written atomically."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from embed_runtime import __version__
from embed_runtime.contract import (
    KEY_EXPORTER_VERSION,
    KEY_KERAS_FLAVOUR,
    KEY_KERAS_VERSION,
    KEY_MAX_ABS_DIFF,
    KEY_TENSORFLOW_VERSION,
    KEY_TF2ONNX_VERSION,
    EmbeddingInfo,
    ModelMetadata,
    mask_output_name,
)

from . import large, rewrite
from .convert import convert, cpu_session, hide_gpus
from .errors import ExportError
from .keras_model import ModelSpec, describe, load_model, make_tf_function
from .verify import MaskSource, Parity, compare

EXPORTER_VERSION = __version__
"""The exporter ships in the same distribution as the runtime, under one version."""


@dataclass
class ExportReport:
    """What :func:`export_keras` wrote and measured; ``print(report)`` gives a readable summary."""

    path: Path
    flavour: str
    inputs: list[tuple[str, str, list[int | str]]]
    outputs: list[tuple[str, str, list[int | str]]]
    opset: int
    ir_version: int
    node_count: int
    op_counts: dict[str, int]
    file_bytes: int
    seconds: float
    embeddings: list[EmbeddingInfo]
    parity: Parity | None
    rewrite_max_abs_diff: float | None
    versions: dict[str, str] = field(default_factory=dict)
    external_data: Path | None = None
    external_data_bytes: int = 0

    def __str__(self) -> str:
        def shape(dims: list[int | str]) -> str:
            return "(" + ", ".join(str(d) for d in dims) + ")"

        lines = [f"exported {self.path} ({self.file_bytes:,} bytes, {self.seconds:.2f} s, {self.flavour})"]
        if self.external_data is not None:
            lines.append(
                f"  tables in {self.external_data.name} ({self.external_data_bytes:,} bytes, mmap-aligned)"
            )
        lines += [f"  input  {n}: {t}{shape(d)}" for n, t, d in self.inputs]
        lines += [f"  output {n}: {t}{shape(d)}" for n, t, d in self.outputs]
        ops = ", ".join(f"{op} x{c}" if c > 1 else op for op, c in self.op_counts.items())
        lines.append(f"  opset {self.opset}, IR {self.ir_version}, {self.node_count} nodes: {ops}")
        for emb in self.embeddings:
            lines.append(
                f"  embedding {emb.layer}: {emb.input_dim} x {emb.output_dim} {emb.dtype}, ids from "
                f"{', '.join(emb.inputs)}" + (f", mask -> {emb.mask_output}" if emb.mask_output else "")
            )
        if self.parity is None:
            lines.append("  parity: not verified (--no-verify)")
        else:
            diffs = (
                ", ".join(f"{k} {v:.2e}" for k, v in self.parity.max_abs_diff.items()) or "no float outputs"
            )
            masks = "masks equal" if self.parity.mask_mismatches else "no masks"
            lines.append(
                f"  parity vs Keras over {self.parity.cases} cases: max |onnx - keras| {diffs}; {masks}"
            )
        if self.rewrite_max_abs_diff is not None:
            lines.append(f"  rewrite vs raw tf2onnx graph: max |diff| {self.rewrite_max_abs_diff:.1e}")
        return "\n".join(lines)


def _versions(spec: ModelSpec) -> dict[str, str]:
    import tensorflow as tf
    import tf2onnx

    return {
        KEY_KERAS_FLAVOUR: spec.flavour,
        KEY_KERAS_VERSION: spec.keras_version,
        KEY_TENSORFLOW_VERSION: tf.__version__,
        KEY_TF2ONNX_VERSION: tf2onnx.__version__,
        KEY_EXPORTER_VERSION: EXPORTER_VERSION,
    }


def _io(values: Any) -> list[tuple[str, str, list[int | str]]]:
    rows = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        rows.append((v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims))
    return rows


def build_graph(
    spec: ModelSpec, opset: int | None
) -> tuple[onnx.ModelProto, onnx.ModelProto, list[MaskSource], list[EmbeddingInfo]]:
    """Convert with tf2onnx and rewrite: returns (raw graph, final graph, mask sources, embedding facts)."""
    raw = convert(make_tf_function(spec), opset)
    rewrite.strip_initializer_inputs(raw)
    model = onnx.ModelProto()
    model.CopyFrom(raw)
    found = []
    for emb in spec.embeddings:
        try:
            table = rewrite.find_table(model, emb.read_table())
        except ExportError:
            continue  # a layer the forward pass never uses: not in the graph
        sources = [
            rewrite.collapse_index_chain(model, g, emb.input_dim) for g in rewrite.lookups(model, table)
        ]
        if None in sources and emb.mask_zero:
            raise ExportError(
                f"Embedding {emb.name!r} has mask_zero=True but its ids are computed in the graph rather than "
                "taken from a model input; its mask cannot be exported"
            )
        rewrite.rename(model, table, f"{emb.name}.embeddings")
        found.append((emb, sorted({s for s in sources if s is not None})))
    if not found:
        raise ExportError("no Embedding table of the model was found in the converted graph")
    pairs = [(emb.name, src) for emb, srcs in found if emb.mask_zero for src in srcs]
    outputs = set(spec.output_names)
    masks, infos = [], []
    lengths = {s.name: s.length for s in spec.inputs}
    for emb, sources in found:
        for src in sources or [None]:
            mask = mask_output_name(emb.name, src, pairs) if emb.mask_zero and src else None
            if mask:
                if mask in outputs:
                    raise ExportError(f"the model already has an output named {mask!r}; rename that layer")
                outputs.add(mask)
                rewrite.add_mask_output(model, src, mask, rewrite.sequence_dim(src, lengths))
                masks.append(MaskSource(mask, emb.layer, src))
            infos.append(
                EmbeddingInfo(
                    layer=emb.name,
                    inputs=(src,) if src else (),
                    input_dim=emb.input_dim,
                    output_dim=emb.output_dim,
                    mask_zero=emb.mask_zero,
                    padding_id=0 if emb.mask_zero else None,
                    mask_output=mask,
                    dtype=emb.dtype,
                )
            )
    rewrite.set_io_dims(model, lengths)
    rewrite.remove_dead(model)
    rewrite.name_tracking_dims(model, lengths)
    return raw, model, masks, infos


def _write_atomically(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_keras(
    model: Any,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-5,
    seed: int = 0,
    external_data_threshold: int | str | None = None,
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
            data, ``<path>.data`` beside the ``.onnx``, which onnxruntime memory-maps
            (see :mod:`exporters.large`).

    Returns:
        An :class:`ExportReport`; ``str(report)`` is a readable summary.

    Raises:
        ExportError: with a message that says what was wrong.
    """
    start = time.perf_counter()
    hide_gpus()
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    spec = describe(model)
    out = Path(path)
    big = large.big_tables(spec, large.resolve_threshold(external_data_threshold))
    if big:
        return _export_external(spec, big, out, opset, verify, atol, seed, start)
    raw, graph, masks, infos = build_graph(spec, opset)
    parity = rewrite_diff = None
    if verify:
        session = _session_or_error(graph)
        input_dims = ModelMetadata(embeddings=tuple(infos)).input_dims()
        parity = compare(spec, session, masks, input_dims, atol, seed)
        rewrite_diff = _rewrite_diff(raw, session, spec, input_dims, seed)
    versions = _versions(spec)
    extra = {KEY_MAX_ABS_DIFF: f"{parity.worst:.3g}"} if parity else {}
    rewrite.finalize(graph, ModelMetadata(tuple(infos), versions, extra), EXPORTER_VERSION)
    _write_atomically(graph, out)
    return _report(out, spec, graph, infos, parity, rewrite_diff, versions, start)


def _export_external(
    spec: ModelSpec,
    big: list[Any],
    out: Path,
    opset: int | None,
    verify: bool,
    atol: float,
    seed: int,
    start: float,
) -> ExportReport:
    """The big-table path: convert with stand-ins, stream the real tables to ``<out>.data``, verify the
    staged files against the Keras model, then rename both into place (see :mod:`exporters.large`)."""
    rewrite_diff = parity = None
    with large.stand_ins(spec, big, seed) as subs:
        raw, graph, masks, infos = build_graph(spec, opset)
        large.check_row_count_gone(graph, subs)
        if verify:
            dims = large.stand_in_input_dims(infos, subs)
            rewrite_diff = _rewrite_diff(raw, _session_or_error(graph), spec, dims, seed)
    del raw
    location = large.data_file_name(out)
    with large.Staging(out) as stage, large.read_once(subs) as tables:
        placed = large.write_tables(graph, subs, tables, stage.data_path)
        if verify:
            staged = onnx.ModelProto()
            staged.CopyFrom(graph)
            large.point_to(staged, placed, location)
            stage.write_model(staged)
            session = _session_or_error(stage.model_path)
            input_dims = ModelMetadata(embeddings=tuple(infos)).input_dims()
            parity = compare(spec, session, masks, input_dims, atol, seed)
            del session
        versions = _versions(spec)
        extra = {KEY_MAX_ABS_DIFF: f"{parity.worst:.3g}"} if parity else {}
        # finalize checks the graph while the stand-ins are still inline (onnx's checker would look for
        # the data file relative to the working directory); the staged file is checked by path below.
        rewrite.finalize(graph, ModelMetadata(tuple(infos), versions, extra), EXPORTER_VERSION)
        large.point_to(graph, placed, location)
        stage.write_model(graph)
        onnx.checker.check_model(str(stage.model_path))
        data = stage.commit()
        data_bytes = data.stat().st_size
    report = _report(out, spec, graph, infos, parity, rewrite_diff, versions, start)
    report.external_data, report.external_data_bytes = data, data_bytes
    return report


def _report(
    out: Path,
    spec: ModelSpec,
    graph: onnx.ModelProto,
    infos: list[EmbeddingInfo],
    parity: Parity | None,
    rewrite_diff: float | None,
    versions: dict[str, str],
    start: float,
) -> ExportReport:
    return ExportReport(
        path=out,
        flavour=spec.flavour,
        inputs=_io(graph.graph.input),
        outputs=_io(graph.graph.output),
        opset=rewrite.opset_of(graph),
        ir_version=graph.ir_version,
        node_count=len(graph.graph.node),
        op_counts=rewrite.op_counts(graph.graph.node),
        file_bytes=out.stat().st_size,
        seconds=time.perf_counter() - start,
        embeddings=infos,
        parity=parity,
        rewrite_max_abs_diff=rewrite_diff,
        versions=versions,
    )


def _session_or_error(graph: onnx.ModelProto | Path) -> Any:
    try:
        return cpu_session(graph)
    except Exception as exc:  # onnxruntime's own exception types are private
        raise ExportError(f"onnxruntime cannot load the rewritten graph: {exc}") from None


def _rewrite_diff(
    raw: onnx.ModelProto, final: Any, spec: ModelSpec, input_dims: dict[str, int], seed: int
) -> float:
    """Largest difference between the raw tf2onnx graph and the rewritten one on the verification ids."""
    from .verify import sample_feeds

    before = cpu_session(raw)
    names = list(spec.output_names)
    worst = 0.0
    inputs = [(s.name, s.length, input_dims.get(s.name, 2)) for s in spec.inputs]
    for _, feeds in sample_feeds(inputs, seed):
        for a, b in zip(before.run(names, feeds), final.run(names, feeds)):
            worst = max(
                worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
            )
    if worst != 0.0:
        raise ExportError(
            f"the ONNX rewrite changed outputs by up to {worst:.3g}; this is a bug, please report it"
        )
    return worst
