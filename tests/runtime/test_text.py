"""The declared text front end without TensorFlow: a spec written by hand, Keras's rules as expectations.

The expected ids follow TextVectorization's documented behaviour (ASCII-only ``tf.strings.lower``,
``DEFAULT_STRIP_REGEX``, ``tf.strings.split`` on ASCII whitespace); tests/export/test_text.py checks the
same rules against Keras itself.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

import embed_runtime
from embed_runtime import InputTypeError, InvalidInputError, ModelLoadError, cli, conversion
from embed_runtime.contract import KEY_TEXT, TextSpec, text_props, text_specs
from embed_runtime.text import GraphStrings, TextFrontEnd, Tokenizer, fingerprint64

from .conftest import Built, build_model

VOCABULARY = ("", "[UNK]", "the", "cat", "sat", "école", "dont", "日", "本", "é", "\u0301", "the cat")
THE, CAT, SAT, ECOLE, DONT = 2, 3, 4, 5, 6

SPEC = TextSpec(
    input="text",
    layer="vectorize",
    layer_class="TextVectorization",
    standardize="lower_and_strip_punctuation",
    split="whitespace",
    vocabulary=VOCABULARY,
    oov_token="[UNK]",
    mask_token="",
    num_oov_indices=1,
    output_sequence_length=None,
    keras_flavour="keras3",
    keras_version="3.0.0",
)


def ids(texts: object, **changes: object) -> list[list[int]]:
    return Tokenizer(replace(SPEC, **changes))(texts).tolist()


def test_default_standardize_and_whitespace_split() -> None:
    assert ids(["The CAT, sat!", "the"]) == [[THE, CAT, SAT], [THE, 0, 0]]
    assert ids(["  the\tcat\n\x0b\x0c\rsat  "]) == [[THE, CAT, SAT]]
    assert ids(["don't", "«the»", "(the)"]) == [[DONT], [1], [THE]]  # only ASCII punctuation goes


def test_lower_is_ascii_only_as_in_keras() -> None:
    # tf.strings.lower without encoding= leaves non-ASCII letters alone: "ÉCOLE" -> "École", not "école"
    assert ids(["ÉCOLE école École"]) == [[1, ECOLE, 1]]
    assert ids(["ÉCOLE"], standardize=None) == [[1]]


def test_unicode_spaces_are_not_separators() -> None:
    assert ids(["the\u00a0cat", "the\u3000cat", "the\x1ccat", "the\u2003cat"]) == [[1], [1], [1], [1]]


def test_character_split_is_per_code_point() -> None:
    assert ids(["日本", "e\u0301", "é"], split="character", standardize=None) == [
        [7, 8],
        [1, 10],  # "e" is not in the vocabulary; the combining accent is its own token
        [9, 0],
    ]


def test_split_none_takes_the_whole_text() -> None:
    assert ids(["the cat", "", "The Cat!"], split=None) == [[11], [0], [11]]


def test_output_sequence_length_pads_and_truncates() -> None:
    assert ids(["the cat sat the", "cat"], output_sequence_length=2) == [[THE, CAT], [CAT, 0]]


def test_empty_strings_give_padding_rows() -> None:
    assert ids(["", "the"]) == [[0], [THE]]
    assert ids(["", "  \t "]) == [[0], [0]]  # at least one column, for graphs that cannot run on length 0


def test_numpy_arrays_of_str_bytes_object() -> None:
    expected = [[THE, CAT], [SAT, 0]]
    assert ids(np.array(["the cat", "sat"])) == expected
    assert ids(np.array([b"the cat", b"sat"])) == expected
    assert ids(np.array(["the cat", b"sat"], dtype=object)) == expected
    assert ids(np.array([["the cat"], ["sat"]])) == expected
    assert ids(("the cat", "sat")) == expected
    assert ids([b"the cat", "sat"]) == expected


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        (["the", b"\xff\xfe"], InvalidInputError, r"input 'text' text \[1\] is not UTF-8"),
        (["the", "\ud800"], InvalidInputError, r"input 'text' text \[1\] is not valid unicode"),
        (["the", None], InputTypeError, r"input 'text' text \[1\] is NoneType"),
        (["the", ["cat"]], InputTypeError, r"input 'text' text \[1\] is list"),
        (["the", 3], InputTypeError, r"input 'text' text \[1\] is int"),
        ("the cat", InputTypeError, r"input 'text' takes a batch of texts: pass \['the cat'\]"),
        (np.array([[["a"]]]), InvalidInputError, r"input 'text': texts have shape \(1, 1, 1\)"),
        (7, InputTypeError, r"input 'text': expected a list of texts, found int"),
    ],
)
def test_bad_text_is_named(texts: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ids(texts)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"standardize": "upper"}, "standardize 'upper' is not one of"),
        ({"split": "word"}, "split 'word' is not one of"),
        ({"num_oov_indices": 0}, "num_oov_indices must be an integer >= 1, found 0"),
        ({"num_oov_indices": True}, "num_oov_indices must be an integer >= 1, found True"),
        (
            {"num_oov_indices": 2},
            r"oov_token '\[UNK\]' must be the vocabulary's tokens 1 to 2 \(num_oov_indices=2\)",
        ),
        ({"oov_token": "<oov>"}, "oov_token '<oov>' must be the vocabulary's tokens 1 to 1"),
        ({"mask_token": "the"}, "mask_token 'the' must be the vocabulary's first token"),
        ({"vocabulary": ("", "[UNK]", "a", "a")}, "the vocabulary repeats a token"),
        ({"output_sequence_length": 0}, "output_sequence_length must be an integer >= 1"),
    ],
)
def test_spec_validation(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(SPEC, **change)


def test_spec_round_trip_and_malformed_json() -> None:
    assert text_specs(text_props([SPEC])) == {"text": SPEC}
    assert text_specs({}) == {}
    with pytest.raises(ValueError, match="lacks the key 'split'"):
        text_specs(
            {KEY_TEXT: json.dumps({"text": {k: v for k, v in SPEC.to_dict().items() if k != "split"}})}
        )
    with pytest.raises(ValueError, match="'vocabulary' must be a list of strings"):
        text_specs({KEY_TEXT: json.dumps({"text": {**SPEC.to_dict(), "vocabulary": [1, 2]}})})
    with pytest.raises(ValueError, match="entry 'other' declares another input"):
        text_specs({KEY_TEXT: json.dumps({"other": SPEC.to_dict()})})
    with pytest.raises(ValueError, match="is not valid JSON"):
        text_specs({KEY_TEXT: "{"})


def with_text(built: Built, path: Path, props: dict[str, str]) -> Built:
    model = onnx.load(str(built.path))
    old = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    helper.set_model_props(model, {**old, **props})
    onnx.save(model, str(path))
    return Built(path, built.tables)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("text")
    built = build_model(root / "ids.onnx", [("text", len(VOCABULARY), None)])
    return with_text(built, root / "text.onnx", text_props([SPEC]))


def test_run_on_strings(text_model: Built) -> None:
    rt = embed_runtime.load(text_model.path)
    table = text_model.tables["text"]
    expected_ids = np.array([[THE, CAT, SAT], [1, 1, 0]])
    for texts in (
        ["the cat sat", "a dog"],
        np.array(["the cat sat", "a dog"]),
        {"text": ["the cat sat", "a dog"]},
    ):
        out = rt.run(texts)
        np.testing.assert_array_equal(out["emb"], table[expected_ids])
        np.testing.assert_array_equal(out["mask"], expected_ids != 0)
    tokens, mask = rt.tokenize(["the cat sat", "a dog"])
    np.testing.assert_array_equal(tokens, expected_ids)
    np.testing.assert_array_equal(mask, expected_ids != 0)
    np.testing.assert_array_equal(rt.run([[THE, CAT]])["emb"], table[[[THE, CAT]]])  # ids still work
    np.testing.assert_array_equal(rt.run([""])["mask"], [[False]])
    with pytest.raises(InputTypeError, match=r"input 'text' text \[1\] is NoneType"):
        rt.run(["the", None])
    assert rt.run(["cat"])["emb"].shape == (1, 1, 4)  # the session is still usable


def test_empty_batches_of_texts_have_one_shape(text_model: Built) -> None:
    """Found by a user test: an empty object array was refused as "ids must be integers", and ``[]`` gave
    a (0, 0) mask where an empty str array gave (0, 1)."""
    rt = embed_runtime.load(text_model.path)
    for empty in ([], np.array([], dtype=object), np.array([], dtype=str), np.array([], dtype=bytes)):
        out = rt.run(empty)
        assert out["emb"].shape == (0, 1, 4) and out["mask"].shape == (0, 1), type(empty)


def test_tokenize_dict_and_errors(text_model: Built, models: dict[str, Built]) -> None:
    rt = embed_runtime.load(text_model.path)
    tokens, mask = rt.tokenize({"text": ["cat"]})
    assert tokens["text"].tolist() == [[CAT]] and mask["text"].tolist() == [[True]]
    with pytest.raises(InvalidInputError, match="'other' is not a text input; the text inputs are text"):
        rt.tokenize({"other": ["cat"]})
    with pytest.raises(InvalidInputError, match="takes ids, not text"):
        embed_runtime.load(models["single"].path).tokenize(["cat"])


def test_malformed_or_misplaced_spec_is_refused_at_load(models: dict[str, Built], tmp_path: Path) -> None:
    bad = with_text(models["single"], tmp_path / "bad.onnx", {KEY_TEXT: "[1]"})
    with pytest.raises(ModelLoadError, match="must be a JSON object keyed by input name"):
        embed_runtime.load(bad.path)
    elsewhere = with_text(models["single"], tmp_path / "elsewhere.onnx", text_props([SPEC]))
    with pytest.raises(ModelLoadError, match=r"text spec for input\(s\) 'text', but the graph's inputs are"):
        embed_runtime.load(elsewhere.path)


def test_cli_run_text(text_model: Built, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli.main(["run", str(text_model.path), "--text", "the cat", "--text", "sat", "--providers", "cpu"])
        == 0
    )
    out = capsys.readouterr().out
    assert "mask: bool(2, 2)" in out and "[[ True  True]\n [ True False]]" in out


def test_cli_text_that_is_not_utf8_says_so(text_model: Built, capsys: pytest.CaptureFixture[str]) -> None:
    """A --text argument that is not UTF-8 (Python hands it over with surrogateescape) is reported as the
    bytes the user gave, as the API reports bytes, not as a surrogate."""
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # what os.fsdecode makes of Latin-1 "café"
    assert cli.main(["run", str(text_model.path), "--text", bad, "--providers", "cpu"]) != 0
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "surrogates" not in err, err


def test_string_lookup_rows_of_tokens() -> None:
    lookup = replace(SPEC, layer_class="StringLookup", standardize=None, split=None, mask_token=None,
                     vocabulary=("[UNK]", "the", "The", "cat"))  # fmt: skip
    tokenizer = Tokenizer(lookup)
    assert tokenizer([["the", "The", "x"], ["cat", "", "the"]]).tolist() == [[1, 2, 0], [3, 0, 1]]
    assert tokenizer(np.array([["cat", "cat"]])).tolist() == [[3, 3]]
    with pytest.raises(InvalidInputError, match="rows of tokens have lengths 1 and 2"):
        tokenizer([["the"], ["the", "cat"]])
    with pytest.raises(InputTypeError, match=r"input 'text\[1\]' text \[0\] is NoneType"):
        tokenizer([["the"], [None]])
    with pytest.raises(
        ValueError, match="a StringLookup has no standardize, split or output_sequence_length"
    ):
        replace(lookup, split="whitespace")
    with pytest.raises(ValueError, match="layer_class 'Hashing' is not one of"):
        replace(SPEC, layer_class="Hashing")


def test_string_lookup_pads_with_a_mask_token_that_is_a_lone_surrogate() -> None:
    """The mask token comes from the model's metadata, where the vocabulary may hold any Python string:
    it pads short rows and gets id 0 however it is spelled, as the vocabulary's tokens get theirs."""
    lookup = replace(SPEC, layer_class="StringLookup", standardize=None, split=None, mask_token="\ud800",
                     vocabulary=("\ud800", "[UNK]", "the", "cat"))  # fmt: skip
    assert Tokenizer(lookup)([["the", "cat"], ["cat"]]).tolist() == [[2, 3], [3, 0]]


