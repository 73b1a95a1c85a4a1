"""Compact tables: store an Embedding table as float16 or per-row int8 instead of float32.

``export_keras(..., table_dtype=...)`` picks the storage of every float32 table:

* ``"float32"``: unchanged (the default).
* ``"float16"``: the table is stored as float16; each lookup is ``Gather -> Cast(float32)``.
* ``"int8"``: per-row symmetric quantization, one float32 scale per row (``scale = max|row| / 127``, so a
  rare row with big values does not cost the others their precision); each lookup is
  ``Gather(int8 table) -> Cast(float32) -> Mul(Gather(scales))``, standard ops of opset 7+.

The values change on purpose, so the export-time checks change meaning (:func:`exporters.verify.
compare_compact`): the graph must match, within ``atol``, the Keras model with its table replaced by the
dequantized one (the rows exactly as the graph computes them, :func:`dequantize`); against the original
model it reports the output differences, and every stored element must stay within its bound
(:class:`TableError`: ``scale/2`` per element for int8, half a float16 step for float16). The rewrite check
compares tf2onnx's graph with its tables replaced by the dequantized values (:func:`reference_raw`).

:func:`compact_rows` is the one quantizer: the pass quantizes what the graph holds (the table, or a big
table's stand-in) and :func:`exporters.large.write_tables` quantizes a big table's real rows chunk by chunk
with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import rewrite
from .errors import ExportError
from .keras_model import EmbeddingLayer

if TYPE_CHECKING:
    from .passes import ExportState, FoundTable

TABLE_DTYPES = ("float32", "float16", "int8")
"""The storage dtypes ``table_dtype`` accepts."""

PER_ROW_SCALE = "per_row_scale"
"""Quantization scheme of an int8 table: ``row = float32(q) * scale[row]`` (the exporter's own)."""

PER_ROW_INVERSE_SCALE = "per_row_inverse_scale"
"""Quantization scheme of an int8 table: ``row = float32(q) / scale[row]`` (Keras 3's ``quantize("int8")``)."""

_INT8_MAX = 127.0
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def check_table_dtype(table_dtype: str) -> str:
    """``table_dtype`` if it is one of :data:`TABLE_DTYPES`; raises :class:`ExportError` otherwise."""
    if table_dtype not in TABLE_DTYPES:
        raise ExportError(f"table_dtype must be one of {', '.join(TABLE_DTYPES)}, not {table_dtype!r}")
    return table_dtype


def scale_name(table: str) -> str:
    """Name of the scales initializer of int8 table ``table``: ``<layer>.embeddings_scale``."""
    return f"{table}_scale"


def compact_rows(rows: np.ndarray, table_dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of a float32 table as stored in ``table_dtype``: (stored rows, float32 scales of shape
    ``(rows, 1)`` for int8, else None). An all-zero row gets the smallest positive scale."""
    if table_dtype == "float16":
        with np.errstate(over="ignore"):
            return rows.astype(np.float16), None
    amax = np.max(np.abs(rows), axis=1, keepdims=True, initial=0.0)
    scale = (amax / np.float32(_INT8_MAX)).astype(np.float32)
    scale[scale == 0] = np.finfo(np.float32).tiny
    with np.errstate(invalid="ignore"):
        q = np.clip(np.rint(rows / scale), -_INT8_MAX, _INT8_MAX)
    return np.nan_to_num(q).astype(np.int8), scale


def dequantize(
    stored: np.ndarray, scale: np.ndarray | None, scheme: str | None = PER_ROW_SCALE
) -> np.ndarray:
    """The float32 rows the graph computes from ``stored`` rows (and ``scale``), bit for bit."""
    values = stored.astype(np.float32)
    if scale is None:
        return values
    return values / scale if scheme == PER_ROW_INVERSE_SCALE else values * scale


def element_bound(rows: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """The largest error each element of ``rows`` may get: ``scale/2`` (plus two float32 steps of the row's
    largest value for rounding) per int8 row, half a float16 step per float16 element."""
    if scale is None:
        return np.maximum(np.abs(rows) * 2.0**-11, 2.0**-25)
    amax = np.max(np.abs(rows), axis=1, keepdims=True, initial=0.0)
    return scale.astype(np.float64) / 2 + 2 * np.spacing(amax.astype(np.float32))


@dataclass
class TableError:
    """How far one compacted table's rows are from the original ones, over every row (:meth:`update`)."""

    layer: str
    table_dtype: str
    max_abs_error: float = 0.0
    max_bound: float = 0.0
    """The largest per-element bound of any row (``scale/2`` of the widest int8 row)."""
    worst_cosine: float = 1.0
    """The smallest cosine similarity between an original row and its compacted row."""
    rows: int = 0

    def update(self, rows: np.ndarray, deq: np.ndarray, bound: np.ndarray, first_row: int) -> None:
        """Add a chunk of original ``rows`` and their dequantized values; raises :class:`ExportError`
        naming the row when an element is beyond its ``bound`` or not finite."""
        x, y = rows.astype(np.float64), deq.astype(np.float64)
        error = np.abs(y - x)
        bad = ~(error <= bound)
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            hint = f" (float16 holds values up to {_FLOAT16_MAX:g})" if self.table_dtype == "float16" else ""
            raise ExportError(
                f"Embedding {self.layer!r}: row {first_row + row} value {rows[row, col]!r} becomes "
                f"{deq[row, col]!r} as {self.table_dtype}, beyond the bound {float(np.max(bound[row])):.3g}"
                f"{hint}; export this table as float32 or another table_dtype"
            )
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        dots = np.einsum("ij,ij->i", x, y)
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 1.0)
        self.max_abs_error = max(self.max_abs_error, float(np.max(error, initial=0.0)))
        self.max_bound = max(self.max_bound, float(np.max(bound, initial=0.0)))
        self.worst_cosine = min(self.worst_cosine, float(np.min(cosine, initial=1.0)))
        self.rows += len(rows)

    def __str__(self) -> str:
        return (
            f"table {self.layer} as {self.table_dtype}: {self.rows} rows, max |row error| "
            f"{self.max_abs_error:.3g} (bound {self.max_bound:.3g}), worst row cosine {self.worst_cosine:.6f}"
        )


@dataclass(frozen=True)
class CompactTable:
    """One table the pass compacted.

    Attributes:
        layer: the Embedding layer.
        raw_name: the table's initializer name in tf2onnx's graph (:attr:`ExportState.raw`).
        reference: the dequantized values of what the graph held (the table, or a big table's stand-in),
            for the rewrite check.
    """

    layer: EmbeddingLayer
    raw_name: str
    reference: np.ndarray


def _node(op: str, inputs: Sequence[str], output: str, **attrs: int) -> onnx.NodeProto:
    node = helper.make_node(op, list(inputs), [output], name=f"{output}/{op}")
    node.attribute.extend(helper.make_attribute(key, value) for key, value in attrs.items())
    return node


def _lookup_nodes(table: str, ids: str, out: str, table_dtype: str) -> list[onnx.NodeProto]:
    """``Gather(table, ids) -> Cast(float32) [-> Mul(Gather(scales, ids))]`` ending in ``out``."""
    stored = f"{out}/{table_dtype}"
    nodes = [_node("Gather", [table, ids], stored, axis=0)]
    if table_dtype == "float16":
        return [*nodes, _node("Cast", [stored], out, to=TensorProto.FLOAT)]
    scales = f"{out}/scale"
    return [
        *nodes,
        _node("Cast", [stored], f"{out}/float32", to=TensorProto.FLOAT),
        _node("Gather", [scale_name(table), ids], scales, axis=0),
        _node("Mul", [f"{out}/float32", scales], out),
    ]


def _whole_table_nodes(table: str, table_dtype: str) -> tuple[str, list[onnx.NodeProto]]:
    """Nodes giving the whole dequantized table, for readers other than a row ``Gather``."""
    out = f"{table}/dequantized"
    cast = f"{out}/float32" if table_dtype == "int8" else out
    nodes = [_node("Cast", [table], cast, to=TensorProto.FLOAT)]
    if table_dtype == "int8":
        nodes.append(_node("Mul", [cast, scale_name(table)], out))
    return out, nodes


def _rewrite_readers(graph: onnx.GraphProto, table: str, table_dtype: str) -> None:
    """Turn every top-level reader of ``table`` into a reader of its compacted form."""
    nodes: list[onnx.NodeProto] = []
    whole: str | None = None
    for node in graph.node:
        axis = rewrite.int_attr(node, "axis", 0)
        if node.op_type == "Gather" and node.input[0] == table and axis == 0:
            nodes += _lookup_nodes(table, node.input[1], node.output[0], table_dtype)
            continue
        if table in node.input:
            if whole is None:
                whole, dequant = _whole_table_nodes(table, table_dtype)
                nodes += dequant
            for i, name in enumerate(node.input):
                if name == table:
                    node.input[i] = whole
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def compact_tables(state: ExportState) -> None:
    """Store each float32 table in ``state.table_dtype`` (nothing to do for ``"float32"``): replace its
    initializer (and add the scales of an int8 one), rewrite its lookups into the compact form, and
    record the table's dtype and scheme in its metadata entries. A table that is not float32 is refused."""
    table_dtype = state.table_dtype
    if table_dtype == "float32":
        return
    graph = state.model.graph
    inits = {init.name: init for init in graph.initializer}
    for found in state.tables:
        emb = found.layer
        if emb.dtype != "float32":
            raise ExportError(
                f"table_dtype={table_dtype!r} compacts float32 tables; Embedding {emb.name!r} holds "
                f"{emb.dtype} (export it with table_dtype='float32')"
            )
        name = emb.onnx_name
        values = numpy_helper.to_array(inits[name])
        stored, scale = compact_rows(values, table_dtype)
        inits[name].CopyFrom(numpy_helper.from_array(stored, name))
        if scale is not None:
            graph.initializer.append(numpy_helper.from_array(scale, scale_name(name)))
        _rewrite_readers(graph, name, table_dtype)
        _record_storage(found, table_dtype, PER_ROW_SCALE if scale is not None else None)
        state.compact.append(CompactTable(emb, state.table_names[emb.name], dequantize(stored, scale)))


def _record_storage(found: FoundTable, table_dtype: str, scheme: str | None) -> None:
    """Record how ``found``'s table is stored in each of its metadata entries."""
    found.embeddings[:] = [replace(i, table_dtype=table_dtype, quantization=scheme) for i in found.embeddings]


def reference_raw(raw: onnx.ModelProto, compact: Sequence[CompactTable]) -> onnx.ModelProto:
    """tf2onnx's graph with each compacted table replaced by its dequantized values: the reference of the
    rewrite check, which the compacted graph must match exactly. ``raw`` itself without compact tables."""
    if not compact:
        return raw
    model = onnx.ModelProto()
    model.CopyFrom(raw)
    inits = {init.name: init for init in model.graph.initializer}
    for table in compact:
        inits[table.raw_name].CopyFrom(numpy_helper.from_array(table.reference, table.raw_name))
    return model


def _reader(graph: onnx.GraphProto, value: str, op: str) -> onnx.NodeProto | None:
    """The one node reading ``value``, if there is one and it is an ``op``."""
    readers = [n for n in graph.node if value in n.input]
    return readers[0] if len(readers) == 1 and readers[0].op_type == op else None


def _scale_lookup(
    graph: onnx.GraphProto, gather: onnx.NodeProto
) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(``Div``, scale ``Gather``) of a lookup ``gather -> Cast -> Div(x, Unsqueeze(Gather(initializer,
    ...)))``, or None when the lookup has another form."""
    cast = _reader(graph, gather.output[0], "Cast")
    div = _reader(graph, cast.output[0], "Div") if cast else None
    if cast is None or div is None or div.input[0] != cast.output[0]:
        return None
    producers = rewrite.producers_of(graph)
    unsqueeze = producers.get(div.input[1])
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
        return None
    scale = producers.get(unsqueeze.input[0])
    initializers = {init.name for init in graph.initializer}
    if scale is None or scale.op_type != "Gather" or scale.input[0] not in initializers:
        return None
    return div, scale


def _keras_int8_lookup(state: ExportState, found: FoundTable, gather: onnx.NodeProto) -> bool:
    """Rewrite one lookup of a Keras int8 table, ``Gather -> Cast -> Div(Unsqueeze(Gather(scales,
    <index arithmetic>)))``, into ``Gather -> Cast -> Div(Gather(scales as (rows, 1), ids))``; False when
    the lookup does not have that form (it is then left as it is)."""
    graph = state.model.graph
    found_nodes = _scale_lookup(graph, gather)
    if found_nodes is None:
        return False
    div, scale_gather = found_nodes
    emb = found.layer
    inits = {init.name: init for init in graph.initializer}
    scales = numpy_helper.to_array(inits[scale_gather.input[0]])
    if scales.shape != (emb.input_dim,):
        return False
    if rewrite.collapse_index_chain(state.model, scale_gather, emb.input_dim) != gather.input[1]:
        return False
    name = scale_name(emb.onnx_name)
    if name not in inits:
        graph.initializer.append(numpy_helper.from_array(scales.reshape(-1, 1), name))
    scale_gather.input[0] = name
    div.input[1] = scale_gather.output[0]
    return True


def keras_int8_lookups(state: ExportState) -> None:
    """Give each lookup of a table Keras 3 quantized (``model.quantize("int8")``: an int8 table and one
    scale per row, ``row = q / scale``) the minimal form ``Gather -> Cast -> Div(Gather(scales))`` with
    ``Div`` as Keras computes it, so the graph stays exact, and record ``table_dtype="int8"`` with the
    scheme :data:`PER_ROW_INVERSE_SCALE` in its metadata. The index arithmetic of the scale lookup is
    collapsed as the table's is (:func:`exporters.rewrite.collapse_index_chain`); the remove-dead pass
    drops it."""
    for found in state.tables:
        if getattr(found.layer.layer, "quantization_mode", None) != "int8":
            continue
        gathers = rewrite.lookups(state.model, found.layer.onnx_name)
        if gathers and all([_keras_int8_lookup(state, found, g) for g in gathers]):
            _record_storage(found, "int8", PER_ROW_INVERSE_SCALE)
