"""Big Embedding tables: convert with small stand-ins, then write the real rows as ONNX external data.

TensorFlow's graph freezing and tf2onnx hold several copies of every weight (about 30x a table's size in
RAM) and cannot serialise any tensor over 2 GB. A big table does not need them: after the rewrite an
Embedding is one ``Gather`` on one initializer. So, for every table above the threshold:

1. :func:`stand_ins` swaps the layer's table variable for a small stand-in (a prime number of rows, the
   real width and dtype, seeded random values) while the model is traced and converted; the rest of the
   pipeline (each table found by its tracer, :mod:`exporters.tables`; the proven index-chain collapse
   on the *real* ``input_dim``, masks, dims, dead-node removal) runs unchanged on the small graph.
2. :func:`check_row_count_gone` proves nothing left in the graph remembers the stand-in's row count (Keras
   3's negative-id wrap ``Add(ids, rows)`` does until the collapse removes it).
3. :func:`write_tables` streams the real rows from the Keras variable, in row chunks, into one data file
   at offsets aligned to :data:`ALIGNMENT`, and turns each stand-in initializer into an external-data
   reference (relative location) of the real shape. onnxruntime memory-maps such initializers on the CPU
   instead of reading them, so load time and RSS do not grow with the table.
4. :class:`exporters.writers.Staging` keeps the ``.onnx`` and the data file (named after its contents) in a
   temporary folder beside the destination until both are complete and verified, then renames them into
   place (data first, model last).

:func:`exporters.export.export_keras` runs step 1 around the conversion and the passes, step 2 is the pass
:func:`exporters.passes.check_stand_ins_gone`, and :class:`exporters.writers.ExternalDataWriter` does
steps 3 and 4.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embed_runtime.contract import EmbeddingInfo

from . import quantize
from .errors import ExportError
from .keras_model import KERAS3, EmbeddingLayer, KerasModelInfo
from .tables import held_table, make_variable, swapped_tables, table_attribute

DEFAULT_THRESHOLD = 64 << 20
"""Tables with more bytes than this take the external-data path (64 MiB: tf2onnx needs ~2 GB for it)."""

THRESHOLD_ENV = "EMBED_EXPORT_EXTERNAL_DATA_THRESHOLD"
"""Environment variable read when ``export_keras`` gets no ``external_data_threshold``."""

ALIGNMENT = 1 << 16
"""Offset alignment of each table in the data file. onnxruntime memory-maps an external initializer only
when its offset is a multiple of the allocation granularity (4 KiB on Linux and macOS, 64 KiB on
Windows); 64 KiB serves all of them and wastes at most 64 KiB per table."""

CHUNK_BYTES = 32 << 20
"""Rows are copied out of the Keras variable and written in chunks of about this many bytes."""

_STAND_IN_BYTES = 16 << 20
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from ``64MiB``, ``64M``, ``1.5G``, ``4096``...; ``off``/``none`` gives no limit at all."""
    if isinstance(text, int):
        return text
    if text.strip().lower() in ("off", "none", "inf"):
        return 1 << 62
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 64MiB, 512K, 2G, 4096, off)")
    scale = 1024 ** " kmgt".index((match.group(2) or " ").lower())
    return int(float(match.group(1)) * scale)


def resolve_threshold(value: int | str | None) -> int:
    """The threshold in bytes: ``value`` if given, else ``$EMBED_EXPORT_EXTERNAL_DATA_THRESHOLD``, else
    :data:`DEFAULT_THRESHOLD`."""
    if value is None:
        value = os.environ.get(THRESHOLD_ENV) or DEFAULT_THRESHOLD
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise ExportError(f"external data threshold: {exc}") from None
    if size < 0:
        raise ExportError(f"external data threshold must be >= 0 bytes, not {size}")
    return size


def table_bytes(emb: EmbeddingLayer) -> int:
    """Size of one Embedding table in bytes."""
    return int(np.prod(emb.shape)) * np.dtype(emb.dtype).itemsize


def big_tables(info: KerasModelInfo, threshold: int) -> list[EmbeddingLayer]:
    """The Embedding tables of the model with more than ``threshold`` bytes."""
    return [emb for emb in info.embeddings if table_bytes(emb) > threshold]


@dataclass
class StandIn:
    """A big table replaced, while the model is converted, by a small recognisable one."""

    emb: EmbeddingLayer
    attribute: str
    original: Any
    rows: int

    @property
    def onnx_name(self) -> str:
        """The initializer name the rewrite gives the table (``<layer>.embeddings``)."""
        return self.emb.onnx_name


def _primes_from(start: int, count: int) -> list[int]:
    found: list[int] = []
    n = max(2, start)
    while len(found) < count:
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            found.append(n)
        n += 1
    return found


def _stand_in_rows(big: Sequence[EmbeddingLayer]) -> list[int]:
    """Distinct prime row counts, unlikely to be any other constant of the graph, small in bytes."""
    row_bytes = max((emb.shape[1] * np.dtype(emb.dtype).itemsize for emb in big), default=0)
    start = next((s for s in (7919, 257, 11) if s * row_bytes <= _STAND_IN_BYTES), 2)
    return _primes_from(start, len(big))


