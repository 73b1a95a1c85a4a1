"""The shared-Embedding similarity model's layers, data and sizes; ``python -m models.shared.train`` writes
its artifacts."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from models._common import Data, MixedPadding, Recipe, Training, keras_module, padded_ids
from models.shared import INFO

TRAINING = Training("Adam", learning_rate=0.02, loss="mse", epochs=2, batch_size=32)
VOCAB, DIM = INFO.inputs[0].vocab, 8


def pair_data(rng: np.random.Generator, samples: int, length: int) -> Data:
    """Query/document pairs; the target is the share of the document's real ids found in the query."""
    queries = padded_ids(rng, samples, length, VOCAB, "mixed")
    documents = padded_ids(rng, samples, length, VOCAB, "mixed")
    half = samples // 2
    documents[:half] = np.where(documents[:half] != 0, queries[:half], 0)  # related pairs share ids
    overlap = np.array(
        [np.isin(d[d != 0], q[q != 0]).mean() if np.any(d) else 0.0 for q, d in zip(queries, documents)]
    )
    return [queries, documents], overlap.astype(np.float32)[:, None]


DATA = partial(pair_data, samples=384, length=12)


def build(flavour: str, seed: int) -> Any:
    """One ``Embedding(mask_zero=True)`` and one masked average pooling for both inputs, then cosine."""
    k = keras_module(flavour)
    query = k.Input(shape=(None,), dtype="int64", name="query")
    document = k.Input(shape=(None,), dtype="int64", name="document")
    embed = k.layers.Embedding(VOCAB, DIM, mask_zero=True, name="token_embedding")
    pool = k.layers.GlobalAveragePooling1D(name="pool")
    q, d = pool(embed(query)), pool(embed(document))
    similarity = k.layers.Dot(axes=1, normalize=True, name="similarity")([q, d])
    return k.Model([query, document], similarity, name="shared")


RECIPE = Recipe(INFO, build, DATA, TRAINING, MixedPadding(rows=6, length=12))
build_and_train, golden_inputs = RECIPE.build_and_train, RECIPE.golden_inputs

if __name__ == "__main__":
    RECIPE.main()
