"""The declared text front end without TensorFlow: a spec written by hand, Keras's rules as expectations.

The expected ids follow TextVectorization's documented behaviour (ASCII-only ``tf.strings.lower``,
``DEFAULT_STRIP_REGEX``, ``tf.strings.split`` on ASCII whitespace); tests/export/test_text.py checks the
same rules against Keras itself.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import embed_runtime
from embed_runtime import InputTypeError, InvalidInputError, ModelLoadError, cli
from embed_runtime.contract import KEY_TEXT, TextSpec, text_props, text_specs
from embed_runtime.text import Tokenizer

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
        ({"num_oov_indices": 2}, "num_oov_indices must be 1"),
        ({"oov_token": "<oov>"}, "oov_token '<oov>' is not in the vocabulary"),
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
