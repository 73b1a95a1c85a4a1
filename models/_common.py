"""The generic trainer of the reference models, and the helpers their declarations use.

A model's ``train.py`` declares what is particular to it in a :class:`Recipe`: its layers (``build``), its
training data (a generator with its sizes), its ``compile``/``fit`` arguments (:class:`Training`) and its
golden inputs (:class:`MixedPadding` or :class:`UniformIds`). :class:`Recipe` does the rest the same way
for every model: seeding, training, golden inputs, export and ``golden.npz``. Nothing here is part of the
exporter or the runtime.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from models import FLAVOURS, ModelInfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN picks kernels by CPU; without it training gives the same weights on more machines.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

# after the TensorFlow settings above, should exporters ever import TensorFlow on import
from exporters import ExportReport, export_keras
from exporters.verify import PADDINGS

Ids = dict[str, np.ndarray]
"""Input name -> int64 ids."""

Data = tuple[Any, np.ndarray]
"""Training data: ``x`` (an id array, or one per input in input order) and the targets ``y``."""


def keras_module(flavour: str) -> ModuleType:
    """The Keras package of ``flavour``: ``keras`` for ``"keras3"``, ``tf_keras`` for ``"tf_keras"``."""
    if flavour == "keras3":
        import keras

        if keras.backend.backend() != "tensorflow":
            raise RuntimeError("the reference models need KERAS_BACKEND=tensorflow")
        return keras
    if flavour == "tf_keras":
        import tf_keras

        return tf_keras
    raise ValueError(f"unknown Keras flavour {flavour!r}; expected one of {FLAVOURS}")


def seed_everything(flavour: str, seed: int) -> None:
    """Seed Python, NumPy and TensorFlow for ``flavour`` and make TensorFlow ops deterministic."""
    import tensorflow as tf

    keras_module(flavour).utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def padded_ids(
    rng: np.random.Generator,
    batch: int,
    length: int,
    vocab: int,
    padding: str = "end",
) -> np.ndarray:
    """int64 ids in ``[1, vocab)`` of shape ``(batch, length)`` with zero padding at ``padding``.

    ``padding`` is one of :data:`exporters.verify.PADDINGS` or ``"mixed"`` (each in turn, row after row).
    Each row keeps at least one real id: Keras averages a fully padded row as 0/0.
    """
    ids = rng.integers(1, vocab, size=(batch, length), dtype=np.int64)
    if length < 2 or padding == "none":
        return ids
    n_pads = rng.integers(0, length, size=batch)
    for row, n_pad in enumerate(n_pads):
        where = PADDINGS[row % len(PADDINGS)] if padding == "mixed" else padding
        if where == "end" and n_pad:
            ids[row, length - n_pad :] = 0
        elif where == "start":
            ids[row, :n_pad] = 0
    return ids


def text_data(rng: np.random.Generator, samples: int, length: int, vocab: int) -> Data:
    """Padded ids (mixed padding) and a binary label: are most real ids in the lower half of the vocab?"""
    ids = padded_ids(rng, samples, length, vocab, "mixed")
    real = ids != 0
    low = (ids < vocab // 2) & real
    labels = (low.sum(axis=1) * 2 > real.sum(axis=1)).astype(np.float32)[:, None]
    return ids, labels


@dataclass(frozen=True)
class MixedPadding:
    """Golden inputs: for each input in turn, ``rows`` rows of ids in ``[1, vocab)`` padded at the end, at
    the start and not at all, row after row; ``length`` ids a row where the input's length is dynamic."""

    rows: int
    length: int

    def __call__(self, info: ModelInfo, rng: np.random.Generator) -> Ids:
        return {
            i.name: padded_ids(rng, self.rows, i.length or self.length, i.vocab, "mixed") for i in info.inputs
        }


@dataclass(frozen=True)
class UniformIds:
    """Golden inputs for static lengths: for each input in turn, ``rows`` rows of ids in ``[0, vocab)``;
    with ``zero_first_row`` the first row is all id 0 (a real id where nothing is masked)."""

    rows: int
    zero_first_row: bool = False

    def __call__(self, info: ModelInfo, rng: np.random.Generator) -> Ids:
        ids = {}
        for spec in info.inputs:
            if spec.length is None:
                raise ValueError(f"input {spec.name!r} of {info.name} has a dynamic length: use MixedPadding")
            ids[spec.name] = rng.integers(0, spec.vocab, size=(self.rows, spec.length), dtype=np.int64)
            if self.zero_first_row:
                ids[spec.name][0] = 0
        return ids


@dataclass(frozen=True)
class Training:
    """The ``compile`` and ``fit`` arguments: ``optimizer`` names a class of ``keras.optimizers``, made with
    ``learning_rate``."""

    optimizer: str
    learning_rate: float
    loss: str
    epochs: int
    batch_size: int


