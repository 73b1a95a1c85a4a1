"""Which initializer of the converted graph is which Embedding's table: found by where it comes from.

A table cannot be recognised by its values: two layers may hold equal tables (both built with ``"ones"``,
or loaded from one pretrained matrix), and tf2onnx merges initializers with equal values into one. So
while the model is traced and converted, :func:`tracing` swaps each layer's table variable for a
*tracer*: a copy in which one element (the first value of the last row) is a sentinel, different for each
layer and from the value it replaces. Every tracer is then a constant of its own in the graph, and what
the layer reads with the tracer in place (``read_table``, which also sees LoRA or int4 unpacking) is
exactly what the graph holds. :func:`restore` finds each one, puts the layer's real table in its place,
and patches the sentinel wherever tf2onnx copied it into another constant (a tied output projection
folds a transposed copy of the table). A copy it cannot patch still holds the sentinel in the last row,
which every case of the export-time parity check reads, so it fails the export instead of going out wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import rewrite
from .errors import ExportError
from .keras_model import KERAS3, EmbeddingLayer, KerasModelInfo


def table_attribute(flavour: str) -> str:
    """The attribute that holds an Embedding's table variable: Keras 3 ``_embeddings``, tf-keras
    ``embeddings``."""
    return "_embeddings" if flavour == KERAS3 else "embeddings"


def make_variable(values: np.ndarray, flavour: str, name: str) -> Any:
    """A non-trainable variable of the flavour holding ``values``."""
    if flavour == KERAS3:
        import keras

        return keras.Variable(values, dtype=values.dtype.name, trainable=False, name=name)
    import tensorflow as tf

    return tf.Variable(values, trainable=False, name=name)


@dataclass(frozen=True)
class Tracer:
    """One layer's table variable, swapped for a copy with a sentinel while the model is converted.

    Attributes:
        emb: the layer.
        seen: the table as the layer reads it with the tracer in place: what the converted graph holds.
    """

    emb: EmbeddingLayer
    seen: np.ndarray


def _sentinels(dtype: np.dtype) -> Iterator[np.ndarray]:
    """Values no trained weight holds: the largest of the dtype, then halves of it (ints: max, max-1...)."""
    if dtype.kind in "iu":
        top = int(np.iinfo(dtype).max)
        return (np.array(top - k, dtype) for k in count())
    try:
        largest = float(np.finfo(dtype).max)
    except ValueError:  # bfloat16 and other ml_dtypes types
        import ml_dtypes

        largest = float(ml_dtypes.finfo(dtype).max)
    return (np.array(largest / 2.0**k).astype(dtype) for k in count())


def _pick_sentinel(dtype: np.dtype, replaced: np.ndarray, used: set[bytes]) -> np.ndarray:
    for value in _sentinels(dtype):
        key = dtype.str.encode() + value.tobytes()
        if key not in used and value.tobytes() != replaced.tobytes():
            used.add(key)
            return value
    raise AssertionError("unreachable: the sentinel candidates never end")


def _read(variable: Any) -> np.ndarray:
    return np.array(variable.numpy())


TablePut = Callable[[EmbeddingLayer, str, Any], None]
"""``put(emb, attribute, value)`` of :func:`swapped_tables`."""


def held_table(emb: EmbeddingLayer, attribute: str, purpose: str) -> Any:
    """The table variable ``emb``'s layer keeps in ``attribute``; :class:`ExportError` naming ``purpose``
    (what could not be done: ``"trace"``, ``"swap"``) when it keeps none there."""
    original = emb.layer.__dict__.get(attribute)
    if original is None:
        raise ExportError(f"Embedding {emb.name!r} keeps no table in {attribute!r}; cannot {purpose} it")
    return original


@contextmanager
def swapped_tables() -> Iterator[TablePut]:
    """Yields ``put(emb, attribute, value)``, which makes ``emb``'s layer hold ``value`` in ``attribute``;
    when the block ends, however it ends, each layer gets back what it held there, the last put first.

    The one way the exporter swaps a table (:func:`tracing`, :func:`exporters.large.stand_ins`,
    :func:`exporters.large.read_once`, :func:`exporters.verify.dequantized`): set on the instance with
    ``object.__setattr__``, so Keras's attribute tracking and the model's weights list never see it, and
    the user's variables are never written.
    """
    undo: list[tuple[Any, str, Any]] = []

    def put(emb: EmbeddingLayer, attribute: str, value: Any) -> None:
        undo.append((emb.layer, attribute, emb.layer.__dict__[attribute]))
        object.__setattr__(emb.layer, attribute, value)

    try:
        yield put
    finally:
        for layer, attribute, original in reversed(undo):
            object.__setattr__(layer, attribute, original)


@contextmanager
def tracing(info: KerasModelInfo) -> Iterator[list[Tracer]]:
    """Swap every Embedding table of ``info`` for its tracer while the block runs (:func:`swapped_tables`);
    always swapped back. Big tables already replaced by :func:`exporters.large.stand_ins` get a tracer of
    their stand-in.
    """
    tracers: list[Tracer] = []
    used: set[bytes] = set()
    attribute = table_attribute(info.flavour)
    with swapped_tables() as put:
        for emb in info.embeddings:
            values = _read(held_table(emb, attribute, "trace"))
            where = (values.shape[0] - 1,) + (0,) * (values.ndim - 1)
            values[where] = _pick_sentinel(values.dtype, values[where], used)
            put(emb, attribute, make_variable(values, info.flavour, f"{emb.name}_tracer"))
            tracers.append(Tracer(emb, emb.read_table()))
        _check_distinct(tracers)
        yield tracers


def _digest(values: np.ndarray) -> tuple[tuple[int, ...], str, str]:
    return values.shape, values.dtype.str, hashlib.sha256(np.ascontiguousarray(values).data).hexdigest()


def _check_distinct(tracers: Sequence[Tracer]) -> None:
    seen: dict[tuple[tuple[int, ...], str, str], str] = {}
    for tracer in tracers:
        other = seen.setdefault(_digest(tracer.seen), tracer.emb.name)
        if other != tracer.emb.name:
            raise ExportError(
                f"Embedding layers {other!r} and {tracer.emb.name!r} read the same table even with distinct "
                "tracers; this is a bug, please report it"
            )


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def _holders(model: onnx.ModelProto, values: np.ndarray) -> list[str]:
    """Initializers equal to ``values`` (shape, type and every element)."""
    want = helper.np_dtype_to_tensor_dtype(values.dtype)
    return [
        init.name
        for init in model.graph.initializer
        if tuple(init.dims) == values.shape
        and init.data_type == want
        and _equal(numpy_helper.to_array(init), values)
    ]


def _drop_duplicate(model: onnx.ModelProto, duplicate: str, keep: str) -> None:
    """Remove initializer ``duplicate`` and point every reader of it at ``keep``, in Loop and Scan bodies
    too (:func:`exporters.rewrite.rename`)."""
    inits = [init for init in model.graph.initializer if init.name != duplicate]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    rewrite.rename(model, duplicate, keep)


def restore(model: onnx.ModelProto, tracers: Sequence[Tracer]) -> dict[str, str]:
    """Put the real tables in place of the tracers in ``model`` (called after :func:`tracing` has ended).

    Returns ``{layer name: initializer name}`` for every layer whose table the graph holds; a layer the
    forward pass never uses is absent. Duplicate initializers of one tracer are merged into one.
    """
    found: dict[str, str] = {}
    owner: dict[str, str] = {}
    for tracer in tracers:
        names = _holders(model, tracer.seen)
        for name in names:
            if owner.setdefault(name, tracer.emb.name) != tracer.emb.name:
                raise ExportError(f"initializer {name!r} matches the tracers of two layers; please report it")
        if names:
            for duplicate in names[1:]:
                _drop_duplicate(model, duplicate, names[0])
            found[tracer.emb.name] = names[0]
    inits = {init.name: init for init in model.graph.initializer}
    tables = set(found.values())
    for tracer in tracers:
        if tracer.emb.name not in found:
            continue
        real = tracer.emb.read_table()
        name = found[tracer.emb.name]
        inits[name].CopyFrom(numpy_helper.from_array(real.astype(tracer.seen.dtype, copy=False), name))
        _patch_copies(model, tracer.seen, real, tables)
    return found


def _patch_copies(model: onnx.ModelProto, seen: np.ndarray, real: np.ndarray, skip: set[str]) -> None:
    """Where the sentinel was copied verbatim into another float constant, put the real value back."""
    if seen.dtype.kind != "f" or seen.shape != real.shape:
        return
    differ = np.flatnonzero(~((seen == real) | (np.isnan(seen) & np.isnan(real))))
    if len(differ) != 1:
        return
    marker, value = seen.flat[differ[0]], real.flat[differ[0]]
    want = helper.np_dtype_to_tensor_dtype(seen.dtype)
    for init in model.graph.initializer:
        if init.name in skip or init.data_type != want:
            continue
        values = numpy_helper.to_array(init)
        hits = values == marker
        if hits.any():
            values = values.copy()
            values[hits] = value
            init.CopyFrom(numpy_helper.from_array(values, init.name))
