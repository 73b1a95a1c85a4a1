"""The artifact contract between the exporter and the runtime, defined once.

An exported model is a plain ONNX file. What makes it an *embed-runtime* artifact is:

* **Inputs**: one int64 tensor ``(batch, seq)`` per model input, named after the Keras input (``input_ids``
  when Keras only named it automatically, e.g. ``keras_tensor``); ``batch`` dynamic, ``seq`` static when
  the Keras model fixes the length (``input_length=10`` or ``Input(shape=(10,))``), dynamic otherwise.
* **Outputs**: the Keras outputs under the Keras output names, then one bool output per Embedding layer
  with ``mask_zero=True``: named ``mask`` when the model has one such layer, ``<layer name>_mask`` when it
  has several, ``<layer>_<input>_mask`` when one layer is shared by several inputs (one mask per input it
  reads; see :func:`mask_output_name`). A mask is ``ids != 0``, exactly Keras's ``Embedding.compute_mask``.
* **Metadata** (ONNX ``metadata_props``, string to string: plain strings and JSON, readable from other
  languages), keys below. ``embed_runtime.embeddings`` is a JSON list with one object per Embedding layer
  (see :class:`EmbeddingInfo`); the runtime uses it to reject ids outside ``[0, input_dim)`` before
  onnxruntime sees them (ONNX ``Gather`` silently wraps negative ids).
  ``embed_runtime.external_data`` (only with big tables stored as ONNX external data): a JSON list, one
  object per data file: ``location`` (file name, in the ``.onnx``'s folder), ``bytes``, ``sha256`` (whole
  file), ``sample_sha256`` (16 blocks of 4 KiB spread over it); the runtime refuses a data file of another
  size or sample, ``embed-runtime info`` checks the full sha256 (:mod:`embed_runtime.artifact`).
* **Pure lookups** (``lookup_output`` in an ``embed_runtime.embeddings`` entry, where the exporter proved
  it): the output that is exactly the entry's table lookup of its one input (see :class:`EmbeddingInfo`);
  with the masks, what the runtime may answer from a table read out of the model (:mod:`embed_runtime.lookup`).
* **Text front end** (``embed_runtime.text``, only in models exported from a string input): a JSON object
  keyed by graph input, one :class:`TextSpec` each (standardize, split, the vocabulary in
  ``get_vocabulary()`` order, OOV and mask tokens, sequence length, Keras version), a *declared spec* that
  :mod:`embed_runtime.text` implements id for id. The graph takes the int64 ids (Keras's default
  ``strip_punctuation`` is a regex replace, which ONNX lacks; see exporters/string_lookup.py) or, where
  standard ops are exact (one OOV id, no standardize or split), the strings themselves: it does the lookup
  (``LabelEncoder``), and the spec, marked ``in_graph``, still describes it.
* **Format** (``embed_runtime.format``): ``"2"`` when a text spec is ``in_graph`` (a format-1 runtime would
  feed ids to its string input: wrong outputs, no error), else ``"1"``, so that other models stay readable by
  older runtimes. The runtime refuses a format not in :data:`FORMAT_VERSIONS` (written by a newer version).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSIONS = ("1", "2")
"""The ``embed_runtime.format`` values this version reads; a new one when a key changes meaning."""

PREFIX = "embed_runtime."
KEY_FORMAT = PREFIX + "format"
KEY_EMBEDDINGS = PREFIX + "embeddings"
KEY_KERAS_VERSION = PREFIX + "keras_version"
KEY_KERAS_FLAVOUR = PREFIX + "keras_flavour"
KEY_TENSORFLOW_VERSION = PREFIX + "tensorflow_version"
KEY_TF2ONNX_VERSION = PREFIX + "tf2onnx_version"
KEY_EXPORTER_VERSION = PREFIX + "exporter_version"
KEY_MAX_ABS_DIFF = PREFIX + "export_max_abs_diff"
KEY_EXTERNAL_DATA = PREFIX + "external_data"
KEY_TEXT = PREFIX + "text"

VERSION_KEYS = (
    KEY_KERAS_VERSION,
    KEY_KERAS_FLAVOUR,
    KEY_TENSORFLOW_VERSION,
    KEY_TF2ONNX_VERSION,
    KEY_EXPORTER_VERSION,
)

DEFAULT_INPUT_NAME = "input_ids"
"""Name given to a model input that Keras only named automatically."""

MASK_OUTPUT_NAME = "mask"
"""Name of the mask output when the model has exactly one Embedding with ``mask_zero=True``."""

PADDING_ID = 0
"""The id Keras treats as padding when ``mask_zero=True``."""

ID_DTYPE = "int64"
"""dtype of every id input in an exported graph."""

MAX_IR_VERSION = 10
"""Highest ONNX IR version the exporter writes (onnxruntime 1.30 and onnxruntime-node read it)."""


def mask_output_name(layer: str, source: str, masked: list[tuple[str, str]]) -> str:
    """Name of the mask output of Embedding ``layer`` reading ids from input ``source``, in a model whose
    masked lookups are the (layer, input) pairs ``masked``: ``mask`` when there is one, ``<layer>_mask``
    when there are several, ``<layer>_<input>_mask`` when one layer is shared by several inputs."""
    if len(masked) == 1:
        return MASK_OUTPUT_NAME
    if sum(1 for name, _ in masked if name == layer) == 1:
        return f"{layer}_mask"
    return f"{layer}_{source}_mask"


@dataclass(frozen=True)
class EmbeddingInfo:
    """What the artifact records about one Keras Embedding layer.

    Attributes:
        layer: the Keras layer name.
        inputs: names of the graph inputs whose ids this layer looks up (several when the layer is shared).
        input_dim: rows in the table; valid ids are ``0 <= id < input_dim``.
        output_dim: width of one embedding vector.
        mask_zero: whether id ``padding_id`` is padding and a mask output exists.
        padding_id: ``0`` when ``mask_zero`` is true, else ``None``.
        mask_output: name of the bool mask output, or ``None``.
        dtype: numpy dtype name of the table (``float32``, ``float16``...).
        table_dtype: how the artifact stores the table: ``float32`` (as ``dtype``), ``float16``, or ``int8``.
        quantization: for an ``int8`` table, how a row is dequantized with its float32 scale:
            ``per_row_scale`` (``row = q * scale[row]``) or ``per_row_inverse_scale``
            (``row = q / scale[row]``, Keras's own int8); ``None`` otherwise. These two keys are written only
            when they differ from the defaults, so older files read the same.
        lookup_output: the graph output that is exactly this lookup, proven by the exporter
            (:mod:`exporters.pure_lookups`): row ``id`` of the (dequantized) table for each id of the entry's
            one input, nothing else. ``None`` (not written) when no output is. The runtime may then answer
            it from a table it reads out of the model (:mod:`embed_runtime.lookup`).
    """

    layer: str
    inputs: tuple[str, ...]
    input_dim: int
    output_dim: int
    mask_zero: bool
    padding_id: int | None
    mask_output: str | None
    dtype: str = "float32"
    table_dtype: str = "float32"
    quantization: str | None = None
    lookup_output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the keys of this class (``table_dtype`` and ``quantization`` only when
        they are not the defaults, ``lookup_output`` only when set)."""
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        if d["table_dtype"] == "float32" and d["quantization"] is None:
            del d["table_dtype"], d["quantization"]
        if d["lookup_output"] is None:
            del d["lookup_output"]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> EmbeddingInfo:
        """Parse one entry of ``embed_runtime.embeddings``; raises ``ValueError`` saying what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"embedding entry {d!r} is not a JSON object")
        missing = [k for k in ("layer", "inputs", "input_dim", "output_dim", "mask_zero") if k not in d]
        if missing:
            raise ValueError(f"embedding entry {d!r} lacks the key {missing[0]!r}")
        inputs, input_dim, output_dim = d["inputs"], d["input_dim"], d["output_dim"]
        if not isinstance(inputs, list) or not all(isinstance(n, str) for n in inputs):
            raise ValueError(
                f"embedding {d['layer']!r}: 'inputs' must be a list of input names, found {inputs!r}"
            )
        for key, value, low in (("input_dim", input_dim, 1), ("output_dim", output_dim, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"embedding {d['layer']!r}: {key!r} must be an integer >= {low}, found {value!r}"
                )
        padding = d.get("padding_id")
        if padding is not None and (isinstance(padding, bool) or not isinstance(padding, int)):
            raise ValueError(
                f"embedding {d['layer']!r}: 'padding_id' must be an integer or null, found {padding!r}"
            )
        lookup = d.get("lookup_output")
        if lookup is not None and (not isinstance(lookup, str) or len(inputs) != 1):
            raise ValueError(
                f"embedding {d['layer']!r}: 'lookup_output' must be an output name on an entry with one "
                f"input, found {lookup!r} with inputs {inputs!r}"
            )
        return cls(
            layer=str(d["layer"]),
            inputs=tuple(inputs),
            input_dim=input_dim,
            output_dim=output_dim,
            mask_zero=bool(d["mask_zero"]),
            padding_id=padding,
            mask_output=d.get("mask_output"),
            dtype=str(d.get("dtype", "float32")),
            table_dtype=str(d.get("table_dtype", "float32")),
            quantization=None if d.get("quantization") is None else str(d["quantization"]),
            lookup_output=lookup,
        )


@dataclass(frozen=True)
class ModelMetadata:
    """The contract's metadata of one model, as read back from ONNX ``metadata_props``.

    Attributes:
        embeddings: one :class:`EmbeddingInfo` per Embedding layer; empty for a foreign ONNX file.
        versions: the ``embed_runtime.*_version`` / flavour keys that were present.
        raw: every metadata key and value, ours and others.
    """

    embeddings: tuple[EmbeddingInfo, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)

    @property
    def is_embed_runtime_artifact(self) -> bool:
        """True when the file was written by this project's exporter."""
        return KEY_FORMAT in self.raw

    def input_dims(self) -> dict[str, int]:
        """Exclusive upper bound of valid ids per graph input (the smallest table that reads it)."""
        bounds: dict[str, int] = {}
        for emb in self.embeddings:
            for name in emb.inputs:
                bounds[name] = min(bounds.get(name, emb.input_dim), emb.input_dim)
        return bounds

    def padding_ids(self) -> dict[str, int]:
        """The padding id per graph input, for inputs that only ``mask_zero`` Embeddings read: there a
        ragged batch may be padded, since the mask marks the padding; elsewhere id 0 is a real token."""
        found: dict[str, list[int | None]] = {}
        for emb in self.embeddings:
            for name in emb.inputs:
                found.setdefault(name, []).append(emb.padding_id if emb.mask_zero else None)
        return {n: ids[0] for n, ids in found.items() if ids[0] is not None and len(set(ids)) == 1}

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` to write: format (the lowest that fits), embeddings JSON, versions, rest."""
        props = dict(self.raw)
        props[KEY_FORMAT] = "2" if any(spec.in_graph for spec in text_specs(props).values()) else "1"
        props[KEY_EMBEDDINGS] = json.dumps([e.to_dict() for e in self.embeddings], sort_keys=True)
        props.update(self.versions)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ModelMetadata:
        """Read the contract out of a model's metadata; a file without our keys gives empty embeddings.

        Raises ``ValueError`` when our keys are malformed or of a format this version does not read.
        """
        if props.get(KEY_FORMAT, FORMAT_VERSIONS[0]) not in FORMAT_VERSIONS:
            raise ValueError(
                f"{KEY_FORMAT} is {props[KEY_FORMAT]!r}, and this embed-runtime reads formats "
                f"{' and '.join(map(repr, FORMAT_VERSIONS))}: upgrade embed-runtime to load this model"
            )
        embeddings: tuple[EmbeddingInfo, ...] = ()
        if KEY_EMBEDDINGS in props:
            try:
                entries = json.loads(props[KEY_EMBEDDINGS])
            except json.JSONDecodeError as exc:
                raise ValueError(f"metadata {KEY_EMBEDDINGS!r} is not valid JSON: {exc}") from None
            except RecursionError:
                raise ValueError(f"metadata {KEY_EMBEDDINGS!r} is JSON nested too deep to read") from None
            if not isinstance(entries, list):
                raise ValueError(
                    f"metadata {KEY_EMBEDDINGS!r} must be a JSON list, found {type(entries).__name__}"
                )
            embeddings = tuple(EmbeddingInfo.from_dict(e) for e in entries)
        versions = {k: v for k, v in props.items() if k in VERSION_KEYS}
        return cls(embeddings=embeddings, versions=versions, raw=dict(props))


STANDARDIZE_OPTIONS = (None, "lower", "strip_punctuation", "lower_and_strip_punctuation")
"""``TextVectorization(standardize=...)`` values a :class:`TextSpec` can declare."""

SPLIT_OPTIONS = (None, "whitespace", "character")
"""``TextVectorization(split=...)`` values a :class:`TextSpec` can declare."""

TEXT_LAYERS = ("TextVectorization", "StringLookup")
"""Keras layers a :class:`TextSpec` can describe: texts in, or rows of tokens in (``StringLookup``)."""


@dataclass(frozen=True)
class TextSpec:
    """The declared text front end of one graph id input (metadata ``embed_runtime.text``).

    Attributes:
        input: the graph id input the ids feed, named after the Keras string input.
        layer: the Keras preprocessing layer's name; ``layer_class`` its class, one of
            :data:`TEXT_LAYERS` (a ``StringLookup`` takes rows of tokens: no standardize, split or length).
        standardize: one of :data:`STANDARDIZE_OPTIONS`; ``lower`` is ASCII-only, as Keras runs it.
        split: one of :data:`SPLIT_OPTIONS`.
        vocabulary: every token in index order, special tokens included (Keras's ``get_vocabulary()``):
            token ``vocabulary[i]`` gets id ``i``.
        oov_token: the out-of-vocabulary token, at ids ``oov_start`` to ``oov_start + num_oov_indices - 1``
            of ``vocabulary`` (``oov_start`` is 1 with a mask token, else 0); a token of its own after them
            is an ordinary token.
        mask_token: the token with id 0 (``""`` for ``TextVectorization``), or ``None``.
        num_oov_indices: how many OOV ids (>= 1). A token that is neither in ``vocabulary[oov_start +
            num_oov_indices:]`` nor the mask token gets id ``oov_start + Fingerprint64(utf8(token)) %
            num_oov_indices``: FarmHash's ``Fingerprint64`` (``farmhashna::Hash64``), which is what
            ``tf.strings.to_hash_bucket_fast`` computes in Keras's lookup layers (both flavours); with
            one OOV id that is ``oov_start``. More than one needs the ``text`` extra (``cityhash``).
        output_sequence_length: pad with 0 / truncate every row to this length; ``None`` pads a batch to
            its longest row.
        keras_flavour, keras_version: the Keras the spec was read from.
        in_graph: the graph does this lookup itself (``LabelEncoder``; one OOV id, no standardize or
            split): ``input`` is a string tensor, rows of tokens ``(batch, seq)`` (short rows padded with
            the mask token) or texts ``(batch, 1)``, which the runtime only checks and pads. Written only
            when true: older files, all declared, read the same.
    """

    input: str
    layer: str
    layer_class: str
    standardize: str | None
    split: str | None
    vocabulary: tuple[str, ...]
    oov_token: str
    mask_token: str | None
    num_oov_indices: int
    output_sequence_length: int | None
    keras_flavour: str
    keras_version: str
    in_graph: bool = False

    def __post_init__(self) -> None:
        where = f"text spec of input {self.input!r}"
        if self.layer_class not in TEXT_LAYERS:
            raise ValueError(f"{where}: layer_class {self.layer_class!r} is not one of {TEXT_LAYERS}")
        plain = (self.standardize, self.split, self.output_sequence_length) == (None, None, None)
        if self.layer_class == "StringLookup" and not plain:
            raise ValueError(f"{where}: a StringLookup has no standardize, split or output_sequence_length")
        if self.standardize not in STANDARDIZE_OPTIONS:
            raise ValueError(f"{where}: standardize {self.standardize!r} is not one of {STANDARDIZE_OPTIONS}")
        if self.split not in SPLIT_OPTIONS:
            raise ValueError(f"{where}: split {self.split!r} is not one of {SPLIT_OPTIONS}")
        n = self.num_oov_indices
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{where}: num_oov_indices must be an integer >= 1, found {n!r}")
        if self.mask_token is not None and self.vocabulary[:1] != (self.mask_token,):
            raise ValueError(f"{where}: mask_token {self.mask_token!r} must be the vocabulary's first token")
        start = self.oov_start
        if self.vocabulary[start : start + n] != (self.oov_token,) * n:
            raise ValueError(
                f"{where}: oov_token {self.oov_token!r} must be the vocabulary's tokens {start} to "
                f"{start + n - 1} (num_oov_indices={n}), found {list(self.vocabulary[start : start + n])!r}"
            )
        tokens = self.vocabulary[:start] + self.vocabulary[start + n :]
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"{where}: the vocabulary repeats a token")
        length = self.output_sequence_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(
                f"{where}: output_sequence_length must be an integer >= 1 or null, found {length!r}"
            )
        plain_lookup = (n, self.standardize, self.split) == (1, None, None)
        if not isinstance(self.in_graph, bool) or (self.in_graph and not plain_lookup):
            raise ValueError(f"{where}: in_graph must be a bool, true only with num_oov_indices 1 and no "
                             f"standardize or split, found {self.in_graph!r}")  # fmt: skip

    @property
    def oov_start(self) -> int:
        """The first OOV id: 1 after a mask token, else 0 (Keras's ``_oov_start_index`` for ``"int"``)."""
        return 0 if self.mask_token is None else 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the keys of this class."""
        d = asdict(self)
        d["vocabulary"] = list(self.vocabulary)
        if not self.in_graph:
            del d["in_graph"]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> TextSpec:
        """Parse one value of ``embed_runtime.text``; raises ``ValueError`` saying what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"text spec {str(d)[:80]!r} is not a JSON object")
        names = [k for k in cls.__dataclass_fields__ if k in d or k != "in_graph"]
        missing = [k for k in names if k not in d]
        if missing:
            raise ValueError(f"text spec of input {d.get('input')!r} lacks the key {missing[0]!r}")
        vocabulary = d["vocabulary"]
        if not isinstance(vocabulary, list) or not all(isinstance(t, str) for t in vocabulary):
            raise ValueError(f"text spec of input {d['input']!r}: 'vocabulary' must be a list of strings")
        for key in ("input", "layer", "layer_class", "oov_token", "keras_flavour", "keras_version"):
            if not isinstance(d[key], str):
                raise ValueError(f"text spec: {key!r} must be a string, found {d[key]!r}")
        if d["mask_token"] is not None and not isinstance(d["mask_token"], str):
            raise ValueError(f"text spec of input {d['input']!r}: 'mask_token' must be a string or null")
        return cls(**{**{k: d[k] for k in names}, "vocabulary": tuple(vocabulary)})


def text_specs(props: dict[str, str]) -> dict[str, TextSpec]:
    """The text specs in a model's metadata, by graph input name (empty when there is none).

    Raises ``ValueError`` when ``embed_runtime.text`` is present but malformed."""
    if KEY_TEXT not in props:
        return {}
    try:
        entries = json.loads(props[KEY_TEXT])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"metadata {KEY_TEXT!r} is not valid JSON: {exc}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"metadata {KEY_TEXT!r} must be a JSON object keyed by input name")
    specs = {name: TextSpec.from_dict(entry) for name, entry in entries.items()}
    wrong = [name for name, spec in specs.items() if spec.input != name]
    if wrong:
        raise ValueError(f"metadata {KEY_TEXT!r}: entry {wrong[0]!r} declares another input")
    return specs


def text_props(specs: list[TextSpec]) -> dict[str, str]:
    """The ``metadata_props`` entry that declares ``specs`` (none when the list is empty)."""
    if not specs:
        return {}
    return {KEY_TEXT: json.dumps({s.input: s.to_dict() for s in specs}, sort_keys=True, ensure_ascii=False)}
