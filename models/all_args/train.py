"""The model with every Embedding argument non-default: its layers, data and sizes;
``python -m models.all_args.train`` writes its artifacts."""

from __future__ import annotations

from functools import partial
from typing import Any

from models._common import MixedPadding, Recipe, Training, keras_module, text_data
from models.all_args import INFO

# Plain SGD keeps most rows at the max_norm bound; Adam scales the regularizers' tiny gradients up to full
# steps and pulls most rows inside it, where the constraint no longer acts. Every step applies max_norm.
TRAINING = Training("SGD", learning_rate=0.1, loss="mse", epochs=2, batch_size=32)
VOCAB, DIM, LENGTH = INFO.inputs[0].vocab, 8, 10
MAX_NORM = 1.0
DATA = partial(text_data, samples=512, length=LENGTH, vocab=VOCAB)


def build(flavour: str, seed: int) -> Any:
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
    else:
        embedding = k.layers.Embedding(VOCAB, DIM, **options)
    ids = k.Input(shape=(LENGTH,), dtype="int64", name="token_ids")
    x = k.layers.GlobalAveragePooling1D(name="pool")(embedding(ids))
    out = k.layers.Dense(1, name="score")(x)
    return k.Model(ids, out, name="all_args")


RECIPE = Recipe(INFO, build, DATA, TRAINING, MixedPadding(rows=6, length=LENGTH))
build_and_train, golden_inputs = RECIPE.build_and_train, RECIPE.golden_inputs

if __name__ == "__main__":
    RECIPE.main()
