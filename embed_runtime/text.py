"""Strings in: the declared text front end (:class:`~embed_runtime.contract.TextSpec`), without TensorFlow.

A :class:`Tokenizer` reproduces Keras's ``TextVectorization`` (output_mode ``"int"``) id for id, in both
Keras flavours (both run the same TensorFlow ops, read from their source):

* ``lower``: ``tf.strings.lower(x)`` with its default ``encoding=""``, which lowercases **ASCII only**
  (``"ÀÉ Straße"`` stays ``"ÀÉ straße"``); done here with ``bytes.lower()`` on the UTF-8 bytes, which is the
  same ASCII-only rule. Python's ``str.lower()`` would lowercase every script and differ.
* ``strip_punctuation``: ``tf.strings.regex_replace(x, DEFAULT_STRIP_REGEX, "")``; the class holds ASCII
  characters only, so the same pattern on the UTF-8 bytes removes exactly what RE2 removes.
* ``whitespace`` split: ``tf.strings.split(x)`` splits on runs of ASCII whitespace (space, ``\\t \\n \\v \\f
  \\r``) and drops empty pieces; no-break and other Unicode spaces stay inside tokens. ``bytes.split()``
  is that rule.
* ``character`` split: ``tf.strings.unicode_split(x, "UTF-8")``: one token per code point (combining marks
  are tokens of their own).
* ``split=None``: the standardized string is the one token (``""`` is the mask token, id 0).
* ``StringLookup`` (``layer_class``): the input is rows of tokens, each looked up as it is; rows must
  have one length, as in Keras's dense input.
* lookup: ``vocabulary[i]`` has id ``i``; any other token has the OOV id. Rows are padded with 0 (or cut)
  to ``output_sequence_length``, else to the longest row of the batch -- and to at least 1, since a graph
  may not run on length 0 (Keras returns ``(batch, 0)`` for a batch of empty strings).

Text is ``str`` or UTF-8 ``bytes``, in a list/tuple or a 1-D (or ``(batch, 1)``) numpy array of
``str``/``bytes``/``object``; anything else raises :class:`InputTypeError`, invalid UTF-8 or lone
surrogates :class:`InvalidInputError`, naming the input and the position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import chain, repeat
from typing import Any

import numpy as np

from .contract import TextSpec, text_specs
from .errors import InputTypeError, InvalidInputError

STRIP_PUNCTUATION = re.compile(rb'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')
"""Keras's ``DEFAULT_STRIP_REGEX``, character for character, on UTF-8 bytes."""

PUNCTUATION_BYTES = bytes(c for c in range(128) if STRIP_PUNCTUATION.fullmatch(bytes([c])))
"""The bytes :data:`STRIP_PUNCTUATION` removes (all ASCII), for ``bytes.translate``: the same result, faster."""

ASCII_LOWER = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))
"""``A-Z`` -> ``a-z``, every other byte kept: ``tf.strings.lower``'s ASCII-only rule, for ``bytes.translate``."""

_TEXT_TYPES = (str, bytes)


class Tokenizer:
    """Strings -> int64 ids ``(batch, length)`` for one graph input, by its :class:`TextSpec`."""

    def __init__(self, spec: TextSpec):
        self.spec = spec
        self._ids = {token.encode("utf-8", "surrogatepass"): i for i, token in enumerate(spec.vocabulary)}
        self._oov = self._ids[spec.oov_token.encode("utf-8", "surrogatepass")]
        lower = spec.standardize in ("lower", "lower_and_strip_punctuation")
        strip = spec.standardize in ("strip_punctuation", "lower_and_strip_punctuation")
        # one bytes.translate does both (lowering maps no byte to or from punctuation, so order is moot)
        self._table = ASCII_LOWER if lower else None
        self._delete = PUNCTUATION_BYTES if strip else b""

    def tokens(self, text: bytes) -> list[bytes]:
        """The standardized, split tokens of one UTF-8 text."""
        text = text.translate(self._table, self._delete)
        split = self.spec.split
        if split == "whitespace":
            return text.split()
        if split == "character":
            return [c.encode("utf-8") for c in text.decode("utf-8")]
        return [text]

    def __call__(self, texts: Any) -> np.ndarray:
        """Token ids of a batch of texts (of token rows for ``StringLookup``), padded with 0; see the
        module docstring for what ``texts`` may be."""
        if self.spec.layer_class == "StringLookup":
            return self._lookup_rows(texts)
        texts = utf8_batch(texts, self.spec.input)
        if self.spec.split == "whitespace":  # the common case, without a call per text
            table, delete = self._table, self._delete
            rows = [text.translate(table, delete).split() for text in texts]
        else:
            rows = list(map(self.tokens, texts))
        fixed = self.spec.output_sequence_length
        if fixed is not None:
            rows = [row[:fixed] for row in rows]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        total = int(lengths.sum())
        # every token looked up in one C-level pass: dict.get(token, oov) over the batch's tokens
        flat = np.fromiter(
            map(self._ids.get, chain.from_iterable(rows), repeat(self._oov)), dtype=np.int64, count=total
        )
        longest = int(lengths.max(initial=0))
        out = np.zeros((len(rows), fixed or max(longest, 1)), dtype=np.int64)
        out[:, :longest][np.arange(longest) < lengths[:, None]] = flat
        return out

    def _lookup_rows(self, batch: Any) -> np.ndarray:
        """``StringLookup``: every token of every row looked up as it is; rows must have one length."""
        name = self.spec.input
        if isinstance(batch, np.ndarray) and batch.ndim == 2:
            batch = batch.tolist()
        if not isinstance(batch, (list, tuple)):
            raise InputTypeError(f"input {name!r}: expected rows of tokens, found {type(batch).__name__}")
        ids, oov = self._ids, self._oov
        rows = [[ids.get(t, oov) for t in utf8_batch(row, f"{name}[{i}]")] for i, row in enumerate(batch)]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            raise InvalidInputError(
                f"input {name!r}: rows of tokens have lengths {lengths[0]} and {lengths[-1]}; a StringLookup "
                "input takes rows of one length"
            )
        return np.array(rows, dtype=np.int64).reshape(len(rows), lengths[0] if lengths else 1)


