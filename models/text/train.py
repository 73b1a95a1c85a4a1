"""The text model's layers, data and golden strings; ``python -m models.text.train`` writes its artifacts.

Unlike the id models (:class:`models._common.Recipe`), it trains on strings and its golden inputs are
strings: ``golden.npz`` records Keras's ids for them (``input.text``) beside its outputs, and ``texts.json``
the strings.
"""

from __future__ import annotations

import importlib
import json
import os
import pydoc
from typing import Any

import numpy as np

from embed_runtime.text import STRIP_PUNCTUATION
from models._common import keras_module, seed_everything
from models.text import INFO

FILESYSTEM = ("os", "pathlib", "shutil", "glob", "tempfile", "zipfile", "tarfile", "filecmp")
TEXT = ("re", "string", "textwrap", "difflib", "unicodedata", "codecs", "html", "csv")
HELD_OUT = 24
"""Docstring lines kept out of training and used as golden strings."""
MULTISCRIPT = ["Straße, ÉCOLE — «naïve» 日本語 🙂", "open the file\tand READ it!"]
"""Golden strings beyond the docstrings: accents, CJK, emoji, a tab."""
MAX_TOKENS, DIM, EPOCHS = 1000, 16, 3


def docstring_lines(modules: tuple[str, ...]) -> list[str]:
    """Docstring lines of ``modules`` and of their public attributes that have a token under the default
    standardize (a line of punctuation only is all padding, which Keras averages as 0/0 = NaN), sorted,
    each once."""
    lines: list[str] = []
    for name in modules:
        module = importlib.import_module(name)
        docs = [pydoc.getdoc(module)] + [pydoc.getdoc(getattr(module, a)) for a in sorted(dir(module))]
        lines += [line.strip() for doc in docs for line in doc.split("\n")]
    return sorted({line for line in set(lines) if STRIP_PUNCTUATION.sub(b"", line.encode()).split()})


def corpus(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(training texts, their labels: 1 for file-system modules, golden strings), split by ``seed``."""
    fs, txt = docstring_lines(FILESYSTEM), docstring_lines(TEXT)
    texts = np.array(fs + txt, dtype=object)
    labels = np.array([1.0] * len(fs) + [0.0] * len(txt), dtype=np.float32)
    order = np.random.default_rng(seed).permutation(len(texts))
    train = order[HELD_OUT:]
    return texts[train], labels[train], [str(t) for t in texts[order[:HELD_OUT]]] + MULTISCRIPT


def golden_texts(seed: int = 0) -> list[str]:
    """The golden strings (``texts.json``)."""
    return corpus(seed)[2]


def build_and_train(flavour: str | None = None, seed: int = 0) -> Any:
    """The model in ``flavour`` (default: the committed one), its vocabulary adapted and trained from
    ``seed``."""
    flavour = flavour or INFO.committed_flavour
    seed_everything(flavour, seed)
    import tensorflow as tf

    k = keras_module(flavour)
    texts, labels, _ = corpus(seed)
    vectorize = k.layers.TextVectorization(max_tokens=MAX_TOKENS, name="vectorize")
    vectorize.adapt(texts)
    inp = k.Input(shape=(1,), dtype="string", name="text")
    x = k.layers.Embedding(vectorize.vocabulary_size(), DIM, mask_zero=True, name="embedding")(vectorize(inp))
    x = k.layers.GlobalAveragePooling1D(name="pool")(x)
    model = k.Model(inp, k.layers.Dense(1, activation="sigmoid", name="probability")(x), name="text")
    model.compile(k.optimizers.Adam(learning_rate=0.01), "binary_crossentropy")
    model.fit(tf.constant([[str(t)] for t in texts]), labels, epochs=EPOCHS, batch_size=64, verbose=0)
    return model


def keras_run(model: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """Keras on ``texts``: ``input.text`` (the ids ``TextVectorization`` gives), ``output.probability``
    (``predict``) and ``output.mask`` (the Embedding's ``compute_mask``)."""
    import tensorflow as tf

    batch = tf.constant([[t] for t in texts])
    ids = np.asarray(model.get_layer("vectorize")(batch), dtype=np.int64)
    return {
        "input.text": ids,
        "output.probability": np.asarray(model.predict(batch, verbose=0, batch_size=256)),
        "output.mask": np.asarray(model.get_layer("embedding").compute_mask(ids)),
    }


def main() -> Any:
    """Train, export ``model.onnx`` and write ``golden.npz`` and ``texts.json`` beside it; prints and
    returns the export report."""
    from exporters import export_keras

    model = build_and_train()
    report = export_keras(model, INFO.onnx_path)
    texts = golden_texts()
    tmp = INFO.folder / ".golden.tmp.npz"
    np.savez(tmp, allow_pickle=False, **keras_run(model, texts))
    os.replace(tmp, INFO.golden_path)
    (INFO.folder / "texts.json").write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n", "utf-8")
    print(report)
    return report


class _Recipe:
    """What :mod:`models.build` calls: ``RECIPE.main()``."""

    main = staticmethod(main)


RECIPE = _Recipe()

if __name__ == "__main__":
    main()
