"""Everything the exporter needs to know about a Keras model, for both Keras flavours.

Keras 3 (``import keras`` on the TensorFlow backend) and tf-keras / Keras 2 (``TF_USE_LEGACY_KERAS=1``)
differ in where they keep input names, output names and the Embedding table. This module hides that:
:func:`load_model` opens a path, :func:`describe` turns a model object into a :class:`KerasModelInfo`,
and :mod:`exporters.tracing` wraps it in a ``tf.function``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embed_runtime.contract import DEFAULT_INPUT_NAME

from .errors import ExportError

KERAS3 = "keras3"
TF_KERAS = "tf_keras"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_AUTO_INPUT_NAME = re.compile(r"^(keras_tensor|input_layer|input|embedding)(_\d+)?(_input)?$")


@dataclass(frozen=True)
class IdInput:
    """One model input as it will appear in the ONNX graph (always int64 ids)."""

    name: str
    length: int | None


@dataclass(frozen=True)
class EmbeddingLayer:
    """One Keras Embedding layer and its table, read once from the model."""

    layer: Any
    name: str
    input_dim: int
    output_dim: int
    mask_zero: bool
    shape: tuple[int, int]
    dtype: str

    @property
    def onnx_name(self) -> str:
        """The name the exported graph gives the table's initializer: ``<layer>.embeddings``."""
        return f"{self.name}.embeddings"

    def read_table(self) -> np.ndarray:
        """The table's current values (a copy: read it only when it is needed)."""
        return np.asarray(self.layer.embeddings.numpy())


@dataclass(frozen=True)
class KerasModelInfo:
    """What the exporter needs to know about a Keras model: the model object, its flavour, its id inputs,
    output names and Embedding layers."""

    model: Any
    flavour: str
    inputs: tuple[IdInput, ...]
    output_names: tuple[str, ...]
    embeddings: tuple[EmbeddingLayer, ...]
    keras_version: str


def flavour_of(model: Any) -> str:
    """``"keras3"`` or ``"tf_keras"``; raises :class:`ExportError` for anything else or a non-TF backend."""
    module = type(model).__module__
    mro_modules = {c.__module__.split(".")[0] for c in type(model).__mro__}
    if "tf_keras" in mro_modules or module.startswith(("tf_keras", "keras.src.engine", "keras.engine")):
        return TF_KERAS
    if "keras" in mro_modules:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ExportError(
                f"this Keras 3 model runs on the {keras.backend.backend()!r} backend; tf2onnx converts "
                "TensorFlow graphs only. Set KERAS_BACKEND=tensorflow before Keras is imported and load "
                "the model again."
            )
        return KERAS3
    raise ExportError(f"expected a Keras model, found {type(model).__module__}.{type(model).__name__}")


def load_model(path: str | os.PathLike[str]) -> Any:
    """Open a Keras model saved as ``.keras``, ``.h5`` or a SavedModel folder, in the flavour that wrote it.

    Raises :class:`ExportError` when the path does not exist or holds no Keras model.
    """
    p = Path(path)
    if not p.exists():
        raise ExportError(f"no such file or folder: {p}")
    if p.is_dir() and not (p / "saved_model.pb").exists():
        raise ExportError(f"{p} is a folder but not a SavedModel (no saved_model.pb inside)")
    suffix = p.suffix.lower()
    if p.is_file() and suffix not in (".keras", ".h5", ".hdf5"):
        raise ExportError(f"{p} is not a Keras model file: expected .keras, .h5 or a SavedModel folder")
    loaders = (_load_keras3, _load_tf_keras) if suffix == ".keras" else (_load_tf_keras, _load_keras3)
    errors = []
    for loader in loaders:
        try:
            return loader(p)
        except Exception as exc:  # each flavour raises its own types; we report all of them below
            errors.append(f"{loader.__doc__}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    raise ExportError(f"could not load a Keras model from {p}:\n  " + "\n  ".join(errors))


def _load_keras3(path: Path) -> Any:
    """Keras 3"""
    import keras

    return keras.models.load_model(path, compile=False)


def _load_tf_keras(path: Path) -> Any:
    """tf-keras"""
    import tf_keras

    return tf_keras.models.load_model(path, compile=False)


def embedding_layers(model: Any, flavour: str) -> list[Any]:
    """Every Embedding layer inside ``model``, nested models and subclassed attributes included."""
    if flavour == KERAS3:
        import keras

        cls = keras.layers.Embedding
    else:
        import tf_keras

        cls = tf_keras.layers.Embedding
    seen: dict[int, Any] = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, cls):
            seen.setdefault(id(layer), layer)
    return list(seen.values())


