"""The exporter, item by item of its issue, for Keras 3 and tf-keras."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from embed_runtime import contract
from exporters import ExportError, export_keras

pytestmark = pytest.mark.tf


def ops(path: Path) -> list[str]:
    return sorted(n.op_type for n in onnx.load(str(path)).graph.node)


def run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def io_dims(values) -> dict[str, list]:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


# 3. Minimal lookup -------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["k3", "tfk"])
def test_embedding_only_model_is_one_gather_plus_mask_ops(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    model = keras.Sequential([keras.layers.Embedding(1000, 64, mask_zero=True)])
    model.build((None, None))
    report = export_keras(model, tmp_path / "m.onnx")
    assert ops(tmp_path / "m.onnx") == ["Equal", "Gather", "Not"]
    assert report.node_count == 3
    assert report.rewrite_max_abs_diff == 0.0
    assert report.parity is not None and report.parity.worst == 0.0
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    gather = next(n for n in graph.node if n.op_type == "Gather")
    assert gather.input[1] == graph.input[0].name  # ids go straight into the lookup


def test_keras3_wrapping_arithmetic_is_removed_and_output_unchanged(k3, tmp_path):
    model = k3.Sequential([k3.Input((None,)), k3.layers.Embedding(300, 4)])  # float32 input: Keras casts
    report = export_keras(model, tmp_path / "m.onnx")
    assert ops(tmp_path / "m.onnx") == ["Gather"]
    ids = np.arange(300, dtype=np.int64).reshape(3, 100)
    np.testing.assert_array_equal(
        run(tmp_path / "m.onnx", {"input_ids": ids})[report.outputs[0][0]],
        model.layers[0].embeddings.numpy()[ids],
    )


def test_index_chain_that_is_not_identity_is_refused():
    from onnx import TensorProto, helper, numpy_helper

    from exporters.rewrite import collapse_index_chain

    table = numpy_helper.from_array(np.zeros((5, 2), np.float32), "table")
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ids", "one"], ["shifted"]),
            helper.make_node("Gather", ["table", "shifted"], ["out"], name="lookup"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[table, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(ExportError, match="maps id 0 to 1"):
        collapse_index_chain(model, model.graph.node[1], 5)
    assert model.graph.node[1].input[1] == "shifted"  # nothing rewritten


# 1. Flavours and model kinds ---------------------------------------------------------------------


def test_seed_example_tf_keras_keeps_input_length(tfk, tmp_path):
    model = tfk.Sequential()
    model.add(tfk.layers.Embedding(1000, 64, input_length=10))
    model.compile("rmsprop", "mse")
    ids = np.random.default_rng(0).integers(1000, size=(32, 10))
    expected = model.predict(ids, verbose=0)
    report = export_keras(model, tmp_path / "seed.onnx")
    graph = onnx.load(str(tmp_path / "seed.onnx")).graph
    assert io_dims(graph.input) == {"input_ids": ["batch", 10]}
    out = run(tmp_path / "seed.onnx", {"input_ids": ids})
    (name,) = out
    assert out[name].shape == (32, 10, 64)
    np.testing.assert_allclose(out[name], expected, atol=1e-6)
    assert report.flavour == "tf_keras"


@pytest.mark.parametrize("flavour", ["k3", "tfk"])
def test_functional_model_keeps_names_and_masked_lstm_matches(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(50, 8, mask_zero=True)(tokens)
    x = keras.layers.LSTM(4)(x)
    model = keras.Model(tokens, keras.layers.Dense(2, name="logits")(x))
    report = export_keras(model, tmp_path / "m.onnx")
    assert [n for n, _, _ in report.inputs] == ["tokens"]
    assert [n for n, _, _ in report.outputs] == ["logits", "mask"]
    assert report.inputs[0][1] == "int64"
    assert report.parity.worst <= 1e-5
    ids = np.array([[3, 4, 5, 0, 0], [7, 0, 0, 0, 0]], np.int64)
    out = run(tmp_path / "m.onnx", {"tokens": ids})
    np.testing.assert_allclose(out["logits"], np.asarray(model(ids)), atol=1e-5)
    np.testing.assert_array_equal(out["mask"], ids != 0)


@pytest.mark.parametrize("flavour", ["k3", "tfk"])
def test_subclassed_model(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)

    class Pooled(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Embedding(20, 4, mask_zero=True, name="words")
            self.pool = keras.layers.GlobalAveragePooling1D()

        def call(self, ids):
            return self.pool(self.embed(ids))

    model = Pooled()
    report = export_keras(model, tmp_path / "m.onnx")  # never called before: the exporter builds it
    assert [n for n, _, _ in report.inputs] == ["input_ids"]
    assert [n for n, _, _ in report.outputs] == ["output", "mask"]
    assert report.parity.worst <= 1e-6


@pytest.mark.parametrize(
    ("flavour", "kind"),
    [
        ("k3", "gap"),
        ("k3", "gru"),
        ("k3", "bidirectional"),
        ("tfk", "bidirectional"),
        ("tfk", "time_distributed"),
        ("k3", "time_distributed_fixed"),
    ],
)
def test_mask_consumers_match_keras_on_padded_input(flavour, kind, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    length = 6 if kind.endswith("fixed") else None
    ids_in = keras.Input((length,), dtype="int32", name="ids")
    x = keras.layers.Embedding(40, 6, mask_zero=True)(ids_in)
    if kind == "gap":
        x = keras.layers.GlobalAveragePooling1D()(x)
    elif kind == "gru":
        x = keras.layers.GRU(3)(x)
    elif kind == "bidirectional":
        x = keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True))(x)
    else:
        x = keras.layers.TimeDistributed(keras.layers.Dense(3))(x)
    model = keras.Model(ids_in, x)
    report = export_keras(model, tmp_path / "m.onnx")  # verification compares padded cases with Keras
    assert report.parity.worst <= 1e-5
    assert report.parity.cases >= 9
    if kind in ("bidirectional", "time_distributed"):  # the time axis is named even through RNN loops
        assert report.outputs[0][2][:2] == ["batch", "sequence"]


@pytest.mark.parametrize("then", ["", "gru"])
def test_keras3_time_distributed_over_a_dynamic_length(k3, then, tmp_path):
    """Keras 3 traces TimeDistributed over a dynamic length into a graph that maps its layer over the batch
    size instead of the time steps (so tf2onnx's graph had wrong shapes); the exporter traces it with the
    batch and time axes merged, and the graph matches Keras at lengths the parity check never ran."""
    ids_in = k3.Input((None,), dtype="int32")
    x = k3.layers.Embedding(40, 6, mask_zero=True)(ids_in)
    x = k3.layers.TimeDistributed(k3.layers.Dense(3))(x)
    if then:
        x = k3.layers.GRU(2, return_sequences=True)(x)  # consumes the mask TimeDistributed passes on
    model = k3.Model(ids_in, x)
    report = export_keras(model, tmp_path / "m.onnx")
    assert report.outputs[0][2] == ["batch", "sequence", 3 if not then else 2]
    rng = np.random.default_rng(0)
    for batch, length in [(3, 2), (1, 5), (4, 50)]:
        ids = rng.integers(0, 40, (batch, length))
        ids[:, -1] = 0  # padding at the end
        out = run(tmp_path / "m.onnx", {"input_ids": ids})[report.outputs[0][0]]
        np.testing.assert_allclose(out, np.asarray(model(ids)), atol=1e-6)


def test_reloaded_keras_file_and_tf_keras_formats(k3, tfk, tmp_path):
    model = k3.Sequential([k3.Input((None,), dtype="int32"), k3.layers.Embedding(30, 3, mask_zero=True)])
    model.save(tmp_path / "m.keras")
    assert export_keras(tmp_path / "m.keras", tmp_path / "a.onnx").node_count == 3
    legacy = tfk.Sequential([tfk.layers.Embedding(30, 3, input_length=5)])
    legacy.build((None, 5))
    legacy.save(tmp_path / "m.h5")
    legacy.save(tmp_path / "saved", save_format="tf")
    for source in ("m.h5", "saved"):
        report = export_keras(tmp_path / source, tmp_path / f"{source}.onnx")
        assert report.flavour == "tf_keras"
        assert report.inputs[0][2] == ["batch", 5]


# 2./4. Masks and names ---------------------------------------------------------------------------


def test_two_masked_layers_get_layer_named_masks_and_shared_layer(k3, tmp_path):
    a = k3.Input((None,), dtype="int32", name="query")
    b = k3.Input((None,), dtype="int32", name="title")
    qa = k3.layers.GlobalAveragePooling1D()(k3.layers.Embedding(30, 4, mask_zero=True, name="q_emb")(a))
    tb = k3.layers.GlobalAveragePooling1D()(k3.layers.Embedding(40, 4, mask_zero=True, name="t_emb")(b))
    model = k3.Model([a, b], k3.layers.Dot(axes=1, name="score")([qa, tb]))
    report = export_keras(model, tmp_path / "m.onnx")
    assert [n for n, _, _ in report.outputs] == ["score", "q_emb_mask", "t_emb_mask"]
    meta = json.loads(
        {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}[contract.KEY_EMBEDDINGS]
    )
    assert {(e["layer"], tuple(e["inputs"]), e["input_dim"]) for e in meta} == {
        ("q_emb", ("query",), 30),
        ("t_emb", ("title",), 40),
    }

    shared = k3.layers.Embedding(25, 4, name="shared")
    model = k3.Model([a, b], k3.layers.Dot(axes=2)([shared(a), shared(b)]))
    report = export_keras(model, tmp_path / "s.onnx")
    assert report.embeddings[0].inputs == ("query",) and report.embeddings[1].inputs == ("title",)


def test_automatic_input_names_become_input_ids(k3, tmp_path):
    i1, i2 = k3.Input((None,), dtype="int32"), k3.Input((None,), dtype="int32")
    e = k3.layers.Embedding(10, 2)
    model = k3.Model([i1, i2], k3.layers.Add()([e(i1), e(i2)]))
    report = export_keras(model, tmp_path / "m.onnx")
    assert [n for n, _, _ in report.inputs] == ["input_ids_0", "input_ids_1"]


# 5. Metadata, IR, opset --------------------------------------------------------------------------


def test_metadata_ir_and_lowest_opset(k3, tmp_path):
    model = k3.Sequential(
        [k3.Input((7,), dtype="int32"), k3.layers.Embedding(100, 5, mask_zero=True, name="tok")]
    )
    report = export_keras(model, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = contract.ModelMetadata.from_props(props)
    assert meta.embeddings == (
        contract.EmbeddingInfo("tok", ("input_ids",), 100, 5, True, 0, "mask", "float32", lookup_output="tok"),
    )
    assert set(contract.VERSION_KEYS) <= set(props)
    assert props[contract.KEY_KERAS_FLAVOUR] == "keras3"
    assert proto.ir_version <= contract.MAX_IR_VERSION
    from exporters.convert import OPSET_CANDIDATES

    assert report.opset == OPSET_CANDIDATES[0]  # an Embedding graph needs nothing newer
    assert io_dims(proto.graph.input) == {"input_ids": ["batch", 7]}
    assert io_dims(proto.graph.output) == {"tok": ["batch", 7, 5], "mask": ["batch", 7]}


# 7. Every argument of the seed -------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["k3", "tfk"])
def test_every_seed_argument_exports(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    layer = keras.layers.Embedding(
        60,
        1,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=3.0, seed=1),
        embeddings_regularizer=keras.regularizers.l2(1e-3),
        activity_regularizer=keras.regularizers.l1(1e-4),
        embeddings_constraint=keras.constraints.MaxNorm(1.0),
        mask_zero=True,
        **({"input_length": 8} if flavour == "tfk" else {}),
    )
    inputs = keras.Input((8,), dtype="int32")
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(layer(inputs))))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.integers(1, 60, (64, 8)), rng.normal(size=(64, 1)), epochs=1, verbose=0)
    assert np.abs(layer.embeddings.numpy()).max() <= 1.0 + 1e-6  # the max_norm constraint was applied
    report = export_keras(model, tmp_path / "m.onnx")
    assert report.embeddings[0].output_dim == 1 and report.embeddings[0].input_dim == 60
    assert report.parity.worst <= 1e-5
    assert report.inputs[0][2] == ["batch", 8]
    # regularizers and constraints are training-only: nothing of them in the graph
    assert set(report.op_counts) <= {
        "Gather",
        "Equal",
        "Not",
        "Cast",
        "ReduceSum",
        "Div",
        "MatMul",
        "Add",
        "Mul",
        "Unsqueeze",
        "Max",
        "Reshape",
        "Squeeze",
        "Identity",
    }


# 8. Clear errors, nothing half-written -----------------------------------------------------------


def test_errors_leave_nothing_behind(k3, tmp_path):
    with pytest.raises(ExportError, match="no such file"):
        export_keras(tmp_path / "missing.keras", tmp_path / "out.onnx")
    (tmp_path / "junk.keras").write_text("not a model")
    with pytest.raises(ExportError, match="could not load a Keras model"):
        export_keras(tmp_path / "junk.keras", tmp_path / "out.onnx")
    model = k3.Sequential([k3.Input((None,), dtype="int32"), k3.layers.Embedding(10, 2)])
    with pytest.raises(ExportError, match="opset 99"):
        export_keras(model, tmp_path / "out.onnx", opset=99)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.keras"]


@pytest.mark.parametrize("atol", [-1, float("nan"), float("inf"), True])
def test_atol_must_be_a_finite_number_at_least_zero(k3, tmp_path, atol):
    """A negative tolerance used to fail as "differs from Keras by 0 > tolerance -1"; NaN passed anything."""
    model = k3.Sequential([k3.Input((None,), dtype="int32"), k3.layers.Embedding(10, 2)])
    with pytest.raises(ExportError, match=r"atol must be a finite number >= 0, not"):
        export_keras(model, tmp_path / "m.onnx", atol=atol)
    assert list(tmp_path.iterdir()) == []


def test_cli_exit_codes(k3, tmp_path):
    model = k3.Sequential([k3.Input((None,), dtype="int32"), k3.layers.Embedding(10, 2, mask_zero=True)])
    model.save(tmp_path / "m.keras")
    ok = subprocess.run(
        [sys.executable, "-m", "exporters.cli", str(tmp_path / "m.keras"), "-o", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "Gather" in ok.stdout and "masks equal" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "exporters.cli", str(tmp_path / "nope.keras"), "-o", str(tmp_path / "x.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1
    assert "no such file" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_non_tensorflow_keras_backend_is_refused(k3, monkeypatch, tmp_path):
    """A Keras 3 model on JAX or torch cannot be traced by tf2onnx. Installing JAX for a test is too heavy,
    so the backend Keras reports is switched; the check reads exactly that."""
    model = k3.Sequential([k3.Input((None,), dtype="int32"), k3.layers.Embedding(10, 2)])
    monkeypatch.setattr(k3.backend, "backend", lambda: "jax")
    with pytest.raises(ExportError, match=r"'jax' backend.*KERAS_BACKEND=tensorflow"):
        export_keras(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_inputs_of_different_lengths_get_their_own_sequence_axis(k3, tmp_path):
    a = k3.Input((None,), dtype="int32", name="query")
    b = k3.Input((None,), dtype="int32", name="document")
    emb = k3.layers.Embedding(30, 4, mask_zero=True, name="words")
    pool = k3.layers.GlobalAveragePooling1D()
    model = k3.Model([a, b], k3.layers.Dot(axes=1, name="score")([pool(emb(a)), pool(emb(b))]))
    export_keras(model, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert io_dims(proto.graph.input) == {
        "query": ["batch", "query_sequence"],
        "document": ["batch", "document_sequence"],
    }
    assert io_dims(proto.graph.output)["words_query_mask"] == ["batch", "query_sequence"]
    q, d = np.array([[3, 4, 0]], np.int64), np.array([[5, 6, 7, 8, 0, 0]], np.int64)
    out = run(tmp_path / "m.onnx", {"query": q, "document": d})  # onnxruntime accepts different lengths
    np.testing.assert_allclose(out["score"], np.asarray(model([q, d])), atol=1e-5)
    np.testing.assert_array_equal(out["words_document_mask"], d != 0)


# Checks and report: one session per graph, sizes and hashes from the bytes written ---------------


@pytest.mark.parametrize(
    ("threshold", "sessions"),
    [(None, {"writer": 1, "rewrite check": 0}), (1024, {"writer": 1, "rewrite check": 1})],
)
def test_checks_share_the_writers_session_unless_tables_are_external(
    k3, tmp_path, monkeypatch, threshold, sessions
):
    """Inline, the writer's session is one of the graph in memory: parity and the rewrite check both run
    on it. With external data it reads the real tables while the rewrite check needs the stand-ins'
    graph: a second session. The report's size and sha256 are those of the file written."""
    import exporters.export as export_module
    import exporters.writers as writers

    made = dict.fromkeys(sessions, 0)

    def counting(key, real):
        def load(model):
            made[key] += 1
            return real(model)

        return load

    monkeypatch.setattr(writers, "load_rewritten", counting("writer", writers.load_rewritten))
    monkeypatch.setattr(
        export_module, "load_rewritten", counting("rewrite check", export_module.load_rewritten)
    )
    model = k3.Sequential([k3.Input((None,), dtype="int64"), k3.layers.Embedding(300, 4)])  # 4800 bytes
    report = export_keras(model, tmp_path / "m.onnx", external_data_threshold=threshold)
    assert made == sessions
    assert report.rewrite_max_abs_diff == 0.0 and (report.external_data is None) == (threshold is None)
    written = report.path.read_bytes()
    assert report.file_bytes == len(written) and report.sha256 == hashlib.sha256(written).hexdigest()