@dataclass(frozen=True)
class Recipe:
    """One reference model, declared; :meth:`build_and_train`, :meth:`golden_inputs` and :meth:`main` do the
    rest the same way for every model.

    Attributes:
        info: the model's :class:`ModelInfo`.
        build: ``build(flavour, seed)`` -> the uncompiled Keras model; ``seed`` is for initializers that take
            their own (every global seed is set before ``build`` runs).
        data: ``data(rng)`` -> the training data, drawn from ``rng`` only.
        training: the ``compile`` and ``fit`` arguments.
        golden: ``golden(info, rng)`` -> the golden inputs, drawn from ``rng`` only.
    """

    info: ModelInfo
    build: Callable[[str, int], Any]
    data: Callable[[np.random.Generator], Data]
    training: Training
    golden: Callable[[ModelInfo, np.random.Generator], Ids]

    def build_and_train(self, flavour: str | None = None, seed: int = 0) -> Any:
        """The model in ``flavour`` (default: the committed one) trained from ``seed``: every seed set, the
        data drawn from ``default_rng(seed)``, then built, compiled and fitted."""
        flavour = flavour or self.info.committed_flavour
        seed_everything(flavour, seed)
        x, y = self.data(np.random.default_rng(seed))
        model = self.build(flavour, seed)
        training = self.training
        optimizer = getattr(keras_module(flavour).optimizers, training.optimizer)
        model.compile(optimizer(learning_rate=training.learning_rate), training.loss)
        model.fit(x, y, epochs=training.epochs, batch_size=training.batch_size, verbose=0)
        return model

    def golden_inputs(self, seed: int = 0) -> Ids:
        """The golden inputs, drawn from ``default_rng(seed + 1)``."""
        return self.golden(self.info, np.random.default_rng(seed + 1))

    def main(self) -> ExportReport:
        """``python -m models.<name>.train``: train the committed flavour, export ``models/<name>/model.onnx``
        and write ``golden.npz`` beside it; prints and returns the export report."""
        report = export_and_record(self.info, self.build_and_train(), self.golden_inputs())
        print(report)
        return report


def keras_predict(
    model: Any, input_names: Sequence[str], output_names: Sequence[str], feeds: Ids
) -> dict[str, np.ndarray]:
    """``model.predict`` on ``feeds`` (input name -> ids), outputs named ``output_names``."""
    args = [feeds[name] for name in input_names]
    result = model.predict(args[0] if len(args) == 1 else args, verbose=0, batch_size=256)
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) != len(output_names):
        raise ValueError(f"model gave {len(results)} outputs, expected {list(output_names)}")
    return {name: np.asarray(value) for name, value in zip(output_names, results)}


def keras_masks(model: Any, onnx_path: str | os.PathLike[str], feeds: Ids) -> dict[str, np.ndarray]:
    """Keras ``compute_mask`` of every masked Embedding, named like the mask outputs of ``onnx_path``.

    The mask output names and the inputs they mask are read from the artifact's contract metadata
    (``embed_runtime.embeddings``); the masks themselves come from the Keras layers.
    """
    import onnx

    from embed_runtime.contract import KEY_EMBEDDINGS, ModelMetadata

    proto = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if KEY_EMBEDDINGS not in props:
        return {}
    meta = ModelMetadata.from_props(props)
    layers = {layer.name: layer for layer in model._flatten_layers(include_self=False, recursive=True)}
    masks = {}
    for emb in meta.embeddings:
        if emb.mask_output is None:
            continue
        (source,) = emb.inputs
        masks[emb.mask_output] = np.asarray(layers[emb.layer].compute_mask(feeds[source]))
    return masks


def export_and_record(info: ModelInfo, model: Any, golden_inputs: Ids) -> ExportReport:
    """Export ``model`` to ``models/<name>/model.onnx`` and write ``models/<name>/golden.npz``.

    ``golden.npz`` holds ``input.<name>`` (int64 ids) and ``output.<name>`` (Keras ``predict`` outputs
    and ``compute_mask`` masks, named like the graph outputs).
    """
    onnx_path = info.onnx_path
    report = export_keras(model, onnx_path)
    outputs = keras_predict(model, [i.name for i in info.inputs], info.outputs, golden_inputs)
    outputs.update(keras_masks(model, onnx_path, golden_inputs))
    arrays = {f"input.{k}": np.asarray(v, dtype=np.int64) for k, v in golden_inputs.items()}
    arrays.update({f"output.{k}": v for k, v in outputs.items()})
    tmp = info.folder / ".golden.tmp.npz"
    np.savez(tmp, allow_pickle=False, **arrays)
    os.replace(tmp, info.golden_path)
    return report