class _Refused(Exception):
    pass


def _refuse(name: str, shape: tuple[int, int]) -> None:
    raise _Refused(name, shape)


def test_size_check_sees_the_padded_shape_before_padding() -> None:
    """The caller's size check (the server's --max-ids) is given (rows, width) from the row lengths, and its
    refusal stops tokenizing, for texts, rows of tokens and strings for a lookup in the graph."""
    lookup = replace(SPEC, layer_class="StringLookup", standardize=None, split=None, mask_token="",
                     vocabulary=("", "[UNK]", "the"))  # fmt: skip
    rows = [["the"] * 5, ["the"]]
    for tokenize, texts, shape in (
        (Tokenizer(SPEC), ["the cat sat", "x"], (2, 3)),
        (Tokenizer(replace(SPEC, output_sequence_length=9)), ["the"], (1, 9)),
        (Tokenizer(lookup), rows, (2, 5)),
        (GraphStrings(lookup), rows, (2, 5)),
    ):
        with pytest.raises(_Refused) as refused:
            tokenize(texts, _refuse)
        assert refused.value.args == ("text", shape)
    front = TextFrontEnd({"text": SPEC}, ["text"])
    with pytest.raises(_Refused):
        front.ids({"text": ["a b"]}, _refuse)


HASHED = replace(SPEC, layer_class="StringLookup", standardize=None, split=None, mask_token=None,
                 vocabulary=("[UNK]", "[UNK]", "[UNK]", "the", "[UNK]"), num_oov_indices=3)  # fmt: skip


