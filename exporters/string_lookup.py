"""The string lookup in the graph, where standard ONNX reproduces Keras exactly.

A ``StringLookup`` with one OOV id, and a ``TextVectorization`` with no ``standardize`` and no
``split`` (the whole text is the one token) and one OOV id, are a fixed token -> id map: ``ai.onnx.ml``
``LabelEncoder`` (string keys, int64 values, ``default_int64`` the OOV id) is that map, byte for byte on
the UTF-8 tokens. :func:`move_into_graph` puts it at the front of the exported id graph: the graph's
input becomes the string tensor under the Keras input's name (rows of tokens ``(batch, seq)``, or texts
``(batch, 1)`` with ``output_sequence_length`` L as ``Concat(ids, ids * zeros(1, L - 1))``, which every
opset has), the ids feed what the id input fed
(the mask output stays ``ids != 0``, now over the computed ids), and the text spec says ``in_graph``.
:func:`prove` runs the lookup alone against the Keras layer itself at every export.

Everything else stays a declared spec (:mod:`embed_runtime.text`), on this evidence (onnxruntime 1.32,
measured in tests/export/test_text_in_graph.py): Keras's default ``strip_punctuation`` is a regex
replace and ONNX has no regex op; ``lower`` is ASCII-only in Keras while ``StringNormalizer`` lowercases
by a C++ locale (``ÀÉ`` -> ``àé`` with ``C.UTF-8``; its default ``en_US.UTF-8`` fails to load where that
locale is not installed; ASCII-only only with ``C``, a property of the platform's C library, not of
ONNX); ``StringSplit`` (opset 20) with no delimiter splits on runs of spaces only, not on ``\\t \\n \\v
\\f \\r`` as ``tf.strings.split`` does; no op splits per code point; several OOV ids hash with FarmHash,
which no ONNX op computes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from embed_runtime.contract import TextSpec
from embed_runtime.text import GraphStrings

from . import rewrite
from .dims import set_dim
from .errors import ExportError
from .passes import ExportState

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 2
"""``LabelEncoder``-2 is the first with string keys to int64 values (``keys_strings``/``values_int64s``)."""

PROOF_TOKENS = ("", " ", "\t", "[UNK]", "[MASK]", "é", "e\u0301", "Ωμέγα", "дом", "日本語", "🙂", "a\u00a0b")
"""Tokens every proof adds to the layer's vocabulary: empty, OOV-looking, non-ASCII, spaces."""


def declared_reason(spec: TextSpec, front: Any, input_dims: list[int]) -> str | None:
    """Why the lookup of ``spec`` stays a declared spec, or ``None`` when it goes into the graph."""
    if spec.num_oov_indices != 1:
        return "several OOV ids hash tokens with FarmHash Fingerprint64, which no ONNX op computes"
    if (spec.standardize, spec.split) != (None, None):
        return "standardize and split have no exact standard ONNX op (see exporters.string_lookup)"
    if spec.layer_class == "TextVectorization" and tuple(front.model.inputs[0].shape)[1:] != (1,):
        return "a TextVectorization reading a string input not of shape (batch, 1)"
    try:
        for token in spec.vocabulary:
            token.encode("utf-8")
    except UnicodeEncodeError:
        return "a vocabulary token is not valid unicode"
    if any(dim < len(spec.vocabulary) for dim in input_dims):
        return "an Embedding reading the ids has fewer rows than the vocabulary"  # the runtime checks ids
    return None


def mapping(spec: TextSpec) -> tuple[list[str], list[int]]:
    """The keys and values of the lookup: the mask token -> 0, each vocabulary token after the OOV id ->
    its index (the OOV token is not a key: it gets the default, as any other unknown token)."""
    start = spec.oov_start + spec.num_oov_indices
    pairs = [(t, i) for i, t in enumerate(spec.vocabulary) if i >= start]
    if spec.mask_token is not None:
        pairs.insert(0, (spec.mask_token, 0))
    return [t for t, _ in pairs], [i for _, i in pairs]


