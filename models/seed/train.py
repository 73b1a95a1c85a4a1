"""Build and train the seed's example model; ``python -m models.seed.train`` writes its artifacts."""

from __future__ import annotations

from typing import Any

import numpy as np

from models._common import export_and_record, keras_module, seed_everything
from models.seed import INFO

VOCAB, DIM, LENGTH = 1000, 64, 10


def build(flavour: str = "tf_keras") -> Any:
    """The seed's model, compiled with ``rmsprop``/``mse``.

    tf-keras: exactly ``Sequential([Embedding(1000, 64, input_length=10)])``. Keras 3 ignores
    ``input_length`` (with a warning), so its twin states the length with ``keras.Input(shape=(10,))``.
    """
    k = keras_module(flavour)
    if flavour == "tf_keras":
        model = k.Sequential([k.layers.Embedding(VOCAB, DIM, input_length=LENGTH, name="embedding")])
    else:
        model = k.Sequential(
            [k.Input(shape=(LENGTH,), dtype="int64"), k.layers.Embedding(VOCAB, DIM, name="embedding")]
        )
    model.compile("rmsprop", "mse")
    return model


def build_and_train(flavour: str = "tf_keras", seed: int = 0) -> Any:
    """The seed model trained one epoch (seconds) on generated ids towards random target vectors."""
    seed_everything(flavour, seed)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(256, LENGTH), dtype=np.int64)
    y = rng.normal(0.0, 0.1, size=(256, LENGTH, DIM)).astype(np.float32)
    model = build(flavour)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return model


def golden_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """A small seeded batch like the seed's ``randint(1000, size=(32, 10))`` (4 rows, to stay small)."""
    rng = np.random.default_rng(seed + 1)
    return {"input_ids": rng.integers(0, VOCAB, size=(4, LENGTH), dtype=np.int64)}


def main() -> None:
    """Train the committed flavour, export to ``models/seed/model.onnx`` and write ``golden.npz``."""
    model = build_and_train(INFO.committed_flavour)
    report = export_and_record(INFO.name, model, [i.name for i in INFO.inputs], INFO.outputs, golden_inputs())
    print(report)


if __name__ == "__main__":
    main()
