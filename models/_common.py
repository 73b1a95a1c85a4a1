"""Helpers shared by the reference models: seeding, Keras flavours, padded ids, artifacts.

Nothing here is part of the exporter or the runtime; it only builds, trains and records the reference
models under ``models/<name>/``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# oneDNN picks kernels by CPU; without it training gives the same weights on more machines.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

FLAVOURS = ("keras3", "tf_keras")
"""The two Keras flavours a model can be built in: Keras 3 (TF backend) and tf-keras (Keras 2)."""

PADDINGS = ("end", "start", "none")
"""Where zero padding goes in a row of ids."""

MODELS_DIR = Path(__file__).resolve().parent


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

    ``padding`` is ``"end"``, ``"start"``, ``"none"`` or ``"mixed"`` (a different one per row). Each row
    keeps at least one real id: Keras averages a fully padded row as 0/0.
    """
    ids = rng.integers(1, vocab, size=(batch, length), dtype=np.int64)
    if length < 2 or padding == "none":
        return ids
    n_pads = rng.integers(0, length, size=batch)
    for row, n_pad in enumerate(n_pads):
        where = PADDINGS[row % 3] if padding == "mixed" else padding
        if where == "end" and n_pad:
            ids[row, length - n_pad :] = 0
        elif where == "start":
            ids[row, :n_pad] = 0
    return ids


def keras_predict(
    model: Any, input_names: Sequence[str], output_names: Sequence[str], feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``model.predict`` on ``feeds`` (input name -> ids), outputs named ``output_names``."""
    args = [feeds[name] for name in input_names]
    result = model.predict(args[0] if len(args) == 1 else args, verbose=0, batch_size=256)
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) != len(output_names):
        raise ValueError(f"model gave {len(results)} outputs, expected {list(output_names)}")
    return {name: np.asarray(value) for name, value in zip(output_names, results)}


def keras_masks(
    model: Any, onnx_path: str | os.PathLike[str], feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
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
    layers = {layer.name: layer for layer in _all_layers(model)}
    masks = {}
    for emb in meta.embeddings:
        if emb.mask_output is None:
            continue
        (source,) = emb.inputs
        masks[emb.mask_output] = np.asarray(layers[emb.layer].compute_mask(feeds[source]))
    return masks


def _all_layers(model: Any) -> list[Any]:
    return list(model._flatten_layers(include_self=False, recursive=True))


def export_and_record(
    name: str,
    model: Any,
    input_names: Sequence[str],
    output_names: Sequence[str],
    golden_inputs: dict[str, np.ndarray],
    out_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Export ``model`` to ``<out_dir>/model.onnx`` and write ``<out_dir>/golden.npz``.

    ``golden.npz`` holds ``input.<name>`` (int64 ids) and ``output.<name>`` (Keras ``predict`` outputs
    and ``compute_mask`` masks, named like the graph outputs). ``out_dir`` defaults to
    ``models/<name>/``. Returns the exporter's :class:`exporters.ExportReport`.
    """
    from exporters import export_keras

    folder = Path(out_dir) if out_dir is not None else MODELS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    report = export_keras(model, onnx_path)
    outputs = keras_predict(model, input_names, output_names, golden_inputs)
    outputs.update(keras_masks(model, onnx_path, golden_inputs))
    arrays = {f"input.{k}": np.asarray(v, dtype=np.int64) for k, v in golden_inputs.items()}
    arrays.update({f"output.{k}": v for k, v in outputs.items()})
    tmp = folder / ".golden.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, folder / "golden.npz")
    return report


def text_data(rng: np.random.Generator, n: int, length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded ids (mixed padding) and a binary label: are most real ids in the lower half of the vocab?"""
    ids = padded_ids(rng, n, length, vocab, "mixed")
    real = ids != 0
    low = (ids < vocab // 2) & real
    labels = (low.sum(axis=1) * 2 > real.sum(axis=1)).astype(np.float32)[:, None]
    return ids, labels


def golden_text_ids(
    name: str, vocab: int, seed: int = 0, batch: int = 6, length: int = 12
) -> dict[str, np.ndarray]:
    """A small seeded batch of ids for the input ``name``: two rows each padded at the end, at the start,
    and not at all."""
    rng = np.random.default_rng(seed + 1)
    return {name: padded_ids(rng, batch, length, vocab, "mixed")}


def run_main(info: Any, build_and_train: Any, golden: dict[str, np.ndarray]) -> Any:
    """``main()`` of a reference model: train the committed flavour, export it, write ``golden.npz``."""
    model = build_and_train(info.committed_flavour)
    report = export_and_record(info.name, model, [i.name for i in info.inputs], info.outputs, golden)
    print(report)
    return report
