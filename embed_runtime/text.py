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
* ``StringLookup`` (``layer_class``): the input is rows of tokens, each looked up as it is. Keras's
  dense input has no ragged rows (``tf.ragged`` rows made dense with ``to_tensor()`` are padded with
  ``""``); here a short row is padded with the layer's mask token, id 0, which the mask marks as
  padding, like a ragged row of ids; without a mask token there is no padding token and rows must have
  one length.
* lookup: ``vocabulary[i]`` has id ``i``; any other token has an OOV id: the one OOV id, or with
  ``num_oov_indices`` n > 1 the bucket Keras's ``tf.strings.to_hash_bucket_fast(token, n)`` gives,
  FarmHash ``Fingerprint64`` of the token's UTF-8 bytes modulo n (:func:`fingerprint64`). Rows are padded
  with 0 (or cut) to ``output_sequence_length``, else to the longest row of the batch -- and to at least
  1, since a graph may not run on length 0 (Keras returns ``(batch, 0)`` for a batch of empty strings).

Text is ``str`` or UTF-8 ``bytes``, in a list/tuple or a 1-D (or ``(batch, 1)``) numpy array of
``str``/``bytes``/``object``; anything else raises :class:`InputTypeError`, invalid UTF-8 or lone
surrogates :class:`InvalidInputError`, naming the input and the position.

A spec with ``in_graph`` describes a lookup the graph does itself (``ai.onnx.ml`` ``LabelEncoder``, see
:class:`~embed_runtime.contract.TextSpec`): :class:`GraphStrings` then checks the texts by the same rules
and hands the graph the strings (``object`` array of ``str``), rows of tokens padded as above, and the
:class:`Tokenizer` of the same spec still answers ``tokenize``.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain, repeat
from typing import Any

import numpy as np

from .contract import TextSpec, text_specs
from .conversion import check_size
from .errors import InputTypeError, InvalidInputError, ModelLoadError

STRIP_PUNCTUATION = re.compile(rb'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']')
"""Keras's ``DEFAULT_STRIP_REGEX``, character for character, on UTF-8 bytes."""

PUNCTUATION_BYTES = bytes(c for c in range(128) if STRIP_PUNCTUATION.fullmatch(bytes([c])))
"""The bytes :data:`STRIP_PUNCTUATION` removes (all ASCII), for ``bytes.translate``: the same result, faster."""

ASCII_LOWER = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))
"""``A-Z`` -> ``a-z``, every other byte kept: ``tf.strings.lower``'s ASCII-only rule, for ``bytes.translate``."""

_TEXT_TYPES = (str, bytes)

SizeCheck = Callable[[str, tuple[int, int]], None]
"""Called with an input's name and the ``(rows, width)`` its texts would be padded to, before any padded
array is made; raises when that is too large."""


def padded_size(name: str, shape: tuple[int, int]) -> None:
    """The :data:`SizeCheck` of the Python API: at most :data:`~embed_runtime.conversion.MAX_IDS` ids."""
    check_size(name, shape, "would be padded to shape")


def fingerprint64(spec: TextSpec) -> Callable[[bytes], int]:
    """FarmHash ``Fingerprint64`` (``farmhashna::Hash64``, github.com/google/farmhash): the hash of
    TensorFlow's ``StringToHashBucketFast`` kernel (``tsl::Fingerprint64``), which Keras's lookup layers
    use to spread out-of-vocabulary strings over ``num_oov_indices`` ids (Keras 3 without ``salt``, and
    tf-keras). Taken from the ``cityhash`` package's ``farmhash`` module (the ``text`` extra), imported
    only for a ``spec`` that needs it; raises :class:`ModelLoadError` naming the extra when it is missing."""
    try:
        function = getattr(importlib.import_module("farmhash"), "Fingerprint64", None)
    except ImportError:
        function = None
    if function is None:
        raise ModelLoadError(
            f"input {spec.input!r} ({spec.layer_class} {spec.layer!r}, num_oov_indices="
            f"{spec.num_oov_indices}) hashes out-of-vocabulary tokens with FarmHash Fingerprint64, which "
            "needs the text extra: pip install 'embed-runtime[text]' (the cityhash package)"
        )
    return function


class _HashedOov(dict[bytes, int]):
    """Token -> id; a token not in it gets ``start + fingerprint(token) % n`` (not stored: a server
    sees unbounded OOV tokens)."""

    def __init__(self, ids: dict[bytes, int], start: int, n: int, fingerprint: Callable[[bytes], int]):
        super().__init__(ids)
        self.start, self.n, self.fingerprint = start, n, fingerprint

    def __missing__(self, token: bytes) -> int:
        return self.start + self.fingerprint(token) % self.n


