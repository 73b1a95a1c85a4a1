"""The Bidirectional GRU tagger's layers, data and sizes; ``python -m models.tagger.train`` writes its
artifacts."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from models._common import Data, MixedPadding, Recipe, Training, keras_module, padded_ids
from models.tagger import INFO

TRAINING = Training(
    "Adam", learning_rate=0.02, loss="sparse_categorical_crossentropy", epochs=1, batch_size=32
)
VOCAB, DIM, UNITS, TAGS = INFO.inputs[0].vocab, 8, 6, 4


def tag_data(rng: np.random.Generator, samples: int, length: int) -> Data:
    """Padded ids and a tag per position that needs both directions: the id's bucket plus whether the
    previous real id is larger than the next one, folded into 4 tags."""
    ids = padded_ids(rng, samples, length, VOCAB, "mixed")
    prev = np.roll(ids, 1, axis=1)
    nxt = np.roll(ids, -1, axis=1)
    tags = ((ids * 2 // VOCAB) * 2 + (prev > nxt)).astype(np.int64)
    return ids, np.where(ids == 0, 0, tags)


DATA = partial(tag_data, samples=384, length=16)


def build(flavour: str, seed: int) -> Any:
    """``Embedding(mask_zero=True) -> Bidirectional(GRU(return_sequences=True)) -> Dense(softmax)``.

    tf-keras uses ``TimeDistributed(Dense)``; Keras 3 uses ``Dense`` on the 3-D tensor, the same function
    (see ``models/tagger/__init__.py`` for why).
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
    return k.Model(ids, out, name="tagger")


RECIPE = Recipe(INFO, build, DATA, TRAINING, MixedPadding(rows=6, length=12))
build_and_train, golden_inputs = RECIPE.build_and_train, RECIPE.golden_inputs

if __name__ == "__main__":
    RECIPE.main()