def is_text(value: Any) -> bool:
    """Whether ``value`` is meant as text: a string, a list/tuple whose first item (or its first item) is
    one, or a numpy array of ``str``/``bytes`` (or ``object`` starting with a string)."""
    for _ in range(3):
        if isinstance(value, _TEXT_TYPES):
            return True
        if isinstance(value, np.ndarray):
            return value.dtype.kind in "US" or (
                value.dtype.kind == "O" and value.size > 0 and isinstance(value.flat[0], _TEXT_TYPES)
            )
        if not isinstance(value, (list, tuple)) or not value:
            return False
        value = value[0]
    return False


def utf8_batch(texts: Any, name: str) -> list[bytes]:
    """The UTF-8 bytes of each text of a batch; raises naming input ``name`` and the bad position."""
    if isinstance(texts, _TEXT_TYPES):
        raise InputTypeError(
            f"input {name!r} takes a batch of texts: pass [{str(texts)[:40]!r}], not a string"
        )
    if isinstance(texts, np.ndarray):
        if texts.ndim == 2 and texts.shape[1] == 1:
            texts = texts[:, 0]
        if texts.ndim != 1:
            raise InvalidInputError(
                f"input {name!r}: texts have shape {texts.shape}; expected (batch,) or (batch, 1)"
            )
        texts = texts.tolist()
    elif not isinstance(texts, (list, tuple)):
        raise InputTypeError(f"input {name!r}: expected a list of texts, found {type(texts).__name__}")
    out = []
    for i, text in enumerate(texts):
        if isinstance(text, str):
            try:
                out.append(text.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise InvalidInputError(
                    f"input {name!r} text [{i}] is not valid unicode ({exc.reason} at character {exc.start})"
                ) from None
        elif isinstance(text, bytes):
            try:
                text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(
                    f"input {name!r} text [{i}] is not UTF-8 ({exc.reason} at byte {exc.start}); "
                    "texts are str or UTF-8 bytes"
                ) from None
            out.append(text)
        else:
            raise InputTypeError(
                f"input {name!r} text [{i}] is {type(text).__name__} {str(text)[:40]}; "
                "each text is a str or UTF-8 bytes"
            )
    return out


class TextFrontEnd:
    """The tokenizers of a model's text inputs: turns texts among a call's inputs into ids."""

    def __init__(self, specs: Mapping[str, TextSpec], graph_inputs: Sequence[str]):
        unknown = sorted(set(specs) - set(graph_inputs))
        if unknown:
            raise ValueError(
                f"text spec for input(s) {', '.join(map(repr, unknown))}, but the graph's inputs are "
                f"{', '.join(map(repr, graph_inputs))}"
            )
        self.tokenizers = {name: Tokenizer(spec) for name, spec in specs.items()}
        self._only = next(iter(self.tokenizers)) if len(graph_inputs) == 1 else None

    def ids(self, inputs: Any) -> Any:
        """``inputs`` with every text turned into ids; ids and anything else are left as they are."""
        if isinstance(inputs, dict):
            return {
                k: self.tokenizers[k](v) if k in self.tokenizers and is_text(v) else v
                for k, v in inputs.items()
            }
        if self._only is not None and is_text(inputs):
            return self.tokenizers[self._only](inputs)
        return inputs

    def tokenize(self, texts: Any) -> tuple[Any, Any]:
        """(ids, mask) the model will see for ``texts`` (a batch, or a dict of batches by input name):
        arrays, or dicts of arrays for a dict; the mask is ``ids != 0``."""
        if isinstance(texts, dict):
            unknown = [k for k in texts if k not in self.tokenizers]
            if unknown:
                raise InvalidInputError(
                    f"{unknown[0]!r} is not a text input; the text inputs are {', '.join(self.tokenizers)}"
                )
            ids = {k: self.tokenizers[k](v) for k, v in texts.items()}
            return ids, {k: v != 0 for k, v in ids.items()}
        if self._only is None:
            raise InvalidInputError(
                f"this model has several inputs; pass {{input name: texts}} for {', '.join(self.tokenizers)}"
            )
        single = self.tokenizers[self._only](texts)
        return single, single != 0


def front_end(props: Mapping[str, str], graph_inputs: Sequence[str]) -> TextFrontEnd | None:
    """The model's :class:`TextFrontEnd`, or ``None`` when its metadata declares no text input.

    Raises ``ValueError`` for a malformed spec or one naming an input the graph lacks."""
    specs = text_specs(dict(props))
    return TextFrontEnd(specs, graph_inputs) if specs else None