class Tokenizer:
    """Strings -> int64 ids ``(batch, length)`` for one graph input, by its :class:`TextSpec`."""

    def __init__(self, spec: TextSpec):
        self.spec = spec
        start, n = spec.oov_start, spec.num_oov_indices
        ids = {t.encode("utf-8", "surrogatepass"): i for i, t in enumerate(spec.vocabulary) if i >= start + n}
        if spec.mask_token is not None:
            ids[spec.mask_token.encode("utf-8", "surrogatepass")] = 0
        self._oov = start
        self._ids = ids if n == 1 else _HashedOov(ids, start, n, fingerprint64(spec))
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

    def ids_of(self, tokens: Iterable[bytes]) -> Iterator[int]:
        """The id of each token, as Keras's lookup gives it."""
        if isinstance(self._ids, _HashedOov):
            return map(self._ids.__getitem__, tokens)
        return map(self._ids.get, tokens, repeat(self._oov))

    def __call__(self, texts: Any, check: SizeCheck = padded_size) -> np.ndarray:
        """Token ids of a batch of texts (of token rows for ``StringLookup``), padded with 0; see the
        module docstring for what ``texts`` may be. ``check`` is given the padded shape first."""
        if self.spec.layer_class == "StringLookup":
            return self._lookup_rows(texts, check)
        texts = checked_batch(texts, self.spec.input, as_bytes=True)
        if self.spec.split == "whitespace":  # the common case, without a call per text
            table, delete = self._table, self._delete
            rows = [text.translate(table, delete).split() for text in texts]
        else:
            rows = list(map(self.tokens, texts))
        fixed = self.spec.output_sequence_length
        if fixed is not None:
            rows = [row[:fixed] for row in rows]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        longest = int(lengths.max(initial=0))
        check(self.spec.input, (len(rows), fixed or max(longest, 1)))
        # every token looked up in one C-level pass over the batch's tokens
        flat = np.fromiter(self.ids_of(chain.from_iterable(rows)), dtype=np.int64, count=int(lengths.sum()))
        out = np.zeros((len(rows), fixed or max(longest, 1)), dtype=np.int64)
        out[:, :longest][np.arange(longest) < lengths[:, None]] = flat
        return out

    def _lookup_rows(self, batch: Any, check: SizeCheck) -> np.ndarray:
        """``StringLookup``: every token of every row looked up as it is (:func:`token_rows`)."""
        rows, width = token_rows(batch, self.spec, as_bytes=True, check=check)
        flat = np.fromiter(self.ids_of(chain.from_iterable(rows)), dtype=np.int64, count=len(rows) * width)
        return flat.reshape(len(rows), width)


def token_rows(
    batch: Any, spec: TextSpec, as_bytes: bool, check: SizeCheck = padded_size
) -> tuple[list[list[Any]], int]:
    """The checked rows of tokens of a ``StringLookup`` input (tokens as ``bytes`` or ``str``), each short
    row padded with the mask token, and their width (1 for an empty batch). Raises for ragged rows when
    the layer has no mask token, and where ``check`` refuses the padded shape."""
    name = spec.input
    empty_width = 1
    if isinstance(batch, np.ndarray) and batch.ndim == 2:
        empty_width = batch.shape[1] or 1
        batch = batch.tolist()
    if not isinstance(batch, (list, tuple)):
        raise InputTypeError(f"input {name!r}: expected rows of tokens, found {type(batch).__name__}")
    if any(isinstance(row, _TEXT_TYPES) for row in batch):
        example = [[str(t, "utf-8", "replace") if isinstance(t, bytes) else t for t in batch[:3]]]
        raise InputTypeError(
            f"input {name!r} (layer {spec.layer!r}, StringLookup) takes rows of tokens such as {example!r}, "
            f"not a list of texts or tokens (from the command line: --ids '{json.dumps(example)}')"
        )
    rows = [checked_batch(row, f"{name}[{i}]", as_bytes) for i, row in enumerate(batch)]
    lengths = sorted({len(r) for r in rows})
    width = lengths[-1] if lengths else empty_width
    if width == 0 and spec.mask_token is not None:
        width = 1  # rows without tokens: one padding token wide, as a batch of empty texts is
    check(name, (len(rows), width))
    if lengths and lengths != [width]:
        if spec.mask_token is None:
            raise InvalidInputError(
                f"input {name!r}: rows of tokens have lengths {lengths[0]} and {width}; layer {spec.layer!r} "
                "has no mask token to pad them with, so rows must have one length"
            )
        pad = spec.mask_token.encode("utf-8", "surrogatepass") if as_bytes else spec.mask_token
        rows = [row + [pad] * (width - len(row)) for row in rows]
    return rows, width