def test_several_oov_ids_are_tensorflow_s_hash_buckets() -> None:
    """tf.strings.to_hash_bucket_fast's documented example: ["Hello", "TensorFlow", "2.x"] in 3 buckets are
    [0, 2, 2]; Keras's StringLookup adds the first OOV id. A token of the vocabulary after the OOV ids keeps
    its id, even one spelled like the OOV token."""
    assert Tokenizer(HASHED)([["Hello", "TensorFlow", "2.x", "the", "[UNK]"]]).tolist() == [[0, 2, 2, 3, 4]]
    masked = replace(HASHED, mask_token="", vocabulary=("", *HASHED.vocabulary))
    assert Tokenizer(masked)([["Hello", "TensorFlow", "2.x", "", "the"]]).tolist() == [[1, 3, 3, 0, 4]]


def test_fingerprint64_is_farmhash_s() -> None:
    """farmhash's Fingerprint64 of the empty string is its constant k2; tests/export/test_text_oov.py
    compares it with TensorFlow on many strings."""
    fingerprint = fingerprint64(HASHED)
    assert fingerprint(b"") == 0x9AE16A3B2F90404F
    assert [fingerprint(t) % 3 for t in (b"Hello", b"TensorFlow", b"2.x")] == [0, 2, 2]


def test_hashing_needs_the_text_extra_only_when_used(
    monkeypatch: pytest.MonkeyPatch, text_model: Built, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "farmhash", None)  # import farmhash now raises ImportError
    assert Tokenizer(SPEC)(["the cat"]).tolist() == [[THE, CAT]]  # one OOV id: no hash, no import
    message = (
        r"input 'text' \(StringLookup 'vectorize', num_oov_indices=3\) hashes out-of-vocabulary tokens with "
        r"FarmHash Fingerprint64, which needs the text extra: pip install 'embed-runtime\[text\]'"
    )
    with pytest.raises(ModelLoadError, match=message):
        Tokenizer(HASHED)
    model = with_text(text_model, tmp_path / "hashed.onnx", text_props([HASHED]))
    with pytest.raises(ModelLoadError, match=message):
        embed_runtime.load(model.path)


