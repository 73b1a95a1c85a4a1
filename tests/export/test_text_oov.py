"""Several OOV ids: ``StringLookup(num_oov_indices=n)`` spreads out-of-vocabulary tokens over n ids with
``tf.strings.to_hash_bucket_fast`` (FarmHash ``Fingerprint64`` modulo n) in both Keras flavours; the
runtime does the same with the ``cityhash`` package's ``farmhash.Fingerprint64`` (the ``text`` extra).

Checked here against TensorFlow and Keras themselves: the hash bit for bit on strings of every length
0..300 and beyond (ASCII, random bytes, multi-byte UTF-8), the exported model on standard-library
docstring tokens (mostly out of vocabulary) id for id and within 1e-5, and a hypothesis test on arbitrary
unicode tokens.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_text import FLAVOURS, stdlib_lines

import embed_runtime
from embed_runtime.contract import TextSpec
from embed_runtime.text import Tokenizer, fingerprint64
from exporters import ExportError, export_keras

OOV_COUNTS = [2, 3, 7]
WIDTH = 8


def hash_strings() -> list[bytes]:
    """Empty, every length 0..300 of ASCII, of random bytes and of multi-byte UTF-8, and long ones."""
    rng = random.Random(12)
    mixed = "aé日🙂\u0301Ж"
    strings = [b"", b"Hello", b"TensorFlow", b"2.x", b"[UNK]", "e\u0301".encode()]
    for n in range(301):
        strings.append(bytes(rng.randrange(32, 127) for _ in range(n)))
        strings.append(bytes(rng.randrange(256) for _ in range(n)))
        strings.append("".join(rng.choice(mixed) for _ in range(n)).encode("utf-8"))
    strings += [bytes(rng.randrange(256) for _ in range(rng.randrange(301, 5000))) for _ in range(200)]
    return strings


def test_fingerprint64_equals_tensorflow_bit_for_bit():
    """All 64 bits: TF's bucket modulo 2**62 gives the low 62 bits, modulo 5 the top two (2**62 is 4
    mod 5, so the four candidates differ mod 5)."""
    strings = hash_strings()
    fingerprint = fingerprint64(_spec(["[UNK]", "[UNK]"], 2, None))
    low = tf.strings.to_hash_bucket_fast(strings, 2**62).numpy().tolist()
    mod5 = tf.strings.to_hash_bucket_fast(strings, 5).numpy().tolist()
    full = [next(lo + k * 2**62 for k in range(4) if (lo + k * 2**62) % 5 == r) for lo, r in zip(low, mod5)]
    assert [fingerprint(s) for s in strings] == full
    for n in (*OOV_COUNTS, 1_000_003):
        buckets = tf.strings.to_hash_bucket_fast(strings, n).numpy().tolist()
        assert [fingerprint(s) % n for s in strings] == buckets
    assert len(strings) > 1100 and max(map(len, strings)) > 64


def _spec(vocabulary: list[str], n: int, mask_token: str | None) -> TextSpec:
    return TextSpec(
        input="tokens", layer="lookup", layer_class="StringLookup", standardize=None, split=None,
        vocabulary=tuple(vocabulary), oov_token="[UNK]", mask_token=mask_token, num_oov_indices=n,
        output_sequence_length=None, keras_flavour="keras3", keras_version="3",
    )  # fmt: skip


def docstring_tokens() -> tuple[list[str], list[str]]:
    """(vocabulary: the 150 commonest tokens of every other docstring line, rows of the tokens of the
    others: most of them out of that vocabulary)."""
    lines = stdlib_lines()
    vocabulary = [t for t, _ in Counter(t for line in lines[::2] for t in line.split()).most_common(150)]
    tokens = [*[t for line in lines[1::2] for t in line.split()][:4000], "", "[UNK]", "", "[UNK]"]
    tokens += [""] * (-len(tokens) % WIDTH)
    return vocabulary, tokens


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("n", OOV_COUNTS)
@pytest.mark.parametrize("mask_token", [None, ""])
def test_string_lookup_with_several_oov_ids_matches_keras(flavour, n, mask_token, request, tmp_path):
    keras = request.getfixturevalue(flavour)
    vocabulary, tokens = docstring_tokens()
    lookup = keras.layers.StringLookup(
        vocabulary=vocabulary, num_oov_indices=n, mask_token=mask_token, name="lookup"
    )
    inputs = keras.Input(shape=(WIDTH,), dtype="string", name="tokens")
    x = keras.layers.Embedding(lookup.vocabulary_size(), 4, mask_zero=mask_token is not None)(lookup(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="scores")(keras.layers.Flatten()(x)))
    path = tmp_path / "m.onnx"
    export_keras(model, path)
    rt = embed_runtime.load(path)
    spec = rt.text.tokenizers["tokens"].spec
    assert (spec.num_oov_indices, spec.vocabulary) == (n, tuple(lookup.get_vocabulary()))
    rows = np.array(tokens, dtype=object).reshape(-1, WIDTH)
    expected = np.asarray(lookup(rows))
    np.testing.assert_array_equal(rt.tokenize(rows.tolist())[0], expected)
    start = 0 if mask_token is None else 1
    oov = expected[(expected >= start) & (expected < start + n)]
    assert len(oov) > 2000 and set(oov.tolist()) == set(range(start, start + n))  # every OOV id is used
    got = rt.run(rows.tolist())["scores"]
    np.testing.assert_allclose(got, np.asarray(model(rows)), rtol=0, atol=1e-5)


def test_string_lookup_with_a_salt_is_refused(k3, tmp_path):
    """Keras 3's ``salt`` hashes with SipHash (``to_hash_bucket_strong``), which the runtime does not."""
    tokens = k3.Input(shape=(3,), dtype="string", name="tokens")
    lookup = k3.layers.StringLookup(vocabulary=["a", "b"], num_oov_indices=2, salt=7, name="lookup")
    model = k3.Model(tokens, k3.layers.Embedding(5, 4)(lookup(tokens)))
    with pytest.raises(
        ExportError, match=r"'lookup' \(StringLookup\): salt='a \w+' is not supported; supported values: None"
    ):
        export_keras(model, tmp_path / "m.onnx")


WORDS = ["the", "a", "дом", "日本", "[UNK]", "", "e\u0301", "🙂"]


@pytest.fixture(scope="module")
def hashed_lookups(k3, tfk):
    """A StringLookup per flavour, OOV count and mask token, and the runtime's Tokenizer of its spec."""
    pairs = []
    for keras in (k3, tfk):
        for n in OOV_COUNTS:
            for mask_token in (None, ""):
                words = [w for w in WORDS[:5] if w != mask_token]  # "[UNK]" also as a token of its own
                layer = keras.layers.StringLookup(vocabulary=words, num_oov_indices=n, mask_token=mask_token)
                pairs.append((layer, Tokenizer(_spec(layer.get_vocabulary(), n, mask_token))))
    return pairs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(WORDS),
                 min_size=3, max_size=3),
        min_size=1, max_size=6,
    )
)  # fmt: skip
def test_tokenizer_equals_string_lookup_with_several_oov_ids_on_arbitrary_unicode(hashed_lookups, rows):
    for layer, tokenizer in hashed_lookups:
        expected = np.asarray(layer(np.array(rows, dtype=object)))
        np.testing.assert_array_equal(tokenizer(rows), expected, err_msg=repr(rows))
