"""The rewrite passes, in order: tf2onnx's raw graph -> the minimal graph the runtime reads.

Each pass is a function ``(state: ExportState) -> None`` that changes :attr:`ExportState.model` in place and
records what it found on the :class:`ExportState`; its docstring says what it guarantees once it has run.
:data:`PASSES` is the order :func:`exporters.export.export_keras` runs them in, after the conversion
(:func:`exporters.export.build`) and before the checks, the metadata and the writer.

To add a pass (quantizing a table to int8, a text front end...): write one function here and add one
line to :data:`PASSES`. A pass may rely on everything the passes before it recorded. After the passes,
the rewrite check requires outputs exactly equal to tf2onnx's graph and the parity check outputs within
``atol`` of Keras (:mod:`exporters.verify`): a pass that changes values on purpose, such as quantizing,
has to relax the former. The graph-level primitives the passes call are in :mod:`exporters.rewrite`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from embed_runtime.contract import EmbeddingInfo, mask_output_name

from . import large, rewrite
from .errors import ExportError
from .keras_model import EmbeddingLayer, KerasModelInfo
from .verify import MaskSource


@dataclass
class FoundTable:
    """An Embedding table found in the graph: its layer, the graph inputs whose ids it looks up, and
    what the metadata says about each such lookup."""

    layer: EmbeddingLayer
    id_inputs: list[str] = field(default_factory=list)
    embeddings: list[EmbeddingInfo] = field(default_factory=list)


@dataclass
class ExportState:
    """What the passes share.

    Attributes:
        keras: the Keras model as :func:`exporters.keras_model.describe` read it.
        raw: tf2onnx's graph (weights dropped from its inputs): the reference of the rewrite check.
        model: the ONNX model the passes rewrite, a copy of ``raw`` at first.
        stand_ins: the big tables converted as small stand-ins (:mod:`exporters.large`); empty otherwise.
        tables: the Embedding tables found in the graph, in the model's layer order.
        masks: the mask outputs added, for the parity check.
    """

    keras: KerasModelInfo
    raw: onnx.ModelProto
    model: onnx.ModelProto
    stand_ins: list[large.StandIn] = field(default_factory=list)
    tables: list[FoundTable] = field(default_factory=list)
    masks: list[MaskSource] = field(default_factory=list)

    @property
    def lengths(self) -> dict[str, int | None]:
        """Static sequence length (or None) of each id input."""
        return {s.name: s.length for s in self.keras.inputs}

    @property
    def embeddings(self) -> list[EmbeddingInfo]:
        """The contract's facts about every lookup, in table order (the artifact's metadata)."""
        return [info for table in self.tables for info in table.embeddings]


def find_tables(state: ExportState) -> None:
    """Find each Embedding's table among the initializers (same shape and values), feed each of its
    lookup ``Gather`` nodes straight from the id input where the index arithmetic in between is proven to
    be the identity on every valid id (:func:`exporters.rewrite.collapse_index_chain`), record the inputs
    it reads, and name it ``<layer>.embeddings``.

    A layer the forward pass never uses has no table in the graph and is left out; a graph with no table
    is refused, and so is a ``mask_zero`` layer whose ids are computed in the graph (its mask would not
    be a function of a model input).
    """
    for emb in state.keras.embeddings:
        try:
            table = rewrite.find_table(state.model, emb.read_table())
        except ExportError:
            continue  # a layer the forward pass never uses: not in the graph
        sources = [
            rewrite.collapse_index_chain(state.model, gather, emb.input_dim)
            for gather in rewrite.lookups(state.model, table)
        ]
        if None in sources and emb.mask_zero:
            raise ExportError(
                f"Embedding {emb.name!r} has mask_zero=True but its ids are computed in the graph rather than "
                "taken from a model input; its mask cannot be exported"
            )
        rewrite.rename(state.model, table, emb.onnx_name)
        state.tables.append(FoundTable(emb, sorted({s for s in sources if s is not None})))
    if not state.tables:
        raise ExportError("no Embedding table of the model was found in the converted graph")


def describe_lookups(state: ExportState) -> None:
    """Record the contract's :class:`EmbeddingInfo` of each (table, id input), naming the mask output of
    each ``mask_zero`` lookup by :func:`embed_runtime.contract.mask_output_name`. A mask name that is
    already a model output is refused."""
    masked = [(t.layer.name, src) for t in state.tables if t.layer.mask_zero for src in t.id_inputs]
    taken = set(state.keras.output_names)
    for table in state.tables:
        emb = table.layer
        sources: list[str | None] = [*table.id_inputs] or [None]
        for src in sources:
            mask = mask_output_name(emb.name, src, masked) if emb.mask_zero and src else None
            if mask:
                if mask in taken:
                    raise ExportError(f"the model already has an output named {mask!r}; rename that layer")
                taken.add(mask)
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
    """Add each recorded mask output: ``ids != padding id`` over its id input, Keras's ``compute_mask``
    of a ``mask_zero`` Embedding (the parity check compares the two)."""
    lengths = state.lengths
    for table in state.tables:
        for info in table.embeddings:
            if info.mask_output is None:
                continue
            (src,) = info.inputs
            rewrite.add_mask_output(state.model, src, info.mask_output, rewrite.sequence_dim(src, lengths))
            state.masks.append(MaskSource(info.mask_output, table.layer, src))


def set_io_dims(state: ExportState) -> None:
    """Name the axes: inputs ``(batch, <sequence>)``, outputs ``batch`` first and every axis shape
    inference can derive (:func:`exporters.rewrite.set_io_dims`)."""
    rewrite.set_io_dims(state.model, state.lengths)


def remove_dead_nodes(state: ExportState) -> None:
    """Drop every node and initializer no output depends on (the index arithmetic the collapse bypassed)
    and unused opset domains."""
    rewrite.remove_dead(state.model)


def name_tracking_dims(state: ExportState) -> None:
    """Name the output axes that follow an input's sequence length where shape inference cannot see it
    (through RNN loops), by running the graph at two lengths (:func:`exporters.rewrite.name_tracking_dims`)."""
    rewrite.name_tracking_dims(state.model, state.lengths)


def check_stand_ins_gone(state: ExportState) -> None:
    """With big tables converted as stand-ins: prove no constant left in the graph holds a stand-in's row
    count, so the real tables can replace them (:func:`exporters.large.check_row_count_gone`)."""
    if state.stand_ins:
        large.check_row_count_gone(state.model, state.stand_ins)


Pass = Callable[[ExportState], None]

PASSES: tuple[Pass, ...] = (
    find_tables,
    describe_lookups,
    add_mask_outputs,
    set_io_dims,
    remove_dead_nodes,
    name_tracking_dims,
    check_stand_ins_gone,
)
"""The rewrite passes in the order they run; a new pass is one function above and one line here."""