FIXTURE = Path(__file__).parent / "data" / "string_lookup.onnx"
"""A Keras 3 StringLookup model exported with its lookup in the graph, and Keras's answers beside it
(built by tests/runtime/data/build_string_lookup.py)."""


@pytest.fixture(scope="module")
def in_graph() -> tuple[embed_runtime.Runtime, dict[str, Any]]:
    golden = json.loads(FIXTURE.with_suffix(".json").read_text(encoding="utf-8"))
    return embed_runtime.load(FIXTURE, providers="cpu"), golden


def test_in_graph_lookup_takes_strings_as_keras_does(in_graph: tuple[embed_runtime.Runtime, Any]) -> None:
    rt, golden = in_graph
    assert rt.inputs[0].dtype == object and rt.text is not None
    assert rt.text.tokenizers["tokens"].spec.in_graph
    rows = golden["rows"]
    for batch in (
        rows,
        np.array(rows, dtype=object),
        np.array(rows),
        [[t.encode("utf-8") for t in row] for row in rows],
        {"tokens": rows},
    ):
        out = rt.run(batch)
        np.testing.assert_allclose(out["scores"], golden["scores"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(out["mask"], golden["mask"])
    ids, mask = rt.tokenize(rows)  # the declared spec of the same lookup
    np.testing.assert_array_equal(ids, golden["ids"])
    np.testing.assert_array_equal(mask, golden["mask"])


def test_in_graph_empty_batches_and_rows(in_graph: tuple[embed_runtime.Runtime, Any]) -> None:
    """Found by a user test: a (0, 3) batch gave a (0, 1) mask, and rows without tokens a (1, 0) one."""
    rt, _ = in_graph
    assert rt.run(np.zeros((0, 3), dtype=object))["mask"].shape == (0, 3)
    assert rt.run([])["mask"].shape == (0, 1)
    for no_tokens in ([[]], [[""]]):  # one padding token wide, as a batch of empty texts is
        assert rt.run(no_tokens)["mask"].tolist() == [[False]]


def test_string_lookup_takes_rows_of_tokens_not_texts(in_graph: tuple[embed_runtime.Runtime, Any]) -> None:
    """A list of texts for a StringLookup input says what to pass, in Python and on the command line."""
    rt, _ = in_graph
    with pytest.raises(InputTypeError, match=r"takes rows of tokens such as \[\['the', 'cat'\]\].*"
                       r"""--ids '\[\["the", "cat"\]\]'"""):  # fmt: skip
        rt.run(["the", "cat"])


def test_in_graph_ragged_rows_are_padded_with_the_mask_token(
    in_graph: tuple[embed_runtime.Runtime, Any],
) -> None:
    rt, _ = in_graph
    ragged = rt.run([["the", "cat", "sat"], ["дом"]])
    padded = rt.run([["the", "cat", "sat"], ["дом", "", ""]])
    np.testing.assert_array_equal(ragged["scores"], padded["scores"])
    np.testing.assert_array_equal(ragged["mask"], [[True, True, True], [True, False, False]])
    assert rt.tokenize([["the", "cat"], ["дом"]])[0].tolist() == [[2, 3], [7, 0]]


@pytest.mark.parametrize(
    ("rows", "error", "message"),
    [
        ([["the", None]], InputTypeError, r"input 'tokens\[0\]' text \[1\] is NoneType"),
        ([["the", 3]], InputTypeError, r"input 'tokens\[0\]' text \[1\] is int"),
        ([[2, 3]], InputTypeError, r"input 'tokens\[0\]' text \[0\] is int"),
        ([["the", b"\xff"]], InvalidInputError, r"input 'tokens\[0\]' text \[1\] is not UTF-8"),
        ([["\ud800"]], InvalidInputError, r"input 'tokens\[0\]' text \[0\] is not valid unicode"),
        ([["the", ["cat"]]], InputTypeError, r"input 'tokens\[0\]' text \[1\] is list"),
        (["the", "cat"], InputTypeError, r"input 'tokens' \(layer .*, StringLookup\) takes rows of tokens"),
        (7, InputTypeError, r"input 'tokens': expected rows of tokens, found int"),
    ],
)
def test_in_graph_bad_strings_get_the_text_errors(
    in_graph: tuple[embed_runtime.Runtime, Any], rows: object, error: type[Exception], message: str
) -> None:
    rt, _ = in_graph
    with pytest.raises(error, match=message):
        rt.run(rows)


def test_in_graph_spec_round_trip() -> None:
    lookup = replace(SPEC, layer_class="StringLookup", standardize=None, split=None)
    assert "in_graph" not in lookup.to_dict()  # older files read the same
    marked = replace(lookup, in_graph=True)
    assert text_specs(text_props([marked])) == {"text": marked}
    with pytest.raises(ValueError, match="in_graph must be a bool, true only with num_oov_indices 1"):
        replace(SPEC, in_graph=True)  # standardize and split: by the spec only
    for wrong in ("yes", 1):
        with pytest.raises(ValueError, match=f"found {wrong!r}"):
            TextSpec.from_dict({**marked.to_dict(), "in_graph": wrong})


def test_padding_is_bounded_by_the_size_limit(
    in_graph: tuple[embed_runtime.Runtime, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ragged rows (and texts) are padded only after the padded shape is checked against MAX_IDS."""
    monkeypatch.setattr(conversion, "MAX_IDS", 10)
    rt, _ = in_graph
    with pytest.raises(InvalidInputError, match=r"input 'tokens' would be padded to shape \(2, 6\), 12 ids"):
        rt.run([["the"] * 6, ["the"]])
    with pytest.raises(InvalidInputError, match=r"input 'text' would be padded to shape \(2, 6\), 12 ids"):
        Tokenizer(SPEC)(["the " * 6, "the"])
