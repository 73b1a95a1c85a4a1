"""Models that take strings: a ``TextVectorization`` or ``StringLookup`` at the front becomes a text spec,
declared, or in the graph where standard ops reproduce Keras exactly.

Standard ONNX cannot run Keras's default ``strip_punctuation`` (a regex replace), so the graph is exported
from the ids: :func:`split_front` finds the preprocessing layer that reads a string input, checks its
options, and returns the id sub-model (the layers after it, reading an int64 id input named after the
string input) and what :func:`specs` turns into :class:`~embed_runtime.contract.TextSpec` entries of the
metadata. Once the id graph has passed its checks, :func:`finish` puts the lookup into the graph where it
is exact (:mod:`exporters.string_lookup`), then :func:`check_strings` runs the Keras model on strings and
the exported graph on the ids of :class:`embed_runtime.text.Tokenizer` (on the strings themselves for an
in-graph lookup): ids must be equal, outputs within ``atol``, masks equal.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from embed_runtime.contract import SPLIT_OPTIONS, STANDARDIZE_OPTIONS, TextSpec
from embed_runtime.text import GraphStrings, Tokenizer

from . import string_lookup
from .errors import ExportError
from .keras_model import KERAS3, IdInput, KerasModelInfo, _readable_input_names, flavour_of
from .passes import ExportState
from .verify import MeasuredTable, dequantized

SAMPLES = (
    "the cat sat on the mat",
    "The Cat, SAT!  on...the   mat?",
    "",
    "   leading and trailing\tTabs\nand newlines  ",
    "Ünïcödé ÀÉÎ Straße café naïve",
    "Привет, мир! ΣΑΣ αβγ",
    "日本語のテキスト 中文 한국어",
    "emoji 🙂👍🏽 family 👨‍👩‍👧",
    "e\u0301 combining a\u0308 marks",
    "no\u00a0break\u2003em\u3000space",
    "[UNK] don't stop-words (x+y)=z #tag @user",
)
"""Strings every text export is checked on, with words of its own vocabulary added."""

_SUPPORTED: dict[str, dict[str, Sequence[Any]]] = {
    "TextVectorization": {
        "output_mode": ("int",),
        "standardize": STANDARDIZE_OPTIONS,
        "split": SPLIT_OPTIONS,
        "ngrams": (None,),
        "ragged": (False,),
        "encoding": ("utf-8",),
    },
    "StringLookup": {
        "output_mode": ("int",),
        "invert": (False,),
        "num_oov_indices": range(1, 2**31),  # more than 1: FarmHash buckets, see embed_runtime.text
        "salt": (None,),  # Keras 3: a salt hashes with SipHash (to_hash_bucket_strong) instead
        "encoding": ("utf-8",),
        "sparse": (False,),
    },
}
"""The options of each supported layer that the runtime reproduces, and their supported values (the
first is the default when a flavour's config lacks the option)."""


@dataclass(frozen=True)
class TextFront:
    """A string model split at its preprocessing layer: ``id_model`` takes the ids it produces."""

    model: Any
    id_model: Any
    layer: Any
    string_input_name: str
    ids_length: int | None


def _is_string(tensor: Any) -> bool:
    return getattr(tensor.dtype, "name", tensor.dtype) == "string"


def _node_io(node: Any) -> tuple[list[Any], list[Any]]:
    inputs = getattr(node, "input_tensors", None)
    if inputs is None:
        inputs = node.arguments.keras_tensors
    outputs = node.outputs if hasattr(node, "outputs") else node.output_tensors
    return _as_list(inputs), _as_list(outputs)


def _readers(model: Any, tensor: Any) -> list[tuple[Any, Any]]:
    """(layer, output tensor) of each layer that reads ``tensor``."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=False):
        for node in getattr(layer, "_inbound_nodes", []):
            ins, outs = _node_io(node)
            if type(layer).__name__ != "InputLayer" and any(t is tensor for t in ins):
                found.append((layer, outs[0]))
    return found


def _check_layer(layer: Any) -> None:
    """Raise :class:`ExportError` for a preprocessing layer or option the runtime cannot reproduce."""
    kind = type(layer).__name__
    if kind not in _SUPPORTED:
        raise ExportError(
            f"layer {layer.name!r} ({kind}) reads a string input; the supported string preprocessing layers "
            f"are {' and '.join(_SUPPORTED)}"
        )
    config = layer.get_config()
    for option, allowed in _SUPPORTED[kind].items():
        value = config.get(option, allowed[0])
        if value not in allowed:
            shown = value if isinstance(value, (str, int, type(None))) else f"a {type(value).__name__}"
            values = (
                f"integers from {allowed.start}"
                if isinstance(allowed, range)
                else ", ".join(map(repr, allowed))
            )
            raise ExportError(
                f"layer {layer.name!r} ({kind}): {option}={shown!r} is not supported; supported values: {values}"
            )


def split_front(model: Any) -> TextFront | None:
    """The model split after its TextVectorization, or ``None`` when no input takes strings.

    Raises :class:`ExportError` for an unsupported layer or option, a string input read by several
    layers, or a TextVectorization that is not at the front."""
    keras = importlib.import_module("keras" if flavour_of(model) == KERAS3 else "tf_keras")
    tensors = list(getattr(model, "inputs", None) or [])
    strings = [t for t in tensors if _is_string(t)]
    if not strings:
        lookups = [
            layer
            for layer in model._flatten_layers(include_self=False, recursive=True)
            if type(layer).__name__ == "IntegerLookup"
        ]
        if lookups:  # tf2onnx would leave its hash table in the graph, which onnxruntime cannot run
            raise ExportError(
                f"layer {lookups[0].name!r} (IntegerLookup) sits inside a nested model; the exporter puts an "
                "IntegerLookup in the graph only when it is a layer of the exported model itself. Call it in "
                "the outer model, or run it in your input pipeline and export the model from its ids"
            )
        return None
    if len(tensors) != 1:
        raise ExportError(
            f"model {model.name!r} has {len(tensors)} inputs with a string one; text export supports models "
            "whose only input is the string input"
        )
    readers = _readers(model, strings[0])
    if len(readers) != 1:
        names = ", ".join(f"{layer.name!r}" for layer, _ in readers) or "no layer"
        raise ExportError(
            f"the string input of model {model.name!r} is read by {names}; exactly one TextVectorization "
            "must read it"
        )
    layer, ids = readers[0]
    _check_layer(layer)
    length = layer.get_config().get("output_sequence_length")
    if type(layer).__name__ == "StringLookup":
        length = tuple(strings[0].shape)[-1]
    elif layer.get_config().get("split") is None and length is None:
        length = 1
    # named as the model: an automatic name (functional_<n>) would change the graph's name per export
    if type(model).__name__ == "Sequential":
        layers = [keras.Input(shape=(length,), dtype="int64"), *model.layers[1:]]
        id_model = keras.Sequential(layers, name=model.name)
    else:
        id_model = keras.Model(ids, model.output, name=model.name)  # a dict of outputs keeps its keys
    name = (getattr(strings[0], "name", "") or "").split(":")[0]
    return TextFront(model, id_model, layer, name, length)


def with_input_name(keras: KerasModelInfo, front: TextFront) -> KerasModelInfo:
    """``keras`` (described from the id model) with its id input under the string input's name."""
    name = _readable_input_names([front.string_input_name])[0]
    return replace(keras, inputs=(IdInput(name, front.ids_length),))


def specs(front: TextFront, keras: KerasModelInfo) -> list[TextSpec]:
    """The declared text spec of the exported id input."""
    layer = front.layer
    config = layer.get_config()
    lookup = layer._lookup_layer if type(layer).__name__ == "TextVectorization" else layer
    return [
        TextSpec(
            input=keras.inputs[0].name,
            layer=layer.name,
            layer_class=type(layer).__name__,
            standardize=config.get("standardize"),
            split=config.get("split"),
            vocabulary=tuple(str(t) for t in layer.get_vocabulary(include_special_tokens=True)),
            oov_token=str(lookup.oov_token),
            mask_token=None if lookup.mask_token is None else str(lookup.mask_token),
            num_oov_indices=int(lookup.num_oov_indices),
            output_sequence_length=config.get("output_sequence_length"),
            keras_flavour=keras.flavour,
            keras_version=keras.keras_version,
        )
    ]


def sample_texts(spec: TextSpec) -> list[str]:
    """:data:`SAMPLES` and a few sentences of the vocabulary's own words (upper-cased and punctuated)."""
    words = [w for w in spec.vocabulary if w not in ("", spec.oov_token)][:40]
    made = [" ".join(words[i : i + 7]) for i in range(0, len(words), 7)]
    return [*SAMPLES, *made, *(f"{s.upper()}!" for s in made[:2])]


def finish(
    front: TextFront,
    state: ExportState,
    spec: TextSpec,
    session: Any | None,
    session_of: Callable[[onnx.ModelProto], Any],
    atol: float,
    measured: Sequence[MeasuredTable],
) -> list[TextSpec]:
    """After the id graph's checks: the lookup into ``state.model`` where it is exact (proven against the
    layer, :func:`exporters.string_lookup.move_into_graph`), then, when ``session`` (the checks' session of
    the id graph as it will be stored; ``None``: no checks) is given, :func:`check_strings` on the graph:
    that session when the lookup stayed declared, else a new one of the changed graph (``session_of``,
    the writer's), Keras
    holding the dequantized tables ``measured`` where the graph has compact ones (as
    :func:`exporters.verify.compare_compact`, with the same measurement; ``front.model`` shares its
    layers with the id model).
    Returns the text specs to declare."""
    spec, masks = string_lookup.move_into_graph(state, front, spec)
    if session is not None:
        if spec.in_graph:
            session = session_of(state.model)
        with dequantized(state.keras, measured):
            check_strings(front, spec, session, state.keras.output_names, atol, masks)
    return [spec]


def check_strings(
    front: TextFront,
    spec: TextSpec,
    session: Any,
    output_names: Sequence[str],
    atol: float,
    masks: Sequence[str] = (),
) -> None:
    """Keras on strings vs :class:`~embed_runtime.text.Tokenizer` + the exported graph on the same
    strings (:func:`sample_texts`; the graph takes the strings themselves, as
    :class:`~embed_runtime.text.GraphStrings` feeds them, when ``spec.in_graph``): ids equal, outputs
    within ``atol``, the ``masks`` outputs equal to Keras's ids != 0; raises :class:`ExportError` on a
    mismatch."""
    import tensorflow as tf

    texts: list[Any] = sample_texts(spec)
    shape = tuple(front.model.inputs[0].shape)
    if spec.layer_class == "StringLookup":  # rows of tokens: the samples' words, "" and the OOV token
        width = front.ids_length or 4
        tokens = [*" ".join(texts).split(), "", spec.oov_token]
        tokens += [""] * (-len(tokens) % width)
        texts = [tokens[i : i + width] for i in range(0, len(tokens), width)]
        batch = tf.constant(texts)
    else:
        batch = tf.constant([[t] for t in texts] if len(shape) == 2 else texts)
    keras_ids = np.asarray(front.layer(batch))
    ids = Tokenizer(spec)(texts)
    if keras_ids.shape != ids.shape:
        raise ExportError(
            f"the runtime tokenizes {len(texts)} sample strings to shape {ids.shape}, layer "
            f"{front.layer.name!r} to {keras_ids.shape}"
        )
    for text, mine, theirs in zip(texts, ids, keras_ids):
        if not np.array_equal(mine, theirs):
            raise ExportError(
                f"the runtime's tokenization of {text!r} differs from layer {front.layer.name!r}: "
                f"runtime {mine.tolist()}, Keras {theirs.tolist()}"
            )
    result = front.model(batch, training=False)
    expected = result if isinstance(result, dict) else dict(zip(output_names, _as_list(result)))
    feed = GraphStrings(spec)(texts) if spec.in_graph else ids
    got = dict(zip([*output_names, *masks], session.run([*output_names, *masks], {spec.input: feed})))
    for mask in masks:
        if not np.array_equal(got[mask], keras_ids != 0):
            raise ExportError(
                f"mask output {mask!r} on strings differs from Keras's ids != 0 after the in-graph lookup "
                f"of {len(texts)} sample strings"
            )
    for name in output_names:
        theirs, mine = np.asarray(expected[name], dtype=np.float64), got[name]
        same_nan = np.isnan(theirs) & np.isnan(mine)  # an all-padding row averaged over no step: 0 / 0
        diff = float(np.max(np.where(same_nan, 0.0, np.abs(theirs - mine)), initial=0.0))
        if not diff <= atol:
            raise ExportError(
                f"output {name!r} on strings differs from Keras by {diff:.3g} (atol {atol:g}) after the "
                f"runtime's tokenization of {len(texts)} sample strings"
            )


def _as_list(result: Any) -> list[Any]:
    return list(result) if isinstance(result, (list, tuple)) else [result]
