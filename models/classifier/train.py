"""The masked text classifier's layers, data and sizes; ``python -m models.classifier.train`` writes its
artifacts."""

from __future__ import annotations

from functools import partial
from typing import Any

from models._common import MixedPadding, Recipe, Training, keras_module, text_data
from models.classifier import INFO

TRAINING = Training("Adam", learning_rate=0.01, loss="binary_crossentropy", epochs=2, batch_size=32)
VOCAB, DIM = INFO.inputs[0].vocab, 8
DATA = partial(text_data, samples=512, length=20, vocab=VOCAB)


def build(flavour: str, seed: int) -> Any:
    """``Embedding(mask_zero=True) -> GlobalAveragePooling1D -> Dense(1, sigmoid)``."""
    k = keras_module(flavour)
    ids = k.Input(shape=(None,), dtype="int64", name="token_ids")
    x = k.layers.Embedding(VOCAB, DIM, mask_zero=True, name="embedding")(ids)
    x = k.layers.GlobalAveragePooling1D(name="pool")(x)
    return k.Model(ids, k.layers.Dense(1, activation="sigmoid", name="probability")(x), name="classifier")


RECIPE = Recipe(INFO, build, DATA, TRAINING, MixedPadding(rows=6, length=12))
build_and_train, golden_inputs = RECIPE.build_and_train, RECIPE.golden_inputs

if __name__ == "__main__":
    RECIPE.main()