def _table_attribute(emb: EmbeddingLayer, flavour: str) -> str:
    """The attribute that holds the table variable (:func:`exporters.tables.table_attribute`); quantized
    and LoRA Keras 3 tables are refused here."""
    layer = emb.layer
    if flavour == KERAS3 and (
        getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False)
    ):
        raise ExportError(
            f"Embedding {emb.name!r} is quantized or has LoRA enabled; tables above the external-data "
            "threshold must be plain float tables (raise the threshold to export it the usual way)"
        )
    return table_attribute(flavour)


@contextmanager
def stand_ins(info: KerasModelInfo, big: Sequence[EmbeddingLayer], seed: int = 0) -> Iterator[list[StandIn]]:
    """Swap each table in ``big`` for a small stand-in while the block runs
    (:func:`exporters.tables.swapped_tables`: the model's weights list never sees it); always swapped
    back. With no big tables it swaps nothing and yields an empty list. Inside the block
    ``emb.read_table()`` returns the stand-in's values.
    """
    rng = np.random.default_rng(seed)
    done: list[StandIn] = []
    with swapped_tables() as put:
        for emb, rows in zip(big, _stand_in_rows(big)):
            attribute = _table_attribute(emb, info.flavour)
            original = held_table(emb, attribute, "swap")
            values = rng.standard_normal((rows, emb.shape[1])).astype(emb.dtype)
            put(emb, attribute, make_variable(values, info.flavour, f"{emb.name}_stand_in"))
            done.append(StandIn(emb, attribute, original, rows))
        yield done


