"""The pure-lookup pass: which graph outputs are exactly an Embedding's lookup, proven on the final graph.

:func:`declare_pure_lookups` runs last, on the graph as it will be written. For each contract entry (one
Embedding layer and the one graph input whose ids it looks up), a graph output is declared a *pure
lookup* (``EmbeddingInfo.lookup_output``) when the subgraph that produces it is exactly one of:

* ``Gather(table, ids)``: a float32 (or Keras-dtype) table;
* ``Cast(Gather(table, ids))``: a float16 table;
* ``Mul(Cast(Gather(table, ids)), Gather(scales, ids))`` (either operand order) or
  ``Div(Cast(Gather(table, ids)), Gather(scales, ids))``: an int8 table with one scale per row;

where ``table`` is the layer's initializer (``<layer>.embeddings``, rank 2), ``scales`` its
``<layer>.embeddings_scale`` initializer of one column (one scale per row), every ``Gather`` on axis 0, and
``ids`` that graph input itself. Then the output's row for an id depends on that id and the table alone.
Nothing else is declared: another producer, an ``Identity`` in between, computed ids, another axis.
The runtime still checks every declaration against onnxruntime at load (:mod:`embed_runtime.lookup`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import onnx

from .quantize import scale_name
from .rewrite import int_attr, producers_of

if TYPE_CHECKING:
    from .passes import ExportState


class _Graph:
    """The top-level producers and initializer shapes of one graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.producers = producers_of(graph)
        self.shapes = {init.name: list(init.dims) for init in graph.initializer}
        self.inputs = {i.name for i in graph.input}

    def gather(self, value: str, op: str, table: str, ids: str, width: int | None = None) -> bool:
        """Whether ``value`` is ``op`` of ``Gather(table, ids)`` (``op`` ``"Gather"``: the Gather itself) on
        axis 0, ``table`` a rank-2 initializer (of ``width`` columns when given) and ``ids`` a graph input.
        The rows are not counted: a big table is a smaller stand-in until it is written
        (:mod:`exporters.large`)."""
        node = self.producers.get(value)
        if node is None or node.op_type != op:
            return False
        if op != "Gather":
            return len(node.input) == 1 and self.gather(node.input[0], "Gather", table, ids, width)
        shape = self.shapes.get(table)
        return (
            list(node.input) == [table, ids]
            and int_attr(node, "axis", 0) == 0
            and ids in self.inputs
            and shape is not None
            and len(shape) == 2
            and width in (None, shape[1])
        )

    def is_lookup(self, value: str, table: str, ids: str) -> bool:
        """Whether ``value`` is one of the module's lookup forms of ``table`` on graph input ``ids``."""
        if self.gather(value, "Gather", table, ids) or self.gather(value, "Cast", table, ids):
            return True
        node = self.producers.get(value)
        if node is None or node.op_type not in ("Mul", "Div") or len(node.input) != 2:
            return False
        pairs = [tuple(node.input)] + ([tuple(reversed(node.input))] if node.op_type == "Mul" else [])
        return any(
            self.gather(rows, "Cast", table, ids) and self.gather(scales, "Gather", scale_name(table), ids, 1)
            for rows, scales in pairs
        )


def declare_pure_lookups(state: ExportState) -> None:
    """Record, in each contract entry with one id input, the graph output that is exactly its lookup in
    one of the forms of :mod:`exporters.pure_lookups` (``lookup_output``); entries with none stay as
    they are."""
    graph = _Graph(state.model.graph)
    outputs = [o.name for o in state.model.graph.output]
    for table in state.tables:
        name = table.layer.onnx_name
        declared = []
        for info in table.embeddings:
            ids = info.inputs[0] if len(info.inputs) == 1 else None
            found = None if ids is None else next((o for o in outputs if graph.is_lookup(o, name, ids)), None)
            declared.append(replace(info, lookup_output=found))
        table.embeddings[:] = declared
