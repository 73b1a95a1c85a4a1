"""Build and train the shared-Embedding similarity model; ``python -m models.shared.train`` writes its
artifacts."""

from __future__ import annotations

from typing import Any

import numpy as np

from models._common import keras_module, padded_ids, run_main, seed_everything
from models.shared import INFO

VOCAB, DIM = INFO.inputs[0].vocab, 8


def build(flavour: str = "keras3") -> Any:
    """One ``Embedding(mask_zero=True)`` and one masked average pooling for both inputs, then cosine."""
    k = keras_module(flavour)
    query = k.Input(shape=(None,), dtype="int64", name="query")
    document = k.Input(shape=(None,), dtype="int64", name="document")
    embed = k.layers.Embedding(VOCAB, DIM, mask_zero=True, name="token_embedding")
    pool = k.layers.GlobalAveragePooling1D(name="pool")
    q, d = pool(embed(query)), pool(embed(document))
    similarity = k.layers.Dot(axes=1, normalize=True, name="similarity")([q, d])
    model = k.Model([query, document], similarity, name="shared")
    model.compile(k.optimizers.Adam(0.02), "mse")
    return model


def pair_data(rng: np.random.Generator, n: int, length: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Query/document pairs; the target is the share of the document's real ids found in the query."""
    queries = padded_ids(rng, n, length, VOCAB, "mixed")
    documents = padded_ids(rng, n, length, VOCAB, "mixed")
    half = n // 2
    documents[:half] = np.where(documents[:half] != 0, queries[:half], 0)  # related pairs share ids
    overlap = np.array(
        [np.isin(d[d != 0], q[q != 0]).mean() if np.any(d) else 0.0 for q, d in zip(queries, documents)]
    )
    return [queries, documents], overlap.astype(np.float32)[:, None]


def build_and_train(flavour: str = "keras3", seed: int = 0) -> Any:
    """The similarity model trained two epochs on 384 generated pairs."""
    seed_everything(flavour, seed)
    x, y = pair_data(np.random.default_rng(seed), 384, 12)
    model = build(flavour)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model


def golden_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Six query/document pairs of 12 ids, padded at the end, at the start, and not at all."""
    rng = np.random.default_rng(seed + 1)
    return {
        "query": padded_ids(rng, 6, 12, VOCAB, "mixed"),
        "document": padded_ids(rng, 6, 12, VOCAB, "mixed"),
    }


def main() -> None:
    """Train the Keras 3 model, export ``models/shared/model.onnx`` and write ``golden.npz``."""
    run_main(INFO, build_and_train, golden_inputs())


if __name__ == "__main__":
    main()