def _call_on_padding(model: Any, inputs: list[IdInput]) -> Any:
    """Call the model once on padding ids: a model reloaded from disk may never have been called, and
    Keras refuses to trace it until it has. Raises :class:`ExportError` naming the layer that failed."""
    batch = [np.zeros((1, ids.length or 1), dtype=np.int64) for ids in inputs]

    def call() -> Any:
        return model(batch[0] if len(batch) == 1 else batch, training=False)

    try:
        return call()
    except Exception as exc:  # Keras and TensorFlow raise many types; the first line says what failed
        first = f"{type(exc).__name__}: {first_line(exc)}"
    layer = _failing_layer(model, call)
    where = f" in layer {layer.name!r} ({type(layer).__name__})" if layer is not None else ""
    raise ExportError(
        f"calling model {model.name!r} on int64 ids of shape (1, length) failed{where}: {first} -- the "
        "exported graph takes integer ids, so every layer must accept them; keep a layer that needs other "
        "inputs out of the exported model (run it before, export the model from its output on)"
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message that says what failed: Keras wraps a layer's error in a
    line naming the call, terminal colour codes and pages of context."""
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered when calling")]
    return lines[0][:300] if lines else ""


@contextmanager
def wrapped_calls(
    layers: Iterable[Any],
    wrap: Callable[[Any, Callable[..., Any]], Callable[..., Any]],
    attributes: Sequence[str] = ("call",),
) -> Iterator[None]:
    """While the block runs, each layer instance's ``call`` (and the other ``attributes`` it has) is
    ``wrap(layer, original method)``; the instances are left as they were afterwards. Set on the instance
    (``object.__setattr__``): the class and Keras's attribute tracking never see it."""
    patched: list[tuple[Any, str, Any]] = []
    try:
        for layer in layers:
            for attribute in attributes:
                method = getattr(layer, attribute, None)
                if method is not None:
                    patched.append((layer, attribute, layer.__dict__.get(attribute)))
                    object.__setattr__(layer, attribute, wrap(layer, method))
        yield
    finally:
        for layer, attribute, own in reversed(patched):
            if own is None:
                object.__delattr__(layer, attribute)
            else:
                object.__setattr__(layer, attribute, own)


def _failing_layer(model: Any, call: Callable[[], Any]) -> Any:
    """The innermost layer whose ``call`` raises when ``call()`` runs again, or None."""
    failed: list[Any] = []

    def wrap(layer: Any, method: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except Exception:
                failed.append(layer)  # the innermost layer is the first to see the exception
                raise

        return run

    layers = model._flatten_layers(include_self=False, recursive=True)
    with wrapped_calls(layers, wrap), suppress(Exception):  # the failure is reported; the layer is wanted
        call()
    return failed[0] if failed else None


def _keras_inputs(model: Any) -> list[tuple[str, int | None]]:
    """(name, static length) of each model input, or one dynamic input for subclassed models.

    Raises :class:`ExportError` for an input that is not 2-D (string inputs are split off before, by
    :func:`exporters.text.split_front`).
    """
    try:
        tensors = list(model.inputs or [])
    except AttributeError:
        tensors = []
    found = []
    for tensor in tensors:
        name = (getattr(tensor, "name", "") or "").split(":")[0]
        shape = tuple(tensor.shape)
        if len(shape) != 2:
            raise ExportError(
                f"input {name!r} has shape {shape}; an Embedding model takes ids of shape (batch, seq)"
            )
        found.append((name, None if shape[1] is None else int(shape[1])))
    return found or [("", None)]


def _readable_input_names(raw: list[str]) -> list[str]:
    """Keep user-given names; replace automatic ones by ``input_ids`` (``input_ids_<i>`` if several)."""
    auto = [not name or bool(_AUTO_INPUT_NAME.match(name)) for name in raw]
    n_auto = sum(auto)
    names = []
    for i, (name, is_auto) in enumerate(zip(raw, auto)):
        names.append(
            (DEFAULT_INPUT_NAME if n_auto == 1 else f"{DEFAULT_INPUT_NAME}_{i}") if is_auto else name
        )
    if len(set(names)) != len(names):
        raise ExportError(f"model inputs have duplicate names {names}; give each keras.Input a unique name")
    return names


def _output_names(model: Any, n_outputs: int) -> list[str]:
    """Keras output names: ``model.output_names`` where Keras keeps them, the last layer's name for a
    Sequential model, else ``output`` (``output_<i>`` for several)."""
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != n_outputs and type(model).__name__ == "Sequential" and n_outputs == 1:
        names = [model.layers[-1].name]
    if len(names) != n_outputs:
        names = ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]
    return names


def describe(model: Any) -> KerasModelInfo:
    """Read a Keras model object into a :class:`KerasModelInfo` (builds the model if it was never called)."""
    flavour = flavour_of(model)
    raw_inputs = _keras_inputs(model)
    names = _readable_input_names([n for n, _ in raw_inputs])
    inputs = [IdInput(name, length) for name, (_, length) in zip(names, raw_inputs)]
    probe = _call_on_padding(model, inputs)
    layers = embedding_layers(model, flavour)
    if not layers:
        raise ExportError(
            f"model {model.name!r} has no Embedding layer; this exporter is for Embedding models"
        )
    embeddings = []
    for layer in layers:
        variable = layer.embeddings
        embeddings.append(
            EmbeddingLayer(
                layer=layer,
                name=layer.name,
                input_dim=int(layer.input_dim),
                output_dim=int(layer.output_dim),
                mask_zero=bool(layer.mask_zero),
                shape=(int(variable.shape[0]), int(variable.shape[1])),
                dtype=np.dtype(getattr(variable.dtype, "name", variable.dtype)).name,
            )
        )
    n_outputs = len(probe) if isinstance(probe, (list, tuple, dict)) else 1
    out_names = list(probe) if isinstance(probe, dict) else _output_names(model, n_outputs)
    if flavour == KERAS3:
        import keras

        version = keras.__version__
    else:
        import tf_keras

        version = tf_keras.__version__
    return KerasModelInfo(model, flavour, tuple(inputs), tuple(out_names), tuple(embeddings), version)
