"""The seed's example model, its data and sizes; ``python -m models.seed.train`` writes its artifacts."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from models._common import Data, Recipe, Training, UniformIds, keras_module
from models.seed import INFO

# The seed compiles with "rmsprop" (RMSprop at its default learning rate) and "mse".
TRAINING = Training("RMSprop", learning_rate=0.001, loss="mse", epochs=1, batch_size=32)
VOCAB, DIM, LENGTH = INFO.inputs[0].vocab, 64, 10


def random_targets(rng: np.random.Generator, samples: int) -> Data:
    """Ids in ``[0, VOCAB)`` and random target vectors: one epoch of it takes seconds."""
    x = rng.integers(0, VOCAB, size=(samples, LENGTH), dtype=np.int64)
    y = rng.normal(0.0, 0.1, size=(samples, LENGTH, DIM)).astype(np.float32)
    return x, y


DATA = partial(random_targets, samples=256)


def build(flavour: str, seed: int) -> Any:
    """The seed's model.

    tf-keras: exactly ``Sequential([Embedding(1000, 64, input_length=10)])``. Keras 3 ignores
    ``input_length`` (with a warning), so its twin states the length with ``keras.Input(shape=(10,))``.
    """
    k = keras_module(flavour)
    if flavour == "tf_keras":
        return k.Sequential([k.layers.Embedding(VOCAB, DIM, input_length=LENGTH, name="embedding")])
    return k.Sequential(
        [k.Input(shape=(LENGTH,), dtype="int64"), k.layers.Embedding(VOCAB, DIM, name="embedding")]
    )


# Like the seed's randint(1000, size=(32, 10)), in 4 rows to stay small.
RECIPE = Recipe(INFO, build, DATA, TRAINING, UniformIds(rows=4))
build_and_train, golden_inputs = RECIPE.build_and_train, RECIPE.golden_inputs

if __name__ == "__main__":
    RECIPE.main()
