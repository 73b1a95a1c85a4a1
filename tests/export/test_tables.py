"""``exporters.tables.swapped_tables``: the one way the exporter swaps an Embedding's table."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from exporters import ExportError
from exporters.keras_model import EmbeddingLayer, describe
from exporters.tables import held_table, swapped_tables


def _model(k3, n_layers: int = 2):
    ids = k3.Input(shape=(3,), dtype="int64", name="ids")
    outs = [k3.layers.Embedding(5, 2, name=f"emb{i}")(ids) for i in range(n_layers)]
    return k3.Model(ids, outs)


def test_every_put_is_undone_last_first_even_when_the_block_raises(k3):
    info = describe(_model(k3))
    first, second = info.embeddings
    originals = [emb.layer._embeddings for emb in info.embeddings]
    n_weights = len(info.model.weights)
    with pytest.raises(RuntimeError, match="inside"), swapped_tables() as put:
        put(first, "_embeddings", "a")
        put(first, "_embeddings", "b")  # the same attribute twice: the first original must come back
        put(second, "_embeddings", "c")
        assert (first.layer._embeddings, second.layer._embeddings) == ("b", "c")
        assert len(info.model.weights) == n_weights  # Keras's attribute tracking never saw the swap
        raise RuntimeError("inside")
    assert [emb.layer._embeddings for emb in info.embeddings] == originals


def test_a_missing_table_is_refused_with_what_could_not_be_done(k3):
    info = describe(_model(k3, 1))
    emb = info.embeddings[0]
    assert held_table(emb, "_embeddings", "trace") is emb.layer._embeddings
    stray = EmbeddingLayer(SimpleNamespace(), "stray", 5, 2, False, (5, 2), "float32")
    with pytest.raises(
        ExportError, match="Embedding 'stray' keeps no table in '_embeddings'; cannot swap it"
    ):
        held_table(stray, "_embeddings", "swap")


def test_values_put_are_what_the_layer_reads(k3):
    info = describe(_model(k3, 1))
    emb = info.embeddings[0]
    table = np.arange(10, dtype=np.float32).reshape(5, 2)
    before = emb.read_table()
    with swapped_tables() as put:
        put(emb, "_embeddings", k3.Variable(table, trainable=False))
        np.testing.assert_array_equal(emb.read_table(), table)
    np.testing.assert_array_equal(emb.read_table(), before)
