"""Build the committed fixture of tests/runtime/test_text.py: a Keras 3 ``StringLookup`` (mask
token ``""``, one OOV id, tokens of several scripts) -> ``Embedding(mask_zero=True)`` -> ``Dense``,
exported by ``export_keras`` with its lookup in the graph, and what Keras gives on sample rows of tokens.

Run from the repository root with the TensorFlow environment: ``PYTHONPATH=. .venv/bin/python
tests/runtime/data/build_string_lookup.py``. Writes ``string_lookup.onnx`` and ``string_lookup.json``
(the rows, Keras's ids, outputs and mask) beside this file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
VOCABULARY = ["the", "cat", "sat", "école", "Straße", "дом", "мир", "Ωμέγα", "日本", "語", "🙂", "e\u0301"]
VOCABULARY += ["a\u00a0b"]
ROWS = [
    ["the", "cat", "sat", "on"],
    ["école", "Straße", "ÉCOLE", ""],
    ["дом", "мир", "Ωμέγα", "ωμέγα"],
    ["日本", "語", "🙂", "🙃"],
    ["e\u0301", "é", "a\u00a0b", "a b"],
    ["[UNK]", "", "", ""],
]
"""Vocabulary tokens, OOV tokens (case, composed vs decomposed, a plain space), the OOV token itself and
the mask token ``""`` (padding)."""


def main(folder: Path = HERE) -> None:
    """Export the model into ``folder`` and write Keras's answers beside it."""
    import keras

    from exporters import export_keras

    keras.utils.set_random_seed(0)
    tokens = keras.Input(shape=(None,), dtype="string", name="tokens")
    lookup = keras.layers.StringLookup(vocabulary=VOCABULARY, mask_token="", name="lookup")
    x = keras.layers.Embedding(lookup.vocabulary_size(), 4, mask_zero=True, name="embedding")(lookup(tokens))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    model = keras.Model(tokens, keras.layers.Dense(3, name="scores")(x), name="string_lookup")
    export_keras(model, folder / "string_lookup.onnx")
    batch = np.array(ROWS, dtype=object)
    ids = np.asarray(lookup(batch))
    golden = {
        "rows": ROWS,
        "ids": ids.tolist(),
        "mask": (ids != 0).tolist(),
        "scores": np.asarray(model(batch)).tolist(),
    }
    text = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in golden.items())
    (folder / "string_lookup.json").write_text("{\n" + text + "\n}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
