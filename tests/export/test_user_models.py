"""Models users bring that no reference model covers (issue 11), in both Keras flavours where they exist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from embed_runtime import contract
from exporters import ExportError, export_keras

pytestmark = pytest.mark.tf

FLAVOURS = ["k3", "tfk"]


def run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def embeddings_metadata(path: Path) -> set[tuple[str, tuple[str, ...], str | None]]:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return {
        (e["layer"], tuple(e["inputs"]), e["mask_output"]) for e in json.loads(props[contract.KEY_EMBEDDINGS])
    }


def pooled_classifier(keras, vocab: int = 50):
    """``Embedding(mask_zero) -> GlobalAveragePooling1D -> Dense``, trained one epoch with ``fit``."""
    ids = keras.Input((None,), dtype="int32", name="ids")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(vocab, 4, mask_zero=True)(ids))
    model = keras.Model(ids, keras.layers.Dense(1)(x))
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, vocab, (32, 6)), rng.normal(size=(32, 1)), epochs=1, verbose=0)
    return model


# 1. Exports are independent of what ran before ----------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_exports_in_one_process_are_independent(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    reports = [export_keras(pooled_classifier(keras), tmp_path / f"m{i}.onnx") for i in range(3)]
    for report in reports:
        assert [n for n, _, _ in report.outputs][1:] == ["mask"]
        assert [e.inputs for e in report.embeddings] == [("ids",)]
        assert report.parity is not None and report.parity.worst <= 1e-5


# 2. One shared Embedding and pooling on two inputs, cosine similarity -----------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_siamese_shared_embedding_and_pooling_with_normalized_dot(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    a = keras.Input((None,), dtype="int32", name="query")
    b = keras.Input((None,), dtype="int32", name="document")
    words = keras.layers.Embedding(30, 4, mask_zero=True, name="words")
    pool = keras.layers.GlobalAveragePooling1D()
    score = keras.layers.Dot(axes=1, normalize=True, name="score")([pool(words(a)), pool(words(b))])
    model = keras.Model([a, b], score)
    report = export_keras(model, tmp_path / "m.onnx")
    assert sorted(n for n, _, _ in report.outputs) == ["score", "words_document_mask", "words_query_mask"]
    assert embeddings_metadata(tmp_path / "m.onnx") == {
        ("words", ("query",), "words_query_mask"),
        ("words", ("document",), "words_document_mask"),
    }
    q, d = np.array([[3, 4, 0]], np.int64), np.array([[5, 6, 7, 8, 0, 0]], np.int64)
    out = run(tmp_path / "m.onnx", {"query": q, "document": d})
    np.testing.assert_allclose(out["score"], np.asarray(model([q, d])), atol=1e-6)
    np.testing.assert_array_equal(out["words_document_mask"], d != 0)


# 3. Tables are identified by the variable they come from, not by their values ---------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("init", ["ones", "zeros", "pretrained"])
def test_layers_with_equal_tables_are_told_apart(flavour, init, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    if init == "pretrained":
        matrix = np.random.default_rng(0).normal(size=(30, 4)).astype("float32")
        init = keras.initializers.Constant(matrix)
    a = keras.Input((None,), dtype="int32", name="a")
    b = keras.Input((None,), dtype="int32", name="b")
    query = keras.layers.Embedding(30, 4, mask_zero=True, name="query", embeddings_initializer=init)
    doc = keras.layers.Embedding(30, 4, name="doc", embeddings_initializer=init)
    pool = keras.layers.GlobalAveragePooling1D()
    model = keras.Model([a, b], keras.layers.Dot(axes=1, name="score")([pool(query(a)), pool(doc(b))]))
    report = export_keras(model, tmp_path / "m.onnx")
    assert [n for n, _, _ in report.outputs] == ["score", "mask"]  # only `query` on `a` is masked
    assert embeddings_metadata(tmp_path / "m.onnx") == {("query", ("a",), "mask"), ("doc", ("b",), None)}
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    gathers = {n.input[0]: n.input[1] for n in graph.node if n.op_type == "Gather"}
    assert gathers == {"query.embeddings": "a", "doc.embeddings": "b"}  # each layer its own table


def test_lookup_check_refuses_masks_and_metadata_keras_does_not_have():
    """The export-time check compares mask outputs and metadata with the lookups Keras really makes:
    the old value-matched export of two equal tables (a mask for ``b``, both layers on both inputs) fails."""
    from embed_runtime.contract import EmbeddingInfo
    from exporters.keras_model import EmbeddingLayer
    from exporters.lookups import MaskSource, check_lookups, match_inputs

    class Layer:
        def __init__(self, name: str) -> None:
            self.name = name

    query = EmbeddingLayer(Layer("query"), "query", 30, 4, True, (30, 4), "float32")
    doc = EmbeddingLayer(Layer("doc"), "doc", 30, 4, False, (30, 4), "float32")
    feeds = {"a": np.array([[1, 2, 0]]), "b": np.array([[3, 4, 5]])}
    calls = [(query, feeds["a"].astype(np.int32)), (doc, feeds["b"].astype(np.int32))]
    lookups = match_inputs(calls, feeds)  # Keras casts the ids to int32: equal values still match
    assert [sorted(lookup.inputs) for lookup in lookups] == [["a"], ["b"]]

    def info(layer: str, source: str, mask: str | None) -> EmbeddingInfo:
        return EmbeddingInfo(layer, (source,), 30, 4, mask is not None, 0 if mask else None, mask)

    good_masks = [MaskSource("mask", query, "a")]
    good_infos = [info("query", "a", "mask"), info("doc", "b", None)]
    check_lookups(lookups, good_masks, good_infos, "case")  # what Keras does: passes
    with pytest.raises(ExportError, match="masks input 'b', but Keras's Embedding 'query' does not read"):
        check_lookups(lookups, [*good_masks, MaskSource("query_b_mask", query, "b")], good_infos, "case")
    with pytest.raises(ExportError, match="metadata says Embedding 'query' reads input 'b'"):
        check_lookups(lookups, good_masks, [*good_infos, info("query", "b", None)], "case")
    with pytest.raises(ExportError, match="no mask output"):
        check_lookups(lookups, [], good_infos, "case")
    shared = match_inputs([*calls, (doc, feeds["a"])], feeds)  # `doc` reads both inputs
    with pytest.raises(ExportError, match="'doc' reads input 'b', but the metadata does not say so"):
        check_lookups(shared, good_masks, [good_infos[0], info("doc", "a", None)], "case")


# 5. Masks of ids computed in the model ------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_mask_of_ids_computed_in_the_model(flavour, request, tmp_path):
    """The Embedding reads a slice of the input: Keras masks the ids it receives, and so does the graph."""
    keras = request.getfixturevalue(flavour)
    ids = keras.Input((None,), dtype="int32", name="ids")
    tail = keras.layers.Lambda(lambda t: t[:, 1:], name="drop_first")(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(30, 4, mask_zero=True, name="tok")(tail)
    )
    model = keras.Model(ids, keras.layers.Dense(2, name="out")(pooled))
    report = export_keras(model, tmp_path / "m.onnx")
    assert [n for n, _, _ in report.outputs] == ["out", "mask"]
    assert embeddings_metadata(tmp_path / "m.onnx") == {("tok", (), "mask")}  # no input is range-checked
    feed = np.array([[5, 3, 4, 0, 0], [0, 7, 0, 9, 9]], np.int64)
    out = run(tmp_path / "m.onnx", {"ids": feed})
    np.testing.assert_array_equal(out["mask"], feed[:, 1:] != 0)
    np.testing.assert_allclose(out["out"], np.asarray(model(feed)), atol=1e-6)


# What identifying tables by tracers must keep working ---------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_tied_output_projection_reads_the_real_table(flavour, request, tmp_path):
    """A layer reusing the table as an output projection: tf2onnx folds a transposed copy of it, which
    must hold the real values (not the tracer's sentinel)."""
    keras = request.getfixturevalue(flavour)
    import tensorflow as tf

    class Tied(keras.layers.Layer):
        def __init__(self, embedding, **kwargs):
            super().__init__(**kwargs)
            self.embedding = embedding

        def call(self, x):
            return tf.matmul(x, self.embedding.embeddings, transpose_b=True)

    ids = keras.Input((None,), dtype="int32")
    embedding = keras.layers.Embedding(30, 4)
    model = keras.Model(ids, Tied(embedding, name="logits")(embedding(ids)))
    report = export_keras(model, tmp_path / "m.onnx")
    assert report.parity is not None and report.parity.worst <= 1e-6
    for init in onnx.load(str(tmp_path / "m.onnx")).graph.initializer:
        assert np.isfinite(onnx.numpy_helper.to_array(init)).all()
        assert not (np.abs(onnx.numpy_helper.to_array(init)) > 1e30).any()


@pytest.mark.parametrize("variant", ["lora", "int8"])
def test_keras3_lora_and_quantized_tables(variant, k3, tmp_path):
    ids = k3.Input((None,), dtype="int32")
    embedding = k3.layers.Embedding(30, 4, mask_zero=True, name="tok")
    model = k3.Model(ids, k3.layers.GlobalAveragePooling1D()(embedding(ids)))
    if variant == "lora":
        embedding.enable_lora(2)
        embedding.lora_embeddings_b.assign(np.random.default_rng(0).normal(size=(2, 4)))
    else:
        embedding.quantize("int8")
    report = export_keras(model, tmp_path / "m.onnx")
    assert report.parity is not None and report.parity.worst <= 1e-5
    assert [e.inputs for e in report.embeddings] == [("input_ids",)]


# Layers the exporter cannot handle: a clear ExportError, never a Keras or TensorFlow traceback -------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_layer_failing_on_the_exporters_ids_is_named(flavour, request, tmp_path):
    """The exporter calls the model once on padding ids; a layer that refuses them is named."""
    keras = request.getfixturevalue(flavour)
    import tensorflow as tf

    class NoPadding(keras.layers.Layer):
        def call(self, x):
            tf.debugging.assert_positive(x, message="ids must be positive")
            return x

    ids = keras.Input((None,), dtype="int64", name="ids")
    model = keras.Model(ids, keras.layers.Embedding(20, 4)(NoPadding(name="strict")(ids)))
    with pytest.raises(ExportError, match=r"failed in layer 'strict' \(NoPadding\): InvalidArgumentError"):
        export_keras(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_input_named_like_the_mask_output_is_refused_clearly(flavour, request, tmp_path):
    """The contract names the one mask output ``mask``; an input of that name collided inside onnxruntime
    ("Duplicate definition of name (mask)") before (issue 16)."""
    keras = request.getfixturevalue(flavour)
    ids = keras.Input((None,), dtype="int32", name="mask")
    x = keras.layers.Embedding(20, 4, mask_zero=True, name="tok")(ids)
    model = keras.Model(ids, keras.layers.GlobalAveragePooling1D()(x))
    with pytest.raises(
        ExportError, match=r"'tok' is named 'mask' .* already has an input of that name; rename"
    ):
        export_keras(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_model_with_non_finite_weights_is_refused(flavour, request, tmp_path):
    """A diverged model gives NaN everywhere in Keras and in ONNX alike; parity "0" must not pass it."""
    keras = request.getfixturevalue(flavour)
    ids = keras.Input((None,), dtype="int64", name="ids")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4, mask_zero=True)(ids))
    dense = keras.layers.Dense(1)
    model = keras.Model(ids, dense(pooled))
    kernel, bias = dense.get_weights()
    dense.set_weights([np.full_like(kernel, np.nan), bias])
    with pytest.raises(ExportError, match=r"Keras itself gives no finite value of output .*did training diverge"):
        export_keras(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
