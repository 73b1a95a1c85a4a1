"""The masked LSTM classifier's layers, data and sizes; ``python -m models.recurrent.train`` writes its
artifacts."""

from __future__ import annotations

from functools import partial
from typing import Any

from models._common import MixedPadding, Recipe, Training, keras_module, text_data
from models.recurrent import INFO

TRAINING = Training("Adam", learning_rate=0.01, loss="binary_crossentropy", epochs=1, batch_size=32)
VOCAB, DIM, UNITS = INFO.inputs[0].vocab, 8, 8
DATA = partial(text_data, samples=384, length=16, vocab=VOCAB)


def build(flavour: str, seed: int) -> Any:
    """``Embedding(mask_zero=True) -> LSTM -> Dense(1, sigmoid)``."""
    k = keras_module(flavour)
    ids = k.Input(shape=(None,), dtype="int64", name="token_ids")
    x = k.layers.Embedding(VOCAB, DIM, mask_zero=True, name="embedding")(ids)
    x = k.layers.LSTM(UNITS, name="lstm")(x)
    return k.Model(ids, k.layers.Dense(1, activation="sigmoid", name="probability")(x), name="recurrent")


RECIPE = Recipe(INFO, build, DATA, TRAINING, MixedPadding(rows=6, length=12))
build_and_train, golden_inputs = RECIPE.build_and_train, RECIPE.golden_inputs

if __name__ == "__main__":
    RECIPE.main()
