"""Which text options run in the graph, on evidence, and parity of the ones that do.

Evidence (onnxruntime, against TensorFlow's own ops, which both Keras flavours run): ``StringNormalizer``
lowercases beyond ASCII where Keras's ``lower`` does not, and ``StringSplit`` with no delimiter splits on
spaces only where ``tf.strings.split`` splits on every ASCII whitespace: those options stay a declared
spec. ``StringLookup`` with one OOV id, and ``TextVectorization(standardize=None, split=None)``, are a
fixed token -> id map, which ``ai.onnx.ml`` ``LabelEncoder`` is exactly: they run in the graph, whose
input is then the string tensor. Parity is on real tokens in many scripts: the Python standard library's
docstrings, tests/export/data/multiscript.txt and the Debian corpus of test_text_corpus.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from test_text import FLAVOURS, multiscript_lines, stdlib_lines
from test_text_corpus import debian_corpus

import embed_runtime
from embed_runtime.contract import TextSpec
from embed_runtime.text import GraphStrings
from exporters import ExportError, export_keras, string_lookup

FIXTURES = Path(__file__).resolve().parents[1] / "runtime" / "data"


def _string_session(node: onnx.NodeProto, outputs: list[tuple[str, int]]) -> ort.InferenceSession:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info(name, kind, None) for name, kind in outputs],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_evidence_string_normalizer_lowercases_beyond_ascii():
    """Keras's ``lower`` is ``tf.strings.lower`` without ``encoding``: ASCII only. ``StringNormalizer``
    follows a C++ locale: with ``C.UTF-8`` it lowercases every script (its default, ``en_US.UTF-8``, does
    not even load where that locale is not installed), so ``lower`` stays declared."""
    node = helper.make_node("StringNormalizer", ["x"], ["y"], case_change_action="LOWER", locale="C.UTF-8")
    texts = ["ÀÉÎ Straße", "ΣΑΣ", "ПРИВЕТ", "ABC"]
    onnx_lower = _string_session(node, [("y", TensorProto.STRING)]).run(None, {"x": np.array(texts, object)})[
        0
    ]
    keras_lower = [t.decode() for t in tf.strings.lower(texts).numpy()]
    assert keras_lower == ["ÀÉÎ straße", "ΣΑΣ", "ПРИВЕТ", "abc"]
    assert onnx_lower.tolist() == ["àéî straße", "σασ", "привет", "abc"]


SEPARATORS = {"\t": False, "\n": False, "\v": False, "\f": False, "\r": False, " ": True}
"""ASCII whitespace: whether ``StringSplit`` splits on it as ``tf.strings.split`` does."""
NOT_SEPARATORS = ("\u00a0", "\u2003", "\u3000", "\u0085", "\u1680", "\x1c")
"""Unicode spaces that neither splits on."""


def test_evidence_string_split_is_not_keras_whitespace_split():
    """``StringSplit`` (opset 20) with no delimiter splits on runs of spaces only; ``tf.strings.split``
    (Keras's ``split="whitespace"``) on runs of ``[ \\t\\n\\v\\f\\r]``. Both keep Unicode spaces inside
    tokens. So ``whitespace`` stays declared."""
    session = _string_session(
        helper.make_node("StringSplit", ["x"], ["y", "n"]),
        [("y", TensorProto.STRING), ("n", TensorProto.INT64)],
    )
    for sep, same in [*SEPARATORS.items(), *((s, True) for s in NOT_SEPARATORS)]:
        text = f" a{sep}{sep}b "
        pieces, count = session.run(None, {"x": np.array([text], object)})
        onnx_tokens = pieces[0][: count[0]].tolist()
        keras_tokens = [t.decode() for t in tf.strings.split([text]).to_list()[0]]
        assert (onnx_tokens == keras_tokens) is same, (repr(sep), onnx_tokens, keras_tokens)


@pytest.fixture(scope="module")
def tokens() -> tuple[list[str], list[str]]:
    """(vocabulary, held-out tokens): whitespace tokens of real text in many scripts."""
    lines = [*stdlib_lines()[:400], *multiscript_lines()]
    with contextlib.suppress(pytest.skip.Exception):  # without the Debian packages: the other text only
        lines += debian_corpus()[::7]
    words = list(dict.fromkeys(t.decode() for line in lines for t in tf.strings.split([line]).to_list()[0]))
    return words[::2][:3000], words[1::2][:1500]


def lookup_model(keras, vocabulary: list[str], mask_token: str | None):
    lookup = keras.layers.StringLookup(vocabulary=vocabulary, mask_token=mask_token, name="lookup")
    rows = keras.Input(shape=(None,), dtype="string", name="tokens")
    x = keras.layers.Embedding(lookup.vocabulary_size(), 8, mask_zero=mask_token is not None)(lookup(rows))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(rows, keras.layers.Dense(3, name="scores")(x)), lookup


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("mask_token", [None, "", "[PAD]"])
def test_string_lookup_runs_in_the_graph_as_keras(flavour, mask_token, tokens, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    vocabulary, unseen = tokens
    model, lookup = lookup_model(keras, vocabulary, mask_token)
    report = export_keras(model, tmp_path / "m.onnx")
    assert report.embeddings[0].inputs == ()  # ids computed in the graph: no range check on strings
    rt = embed_runtime.load(tmp_path / "m.onnx", providers="cpu")
    assert rt.inputs[0].name == "tokens" and rt.inputs[0].dtype == object
    assert rt.text is not None and rt.text.tokenizers["tokens"].spec.in_graph
    pool = [*vocabulary[::3], *unseen, "", "[UNK]", mask_token or "x"]
    width = 16
    pool += [""] * (-len(pool) % width)
    rows = np.array(pool, dtype=object).reshape(-1, width)
    keras_ids = np.asarray(lookup(rows))
    ids, mask = rt.tokenize(rows)
    np.testing.assert_array_equal(ids, keras_ids)
    out = rt.run(rows)
    np.testing.assert_allclose(out["scores"], np.asarray(model(rows)), rtol=0, atol=1e-5)
    if mask_token is not None:
        np.testing.assert_array_equal(out["mask"], keras_ids != 0)
        np.testing.assert_array_equal(mask, keras_ids != 0)
    assert (keras_ids == (1 if mask_token is not None else 0)).sum() >= len(unseen)  # OOV tokens were hit


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("length", [None, 4])
def test_whole_text_vectorization_runs_in_the_graph_as_keras(flavour, length, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    lines = [*stdlib_lines()[:300], *multiscript_lines()]
    vectorize = keras.layers.TextVectorization(
        standardize=None, split=None, output_sequence_length=length, name="vectorize"
    )
    vectorize.adapt(lines[::2])
    text = keras.Input(shape=(1,), dtype="string", name="text")
    x = keras.layers.Embedding(vectorize.vocabulary_size(), 8, mask_zero=True)(vectorize(text))
    model = keras.Model(text, keras.layers.GlobalAveragePooling1D(name="pooled")(x))
    export_keras(model, tmp_path / "m.onnx")
    rt = embed_runtime.load(tmp_path / "m.onnx", providers="cpu")
    assert rt.inputs[0].dtype == object and rt.inputs[0].shape == (None, 1)
    texts = [*lines[:80], "", "[UNK]", "  "]
    batch = np.array([[t] for t in texts], dtype=object)
    keras_ids = np.asarray(vectorize(batch))
    out = rt.run(texts)
    np.testing.assert_array_equal(out["mask"], keras_ids != 0)
    np.testing.assert_array_equal(rt.tokenize(texts)[0], keras_ids)
    np.testing.assert_allclose(out["pooled"], np.asarray(model(batch)), rtol=0, atol=1e-5)


def test_other_options_stay_declared(k3, tmp_path):
    """Several OOV ids (FarmHash) and any standardize or split keep the id graph and the declared spec."""
    rows = k3.Input(shape=(None,), dtype="string", name="tokens")
    lookup = k3.layers.StringLookup(vocabulary=["a", "b"], num_oov_indices=2, name="lookup")
    model = k3.Model(rows, k3.layers.Embedding(lookup.vocabulary_size(), 4)(lookup(rows)))
    export_keras(model, tmp_path / "hashed.onnx")
    vectorize = k3.layers.TextVectorization(vocabulary=["a", "b"], name="vectorize")
    text = k3.Input(shape=(1,), dtype="string", name="text")
    model = k3.Model(text, k3.layers.Embedding(4, 4)(vectorize(text)))
    export_keras(model, tmp_path / "default.onnx")
    reasons = {
        "hashed": "several OOV ids hash tokens with FarmHash Fingerprint64, which no ONNX op computes",
        "default": "standardize and split have no exact standard ONNX op (see exporters.string_lookup)",
    }
    for name, reason in reasons.items():
        rt = embed_runtime.load(tmp_path / f"{name}.onnx", providers="cpu")
        assert rt.inputs[0].dtype == np.int64
        assert rt.text is not None
        spec = next(iter(rt.text.tokenizers.values())).spec
        assert not spec.in_graph and string_lookup.declared_reason(spec, None, []) == reason


def test_a_wrong_in_graph_lookup_fails_the_export(k3, monkeypatch, tmp_path):
    """The proof runs the lookup nodes against the layer: a mapping that swaps two ids is caught."""
    model, _ = lookup_model(k3, ["a", "b", "c"], "")
    right = string_lookup.mapping

    def swapped(spec):
        keys, values = right(spec)
        return keys, [*values[:-2], values[-1], values[-2]]

    monkeypatch.setattr(string_lookup, "mapping", swapped)
    with pytest.raises(
        ExportError, match=r"StringLookup 'lookup': the in-graph lookup gives \[4\] for token 'b'"
    ):
        export_keras(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def graph_lookups(k3):
    """(StringLookup, onnxruntime session of its in-graph lookup nodes) for each mask token."""
    vocabulary = ["a", "A", "é", "e\u0301", "дом", "日本", "🙂", " ", "\t", "a b", "[PAD]", "ß"]
    pairs = []
    for mask_token in (None, "", "[PAD]"):
        layer = k3.layers.StringLookup(
            vocabulary=[t for t in vocabulary if t != mask_token], mask_token=mask_token
        )
        spec = TextSpec(
            input="tokens", layer="lookup", layer_class="StringLookup", standardize=None, split=None,
            vocabulary=tuple(layer.get_vocabulary()), oov_token="[UNK]", mask_token=mask_token, num_oov_indices=1,
            output_sequence_length=None, keras_flavour="keras3", keras_version=k3.__version__, in_graph=True,
        )  # fmt: skip
        nodes, _ = string_lookup.lookup_nodes(spec, "tokens", "ids", 1)
        graph = helper.make_graph(
            nodes, "lookup", [helper.make_tensor_value_info("tokens", TensorProto.STRING, [None, None])],
            [helper.make_tensor_value_info("ids", TensorProto.INT64, None)],
        )  # fmt: skip
        opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)]
        model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
        pairs.append(
            (layer, spec, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]))
        )
    return pairs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tokens=st.lists(
        st.one_of(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=6),
            st.sampled_from(["a", "дом", "", "[UNK]"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_in_graph_lookup_equals_string_lookup_on_arbitrary_unicode(graph_lookups, tokens):
    for layer, spec, session in graph_lookups:
        strings = GraphStrings(spec)([tokens])
        ids = session.run(None, {"tokens": strings})[0]
        np.testing.assert_array_equal(
            ids, np.asarray(layer(np.array([tokens], dtype=object))), err_msg=repr(tokens)
        )


def test_in_graph_export_is_reproducible(k3, tmp_path):
    model, _ = lookup_model(k3, ["a", "b", "дом"], "")
    export_keras(model, tmp_path / "one.onnx")
    export_keras(model, tmp_path / "two.onnx")
    assert (tmp_path / "one.onnx").read_bytes() == (tmp_path / "two.onnx").read_bytes()


def test_committed_runtime_fixture_is_current(tmp_path):
    """tests/runtime/data/string_lookup.* are what their script builds today (rerun it when this fails)."""
    spec = importlib.util.spec_from_file_location("build_string_lookup", FIXTURES / "build_string_lookup.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(tmp_path)
    for name in ("string_lookup.onnx", "string_lookup.json"):
        assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes(), name
