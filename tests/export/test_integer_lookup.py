"""IntegerLookup at the front, in the graph: raw integer ids in, Keras's lookup reproduced exactly."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import embed_runtime
from exporters import ExportError, export_keras
from exporters.intlookup import check_raw_ids, in_graph

FLAVOURS = ["k3", "tfk"]
BIG = np.iinfo(np.int64)
OPTIONS = [
    {"vocabulary": [10, 20, 30]},
    {"vocabulary": [7, -3, 1000, 42], "mask_token": 0},
    {"vocabulary": [5, 6, 9], "mask_token": -7, "oov_token": 99},
]


def lookup_model(keras, dtype: str = "int64", **options):
    lookup = keras.layers.IntegerLookup(name="codes_lookup", **options)
    codes = keras.Input(shape=(4,), dtype=dtype, name="codes")
    size = lookup.vocabulary_size()
    x = keras.layers.Embedding(size, 3, mask_zero="mask_token" in options, name="embedding")(lookup(codes))
    model = keras.Model(codes, keras.layers.Dense(2, name="scores")(keras.layers.GlobalAveragePooling1D()(x)))
    return model, lookup


def raw_ids(lookup, dtype=np.int64) -> np.ndarray:
    """Members, the mask and OOV tokens, unknown, negative and extreme ids, four to a row."""
    tokens = [int(t) for t in lookup.get_vocabulary(include_special_tokens=True)]
    info = np.iinfo(dtype)
    ids = [*tokens, 0, 1, -1, 11, -3, 31, 999_999, info.max, info.min, info.max - 1, info.min + 1]
    ids += [tokens[-1]] * (-len(ids) % 4)
    return np.asarray(ids, dtype=dtype).reshape(-1, 4)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("options", OPTIONS)
def test_in_graph_lookup_equals_keras_on_raw_ids(flavour, options, request):
    keras = request.getfixturevalue(flavour)
    model, lookup = lookup_model(keras, **options)
    replaced = in_graph(model)
    ids = raw_ids(lookup)
    new = replaced.get_layer("codes_lookup")
    assert type(new).__name__ == "InGraphIntegerLookup"
    np.testing.assert_array_equal(np.asarray(new(ids)), np.asarray(lookup(ids)))
    check_raw_ids(model, replaced, ids, atol=0.0)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_known_indices(flavour, request):
    keras = request.getfixturevalue(flavour)
    model, _ = lookup_model(keras, vocabulary=[10, 20, 30], mask_token=0)
    ids = np.array([[0, 10, 30, 20], [-1, 11, BIG.max, BIG.min]])
    got = np.asarray(in_graph(model).get_layer("codes_lookup")(ids))
    np.testing.assert_array_equal(got, [[0, 2, 4, 3], [1, 1, 1, 1]])  # mask 0, OOV 1, vocabulary from 2


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("options", OPTIONS)
def test_export_runs_raw_ids(flavour, options, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    model, lookup = lookup_model(keras, **options)
    report = export_keras(in_graph(model), tmp_path / "m.onnx")
    assert report.embeddings[0].inputs == ()  # raw ids: no [0, input_dim) range check on the input
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    ids = raw_ids(lookup)
    got = session.run(["scores"], {"codes": ids})[0]
    np.testing.assert_allclose(got, np.asarray(model(ids)), atol=1e-5)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_int32_input(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    model, lookup = lookup_model(keras, dtype="int32", vocabulary=[3, 1, 2], mask_token=0)
    ids = raw_ids(lookup, np.int32)
    np.testing.assert_array_equal(
        np.asarray(in_graph(model).get_layer("codes_lookup")(ids)), np.asarray(lookup(ids))
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_oov_indices": 2}, r"num_oov_indices=2 is not supported; supported values: 1"),
        ({"num_oov_indices": 0}, r"num_oov_indices=0 is not supported; supported values: 1"),
        ({"invert": True}, r"invert=True is not supported; supported values: False"),
    ],
)
def test_unsupported_options_are_refused(flavour, options, message, request):
    keras = request.getfixturevalue(flavour)
    lookup = keras.layers.IntegerLookup(vocabulary=[10, 20, 30], name="codes_lookup", **options)
    codes = keras.Input(shape=(3,), dtype="int64", name="codes")
    model = keras.Model(codes, lookup(codes))
    with pytest.raises(ExportError, match=r"layer 'codes_lookup' \(IntegerLookup\): " + message):
        in_graph(model)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_nested_integer_lookup_is_refused_saying_where_it_sits(flavour, request, tmp_path):
    """It used to say IntegerLookup "is not supported yet", though a top-level one is put in the graph."""
    keras = request.getfixturevalue(flavour)
    inner, _ = lookup_model(keras, vocabulary=[10, 20, 30])
    codes = keras.Input(shape=(4,), dtype="int64", name="outer_codes")
    model = keras.Model(codes, inner(codes))
    with pytest.raises(ExportError, match=r"layer 'codes_lookup' \(IntegerLookup\) sits inside a nested model"):
        export_keras(model, tmp_path / "m.onnx")


def test_too_wide_a_vocabulary_is_refused(k3):
    model, _ = lookup_model(k3, vocabulary=[-(10**12), 10**12])
    with pytest.raises(ExportError, match=r"spans ids -1000000000000\.\.1000000000000"):
        in_graph(model)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_sequential_runs_in_embed_runtime_with_mask(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    lookup = keras.layers.IntegerLookup(vocabulary=[4, 8], mask_token=0)
    model = keras.Sequential(
        [keras.Input(shape=(3,), dtype="int64"), lookup, keras.layers.Embedding(4, 2, mask_zero=True, name="embedding")]
    )
    export_keras(in_graph(model), tmp_path / "m.onnx")
    ids = np.array([[0, 4, 8], [-5, 2**62, 0]])
    out = embed_runtime.load(tmp_path / "m.onnx").run(ids)
    np.testing.assert_allclose(out["embedding"], np.asarray(model(ids)), atol=1e-6)
    np.testing.assert_array_equal(out["mask"], ids != 0)  # only the mask token is padding
