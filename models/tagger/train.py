"""Build and train the Bidirectional GRU tagger; ``python -m models.tagger.train`` writes its artifacts."""

from __future__ import annotations

from typing import Any

import numpy as np

from models._common import golden_text_ids, keras_module, padded_ids, run_main, seed_everything
from models.tagger import INFO

VOCAB, DIM, UNITS, TAGS = INFO.inputs[0].vocab, 8, 6, 4


def build(flavour: str = "keras3") -> Any:
    """``Embedding(mask_zero=True) -> Bidirectional(GRU(return_sequences=True)) -> Dense(softmax)``.

    tf-keras uses ``TimeDistributed(Dense)``; Keras 3 uses ``Dense`` on the 3-D tensor because tf2onnx
    mistranslates Keras 3 ``TimeDistributed`` when the sequence length is dynamic.
    """
    k = keras_module(flavour)
    ids = k.Input(shape=(None,), dtype="int64", name="token_ids")
    x = k.layers.Embedding(VOCAB, DIM, mask_zero=True, name="embedding")(ids)
    x = k.layers.Bidirectional(k.layers.GRU(UNITS, return_sequences=True), name="bigru")(x)
    dense = k.layers.Dense(TAGS, activation="softmax")
    if flavour == "tf_keras":
        out = k.layers.TimeDistributed(dense, name="tags")(x)
    else:
        dense.name = "tags"
        out = dense(x)
    model = k.Model(ids, out, name="tagger")
    model.compile(k.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    return model


def tag_data(rng: np.random.Generator, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded ids and a tag per position that needs both directions: the id's bucket plus whether the
    previous real id is larger than the next one, folded into 4 tags."""
    ids = padded_ids(rng, n, length, VOCAB, "mixed")
    prev = np.roll(ids, 1, axis=1)
    nxt = np.roll(ids, -1, axis=1)
    tags = ((ids * 2 // VOCAB) * 2 + (prev > nxt)).astype(np.int64)
    return ids, np.where(ids == 0, 0, tags)


def build_and_train(flavour: str = "keras3", seed: int = 0) -> Any:
    """The tagger trained one epoch on 384 generated padded sequences."""
    seed_everything(flavour, seed)
    x, y = tag_data(np.random.default_rng(seed), 384, 16)
    model = build(flavour)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return model


def golden_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Six rows of 12 ids: padded at the end, at the start, and not at all."""
    return golden_text_ids("token_ids", VOCAB, seed)


def main() -> None:
    """Train the Keras 3 model, export ``models/tagger/model.onnx`` and write ``golden.npz``."""
    run_main(INFO, build_and_train, golden_inputs())


if __name__ == "__main__":
    main()
