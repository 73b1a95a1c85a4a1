"""String models: TextVectorization at the front, exported with a declared text spec, run on strings.

Parity is checked on text nobody here wrote (the docstrings of the Python standard library; the
multi-script text of Debian packages in test_text_corpus.py) and on a hand-made file
(tests/export/data/multiscript.txt) kept for what that package text lacks: the ASCII separators ``\\v``
and ``\\f``, U+0085 and U+2028 inside a line, en/em/ideographic spaces, a soft hyphen, combining marks
after ASCII letters, Unicode and full-width punctuation, a ligature and a title-case digraph. Ids must
equal Keras's, id for id, and outputs be within 1e-5. A hypothesis test compares the runtime's tokenizer
with TextVectorization on arbitrary unicode strings; test_text_oov.py covers several OOV ids.
"""

from __future__ import annotations

import importlib
import pydoc
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import embed_runtime
from embed_runtime.contract import KEY_TEXT, TextSpec
from embed_runtime.text import Tokenizer
from exporters import ExportError, export_keras, string_lookup

FLAVOURS = ["k3", "tfk"]
STDLIB = ("json", "os", "re", "collections", "functools", "itertools", "pathlib", "argparse", "typing", "csv")


def stdlib_lines() -> list[str]:
    """Non-empty docstring lines of some standard library modules and their public functions."""
    lines: list[str] = []
    for name in STDLIB:
        module = importlib.import_module(name)
        docs = [pydoc.getdoc(module)] + [pydoc.getdoc(getattr(module, a)) for a in sorted(dir(module))[:40]]
        lines += [line for doc in docs for line in doc.split("\n") if line.strip()]
    return lines


def multiscript_lines() -> list[str]:
    text = (Path(__file__).parent / "data" / "multiscript.txt").read_text(encoding="utf-8")
    return text.split("\n")[:-1]  # not splitlines(): the file has U+2028, U+0085, \v and \f inside lines


def keras_ids(layer, texts: list[str]) -> np.ndarray:
    """TextVectorization's ids; a batch of empty strings is (n, 0) in Keras and (n, 1) of padding here."""
    ids = np.asarray(layer(np.array([[t] for t in texts], dtype=object)))
    return ids if ids.shape[1] else np.zeros((len(texts), 1), dtype=ids.dtype)


def text_model(keras, corpus: list[str], **options):
    vectorize = keras.layers.TextVectorization(name="vectorize", **options)
    if "vocabulary" not in options:
        vectorize.adapt(corpus)
    size = vectorize.vocabulary_size()
    text = keras.Input(shape=(1,), dtype="string", name="text")
    x = keras.layers.Embedding(size, 8, mask_zero=True, name="embedding")(vectorize(text))
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(text, keras.layers.Dense(3, name="scores")(x))
    return model, vectorize


def check_parity(model, vectorize, path: Path, texts: list[str]) -> np.ndarray:
    """The runtime's ids and mask equal Keras's, its outputs within 1e-5; returns the ids."""
    rt = embed_runtime.load(path)
    ids, mask = rt.tokenize(texts)
    np.testing.assert_array_equal(ids, keras_ids(vectorize, texts))
    np.testing.assert_array_equal(mask, ids != 0)
    expected = np.asarray(model(np.array([[t] for t in texts], dtype=object)))
    got = rt.run(texts)["scores"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)  # NaN where Keras has NaN (0 / 0)
    return ids