class GraphStrings:
    """Strings -> the ``object`` array of ``str`` that a graph doing its own lookup (``in_graph`` spec)
    takes: rows of tokens ``(batch, seq)`` (:func:`token_rows`), or texts ``(batch, 1)``."""

    def __init__(self, spec: TextSpec):
        self.spec = spec

    def __call__(self, texts: Any, check: SizeCheck = padded_size) -> np.ndarray:
        if self.spec.layer_class == "StringLookup":
            rows, width = token_rows(texts, self.spec, as_bytes=False, check=check)
            return np.array(rows, dtype=object).reshape(len(rows), width)
        single = checked_batch(texts, self.spec.input, as_bytes=False)
        out = np.empty((len(single), 1), dtype=object)
        out[:, 0] = single
        return out


def is_text(value: Any) -> bool:
    """Whether ``value`` is meant as text: a string, a list/tuple whose first item (or its first item) is
    one, or a numpy array of ``str``/``bytes`` (or ``object`` starting with a string); an empty list or
    tuple is an empty batch of texts."""
    if isinstance(value, (list, tuple)) and not value:
        return True
    for _ in range(3):
        if isinstance(value, _TEXT_TYPES):
            return True
        if isinstance(value, np.ndarray):
            return value.dtype.kind in "US" or (  # an empty object array is an empty batch of texts
                value.dtype.kind == "O" and (value.size == 0 or isinstance(value.flat[0], _TEXT_TYPES))
            )
        if not isinstance(value, (list, tuple)) or not value:
            return False
        value = value[0]
    return False


def checked_batch(texts: Any, name: str, as_bytes: bool) -> list[Any]:
    """Each text of a batch, checked (the rules of the module docstring), as UTF-8 ``bytes`` or as
    ``str``; raises naming input ``name`` and the bad position."""
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
                encoded = text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidInputError(
                    f"input {name!r} text [{i}] is not valid unicode ({exc.reason} at character {exc.start})"
                ) from None
            out.append(encoded if as_bytes else text)
        elif isinstance(text, bytes):
            try:
                decoded = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(
                    f"input {name!r} text [{i}] is not UTF-8 ({exc.reason} at byte {exc.start}); "
                    "texts are str or UTF-8 bytes"
                ) from None
            out.append(text if as_bytes else decoded)
        else:
            raise InputTypeError(
                f"input {name!r} text [{i}] is {type(text).__name__} {str(text)[:40]}; "
                "each text is a str or UTF-8 bytes"
            )
    return out


class TextFrontEnd:
    """The tokenizers of a model's text inputs: turns texts among a call's inputs into what the graph
    takes (ids; strings, checked and padded, for a lookup in the graph)."""

    def __init__(self, specs: Mapping[str, TextSpec], graph_inputs: Sequence[str]):
        unknown = sorted(set(specs) - set(graph_inputs))
        if unknown:
            raise ValueError(
                f"text spec for input(s) {', '.join(map(repr, unknown))}, but the graph's inputs are "
                f"{', '.join(map(repr, graph_inputs))}"
            )
        self.tokenizers = {name: Tokenizer(spec) for name, spec in specs.items()}
        self.graph_strings = {name: GraphStrings(spec) for name, spec in specs.items() if spec.in_graph}
        self._only = next(iter(self.tokenizers)) if len(graph_inputs) == 1 else None

    def ids(self, inputs: Any, check: SizeCheck = padded_size) -> Any:
        """``inputs`` as the graph takes them: texts turned into ids, or for an input whose lookup is in
        the graph, whatever is given checked as texts (:class:`GraphStrings`); ids and anything else for
        other inputs are left as they are. ``check`` is given each padded shape before it is made."""
        if isinstance(inputs, dict):
            return {k: self._feed(k, v, check) for k, v in inputs.items()}
        return inputs if self._only is None else self._feed(self._only, inputs, check)

    def _feed(self, name: str, value: Any, check: SizeCheck) -> Any:
        strings = self.graph_strings.get(name)
        if strings is not None:  # the graph takes strings only: anything else gets the text errors
            return strings(value, check)
        return self.tokenizers[name](value, check) if name in self.tokenizers and is_text(value) else value

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
