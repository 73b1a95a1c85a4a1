"""``IntegerLookup`` in the graph: each lookup layer becomes a dense mapping table and standard ops.

tf2onnx would leave IntegerLookup's hash table in the graph, which onnxruntime cannot run. The lookup of a
fixed vocabulary is exact with a table ``map`` over the raw id range ``[low, high]`` of the vocabulary
(and the mask token): ``Where(low <= id <= high, Gather(map, Clip(id, low, high) - low), oov_index)``. The
clip comes before the subtraction, so any int64 id (negative, huge) is safe. :func:`in_graph` returns the
model with such layers in place of its IntegerLookups (same other layers, same weights); the exported
graph then takes raw integer ids, and the Embeddings after the lookup read ids computed in the model
(``inputs: []`` in :class:`~embed_runtime.contract.EmbeddingInfo`), so no ``[0, input_dim)`` range check
applies to the raw input. :func:`prove` checks each replacement against its layer on raw ids at every export, and
:func:`check_raw_ids` compares two whole models on raw ids (for tests).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .errors import ExportError
from .keras_model import KERAS3, flavour_of

MAX_TABLE = 1 << 22
"""The most entries (``high - low + 1``) a mapping table may have."""

_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "output_mode": ("int",),
    "invert": (False,),
    "num_oov_indices": (1,),
    "sparse": (False,),
}
"""The IntegerLookup options the in-graph lookup reproduces, and their supported values."""


def mapping(layer: Any) -> tuple[np.ndarray, int, int]:
    """``(map, low, oov_index)`` of an IntegerLookup: ``map[id - low]`` is the index of raw id ``id``.

    Raises :class:`ExportError` for an unsupported option or a vocabulary spread over too wide a range."""
    config = layer.get_config()
    for option, allowed in _SUPPORTED.items():
        value = config.get(option, allowed[0])
        if value not in allowed:
            raise ExportError(
                f"layer {layer.name!r} (IntegerLookup): {option}={value!r} is not supported; "
                f"supported values: {', '.join(map(repr, allowed))}"
            )
    tokens = [int(t) for t in layer.get_vocabulary(include_special_tokens=True)]
    oov_index = 0 if layer.mask_token is None else 1
    known = {t: i for i, t in enumerate(tokens) if i != oov_index}
    if not known:
        raise ExportError(f"layer {layer.name!r} (IntegerLookup) has an empty vocabulary; set or adapt one")
    low, high = min(known), max(known)
    if high - low + 1 > MAX_TABLE:
        raise ExportError(
            f"layer {layer.name!r} (IntegerLookup): its vocabulary spans ids {low}..{high}, a table of "
            f"{high - low + 1} entries; the in-graph lookup supports spans of at most {MAX_TABLE} ids"
        )
    table = np.full(high - low + 1, oov_index, dtype=np.int64)
    table[np.asarray(list(known)) - low] = list(known.values())
    return table, low, oov_index


def _layer_class(keras: Any) -> Any:
    import tensorflow as tf

    class InGraphIntegerLookup(keras.layers.Layer):
        """IntegerLookup as ``Where(in_range, Gather(map, Clip(ids) - low), oov_index)``."""

        def __init__(self, table: np.ndarray, low: int, oov_index: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.table, self.low, self.oov_index = table, low, oov_index

        def call(self, ids: Any) -> Any:
            ids = tf.cast(ids, tf.int64)
            high = self.low + len(self.table) - 1
            clipped = tf.clip_by_value(ids, self.low, high)
            in_range = tf.equal(clipped, ids)
            mapped = tf.gather(tf.constant(self.table), clipped - self.low)
            return tf.where(in_range, mapped, tf.constant(self.oov_index, tf.int64))

    return InGraphIntegerLookup


def in_graph(model: Any) -> Any:
    """``model`` with each IntegerLookup replaced by its in-graph lookup, or ``model`` itself when it has
    none. The other layers are reused, weights and all."""
    if not any(type(layer).__name__ == "IntegerLookup" for layer in model.layers):
        return model
    keras = importlib.import_module("keras" if flavour_of(model) == KERAS3 else "tf_keras")
    layer_class = _layer_class(keras)

    def replace(layer: Any) -> Any:
        if type(layer).__name__ != "IntegerLookup":
            return layer
        table, low, oov_index = mapping(layer)
        replacement = layer_class(table, low, oov_index, name=layer.name)
        prove(layer, replacement)
        return replacement

    return keras.models.clone_model(model, clone_function=replace)


def proof_ids(layer: Any) -> np.ndarray:
    """Raw ids that exercise a lookup: its vocabulary and special tokens, neighbours of its range,
    unknown, negative and extreme int64 ids."""
    tokens = [int(t) for t in layer.get_vocabulary(include_special_tokens=True) if t is not None]
    low, high = min(tokens), max(tokens)
    info = np.iinfo(np.int64)
    extra = [low - 1, high + 1, 0, 1, -1, 999_999, info.max, info.min, info.max - 1, info.min + 1]
    return np.asarray(tokens + extra, dtype=np.int64).reshape(1, -1)


def prove(layer: Any, replacement: Any) -> None:
    """Raise :class:`ExportError` unless ``replacement`` maps every id of :func:`proof_ids` exactly as the
    IntegerLookup ``layer`` does. The rest of the model is reused as it is, so the two models agree
    wherever the two layers do; the export's parity check then compares the graph with the replaced model."""
    ids = proof_ids(layer)
    mine, theirs = np.asarray(replacement(ids)), np.asarray(layer(ids))
    if mine.shape != theirs.shape or not np.array_equal(mine, theirs):
        bad = int(np.argmax(mine.reshape(-1) != theirs.reshape(-1))) if mine.shape == theirs.shape else 0
        raise ExportError(
            f"IntegerLookup {layer.name!r}: the in-graph lookup maps raw id {int(ids.reshape(-1)[bad])} to "
            f"{mine.reshape(-1)[bad] if mine.size else None} but Keras to "
            f"{theirs.reshape(-1)[bad] if theirs.size else None}; this is a bug, please report it"
        )


def check_raw_ids(model: Any, replaced: Any, ids: np.ndarray, atol: float) -> None:
    """Raise :class:`ExportError` when ``replaced`` (from :func:`in_graph`) and ``model`` differ by more
    than ``atol`` on the raw ids ``ids``."""
    for mine, theirs in zip(_outputs(replaced(ids)), _outputs(model(ids))):
        diff = float(np.max(np.abs(np.asarray(mine, np.float64) - np.asarray(theirs, np.float64)), initial=0))
        if not diff <= atol:
            raise ExportError(f"the in-graph IntegerLookup differs from Keras by {diff:.3g} on raw ids")


def _outputs(result: Any) -> list[Any]:
    if isinstance(result, dict):
        return [result[k] for k in sorted(result)]
    return list(result) if isinstance(result, (list, tuple)) else [result]