OPTION_SETS = [
    ("lower_and_strip_punctuation", "whitespace", None),
    ("lower", "whitespace", 12),
    ("strip_punctuation", "whitespace", None),
    (None, "whitespace", 7),
    ("lower_and_strip_punctuation", "character", 40),
    ("lower", None, None),
]
"""(standardize, split, output_sequence_length) of the real-text parity tests."""


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(("standardize", "split", "length"), OPTION_SETS)
def test_export_matches_keras_on_real_text(flavour, standardize, split, length, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    corpus = stdlib_lines()
    model, vectorize = text_model(
        keras,
        corpus[::3],
        max_tokens=300,
        standardize=standardize,
        split=split,
        output_sequence_length=length,
    )
    path = tmp_path / "m.onnx"
    export_keras(model, path)
    rt = embed_runtime.load(path)
    spec = rt.text.tokenizers["text"].spec
    assert spec.vocabulary == tuple(vectorize.get_vocabulary())
    assert (spec.standardize, spec.split, spec.output_sequence_length) == (standardize, split, length)
    assert [i.name for i in rt.inputs] == ["text"]
    for texts in (corpus[:400], multiscript_lines(), ["", ""], ["a"]):
        check_parity(model, vectorize, path, texts)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_custom_vocabulary_sequential_and_pad_to_max_tokens(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    vocabulary = ["the", "cat", "sat", "Ünïcode", "дом", "日本"]
    vectorize = keras.layers.TextVectorization(
        max_tokens=12, vocabulary=vocabulary, pad_to_max_tokens=True, standardize=None, name="vectorize"
    )
    model = keras.Sequential(
        [
            keras.Input(shape=(1,), dtype="string"),
            vectorize,
            keras.layers.Embedding(12, 4, mask_zero=True),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(2, name="scores"),
        ]
    )
    path = tmp_path / "m.onnx"
    export_keras(model, path)
    texts = ["the cat sat", "Ünïcode дом 日本 the", "THE Cat", "", "unknown words here and there"]
    rt = embed_runtime.load(path)
    ids = rt.tokenize(texts)[0]
    np.testing.assert_array_equal(ids[:3, :3], [[2, 3, 4], [5, 6, 7], [1, 1, 0]])  # "", "[UNK]", then ours
    check_parity(model, vectorize, path, texts)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ngrams": 2}, r"ngrams=2 is not supported; supported values: None"),
        (
            {"standardize": lambda x: x},
            r"standardize='a function' is not supported; supported values: None, ",
        ),
        ({"split": lambda x: tf.strings.split(x)}, r"split='a function' is not supported"),
        ({"output_mode": "multi_hot"}, r"output_mode='multi_hot' is not supported; supported values: 'int'"),
    ],
)
def test_unsupported_options_name_layer_option_and_values(flavour, options, message, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    vectorize = keras.layers.TextVectorization(max_tokens=20, name="vectorize", **options)
    vectorize.adapt(["a b c", "b c d"])
    text = keras.Input(shape=(1,), dtype="string", name="text")
    x = vectorize(text)
    if options.get("output_mode", "int") == "int":
        x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(x))
    model = keras.Model(text, keras.layers.Dense(2)(x))
    with pytest.raises(ExportError, match=r"layer 'vectorize' \(TextVectorization\): " + message):
        export_keras(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mask_token", [None, ""])
def test_string_lookup_at_the_front(flavour, mask_token, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    lookup = keras.layers.StringLookup(
        vocabulary=["a", "b", "дом", "日本"], mask_token=mask_token, name="lookup"
    )
    tokens = keras.Input(shape=(3,), dtype="string", name="tokens")
    x = keras.layers.Embedding(lookup.vocabulary_size(), 4, mask_zero=mask_token is not None)(lookup(tokens))
    model = keras.Model(tokens, keras.layers.Dense(2, name="scores")(keras.layers.Flatten()(x)))
    path = tmp_path / "m.onnx"
    export_keras(model, path)
    rows = [["a", "b", "x"], ["дом", "日本", ""], ["A", "[UNK]", "b"]]
    rt = embed_runtime.load(path)
    np.testing.assert_array_equal(rt.tokenize(rows)[0], np.asarray(lookup(np.array(rows, dtype=object))))
    expected = np.asarray(model(np.array(rows, dtype=object)))
    np.testing.assert_allclose(rt.run(rows)["scores"], expected, rtol=0, atol=1e-5)
    ragged = [["a", "b"], ["a", "b", "c"]]
    if mask_token is None:  # no token to pad with
        with pytest.raises(embed_runtime.InvalidInputError, match="rows of tokens have lengths 2 and 3"):
            rt.run(ragged)
    else:  # padded with the mask token: what the padded rows give in Keras
        padded = np.array([["a", "b", mask_token], ["a", "b", "c"]], dtype=object)
        np.testing.assert_allclose(rt.run(ragged)["scores"], np.asarray(model(padded)), rtol=0, atol=1e-5)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_string_lookup_options_and_other_layers_are_refused(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    tokens = keras.Input(shape=(3,), dtype="string", name="tokens")
    lookup = keras.layers.StringLookup(vocabulary=["a", "b"], num_oov_indices=0, name="lookup")
    model = keras.Model(tokens, keras.layers.Embedding(5, 4)(lookup(tokens)))
    with pytest.raises(
        ExportError,
        match=r"'lookup' \(StringLookup\): num_oov_indices=0 is not supported; .* integers from 1",
    ):
        export_keras(model, tmp_path / "m.onnx")
    hashing = keras.layers.Hashing(num_bins=5, name="hashing")
    model = keras.Model(tokens, keras.layers.Embedding(5, 4)(hashing(tokens)))
    with pytest.raises(
        ExportError, match=r"'hashing' \(Hashing\) reads a string input; .* TextVectorization and"
    ):
        export_keras(model, tmp_path / "m.onnx")


def test_metadata_declares_the_spec(k3, tmp_path):
    model, _ = text_model(k3, ["a b c", "b c d"], output_sequence_length=4)
    path = tmp_path / "m.onnx"
    export_keras(model, path)
    rt = embed_runtime.load(path)
    assert KEY_TEXT in rt.metadata.raw
    spec = rt.text.tokenizers["text"].spec
    assert (spec.mask_token, spec.oov_token, spec.num_oov_indices) == ("", "[UNK]", 1)
    assert (spec.layer, spec.layer_class, spec.keras_flavour) == ("vectorize", "TextVectorization", "keras3")


ALPHABET = st.characters(codec="utf-8")
CONFIGS = [
    (standardize, split)
    for standardize in ("lower_and_strip_punctuation", "lower", "strip_punctuation", None)
    for split in ("whitespace", "character", None)
]


@pytest.fixture(scope="module")
def vectorizers(k3):
    """A TextVectorization per option pair, and the runtime's Tokenizer from the same vocabulary."""
    corpus = stdlib_lines()[:300] + multiscript_lines()
    pairs = []
    for standardize, split in CONFIGS:
        layer = k3.layers.TextVectorization(max_tokens=400, standardize=standardize, split=split)
        layer.adapt(corpus)
        spec = TextSpec(
            input="text", layer="v", layer_class="TextVectorization", standardize=standardize, split=split,
            vocabulary=tuple(layer.get_vocabulary()), oov_token="[UNK]", mask_token="", num_oov_indices=1,
            output_sequence_length=None, keras_flavour="keras3", keras_version=k3.__version__,
        )  # fmt: skip
        pairs.append((layer, Tokenizer(spec)))
    return pairs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(alphabet=ALPHABET, max_size=30), min_size=1, max_size=6))
def test_tokenizer_equals_text_vectorization_on_arbitrary_unicode(vectorizers, texts):
    for layer, tokenizer in vectorizers:
        np.testing.assert_array_equal(tokenizer(texts), keras_ids(layer, texts), err_msg=repr(texts))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_scalar_string_input(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=5, name="vectorize")
    vectorize.adapt(["a b c", "b c d"])
    text = keras.Input(shape=(), dtype="string", name="text")
    x = keras.layers.Embedding(20, 4, mask_zero=True)(vectorize(text))
    model = keras.Model(text, keras.layers.GlobalAveragePooling1D(name="pooled")(x))
    path = tmp_path / "m.onnx"
    export_keras(model, path)
    texts = ["a b", "d c b a", "e", ""]
    out = embed_runtime.load(path).run(texts)
    np.testing.assert_allclose(
        out["pooled"], np.asarray(model(np.array(texts, dtype=object))), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_text_vectorization_behind_another_layer_is_refused(flavour, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    vectorize = keras.layers.TextVectorization(max_tokens=20, name="vectorize")
    vectorize.adapt(["a b c"])
    text = keras.Input(shape=(1,), dtype="string", name="text")
    upper = keras.layers.Lambda(lambda s: tf.strings.upper(s), output_shape=(1,), name="upper")
    x = keras.layers.Embedding(20, 4)(vectorize(upper(text)))
    model = keras.Model(text, keras.layers.GlobalAveragePooling1D()(x))
    with pytest.raises(ExportError, match=r"layer 'upper' \(Lambda\) reads a string input; the supported"):
        export_keras(model, tmp_path / "m.onnx")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_integer_lookup_exports_in_graph_and_takes_raw_ids(flavour, request, tmp_path):
    """IntegerLookup used to be refused; it now runs in the graph (exporters/intlookup.py) and the runtime
    takes raw int64 ids, unknown, negative and extreme ones included, exactly as Keras maps them."""
    keras = request.getfixturevalue(flavour)
    lookup = keras.layers.IntegerLookup(vocabulary=[10, 20, 30], name="codes_lookup")
    codes = keras.Input(shape=(3,), dtype="int64", name="codes")
    model = keras.Model(codes, keras.layers.Embedding(4, 2)(lookup(codes)))
    report = export_keras(model, tmp_path / "m.onnx")
    assert report.embeddings[0].inputs == ()  # raw ids: no [0, input_dim) check on the input
    raw = np.array([[10, 20, 30], [0, -1, 31], [2**63 - 1, -(2**63), 20]], np.int64)
    got = embed_runtime.load(tmp_path / "m.onnx", providers="cpu").run(raw)
    np.testing.assert_allclose(next(iter(got.values())), np.asarray(model(raw)), atol=1e-6)


def test_saved_keras_file(k3, tmp_path):
    model, vectorize = text_model(k3, stdlib_lines()[:200], max_tokens=100)
    model.save(tmp_path / "text.keras")
    export_keras(tmp_path / "text.keras", tmp_path / "m.onnx")
    check_parity(model, vectorize, tmp_path / "m.onnx", multiscript_lines())


def lookup_pool_model(keras):
    """StringLookup (in the graph) -> Embedding(mask_zero) -> average -> Dense "scores", and the lookup."""
    lookup = keras.layers.StringLookup(vocabulary=["a", "b", "c", "é", "дом"], mask_token="", name="lookup")
    tokens = keras.Input(shape=(3,), dtype="string", name="tokens")
    x = keras.layers.Embedding(lookup.vocabulary_size(), 8, mask_zero=True)(lookup(tokens))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(3, name="scores")(x)), lookup


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("table_dtype", ["float16", "int8"])
@pytest.mark.parametrize("front", ["TextVectorization", "StringLookup"])
def test_compact_tables_pass_the_string_check(flavour, table_dtype, front, request, tmp_path):
    """The check on strings used to compare the graph with Keras holding the original float tables (the
    check on ids with the dequantized ones): every float16 or int8 string model failed at atol 1e-5."""
    keras = request.getfixturevalue(flavour)
    if front == "StringLookup":
        model, layer = lookup_pool_model(keras)
        inputs = [["a", "b", "zz"], ["дом", "é", ""], ["c", "", ""]]
    else:
        model, layer = text_model(keras, stdlib_lines()[:200], max_tokens=300)
        inputs = [[line] for line in multiscript_lines()]
    report = export_keras(model, tmp_path / "m.onnx", table_dtype=table_dtype)
    assert report.parity is not None and report.parity.exact_max_abs_diff <= 1e-5
    rt = embed_runtime.load(tmp_path / "m.onnx", providers="cpu")
    batch = np.array(inputs, dtype=object)
    rows = inputs if front == "StringLookup" else [line for (line,) in inputs]
    ids = np.asarray(layer(batch))
    np.testing.assert_array_equal(rt.tokenize(rows)[0][:, : ids.shape[1]], ids)
    np.testing.assert_allclose(rt.run(rows)["scores"], np.asarray(model(batch)), rtol=0, atol=5e-3)


def test_a_wrong_graph_fails_the_string_check(k3, monkeypatch, tmp_path):
    """Compared with Keras holding the dequantized tables, a graph that adds 1e-3 to its output (after
    the check on ids) is off by exactly 1e-3 on strings, and is not written."""
    model, _ = lookup_pool_model(k3)
    right = string_lookup.move_into_graph

    def shifted(state, front, spec):
        spec, masks = right(state, front, spec)
        graph = state.model.graph
        for node in graph.node:
            node.output[:] = ["scores/right" if name == "scores" else name for name in node.output]
        graph.initializer.append(numpy_helper.from_array(np.array(1e-3, np.float32), "shift"))
        graph.node.append(helper.make_node("Add", ["scores/right", "shift"], ["scores"]))
        return spec, masks

    monkeypatch.setattr(string_lookup, "move_into_graph", shifted)
    with pytest.raises(ExportError, match=r"output 'scores' on strings differs from Keras by 0\.001 \(atol"):
        export_keras(model, tmp_path / "m.onnx", table_dtype="int8")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("verify", [True, False])
def test_dict_outputs_keep_their_keys(flavour, verify, request, tmp_path):
    """A string model's dict outputs named unlike their layers: the id model used to take the outputs as a
    list, so the check on strings died with a KeyError, and without it the graph's outputs had the layer
    names."""
    keras = request.getfixturevalue(flavour)
    lookup = keras.layers.StringLookup(vocabulary=["a", "b", "c"], mask_token="", name="lookup")
    tokens = keras.Input(shape=(3,), dtype="string", name="tokens")
    ids = lookup(tokens)
    first = keras.layers.Embedding(5, 4, name="e1")(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(
        keras.layers.Embedding(6, 4, name="e2", mask_zero=True)(ids)
    )
    model = keras.Model(tokens, {"vectors": first, "pooled": pooled})
    export_keras(model, tmp_path / "m.onnx", verify=verify)
    rt = embed_runtime.load(tmp_path / "m.onnx", providers="cpu")
    assert sorted(o.name for o in rt.outputs) == ["mask", "pooled", "vectors"]
    rows = [["a", "zz", ""], ["c", "b", "a"]]
    expected, got = model(np.array(rows, dtype=object)), rt.run(rows)
    for key in ("vectors", "pooled"):
        np.testing.assert_allclose(got[key], np.asarray(expected[key]), rtol=0, atol=1e-5)
