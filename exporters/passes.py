"""The rewrite passes, in order: tf2onnx's raw graph -> the minimal graph the runtime reads.

Each pass is a function ``(state: ExportState) -> None`` that changes :attr:`ExportState.model` in place and
records what it found on the :class:`ExportState`; its docstring says what it guarantees once it has run.
:data:`PASSES` is the order :func:`exporters.export.export_keras` runs them in, after the conversion
(:func:`exporters.export.build`) and before the checks, the metadata and the writer.

To add a pass (quantizing a table to int8, a text front end...): write one function here and add one
line to :data:`PASSES`. A pass may rely on everything the passes before it recorded. After the passes,
the rewrite check requires outputs exactly equal to tf2onnx's graph and the parity check outputs within
``atol`` of Keras (:mod:`exporters.verify`): a pass that changes values on purpose, such as quantizing,
records what it changed (:attr:`ExportState.compact`), and both checks then compare against the changed
values (:func:`exporters.verify.compare_compact`, :func:`exporters.quantize.reference_raw`). The graph-level primitives the passes call are in :mod:`exporters.rewrite`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from embed_runtime.contract import EmbeddingInfo, mask_output_name

from . import dims, large, naming, pure_lookups, quantize, rewrite
from .errors import ExportError
from .keras_model import EmbeddingLayer, KerasModelInfo
from .lookups import MaskSource

COMPUTED = "computed"
"""Stands for the input in a mask output's name when its layer's ids are computed in the model
(``<layer>_computed_mask`` when the layer also reads graph inputs directly)."""


@dataclass
class FoundTable:
    """An Embedding table found in the graph: its layer, the graph inputs whose ids it looks up, the id
    tensors computed in the graph that it looks up, and what the metadata says about each lookup."""

    layer: EmbeddingLayer
    id_inputs: list[str] = field(default_factory=list)
    computed_ids: list[str] = field(default_factory=list)
    embeddings: list[EmbeddingInfo] = field(default_factory=list)


@dataclass
class ExportState:
    """What the passes share.

    Attributes:
        keras: the Keras model as :func:`exporters.keras_model.describe` read it.
        raw: tf2onnx's graph (weights dropped from its inputs): the reference of the rewrite check.
        model: the ONNX model the passes rewrite, a copy of ``raw`` at first.
        table_names: ``{layer name: initializer name}`` of each table the graph holds, found by its origin
            (:func:`exporters.tables.restore`).
        stand_ins: the big tables converted as small stand-ins (:mod:`exporters.large`); empty otherwise.
        tables: the Embedding tables found in the graph, in the model's layer order.
        masks: the mask outputs added, for the parity check.
        table_dtype: how the tables are stored (:data:`exporters.quantize.TABLE_DTYPES`).
        compact: the tables stored in another dtype than Keras's (:func:`exporters.quantize.compact_tables`).
    """

    keras: KerasModelInfo
    raw: onnx.ModelProto
    model: onnx.ModelProto
    table_names: dict[str, str]
    stand_ins: list[large.StandIn] = field(default_factory=list)
    tables: list[FoundTable] = field(default_factory=list)
    masks: list[MaskSource] = field(default_factory=list)
    table_dtype: str = "float32"
    compact: list[quantize.CompactTable] = field(default_factory=list)

    @property
    def lengths(self) -> dict[str, int | None]:
        """Static sequence length (or None) of each id input."""
        return {s.name: s.length for s in self.keras.inputs}

    @property
    def embeddings(self) -> list[EmbeddingInfo]:
        """The contract's facts about every lookup, in table order (the artifact's metadata)."""
        return [info for table in self.tables for info in table.embeddings]


def find_tables(state: ExportState) -> None:
    """Take each Embedding's table as found by its origin (:func:`exporters.tables.restore`), feed each of
    its lookup ``Gather`` nodes straight from the id input where the index arithmetic in between is proven
    to be the identity on every valid id (:func:`exporters.rewrite.collapse_index_chain`), record the
    inputs it reads and the ids it reads that the model computes, and name it ``<layer>.embeddings``.

    A layer the forward pass never uses has no table in the graph and is left out; a graph with no table
    is refused, and so is a ``mask_zero`` layer that looks up computed ids at more than one place (one
    mask output per layer and input).
    """
    for emb in state.keras.embeddings:
        table = state.table_names.get(emb.name)
        if table is None:
            continue  # a layer the forward pass never uses: not in the graph
        gathers = rewrite.lookups(state.model, table)
        sources = [rewrite.collapse_index_chain(state.model, g, emb.input_dim) for g in gathers]
        computed = [g.input[1] for g, source in zip(gathers, sources) if source is None]
        if emb.mask_zero and len(computed) > 1:
            raise ExportError(
                f"Embedding {emb.name!r} has mask_zero=True and looks up ids computed in the model at "
                f"{len(computed)} places; only one such lookup per layer can have a mask output (call the "
                "layer once on those ids, or export without mask_zero)"
            )
        rewrite.rename(state.model, table, emb.onnx_name)
        state.tables.append(FoundTable(emb, sorted({s for s in sources if s is not None}), computed))
    if not state.tables:
        raise ExportError("no Embedding table of the model was found in the converted graph")


def _lookups(table: FoundTable) -> list[str | None]:
    """What each metadata entry of ``table`` is about: an id input, or None for computed ids (one entry for
    a ``mask_zero`` layer's computed ids, and one for a layer with no id input)."""
    found: list[str | None] = [*table.id_inputs]
    if table.computed_ids and (table.layer.mask_zero or not found):
        found.append(None)
    return found or [None]


def _masked(table: FoundTable, source: str | None) -> bool:
    """Whether the lookup of ``source`` (None: computed ids) by ``table`` gets a mask output."""
    return table.layer.mask_zero and (source is not None or bool(table.computed_ids))


def describe_lookups(state: ExportState) -> None:
    """Record the contract's :class:`EmbeddingInfo` of each (table, id input), naming the mask output of
    each ``mask_zero`` lookup by :func:`embed_runtime.contract.mask_output_name` (:data:`COMPUTED` standing
    for the input of computed ids, whose entry lists no input). A mask name that is already a model input
    or output is refused."""
    masked = [(t.layer.name, src or COMPUTED) for t in state.tables for src in _lookups(t) if _masked(t, src)]
    taken = {name: "output" for name in state.keras.output_names}
    taken.update({s.name: "input" for s in state.keras.inputs})
    for table in state.tables:
        emb = table.layer
        for src in _lookups(table):
            mask = mask_output_name(emb.name, src or COMPUTED, masked) if _masked(table, src) else None
            if mask:
                if mask in taken:
                    raise ExportError(
                        f"the mask output of Embedding {emb.name!r} is named {mask!r} by the contract "
                        f"(embed_runtime.contract.mask_output_name), but the model already has an "
                        f"{taken[mask]} of that name; rename that Keras {taken[mask]}"
                    )
                taken[mask] = "output"
            table.embeddings.append(
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


def add_mask_outputs(state: ExportState) -> None:
    """Add each recorded mask output: ``ids != padding id`` over the ids its layer looks up (an id input,
    or ids computed in the graph), Keras's ``compute_mask`` of a ``mask_zero`` Embedding (the parity check
    compares the two)."""
    lengths = state.lengths
    for table in state.tables:
        for info in table.embeddings:
            if info.mask_output is None:
                continue
            src = info.inputs[0] if info.inputs else None
            if src is not None:
                ids, shape = src, ["batch", dims.sequence_dim(src, lengths)]
            else:
                ids = table.computed_ids[0]
                shape = dims.placeholder_dims(state.model, ids, info.mask_output)
            rewrite.add_mask_output(state.model, ids, info.mask_output, shape)
            state.masks.append(MaskSource(info.mask_output, table.layer, src))


def set_io_dims(state: ExportState) -> None:
    """Name the axes: inputs ``(batch, <sequence>)``, outputs ``batch`` first and every axis shape
    inference can derive (:func:`exporters.dims.set_io_dims`)."""
    dims.set_io_dims(state.model, state.lengths)


def remove_dead_nodes(state: ExportState) -> None:
    """Drop every node and initializer no output depends on (the index arithmetic the collapse bypassed)
    and unused opset domains."""
    rewrite.remove_dead(state.model)


def name_tracking_dims(state: ExportState) -> None:
    """Name the output axes that follow an input's sequence length where shape inference cannot see it
    (through RNN loops), by running the graph at two lengths (:func:`exporters.dims.name_tracking_dims`)."""
    dims.name_tracking_dims(state.model, state.lengths)


def check_stand_ins_gone(state: ExportState) -> None:
    """With big tables converted as stand-ins: prove no constant left in the graph holds a stand-in's row
    count, so the real tables can replace them (:func:`exporters.large.check_row_count_gone`)."""
    if state.stand_ins:
        large.check_row_count_gone(state.model, state.stand_ins)


def name_reproducibly(state: ExportState) -> None:
    """Name and order every node, intermediate value, initializer and unnamed dim from a walk of the graph
    instead of tf2onnx's per-process counters, keeping the graph's inputs, outputs and tables
    (``<layer>.embeddings``, and ``<layer>.embeddings_scale`` of int8 tables): exporting one model twice gives the same bytes
    (:func:`exporters.naming.canonicalize`)."""
    tables = [table.layer.onnx_name for table in state.tables]
    scales = [quantize.scale_name(name) for name in tables]  # <layer>.embeddings_scale, where there is one
    present = {init.name for init in state.model.graph.initializer}
    naming.canonicalize(state.model, tables + [n for n in scales if n in present], state.keras.model.name)


Pass = Callable[[ExportState], None]

PASSES: tuple[Pass, ...] = (
    find_tables,
    describe_lookups,
    quantize.keras_int8_lookups,
    add_mask_outputs,
    set_io_dims,
    remove_dead_nodes,
    name_tracking_dims,
    check_stand_ins_gone,
    name_reproducibly,
    quantize.compact_tables,
    pure_lookups.declare_pure_lookups,
)
"""The rewrite passes in the order they run; a new pass is one function above and one line here."""