def _numeric_constants(model: onnx.ModelProto, skip: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    for init in model.graph.initializer:
        if init.name not in skip and init.data_location != TensorProto.EXTERNAL:
            yield init.name, numpy_helper.to_array(init)
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield node.name, numpy_helper.to_array(attr.t)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    graphs.extend(attr.graphs)


def check_row_count_gone(model: onnx.ModelProto, subs: Sequence[StandIn]) -> None:
    """Raise :class:`ExportError` if a constant of the rewritten graph holds a stand-in's row count.

    Such a constant (``rows``, ``rows - 1``, ``-rows`` or ``rows * width``) would be computed from the
    stand-in's shape, not the real table's, and give wrong results once the real table is in.
    """
    suspicious = {v for s in subs for v in (s.rows, s.rows - 1, -s.rows, s.rows * s.emb.shape[1])}
    tables = {s.onnx_name for s in subs}
    for name, values in _numeric_constants(model, tables):
        if values.dtype.kind not in "iuf" or values.size > 1 << 20:
            continue
        hits = np.isin(values, list(suspicious))
        if hits.any():
            raise ExportError(
                f"constant {name!r} of the converted graph holds {values[hits].flat[0]}, derived from a "
                "stand-in table's row count; this model's graph depends on the table size beyond the "
                "lookup. Raise external_data_threshold above the table size to export it the usual way"
            )


def stand_in_input_dims(embeddings: Sequence[EmbeddingInfo], subs: Sequence[StandIn]) -> dict[str, int]:
    """Valid id bound per graph input while the stand-ins are in the graph (for the rewrite check); without
    stand-ins, the real bounds."""
    rows = {s.emb.name: s.rows for s in subs}
    bounds: dict[str, int] = {}
    for emb in embeddings:
        dim = min(emb.input_dim, rows.get(emb.layer, emb.input_dim))
        for name in emb.inputs:
            bounds[name] = min(bounds.get(name, dim), dim)
    return bounds


def _tf_variable(variable: Any) -> Any:
    """The ``tf.Variable`` behind a Keras 3 variable (``.value``); tf-keras variables are already one."""
    import tensorflow as tf

    inner = getattr(variable, "value", None)
    return inner if isinstance(inner, tf.Variable) else variable


def snapshot(variable: Any) -> Any:
    """The table as one eager tensor, read once.

    A variable in TensorFlow's normal mode hands out its own buffer (no copy). One in copy-on-read mode
    (after sparse updates: training with ``IndexedSlices`` gradients, slice assignments) copies the whole
    table on *every* dense read, and Keras's ``take`` reads it twice per call; reading it once here and
    slicing that tensor costs at most one copy for the whole export.
    """
    import tensorflow as tf

    return tf.convert_to_tensor(_tf_variable(variable))


def iter_rows(table: Any, dtype: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """``table`` (from :func:`snapshot`) as C-contiguous little-endian row chunks of about ``chunk_bytes``."""
    rows, width = (int(d) for d in table.shape)
    step = max(1, chunk_bytes // max(1, width * np.dtype(dtype).itemsize))
    want = np.dtype(dtype).newbyteorder("<")
    for start in range(0, rows, step):
        chunk = table[start : start + step].numpy()
        if chunk.dtype != np.dtype(dtype):
            raise ExportError(f"table rows read as {chunk.dtype}, expected {dtype}")
        yield np.ascontiguousarray(chunk, dtype=want)


@contextmanager
def read_once(subs: Sequence[StandIn]) -> Iterator[dict[str, Any]]:
    """Snapshot each big table (:func:`snapshot`) and let the layers read the snapshot while the block
    runs (the parity check calls the model many times); the variables are back afterwards.

    Yields ``{onnx table name: snapshot}``; the values are the variables' current values, so the parity
    check still compares with the Keras model's own forward pass on the real table.
    """
    tables = {s.onnx_name: snapshot(s.original) for s in subs}
    try:
        with swapped_tables() as put:
            for s in subs:
                put(s.emb, s.attribute, tables[s.onnx_name])
            yield tables
    finally:
        tables.clear()


@dataclass(frozen=True)
class Placement:
    """Where one initializer's bytes (a table, or an int8 table's scales) are in the data file."""

    name: str
    shape: tuple[int, ...]
    offset: int
    length: int


def _storage(init: onnx.TensorProto, s: StandIn) -> str:
    """The dtype the graph stores the stand-in's table in: the layer's, or one of
    :func:`exporters.quantize.compact_tables`' (float16, int8)."""
    if tuple(init.dims) != (s.rows, s.emb.shape[1]):
        raise ExportError(f"initializer {s.onnx_name!r} is not the stand-in of {s.emb.name!r}")
    stored = helper.tensor_dtype_to_np_dtype(init.data_type).name
    allowed = {s.emb.dtype, *(quantize.TABLE_DTYPES if s.emb.dtype == "float32" else ())}
    if stored not in allowed:
        raise ExportError(f"table {s.onnx_name!r} has ONNX type {stored}, expected one of {sorted(allowed)}")
    return stored


class _DataFile:
    """The data file being written: aligned blocks, hashed as they go."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.digest = hashlib.sha256()

    def align(self) -> int:
        padding = b"\0" * (-self.f.tell() % ALIGNMENT)
        self.write(padding)
        return int(self.f.tell())

    def write(self, data: Any) -> None:
        self.f.write(data)
        self.digest.update(data)

    def place(self, name: str, shape: tuple[int, ...], offset: int, want: int) -> Placement:
        length = int(self.f.tell()) - offset
        if length != want:
            raise ExportError(f"wrote {length} bytes for {name!r}, expected {want}")
        return Placement(name, shape, offset, length)


def write_tables(
    model: onnx.ModelProto, subs: Sequence[StandIn], tables: dict[str, Any], data_path: Path
) -> tuple[list[Placement], str]:
    """Stream the real table of each stand-in the graph uses (``tables`` from :func:`read_once`) into
    ``data_path``, row chunk by row chunk; returns where each table went and the file's sha256 (hex).

    A table the graph stores compacted (float16 or int8, :mod:`exporters.quantize`) is compacted chunk by
    chunk as it is written; an int8 table's scales (4 bytes a row, kept until the table is written) follow
    it. Each block starts at an offset aligned to
    :data:`ALIGNMENT`. The graph is not changed: apply the result with :func:`point_to`.
    """
    inits = {init.name: init for init in model.graph.initializer}
    placements = []
    with open(data_path, "wb") as f:
        out = _DataFile(f)
        for s in subs:
            init = inits.get(s.onnx_name)
            if init is None:
                continue  # a layer the forward pass never uses
            stored = _storage(init, s)
            scales: list[np.ndarray] = []
            offset = out.align()
            for chunk in iter_rows(tables[s.onnx_name], s.emb.dtype):
                if stored != s.emb.dtype:
                    chunk, scale = quantize.compact_rows(chunk, stored)
                    scales += [] if scale is None else [scale.astype("<f4")]
                out.write(np.ascontiguousarray(chunk, chunk.dtype.newbyteorder("<")).data.cast("B"))
            want = int(np.prod(s.emb.shape)) * np.dtype(stored).itemsize
            placements.append(out.place(s.onnx_name, s.emb.shape, offset, want))
            if scales:
                offset = out.align()
                for scale in scales:
                    out.write(scale.data.cast("B"))
                name = quantize.scale_name(s.onnx_name)
                placements.append(out.place(name, (s.emb.shape[0], 1), offset, 4 * s.emb.shape[0]))
    return placements, out.digest.hexdigest()


def point_to(model: onnx.ModelProto, placements: Sequence[Placement], location: str) -> None:
    """Turn each placed table's initializer into a reference to ``location`` (relative to the ``.onnx``)
    with the real shape: the graph then holds no table bytes."""
    inits = {init.name: init for init in model.graph.initializer}
    for p in placements:
        init = inits[p.name]
        for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(name)
        del init.dims[:]
        init.dims.extend(p.shape)
        init.data_location = TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", location), ("offset", str(p.offset)), ("length", str(p.length))):
            init.external_data.add(key=key, value=value)