def lookup_nodes(
    spec: TextSpec, strings: str, ids: str, length: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``ids = LabelEncoder(strings)``; for texts ``(batch, 1)`` to ``length`` > 1 ids, then padded with
    0 as ``Concat([ids, ids * zeros(1, length - 1)], axis=1)`` (standard ops of every opset)."""
    keys, values = mapping(spec)
    label = ids if length == 1 else f"{ids}/first"
    encoder = helper.make_node(
        "LabelEncoder", [strings], [label], name=f"{strings}/lookup", domain=ML_DOMAIN,
        keys_strings=keys, values_int64s=values, default_int64=spec.oov_start,
    )  # fmt: skip
    if length == 1:
        return [encoder], []
    zeros = numpy_helper.from_array(np.zeros((1, length - 1), np.int64), f"{ids}/zeros")
    padding = helper.make_node("Mul", [label, zeros.name], [f"{ids}/padding"], name=f"{ids}/Mul")
    concat = helper.make_node("Concat", [label, padding.output[0]], [ids], name=f"{ids}/Concat", axis=1)
    return [encoder, padding, concat], [zeros]


def _use_ml_opset(model: onnx.ModelProto) -> None:
    for opset in model.opset_import:
        if opset.domain == ML_DOMAIN:
            opset.version = max(opset.version, ML_OPSET)
            return
    model.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))


def move_into_graph(state: ExportState, front: Any, spec: TextSpec) -> tuple[TextSpec, list[str]]:
    """Put the lookup of ``spec`` into ``state.model`` where it is exact (:func:`declared_reason`), proven
    against the layer (:func:`prove`), and mark its Embeddings' ids as computed in the graph (no range check
    of a string input; no lookup fast path). Returns the spec (``in_graph`` when moved) and the names of
    the mask outputs over the moved ids."""
    moved = [e for t in state.tables for e in t.embeddings if e.inputs == (spec.input,)]
    if declared_reason(spec, front, [e.input_dim for e in moved]) is not None:
        return spec, []
    spec = replace(spec, in_graph=True)
    graph = state.model.graph
    ids = f"{spec.input}/ids"
    rewrite.rename(state.model, spec.input, ids)
    source = next(i for i in graph.input if i.name == ids)
    source.name = spec.input
    tensor = source.type.tensor_type
    tensor.elem_type = TensorProto.STRING
    length = 1
    if spec.layer_class == "TextVectorization":  # texts (batch, 1) -> ids (batch, length), length static
        length = tensor.shape.dim[1].dim_value  # output_sequence_length, or 1 (exporters.text.split_front)
        set_dim(tensor.shape.dim[1], 1)
    nodes, initializers = lookup_nodes(spec, spec.input, ids, length)
    prove(front.layer, spec, nodes, initializers, rewrite.opset_of(state.model))
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *rest])
    graph.initializer.extend(initializers)
    _use_ml_opset(state.model)
    for table in state.tables:
        table.embeddings = [
            replace(e, inputs=(), lookup_output=None) if e.inputs == (spec.input,) else e
            for e in table.embeddings
        ]
    return spec, [e.mask_output for e in moved if e.mask_output]


def proof_strings(spec: TextSpec) -> list[str]:
    """Tokens the lookup is proven on: every vocabulary token, upper-case and space-padded variants, and
    :data:`PROOF_TOKENS`."""
    words = [t for t in spec.vocabulary if t]
    variants = [*(w.upper() for w in words), *(f"{w} " for w in words[:50])]
    return list(dict.fromkeys([*spec.vocabulary, *PROOF_TOKENS, *variants]))


def prove(
    layer: Any, spec: TextSpec, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], opset: int
) -> None:
    """Raise :class:`ExportError` unless the lookup ``nodes`` alone, run by onnxruntime on
    :func:`proof_strings` as the runtime feeds them (:class:`~embed_runtime.text.GraphStrings`), give
    exactly the ids of the Keras ``layer`` (one row of tokens for a ``StringLookup``, one text per row
    for a ``TextVectorization``)."""
    from .convert import cpu_session

    tokens = proof_strings(spec)
    rows = spec.layer_class == "StringLookup"
    batch: Any = [tokens] if rows else tokens
    graph = helper.make_graph(
        nodes, "lookup", [helper.make_tensor_value_info(spec.input, TensorProto.STRING, [None, None])],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.INT64, None)], initializers,
    )  # fmt: skip
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    mine = cpu_session(model).run(None, {spec.input: GraphStrings(spec)(batch)})[0]
    theirs = np.asarray(layer(np.array(batch if rows else [[t] for t in tokens], dtype=object)))
    if mine.shape != theirs.shape:
        raise ExportError(
            f"{spec.layer_class} {spec.layer!r}: the in-graph lookup gives ids of shape {mine.shape} for "
            f"{len(tokens)} tokens, Keras {theirs.shape}; this is a bug, please report it"
        )
    mine, theirs = mine.reshape(len(tokens), -1), theirs.reshape(len(tokens), -1)
    wrong = np.flatnonzero((mine != theirs).any(axis=1))
    if wrong.size:
        k = int(wrong[0])
        raise ExportError(
            f"{spec.layer_class} {spec.layer!r}: the in-graph lookup gives {mine[k].tolist()} for token "
            f"{tokens[k]!r} but Keras {theirs[k].tolist()}; this is a bug, please report it"
        )
