"""Build and train the masked text classifier; ``python -m models.classifier.train`` writes its artifacts."""

from __future__ import annotations

from typing import Any

import numpy as np

from models._common import golden_text_ids, keras_module, run_main, seed_everything, text_data
from models.classifier import INFO

VOCAB, DIM = INFO.inputs[0].vocab, 8


def build(flavour: str = "keras3") -> Any:
    """``Embedding(mask_zero=True) -> GlobalAveragePooling1D -> Dense(1, sigmoid)``, compiled."""
    k = keras_module(flavour)
    ids = k.Input(shape=(None,), dtype="int64", name="token_ids")
    x = k.layers.Embedding(VOCAB, DIM, mask_zero=True, name="embedding")(ids)
    x = k.layers.GlobalAveragePooling1D(name="pool")(x)
    out = k.layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = k.Model(ids, out, name="classifier")
    model.compile(k.optimizers.Adam(0.01), "binary_crossentropy")
    return model


def build_and_train(flavour: str = "keras3", seed: int = 0) -> Any:
    """The classifier trained two epochs on 512 generated padded sequences."""
    seed_everything(flavour, seed)
    x, y = text_data(np.random.default_rng(seed), 512, 20, VOCAB)
    model = build(flavour)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model


def golden_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Six rows of 12 ids: padded at the end, at the start, and not at all."""
    return golden_text_ids("token_ids", VOCAB, seed)


def main() -> None:
    """Train the Keras 3 model, export ``models/classifier/model.onnx`` and write ``golden.npz``."""
    run_main(INFO, build_and_train, golden_inputs())


if __name__ == "__main__":
    main()
