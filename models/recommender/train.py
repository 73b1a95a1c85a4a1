"""The two-tower recommender's layers, data and sizes; ``python -m models.recommender.train`` writes its
artifacts."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from models._common import Data, Recipe, Training, UniformIds, keras_module
from models.recommender import INFO

TRAINING = Training("Adam", learning_rate=0.05, loss="mse", epochs=2, batch_size=32)
USERS, ITEMS, DIM = INFO.inputs[0].vocab, INFO.inputs[1].vocab, 8


def rating_data(rng: np.random.Generator, samples: int) -> Data:
    """Pairs of user and item ids rated by hidden rank-2 factors."""
    users = rng.integers(0, USERS, size=(samples, 1), dtype=np.int64)
    items = rng.integers(0, ITEMS, size=(samples, 1), dtype=np.int64)
    user_factors = rng.normal(size=(USERS, 2))
    item_factors = rng.normal(size=(ITEMS, 2))
    ratings = np.sum(user_factors[users[:, 0]] * item_factors[items[:, 0]], axis=1, keepdims=True)
    return [users, items], ratings.astype(np.float32)


DATA = partial(rating_data, samples=512)


def build(flavour: str, seed: int) -> Any:
    """User tower and item tower (``Embedding -> Flatten``), scored by ``Dot``."""
    k = keras_module(flavour)
    user = k.Input(shape=(1,), dtype="int64", name="user_id")
    item = k.Input(shape=(1,), dtype="int64", name="item_id")
    u = k.layers.Flatten(name="user_vector")(k.layers.Embedding(USERS, DIM, name="user_embedding")(user))
    i = k.layers.Flatten(name="item_vector")(k.layers.Embedding(ITEMS, DIM, name="item_embedding")(item))
    score = k.layers.Dot(axes=1, name="score")([u, i])
    return k.Model([user, item], score, name="recommender")


# Eight (user, item) pairs, the first one (0, 0): id 0 is a real user and a real item.
RECIPE = Recipe(INFO, build, DATA, TRAINING, UniformIds(rows=8, zero_first_row=True))
build_and_train, golden_inputs = RECIPE.build_and_train, RECIPE.golden_inputs

if __name__ == "__main__":
    RECIPE.main()
