"""Build and train the two-tower recommender; ``python -m models.recommender.train`` writes its artifacts."""

from __future__ import annotations

from typing import Any

import numpy as np

from models._common import keras_module, run_main, seed_everything
from models.recommender import INFO

USERS, ITEMS, DIM = INFO.inputs[0].vocab, INFO.inputs[1].vocab, 8


def build(flavour: str = "keras3") -> Any:
    """User tower and item tower (``Embedding -> Flatten``), scored by ``Dot``; compiled with ``mse``."""
    k = keras_module(flavour)
    user = k.Input(shape=(1,), dtype="int64", name="user_id")
    item = k.Input(shape=(1,), dtype="int64", name="item_id")
    u = k.layers.Flatten(name="user_vector")(k.layers.Embedding(USERS, DIM, name="user_embedding")(user))
    i = k.layers.Flatten(name="item_vector")(k.layers.Embedding(ITEMS, DIM, name="item_embedding")(item))
    score = k.layers.Dot(axes=1, name="score")([u, i])
    model = k.Model([user, item], score, name="recommender")
    model.compile(k.optimizers.Adam(0.05), "mse")
    return model


def rating_data(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Pairs of user and item ids rated by hidden rank-2 factors."""
    users = rng.integers(0, USERS, size=(n, 1), dtype=np.int64)
    items = rng.integers(0, ITEMS, size=(n, 1), dtype=np.int64)
    user_factors = rng.normal(size=(USERS, 2))
    item_factors = rng.normal(size=(ITEMS, 2))
    ratings = np.sum(user_factors[users[:, 0]] * item_factors[items[:, 0]], axis=1, keepdims=True)
    return [users, items], ratings.astype(np.float32)


def build_and_train(flavour: str = "keras3", seed: int = 0) -> Any:
    """The recommender trained two epochs on 512 generated ratings."""
    seed_everything(flavour, seed)
    x, y = rating_data(np.random.default_rng(seed), 512)
    model = build(flavour)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model


def golden_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Eight (user, item) pairs, id 0 included."""
    rng = np.random.default_rng(seed + 1)
    users = rng.integers(0, USERS, size=(8, 1), dtype=np.int64)
    items = rng.integers(0, ITEMS, size=(8, 1), dtype=np.int64)
    users[0, 0] = items[0, 0] = 0
    return {"user_id": users, "item_id": items}


def main() -> None:
    """Train the Keras 3 model, export ``models/recommender/model.onnx`` and write ``golden.npz``."""
    run_main(INFO, build_and_train, golden_inputs())


if __name__ == "__main__":
    main()
