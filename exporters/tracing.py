"""The Keras model as the ``tf.function`` tf2onnx converts: int64 ids under the readable input names."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .errors import ExportError
from .keras_model import KERAS3, KerasModelInfo, first_line, wrapped_calls


def call_model(info: KerasModelInfo, ids: Sequence[Any]) -> dict[str, Any]:
    """Call the Keras model on one id tensor per input (``training=False``); ``{output name: tensor}``."""
    result = info.model(ids[0] if len(ids) == 1 else list(ids), training=False)
    if isinstance(result, dict):
        return {k: result[k] for k in info.output_names}
    tensors = list(result) if isinstance(result, (list, tuple)) else [result]
    return dict(zip(info.output_names, tensors))


@contextmanager
def _without_activity_regularizers(model: Any) -> Iterator[None]:
    """Activity regularizers are training-only, yet Keras adds their loss on every call; traced, that loss
    leaks into the graph (tf2onnx cannot import it) and into the layers' losses. Off while the block runs."""
    regularized = [
        layer
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if getattr(layer, "activity_regularizer", None) is not None
    ]
    saved = [layer.activity_regularizer for layer in regularized]
    try:
        for layer in regularized:
            layer.activity_regularizer = None
        yield
    finally:
        for layer, regularizer in zip(regularized, saved):
            layer.activity_regularizer = regularizer


def _merged_time_steps(layer: Any, method: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` of a Keras 3 ``TimeDistributed`` that applies its layer once to the ``batch * time`` rows
    when the time axis is dynamic (and calls ``method``, Keras's own, when it is static)."""
    import tensorflow as tf

    inner = layer.layer

    def merged(inputs: Any, training: Any = None, mask: Any = None) -> Any:
        if inputs.shape[1] is not None:
            return method(inputs, training=training, mask=mask)
        shape = tf.shape(inputs)
        rows = shape[0] * shape[1]
        kwargs: dict[str, Any] = {}
        if inner._call_has_mask_arg and mask is not None:
            kwargs["mask"] = tf.reshape(mask, tf.concat([[rows], tf.shape(mask)[2:]], 0))
        if inner._call_has_training_arg:
            kwargs["training"] = training
        outputs = inner.call(tf.reshape(inputs, tf.concat([[rows], shape[2:]], 0)), **kwargs)
        return tf.reshape(outputs, tf.concat([shape[:2], tf.shape(outputs)[1:]], 0))

    return merged


def _time_distributed_layers(info: KerasModelInfo) -> list[Any]:
    """The Keras 3 ``TimeDistributed`` layers of the model (none for tf-keras, whose own is right).

    Keras 3 maps the inner layer over ``range(ops.shape(inputs)[0])`` taken before it swaps the batch and
    time axes: with a dynamic time axis a traced graph runs it over batch-many steps (wrong shapes or an
    error for every length but the batch size; eager calls loop over the static time steps instead)."""
    if info.flavour != KERAS3:
        return []
    import keras

    layers = info.model._flatten_layers(include_self=False, recursive=True)
    return [layer for layer in layers if isinstance(layer, keras.layers.TimeDistributed)]


def make_tf_function(info: KerasModelInfo) -> Any:
    """A ``tf.function`` with int64 id inputs ``(batch, length)`` under the readable names, returning
    ``{output name: tensor}``, traced now (tf2onnx reuses that trace).

    While it is traced, activity regularizers are off and each Keras 3 ``TimeDistributed`` applies its
    layer to the batch and time axes merged (:func:`_time_distributed_layers` says why); the parity check
    compares the result with Keras's own eager calls. tf2onnx's ``from_function`` converts it for both
    flavours (``from_keras`` fails on Keras 3 Sequential models). tf2onnx sorts dict outputs, so callers
    look outputs up by name. Raises :class:`ExportError` when the model cannot be traced on such ids.
    """
    import tensorflow as tf

    def serve(*ids: Any) -> dict[str, Any]:
        return {name: tf.identity(t) for name, t in call_model(info, ids).items()}

    signature = [tf.TensorSpec((None, s.length), tf.int64, name=s.name) for s in info.inputs]
    compiled = tf.function(serve, input_signature=signature, autograph=False)
    try:
        with (
            _without_activity_regularizers(info.model),
            wrapped_calls(_time_distributed_layers(info), _merged_time_steps),
        ):
            compiled.get_concrete_function()
    except Exception as exc:  # Keras and TensorFlow raise many types; the first line says what failed
        raise ExportError(
            f"tracing model {info.model.name!r} as a tf.function on int64 ids failed: "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None
    return compiled
