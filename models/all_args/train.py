"""Build and train the model with every Embedding argument non-default; ``python -m models.all_args.train``
writes its artifacts."""

from __future__ import annotations

from typing import Any

import numpy as np

from models._common import golden_text_ids, keras_module, run_main, seed_everything, text_data
from models.all_args import INFO

VOCAB, DIM, LENGTH = INFO.inputs[0].vocab, 8, 10
MAX_NORM = 1.0


def build(flavour: str = "keras3", seed: int = 0) -> Any:
    """The Embedding with every seed argument set, masked average pooling and a linear score."""
    k = keras_module(flavour)
    options = {
        "embeddings_initializer": k.initializers.RandomNormal(stddev=1.0, seed=seed),
        "embeddings_regularizer": k.regularizers.l2(1e-4),
        "activity_regularizer": k.regularizers.l1(1e-5),
        "embeddings_constraint": k.constraints.MaxNorm(MAX_NORM, axis=1),  # per row (default: per column)
        "mask_zero": True,
        "name": "embedding",
    }
    if flavour == "tf_keras":
        embedding = k.layers.Embedding(VOCAB, DIM, input_length=LENGTH, **options)
        ids = k.Input(shape=(LENGTH,), dtype="int64", name="token_ids")
    else:
        embedding = k.layers.Embedding(VOCAB, DIM, **options)
        ids = k.Input(shape=(LENGTH,), dtype="int64", name="token_ids")
    x = k.layers.GlobalAveragePooling1D(name="pool")(embedding(ids))
    out = k.layers.Dense(1, name="score")(x)
    model = k.Model(ids, out, name="all_args")
    # Plain SGD keeps most rows at the max_norm bound; Adam scales the regularizers' tiny gradients up to
    # full steps and pulls most rows inside it, where the constraint no longer acts.
    model.compile(k.optimizers.SGD(0.1), "mse")
    return model


def build_and_train(flavour: str = "keras3", seed: int = 0) -> Any:
    """Trained two epochs on 512 generated padded sequences; every step applies ``max_norm``."""
    seed_everything(flavour, seed)
    x, y = text_data(np.random.default_rng(seed), 512, LENGTH, VOCAB)
    model = build(flavour, seed)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model


def golden_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Six rows of 10 ids: padded at the end, at the start, and not at all."""
    return golden_text_ids("token_ids", VOCAB, seed, length=LENGTH)


def main() -> None:
    """Train the Keras 3 model, export ``models/all_args/model.onnx`` and write ``golden.npz``."""
    run_main(INFO, build_and_train, golden_inputs())


if __name__ == "__main__":
    main()
